"""Interpretation: CAM mass where the decision is made, shapes and ranges, ViT paths, hooks released."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import one_error_line, save
from transferlab.cli import main
from transferlab.config import load_config
from transferlab.interpret import (ExplainError, attention_maps, attention_rollout, compute_cams, feature_maps,
                                   find_target_layer, token_attention)
from transferlab.interpret.methods import CAM_METHODS
from transferlab.preprocess import to_original as cam_to_original
from transferlab.models.backbone import Classifier, create_backbone
from transferlab.preprocess import ResizeSpec
from transferlab.rundir import RUN_DIR_ENV

SIZE, SIDE = 32, 8


def position_image(rng, left: bool, right: bool) -> np.ndarray:
    """Striped halves (vertical left, horizontal right, so a CNN can tell where it is) with a bright
    square in the left half and/or the right half."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    stripes = np.where(x < SIZE // 2, (x // 2) % 2, (y // 2) % 2) * 40 + 30
    img = (stripes[..., None] + rng.integers(0, 20, (SIZE, SIZE, 3))).astype(np.uint8)
    for present, offset in ((left, 0), (right, SIZE // 2)):
        if present:
            x0 = int(rng.integers(1, SIZE // 2 - SIDE)) + offset
            y0 = int(rng.integers(1, SIZE - SIDE - 1))
            img[y0 : y0 + SIDE, x0 : x0 + SIDE] = 230
    return img


class SmallCNN(nn.Module):
    """Three convolutions, global average pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))

    def forward(self, x):
        return self.head(self.backbone(x.float() / 255.0))


def test_gradcam_mass_lies_in_the_region_that_decides_the_class():
    """The class is decided only by where a square is: 0 when the LEFT half holds one, 1 when it
    does not. The right half holds a square half of the time, independent of the class, so it
    carries no information: a model that learned the task must look at the left half."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    labels = np.arange(400) % 2
    images = np.stack([position_image(rng, left=y == 0, right=rng.random() < 0.5) for y in labels])
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)
    for _ in range(10):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_labels = np.arange(40) % 2
    test = np.stack([position_image(rng, left=t == 0, right=rng.random() < 0.5) for t in test_labels])
    for method in ("gradcam", "gradcam++", "layercam"):
        result = compute_cams(model, test, method=method, layer="backbone.7")
        assert (result["pred"] == test_labels).mean() >= 0.95
        assert result["cams"].shape == (40, SIZE, SIZE)
        mass = [cam[:, : SIZE // 2].sum() / cam.sum() for cam in result["cams"]]
        assert np.mean(mass) > 0.7, (method, np.mean(mass))


def tiny_images(n=3, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "scorecam" else m  # ~20 s alone
                                    for m in CAM_METHODS])  # every method explain offers (hirescam, xgradcam too)
def test_cams_on_the_bundled_lite0_have_input_shape_and_unit_range(method):
    model = Classifier(create_backbone("tf_efficientnet_lite0"), 3, (0.5,) * 3, (0.5,) * 3).eval()
    images = tiny_images(2, 64)
    before = hook_count(model)
    for _ in range(2):
        result = compute_cams(model, images, method=method)
    assert hook_count(model) == before  # hooks are released after every call
    cams = result["cams"]
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    # at 64 px the last stage (stride 32) is 2x2: the deepest stage with at least 4x4 cells is used
    assert result["layer"] == "backbone.blocks.4"
    assert find_target_layer(model, input_size=224)[1] == "backbone.blocks.6"


def test_vit_gradcam_runs_with_the_token_reshape_and_class_choice():
    model = Classifier(create_backbone("vit_tiny_patch16_224", pretrained=False), 4, (0.5,) * 3, (0.5,) * 3).eval()
    layer, name, reshape = find_target_layer(model)
    assert name == "backbone.blocks.11.norm1" and reshape is not None
    tokens = torch.zeros(2, 1 + 14 * 14, 192)
    assert reshape(tokens).shape == (2, 192, 14, 14)
    before = hook_count(model)
    result = compute_cams(model, tiny_images(2, 224), method="gradcam", target_classes=[3, 1])
    assert result["cams"].shape == (2, 224, 224) and list(result["target"]) == [3, 1]
    assert 0 <= result["cams"].min() and result["cams"].max() <= 1
    assert hook_count(model) == before


def test_attention_maps_per_layer_and_head_are_probabilities():
    model = Classifier(create_backbone("vit_tiny_patch16_224", pretrained=False), 4, (0.5,) * 3, (0.5,) * 3).eval()
    fused_before = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    before = hook_count(model)
    maps = attention_maps(model, tiny_images(1, 224)[0])
    attention = maps["attention"]
    assert attention.shape == (12, 3, 197, 197)  # layers, heads, tokens, tokens
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-5)
    assert maps["grid"] == (14, 14) and maps["prefix_tokens"] == 1
    assert hook_count(model) == before
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused_before
    heads = token_attention(attention, 1, (14, 14))
    assert heads.shape == (12, 3, 14, 14)
    rollout = attention_rollout(attention, 1, (14, 14))
    assert rollout.shape == (14, 14) and (rollout >= 0).all()


def test_attention_rollout_by_hand():
    # two layers of one head over 2 tokens (1 prefix + 1 patch)... with 2 patches to make a 1x2 grid
    layer = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    attention = np.stack([layer, layer])  # identity attention: rollout stays the identity
    assert attention_rollout(attention, 1, (1, 2)).tolist() == [[0.0, 0.0]]
    uniform = np.full((1, 1, 3, 3), 1 / 3)
    rolled = attention_rollout(uniform, 1, (1, 2))
    # 0.5 * uniform + 0.5 * I: the class row is [2/3, 1/6, 1/6]
    np.testing.assert_allclose(rolled, [[1 / 6, 1 / 6]])


def test_attention_on_a_cnn_is_a_clear_error():
    model = Classifier(create_backbone("test_efficientnet", pretrained=False), 2, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ExplainError, match="no attention layers"):
        attention_maps(model, tiny_images(1, 64)[0])


def test_feature_maps_per_stage_are_normalised_and_named():
    model = Classifier(create_backbone("tf_efficientnet_lite0"), 2, (0.5,) * 3, (0.5,) * 3).eval()
    stages = feature_maps(model, tiny_images(1, 96)[0], top=4)
    assert [s["name"] for s in stages] == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert [s["size"] for s in stages] == [(48, 48), (24, 24), (12, 12), (6, 6), (3, 3)]
    for stage in stages:
        assert stage["maps"].shape[0] == 4 and stage["maps"].min() >= 0 and stage["maps"].max() <= 1 + 1e-6


def test_unknown_layer_lists_valid_names():
    model = Classifier(create_backbone("test_efficientnet", pretrained=False), 2, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ExplainError, match="no layer named 'backbone.nope'.*valid names include: .*backbone.blocks"):
        find_target_layer(model, "backbone.nope")


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_cam_maps_back_onto_the_original_picture(mode):
    cam = np.zeros((10, 10), np.float32)
    cam[:, :5] = 1.0  # the left half of what the model saw
    back = cam_to_original(cam, (40, 20), ResizeSpec(size=10, mode=mode))
    assert back.shape == (20, 40)
    if mode == "stretch":
        assert back[:, :18].mean() > 0.95 and back[:, 22:].mean() < 0.05
    elif mode == "crop":  # the centre 20x20 square: columns 10..30
        assert back[:, :10].max() == 0 and back[:, 31:].max() == 0 and back[:, 11:18].mean() > 0.95
    else:  # letterbox: the picture filled the width, so left half of the picture
        assert back[:, :18].mean() > 0.9 and back[:, 22:].mean() < 0.1


@pytest.fixture
def trained_run(tmp_path, monkeypatch, color_folder):
    from transferlab.run import run_training

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    config = load_config(overrides=["preprocess.size=64", "train.workers=0", "data.decode_workers=1", "train.epochs=1",
                                    "strategy.name=feature-extraction", "train.report=false"])  # the bundled lite0
    return run_training(str(color_folder), config, out=tmp_path / "run", progress=False)


def test_explain_cli_writes_readable_pngs(trained_run, color_folder, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    save(Image.open(color_folder / "red" / "red_0.png").resize((90, 60)), photo)
    assert main(["explain", str(trained_run), str(photo), str(color_folder / "blue" / "blue_1.png"),
                 "--method", "gradcam", "--out", str(tmp_path / "cams")]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == 2
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape[0] > 200 and picture.shape[1] > 400
    assert main(["explain", str(trained_run), str(photo), "--method", "featuremaps"]) == 0
    assert main(["explain", str(trained_run), str(photo), "--method", "gradcam++", "--class", "green"]) == 0
    assert main(["explain", str(trained_run), str(photo), "--method", "attention"]) == 2
    assert "no attention layers" in capsys.readouterr().err
    assert main(["explain", str(trained_run), str(photo), "--class", "purple"]) == 2
    assert main(["explain", str(trained_run), str(tmp_path / "missing.jpg")]) == 2
    assert len(list((trained_run / "explanations").iterdir())) == 2


# --- one decode path: explain refuses a decompression bomb as predict does ---------------------

def test_explain_and_predict_refuse_the_same_decompression_bomb(tmp_path, tiny_run, capsys, isolated):
    run, _ = tiny_run
    bomb = tmp_path / "bomb.png"
    Image.new("1", (16000, 16000)).save(bomb)  # a few hundred KB declaring 256 Mpx
    assert bomb.stat().st_size < 1_000_000
    assert main(["explain", str(run), str(bomb), "--out", str(tmp_path / "x")]) == 2
    one_error_line(capsys, "bomb.png", "too large: 16000x16000", "data.max_pixels")
    assert main(["predict", str(run), str(bomb)]) == 2
    one_error_line(capsys, "too large: 16000x16000")
    assert not (tmp_path / "x").exists()

