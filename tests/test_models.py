"""Backbones and weights: the bundled ImageNet weights work, local files load safely, groups cover everything."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.models.backbone import (Classifier, WeightsError, create_backbone, imagenet_model, load_weights_file,
                                         read_state_dict)
from transferlab.models.groups import GROUP_NAMES, named_groups
from transferlab.preprocess import ResizeSpec, resize_image


def test_bundled_lite0_classifies_chelsea_as_egyptian_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = imagenet_model().eval()
    pixels = resize_image(Image.fromarray(skimage_data.chelsea()), ResizeSpec(size=224, interpolation="bicubic"))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        probs = model((x - 0.5) / 0.5).softmax(dim=1)
    assert int(probs.argmax()) == 285  # Egyptian cat
    assert float(probs.max()) > 0.3


def test_classifier_normalizes_uint8_and_has_a_new_head():
    backbone = create_backbone("test_efficientnet", pretrained=False)
    model = Classifier(backbone, num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dropout=0.3)
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(model.normalize(white), torch.ones(1, 3, 8, 8))
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 3)
    assert isinstance(model.head[0], torch.nn.Dropout) and model.head[0].p == 0.3
    assert model.head[1].in_features == backbone.num_features


@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit", "resnet18"])
def test_named_groups_cover_every_parameter_once(name):
    model = Classifier(create_backbone(name, pretrained=False), 4, (0.5,) * 3, (0.5,) * 3)
    groups = named_groups(model)
    assert tuple(groups) == GROUP_NAMES and all(groups.values())
    listed = [n for names in groups.values() for n in names]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert groups["head"] == ["head.1.weight", "head.1.bias"]


def test_weights_file_roundtrip_and_mismatch_errors(tmp_path):
    source = create_backbone("test_efficientnet", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    target = create_backbone("test_efficientnet", pretrained=False, weights=tmp_path / "w.pth")
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    create_backbone("test_efficientnet", pretrained=False, weights=tmp_path / "w.safetensors")
    # a checkpoint dict with 'state_dict' and 'module.' prefixes (DDP) loads too
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pth")
    create_backbone("test_efficientnet", pretrained=False, weights=tmp_path / "ddp.pth")
    other = create_backbone("resnet18", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match=r"does not fit .*missing \d+: .*unexpected \d+: "):
        create_backbone("test_efficientnet", pretrained=False, weights=tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/transferlab-pickle-ran"


def test_weights_loading_refuses_a_pickle_that_would_run_code(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv_stem.weight": RunsCode()}, handle)
    model = create_backbone("test_efficientnet", pretrained=False)
    with pytest.raises(WeightsError, match="refused"):
        load_weights_file(model, path)
    assert not os.path.exists(MARKER)


def test_unknown_model_and_unreachable_hub_are_clear_errors(monkeypatch):
    from transferlab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown timm model 'resnet9000'"):
        create_backbone("resnet9000")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="--weights FILE, use --no-pretrained"):
        create_backbone("resnet18", pretrained=True)


def test_bundled_backbone_features_of_an_image_do_not_depend_on_its_batch():
    """In eval mode an image's pooled features are its own: the same alone or among others (no
    batch statistics leak between images), and 1280-d for EfficientNet-Lite0."""
    model = Classifier(create_backbone("tf_efficientnet_lite0"), 2, (0.5,) * 3, (0.5,) * 3).eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8))
    with torch.no_grad():
        together, alone = model.features(x), model.features(x[1:2])
    assert together.shape == (3, 1280)
    assert torch.allclose(together[1], alone[0], atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)
