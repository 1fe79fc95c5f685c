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
                                    resize_image, resize_spec)

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


def normalized_by_the_model(color_folder, tmp_path, normalize: str) -> torch.Tensor:
    """What a trained run's classifier feeds its backbone for an all-255 image (the real path:
    the statistics a fit computes, saved with the model, applied by Classifier.normalize)."""
    import json

    from transferlab.run import run_training
    from transferlab.rundir import load_model

    config = load_config(overrides=["preprocess.size=16", "data.decode_workers=1", "train.workers=0",
                                    "train.report=false", "strategy.name=linear-probe",
                                    f"preprocess.normalize={normalize}", "model.name=test_efficientnet",
                                    "model.pretrained=false"])
    run = run_training(str(color_folder), config, out=tmp_path / normalize, progress=False)
    recorded = json.loads((run / "dataset.json").read_text())["normalization"]
    assert recorded == json.loads((run / "model" / "model.json").read_text())["normalize"]
    model = load_model(run).classifier
    return model.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0]


@pytest.mark.parametrize("normalize,expected", [
    ("minmax", [1.0, 1.0, 1.0]),
    ("imagenet", [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]),
    ("model", [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]),  # test_efficientnet's pretrained_cfg
])
def test_the_model_sees_its_input_normalized_as_configured(normalize, expected, color_folder, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    assert normalized_by_the_model(color_folder, tmp_path, normalize).tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="training split"):
        build_normalizer(load_config(overrides=["preprocess.normalize=zscore"]))


def test_zscore_statistics_come_from_the_training_split_only(color_folder, tmp_path, monkeypatch):
    """Held-out images are planted white: a run's z-score statistics (what its model applies) equal
    the numpy statistics of exactly the training rows of its split.csv."""
    import csv

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    config = load_config(overrides=["preprocess.size=16", "data.decode_workers=1"])
    ds = load_dataset(str(color_folder), config, progress=False)
    split = holdout_split(ds.labels, ds.groups, val_fraction=0.15, test_fraction=0.15, seed=0)
    planted = tmp_path / "planted"
    for k, (path, part) in enumerate(zip(ds.paths, split)):
        picture = Image.open(color_folder / path)
        (planted / path).parent.mkdir(parents=True, exist_ok=True)
        if part != "train":  # bright and distinct (identical files would be grouped into one split)
            picture = Image.new("RGB", picture.size, (255, 255, 255 - k))
        picture.save(planted / path)
    seen = normalized_by_the_model(planted, tmp_path, "zscore")
    with open(tmp_path / "zscore" / "split.csv", newline="") as handle:
        train = [row["path"] for row in csv.DictReader(handle) if row["split"] == "train"]
    again = load_dataset(str(planted), config, progress=False)
    rows = [again.paths.index(p) for p in train]
    pixels = again.images.take(rows).reshape(-1, 3).astype(np.float64) / 255
    assert seen.tolist() == pytest.approx(((1 - pixels.mean(axis=0)) / pixels.std(axis=0)).tolist(), rel=1e-5)
    bright = again.images.take(range(len(again)))[..., 0].min(axis=(1, 2)) == 255
    assert 0 < len(rows) < len(again) and not bright[rows].any() and bright.sum() == len(again) - len(rows)
