"""Resize modes against PIL's own output, normalization, statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pattern
from transferlab.config import load_config
from transferlab.data import holdout_split, load_dataset
from transferlab.preprocess import (IMAGENET_MEAN, IMAGENET_STD, ResizeSpec, backbone_defaults, build_normalizer,
                                    channel_stats, resize_image, resize_spec)

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_stretch_equals_pil_resize(interpolation):
    image = pattern(3, (97, 61))
    out = resize_image(image, ResizeSpec(size=32, mode="stretch", interpolation=interpolation))
    expected = np.asarray(image.resize((32, 32), RESAMPLE[interpolation]))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_crop_equals_pil_centre_crop_then_resize(interpolation):
    image = pattern(4, (100, 60))
    out = resize_image(image, ResizeSpec(size=30, mode="crop", interpolation=interpolation))
    # shorter side 60 -> the centred 60x60 square, resized to 30x30
    expected = np.asarray(image.crop((20, 0, 80, 60)).resize((30, 30), RESAMPLE[interpolation]))
    np.testing.assert_array_equal(out, expected)


def test_crop_pct_keeps_the_central_fraction():
    image = pattern(5, (80, 80))
    out = resize_image(image, ResizeSpec(size=20, mode="crop", interpolation="bilinear", crop_pct=0.5))
    expected = np.asarray(image.crop((20, 20, 60, 60)).resize((20, 20), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_pad_letterboxes_with_the_fill(interpolation):
    image = pattern(6, (100, 50))
    out = resize_image(image, ResizeSpec(size=40, mode="pad", interpolation=interpolation, pad_fill=(7, 8, 9)))
    inner = np.asarray(image.resize((40, 20), RESAMPLE[interpolation]))
    np.testing.assert_array_equal(out[10:30], inner)
    assert (out[:10] == [7, 8, 9]).all() and (out[30:] == [7, 8, 9]).all()


def test_downsampling_is_antialiased():
    # a one-pixel checkerboard shrunk 8x must become flat grey, not aliased stripes
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([board] * 3, axis=-1))
    for interpolation in ("bilinear", "bicubic"):
        out = resize_image(image, ResizeSpec(size=32, mode="stretch", interpolation=interpolation)).astype(int)
        assert abs(out.mean() - 127.5) < 2 and out.std() < 3


def test_backbone_defaults_come_from_pretrained_cfg():
    lite = backbone_defaults("tf_efficientnet_lite0")
    assert lite == {"size": 224, "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    vit = backbone_defaults("vit_tiny_patch16_384")
    assert vit["size"] == 384
    spec = resize_spec(load_config(overrides=["model.name=vit_tiny_patch16_384"]))
    assert spec.size == 384
    assert resize_spec(load_config(overrides=["preprocess.size=96", "preprocess.interpolation=nearest"])) \
        == ResizeSpec(size=96, mode="crop", interpolation="nearest")


def test_normalizers():
    image = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    minmax = build_normalizer(load_config(overrides=["preprocess.normalize=minmax"]))
    assert torch.equal(minmax(image), torch.ones(3, 2, 2))
    imagenet = build_normalizer(load_config(overrides=["preprocess.normalize=imagenet"]))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(imagenet(image)[:, 0, 0], expected)
    model = build_normalizer(load_config())
    assert torch.equal(model(torch.zeros(3, 1, 1, dtype=torch.uint8)), -torch.ones(3, 1, 1))
    z = build_normalizer(load_config(overrides=["preprocess.normalize=zscore"]), ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)))
    assert torch.allclose(z(image)[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="training split"):
        build_normalizer(load_config(overrides=["preprocess.normalize=zscore"]))
    batch = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)  # works on batches too
    assert model(batch).shape == (4, 3, 2, 2)


def test_zscore_statistics_come_from_the_training_split_only(color_folder):
    config = load_config(overrides=["preprocess.size=16", "data.cache=memory", "data.decode_workers=1"])
    ds = load_dataset(str(color_folder), config, progress=False)
    split = holdout_split(ds.labels, ds.groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    train = np.flatnonzero(split == "train")
    # plant a value in the held-out images: if they leaked in, the statistics would move
    planted = ds.images.array.copy()
    planted[split != "train"] = 255
    mean, std = channel_stats(planted, train)
    pixels = ds.images.array[train].reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=0, atol=1e-12)
    everything = channel_stats(planted)
    assert not np.allclose(everything[0], mean)
