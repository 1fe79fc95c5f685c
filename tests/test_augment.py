"""Augmentation: each op checked by its effect, pickling, seeding, presets, config errors, preview."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.augment import (OPS, PRESETS, augment_from_arg, build_batch_mix, build_op, build_train_transform,
                                 check_op, resolve_augment)
from transferlab.config import AugmentConfig, load_config
from transferlab.errors import ConfigError


def make(spec: dict, size: int = 32):
    return build_op(*check_op(spec, "test"), size)


def mixer(num_classes: int, **settings):
    """The batch mixer training uses, for these augment settings."""
    return build_batch_mix(AugmentConfig(preset="none", **settings), num_classes)


def mid_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 values in 60..190, so small photometric changes never clip."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(60, 191, (3, size, size), dtype=torch.uint8, generator=g)


def test_hflip_equals_the_mirrored_tensor():
    x = mid_image()
    assert torch.equal(make({"op": "hflip", "p": 1.0})(x), x.flip(-1))
    assert torch.equal(make({"op": "vflip", "p": 1.0})(x), x.flip(-2))
    assert torch.equal(make({"op": "hflip", "p": 0.0})(x), x)


def test_additive_brightness_shifts_the_mean_by_beta():
    x = mid_image()
    for beta in (-50, -13, 0, 25, 50):
        y = make({"op": "brightness_add", "beta": [beta, beta]})(x)
        assert y.dtype == torch.uint8
        assert y.float().mean() - x.float().mean() == pytest.approx(beta, abs=1e-4)
    # clipping at the ends of the range
    white = torch.full((3, 4, 4), 250, dtype=torch.uint8)
    assert (make({"op": "brightness_add", "beta": [50, 50]})(white) == 255).all()
    assert (make({"op": "brightness_add", "beta": [-255, -255]})(white) == 0).all()


def test_brightness_factor_multiplies():
    x = mid_image()
    y = make({"op": "brightness", "factor": [1.25, 1.25]})(x)
    np.testing.assert_allclose(y.float().numpy(), np.clip(np.round(x.float().numpy() * 1.25), 0, 255), atol=1)


def test_contrast_alpha_scales_deviations_from_the_mean():
    grey = mid_image()[0].expand(3, -1, -1).clone()  # equal channels: the grey mean is the mean
    mean = grey.float().mean()
    for alpha in (0.5, 1.0, 1.4):
        y = make({"op": "contrast", "alpha": [alpha, alpha]})(grey)
        # within rounding of the mean and of the result (uint8 in, uint8 out)
        np.testing.assert_allclose((y.float() - mean).numpy(), (alpha * (grey.float() - mean)).numpy(), atol=1.6)


def test_noise_has_the_requested_std():
    flat = torch.full((3, 128, 128), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    y = make({"op": "noise", "sigma": 10.0})(flat).float()
    assert y.std().item() == pytest.approx(10.0, rel=0.03)
    assert y.mean().item() == pytest.approx(128.0, abs=0.2)
    relative = make({"op": "noise", "sigma": 0.04, "relative": True})(flat).float()
    assert relative.std().item() == pytest.approx(0.04 * 255, rel=0.03)


def test_cutout_fills_the_requested_area():
    x = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    y = make({"op": "cutout", "holes": 1, "size": [0.25, 0.25], "fill": 0}, size=64)(x)
    assert int((y == 0).all(dim=0).sum()) == 16 * 16
    coloured = make({"op": "cutout", "holes": 1, "size": [0.5, 0.5], "fill": [1, 2, 3]}, size=64)(x)
    hole = (coloured != 200).any(dim=0)
    assert int(hole.sum()) == 32 * 32
    assert coloured[:, hole].T.unique(dim=0).tolist() == [[1, 2, 3]]
    many = make({"op": "cutout", "holes": 3, "size": [0.125, 0.125]}, size=64)(x)
    assert 64 <= int((many == 0).all(dim=0).sum()) <= 3 * 64


def test_rotation_by_90_without_crop_equals_rot90():
    x = mid_image()
    for interpolation in ("nearest", "bilinear"):
        y = make({"op": "rotate", "degrees": [90, 90], "interpolation": interpolation})(x)
        assert torch.equal(y, torch.rot90(x, 1, dims=(1, 2)))


def test_mixup_targets_sum_to_one_and_equal_lambda():
    images = torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), 100.0)])
    labels = torch.tensor([0, 1])
    mix = mixer(3, mixup_alpha=0.4)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, targets = mix(images, labels)
        assert torch.allclose(targets.sum(dim=1), torch.ones(2))
        lam = 1 - mixed[0].mean().item() / 100  # row 0 = lam * zeros + (1 - lam) * hundreds
        assert targets[0].tolist() == pytest.approx([lam, 1 - lam, 0.0], abs=1e-5)
        assert targets[1].tolist() == pytest.approx([1 - lam, lam, 0.0], abs=1e-5)


def test_cutmix_targets_equal_the_pasted_area():
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    mix = mixer(2, cutmix_alpha=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, targets = mix(images, torch.tensor([0, 1]))
        own = (mixed[0, 0] == 0).float().mean().item()
        assert targets[0].tolist() == pytest.approx([own, 1 - own], abs=1e-5)


def test_batch_mix_probability_and_switch():
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    labels = torch.tensor([0, 1])
    never = mixer(3, mixup_alpha=1.0, mix_prob=0.0)
    assert torch.equal(never(images, labels)[1], labels)  # unmixed: the labels as they were
    assert build_batch_mix(AugmentConfig(preset="standard"), 3) is None
    heavy = build_batch_mix(AugmentConfig(preset="heavy"), 3)
    torch.manual_seed(0)
    assert heavy(images, labels)[1].shape == (2, 3)  # heavy mixes (mixup 0.2): soft targets
    # with both on, switch_prob picks CutMix (a hard-edged box) or MixUp (a uniform blend)
    both = mixer(2, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    kinds = set()
    for seed in range(40):
        torch.manual_seed(seed)
        mixed, _ = both(images, labels)
        values = mixed[0, 0].unique()
        kinds.add("cutmix" if set(values.tolist()) <= {0.0, 1.0} else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_pickles_keeps_uint8_and_is_seeded(name):
    x = mid_image(32, seed=1)
    transform = make({"op": name, "p": 1.0})
    clone = pickle.loads(pickle.dumps(transform))
    torch.manual_seed(123)
    a = transform(x)
    torch.manual_seed(123)
    b = clone(x)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_seeded_uint8_and_never_flip_vertically(preset):
    transform = build_train_transform(AugmentConfig(preset=preset), 32)
    x = mid_image(32)
    torch.manual_seed(7)
    a = [transform(x) for _ in range(3)]
    torch.manual_seed(7)
    b = [transform(x) for _ in range(3)]
    assert all(torch.equal(p, q) and p.dtype == torch.uint8 for p, q in zip(a, b))
    assert all(spec["op"] != "vflip" for spec in PRESETS[preset]["ops"])
    if preset == "none":
        assert torch.equal(a[0], x)


def test_augment_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown augmentation 'spin'"):
        resolve_augment(AugmentConfig(ops=[{"op": "spin"}]))
    with pytest.raises(ConfigError, match=r"augment.ops\[0\].degree' for rotate \(valid: degrees, "):
        resolve_augment(AugmentConfig(ops=[{"op": "rotate", "degree": 5}]))
    with pytest.raises(ConfigError, match=r"augment.ops\[1\].p=1.5 must be a probability"):
        resolve_augment(AugmentConfig(ops=[{"op": "hflip"}, {"op": "vflip", "p": 1.5}]))
    with pytest.raises(ConfigError, match="low <= high"):
        resolve_augment(AugmentConfig(ops=[{"op": "rotate", "degrees": [10, -10]}]))
    with pytest.raises(ConfigError, match="set augment.mixup_alpha"):
        resolve_augment(AugmentConfig(ops=[{"op": "mixup"}]))
    with pytest.raises(ConfigError, match="neither a preset"):
        augment_from_arg(str(tmp_path / "nope.yaml"))


def test_aug_file_as_list_or_mapping(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- {op: vflip, p: 0.5}\n- {op: noise, sigma: 5}\n")
    assert augment_from_arg(str(listed)) == {"preset": "none", "ops": [{"op": "vflip", "p": 0.5},
                                                                      {"op": "noise", "sigma": 5}]}
    mapping = tmp_path / "map.yaml"
    mapping.write_text("preset: light\ncutmix_alpha: 1.0\n")
    assert augment_from_arg(str(mapping)) == {"preset": "light", "cutmix_alpha": 1.0}
    config = load_config(overrides=["augment.preset=light", "augment.ops=[{op: hflip, p: 1.0}]"])
    assert [d["op"] for d in resolve_augment(config.augment).describe()] == ["hflip"]


def test_preview_grid_is_written_and_seeded(tmp_path):
    from transferlab.preview import augmented_samples, preview_grid

    images = np.stack([mid_image(24, seed=s).permute(1, 2, 0).numpy() for s in range(3)])
    heavy = AugmentConfig(preset="heavy", mixup_alpha=1.0)
    out = preview_grid(images, ["a", "b", "c"], heavy, tmp_path / "grid.png", n=4, seed=3)
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] > 200 and picture.shape[1] > 300
    a = augmented_samples(images, heavy, n=4, seed=3)
    b = augmented_samples(images, heavy, n=4, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a[:, 0], a[:, 1])
