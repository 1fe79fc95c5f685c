"""Data sources, validation of every bad case, the decode-once cache."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BAD_FILES, IGNORED_FILES, TINY, colour_images, pattern, save
from transferlab.cli import main
from transferlab.config import load_config
from transferlab.data import load_dataset
from transferlab.data.cache import DiskStore, MemoryStore
from transferlab.data.decode import to_rgb
from transferlab.data.builtins import read_idx
from transferlab.data.sources import open_source
from transferlab.errors import DataError
from transferlab.run import run_training


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_bad_file_is_skipped_with_its_reason(bad_folder, small_config):
    ds = load_dataset(str(bad_folder), small_config, progress=False)
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    for path, start in BAD_FILES.items():
        assert path in reasons, f"{path} was not skipped"
        assert reasons[path].startswith(start), (path, reasons[path])
    assert set(reasons) == set(BAD_FILES)
    ignored = {s["path"]: s["reason"] for s in ds.ignored}
    for path, start in IGNORED_FILES.items():
        assert ignored[path].startswith(start), (path, ignored.get(path))
    assert "empty_class" in ds.empty_classes
    assert any("empty_class" in w for w in ds.warnings)
    assert ds.classes == ["cat", "dog"]
    assert not set(BAD_FILES) & set(ds.paths)
    assert "cat/chat_été_😀.jpg" in ds.paths


def test_user_files_are_never_modified_or_written_next_to(bad_folder, small_config):
    before = tree_digest(bad_folder)
    load_dataset(str(bad_folder), small_config, progress=False)
    assert tree_digest(bad_folder) == before


def test_duplicates_within_and_across_classes(bad_folder, small_config):
    ds = load_dataset(str(bad_folder), small_config, progress=False)
    by_paths = {tuple(d["paths"]): d for d in ds.duplicates}
    assert by_paths[("cat/dup_a.jpg", "cat/dup_b.jpg")]["conflict"] is False
    conflict = by_paths[("cat/conflict.png", "dog/conflict.png")]
    assert conflict["conflict"] is True and conflict["labels"] == ["cat", "dog"]
    assert any("different labels" in w for w in ds.warnings)
    # copies share a split group so they can never straddle train and test
    index = {p: i for i, p in enumerate(ds.paths)}
    assert ds.groups[index["cat/dup_a.jpg"]] == ds.groups[index["cat/dup_b.jpg"]]
    assert ds.groups[index["cat/conflict.png"]] == ds.groups[index["dog/conflict.png"]]
    assert len(np.unique(ds.groups)) == len(ds) - 2


def test_modes_become_correct_rgb():
    white = (255, 255, 255)
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (200, 0, 0, 0))  # fully transparent: must show the background
    out = np.asarray(to_rgb(rgba, white))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert np.asarray(to_rgb(half, white))[0, 0].tolist() == [127, 127, 127]
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(to_rgb(la, (0, 128, 0)))[0, 0].tolist() == [0, 128, 0]
    deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(deep, white))[0, :, 0].tolist() == [0, 128, 255]
    grey = Image.new("L", (1, 1), 77)
    assert np.asarray(to_rgb(grey, white))[0, 0].tolist() == [77, 77, 77]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red ink-wise
    assert np.asarray(to_rgb(cmyk, white))[0, 0].tolist() == [255, 0, 0]
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([9, 8, 7] + [0] * 765)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette, (1, 2, 3)))[0, 0].tolist() == [1, 2, 3]


def test_exif_orientation_is_applied(tmp_path, small_config):
    stored = np.zeros((30, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # show rotated 90 degrees clockwise: the white half ends up on top
    save(Image.fromarray(stored), tmp_path / "d" / "a" / "r.jpg", exif=exif.tobytes(), quality=95)
    save(Image.fromarray(stored), tmp_path / "d" / "b" / "plain.jpg", quality=95)
    config = load_config(overrides=["preprocess.size=20", "preprocess.resize_mode=stretch", "data.decode_workers=1"])
    ds = load_dataset(str(tmp_path / "d"), config, progress=False)
    record = ds.records[ds.paths.index("a/r.jpg")]
    assert (record["width"], record["height"], record["orientation"]) == (30, 40, 6)
    img = ds.images[ds.paths.index("a/r.jpg")].astype(int)
    assert img[:8].mean() > 200 and img[12:].mean() < 50


def test_single_class_and_empty_sets_are_clear_errors(tmp_path, small_config):
    save(pattern(1), tmp_path / "one" / "only" / "a.png")
    ds = load_dataset(str(tmp_path / "one"), small_config, progress=False)
    with pytest.raises(DataError, match="1 class .*at least 2"):
        ds.require_classes()
    (tmp_path / "none" / "x").mkdir(parents=True)
    ds = load_dataset(str(tmp_path / "none"), small_config, progress=False)
    with pytest.raises(DataError, match="no usable images"):
        ds.require_classes()


def test_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.jpg").write_bytes(b"123")
    with pytest.raises(DataError, match="not a CSV manifest"):
        open_source(str(tmp_path / "x.jpg"))
    with pytest.raises(DataError, match="unknown built-in"):
        open_source("builtin:cifar")


def test_csv_manifest_relative_paths_groups_and_bad_rows(tmp_path, small_config):
    for i in range(4):
        save(pattern(i), tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text(
        "path,label,group\n../imgs/0.png,a,p1\n../imgs/1.png,a,p1\n../imgs/2.png,b,p2\n"
        f"{tmp_path / 'imgs' / '3.png'},b,p3\n../imgs/missing.png,b,p4\n../imgs/0.png,,p5\n",
        encoding="utf-8",
    )
    ds = load_dataset(str(manifest), small_config, progress=False)
    assert ds.paths[:3] == ["../imgs/0.png", "../imgs/1.png", "../imgs/2.png"]
    assert ds.counts == {"a": 2, "b": 2}
    assert ds.groups[0] == ds.groups[1] and len(np.unique(ds.groups)) == 3
    reasons = [s["reason"] for s in ds.skipped]
    assert any("file not found" in r for r in reasons) and any("empty path or label" in r for r in reasons)
    bad = tmp_path / "lists" / "bad.csv"
    bad.write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match="no 'path' or 'label' column"):
        open_source(str(bad))


@pytest.mark.parametrize("row,fragment", [("img.png,a" + "x" * 131_073, "cannot be read near line 2"),
                                            ("img.png," + "y" * 100_000, "a label of 100,000 characters"),
                                            ("img.png," + '"' + "z" * 200_000, "cannot be read near line")])
def test_a_manifest_with_a_giant_field_or_label_is_one_line(tmp_path, row, fragment, capsys):
    from conftest import one_error_line
    from transferlab.cli import main

    save(pattern(0), tmp_path / "img.png")
    (tmp_path / "m.csv").write_text(f"path,label\n{row}\n")
    for command in ("inspect", "train"):
        assert main([command, str(tmp_path / "m.csv")]) == 2
        one_error_line(capsys, fragment)


@pytest.mark.parametrize("rows,fragment", [
    ('img.png,"c\n0"\nimg2.png,c0\n', "line 2: the label 'c\\n0' holds a line break"),
    ("img.png,a\nimg2.png,b,extra,more\n", "line 3: 4 fields where the header names 2"),
    ('img.png,a\n"img2\n.png",b\nimg.png,a,x\n', "line 5: 3 fields where the header names 2")])
def test_a_manifest_row_that_is_not_one_label_is_refused_with_its_line(tmp_path, rows, fragment, capsys):
    """A quoted label "c\n0" became the class c0 (merging with a real c0), and a row with more fields than
    the header was read without a word."""
    from conftest import one_error_line
    from transferlab.cli import main

    save(pattern(0), tmp_path / "img.png")
    save(pattern(1), tmp_path / "img2.png")
    (tmp_path / "m.csv").write_text(f"path,label\n{rows}")
    assert main(["inspect", str(tmp_path / "m.csv")]) == 2
    one_error_line(capsys, fragment)


def test_subset_is_per_class_and_seeded(color_folder, small_config):
    config = load_config(overrides=["preprocess.size=16", "data.subset=4", "data.decode_workers=1"])
    a = load_dataset(str(color_folder), config, progress=False)
    b = load_dataset(str(color_folder), config, progress=False)
    assert a.counts == {"blue": 4, "green": 4, "red": 4}
    assert a.paths == b.paths
    c = load_dataset(str(color_folder), load_config(overrides=[
        "preprocess.size=16", "data.subset=4", "data.decode_workers=1", "seed=1"]), progress=False)
    assert c.paths != a.paths


def test_parallel_decode_equals_serial(bad_folder):
    serial = load_config(overrides=["preprocess.size=24", "data.cache=memory", "data.decode_workers=1"])
    parallel = load_config(overrides=["preprocess.size=24", "data.cache=memory", "data.decode_workers=2"])
    a = load_dataset(str(bad_folder), serial, progress=False)
    b = load_dataset(str(bad_folder), parallel, progress=False)
    assert a.paths == b.paths and a.skipped == b.skipped
    np.testing.assert_array_equal(a.images.take(range(len(a))), b.images.take(range(len(b))))


def test_disk_cache_is_keyed_by_content_and_settings(tmp_path, color_folder):
    cache = tmp_path / "cache"
    overrides = ["preprocess.size=16", "data.cache=disk", f"data.cache_dir={cache}", "data.decode_workers=1"]
    first = load_dataset(str(color_folder), load_config(overrides=overrides), progress=False)
    assert isinstance(first.images, DiskStore)
    files = sorted(cache.rglob("*.npy"))
    assert len(files) == 30
    memory = load_dataset(str(color_folder), load_config(overrides=overrides[:1] + ["data.cache=memory",
                                                                                   "data.decode_workers=1"]),
                          progress=False)
    assert isinstance(memory.images, MemoryStore)
    np.testing.assert_array_equal(first.images.take(range(30)), memory.images.take(range(30)))

    # a renamed file is still a hit (same content): no new entry, and decoding is not repeated
    (color_folder / "red" / "red_0.png").rename(color_folder / "red" / "renamed.png")
    stamp = {f: f.stat().st_mtime_ns for f in files}
    os.utime(files[0], ns=(1, 1))
    load_dataset(str(color_folder), load_config(overrides=overrides), progress=False)
    assert sorted(cache.rglob("*.npy")) == files
    # another size is another key
    load_dataset(str(color_folder), load_config(overrides=["preprocess.size=12"] + overrides[1:]), progress=False)
    assert len(list(cache.rglob("*.npy"))) == 60
    assert stamp  # mtimes were recorded before the second load
    assert not list(cache.rglob("*.tmp"))


def test_disk_cache_trims_least_recently_used(tmp_path, color_folder):
    cache = tmp_path / "cache"
    base = ["data.cache=disk", f"data.cache_dir={cache}", "data.decode_workers=1"]
    load_dataset(str(color_folder), load_config(overrides=["preprocess.size=16"] + base), progress=False)
    old = set(cache.rglob("*.npy"))
    # a limit the new set's pixels fit (30 x 560 bytes), but with nothing else: the old set is trimmed away
    load_dataset(str(color_folder), load_config(overrides=["preprocess.size=12", "data.disk_limit_gb=0.000017"] + base),
                 progress=False)
    remaining = set(cache.rglob("*.npy"))
    assert not (old & remaining)
    assert len(remaining) == 30


def test_read_idx_roundtrip(tmp_path):
    import gzip
    import struct

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2, 3, 4) + images.tobytes()
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), images)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists() and not os.environ.get("TRANSFERLAB_DATA"),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_data_subset_and_official_test_split():
    config = load_config(overrides=["preprocess.size=28", "data.subset=5", "data.decode_workers=1"])
    train = load_dataset("builtin:fashion-mnist", config, progress=False)
    assert len(train) == 50 and len(train.classes) == 10
    assert set(train.counts.values()) == {5}
    assert train.classes[0] == "T-shirt or top" and train.paths[0].startswith("fashion-mnist/train/")
    test = load_dataset("builtin:fashion-mnist:test", config, progress=False)
    assert test.paths[0].startswith("fashion-mnist/test/") and len(test) == 50
    # real pictures, not noise: a garment is brighter in the middle than at the border
    img = train.images[0].astype(float)
    assert img[10:18, 10:18].mean() > img[:2].mean()


def test_digits_builtin_is_offline_and_complete(small_config):
    ds = load_dataset("builtin:digits", small_config, progress=False)
    assert len(ds) == 1797 and ds.classes == [str(d) for d in range(10)]
    assert ds.images[0].shape == (32, 32, 3)


# --- symlinks: followed once, loops detected, never out of DATA -------------------------------

@pytest.mark.timeout(60)
def test_symlink_loops_aliases_and_escapes_are_listed_not_followed(tmp_path, isolated):
    root = colour_images(tmp_path / "data")
    outside = colour_images(tmp_path / "elsewhere", classes=("green",))
    (root / "red" / "up").symlink_to("..")  # a loop back to the data root
    (root / "blue" / "again").symlink_to(root / "blue")  # a loop onto its own folder
    (root / "disk").symlink_to("/")  # a class folder that would walk the whole disk
    (root / "green").symlink_to(outside / "green")  # a class folder outside DATA
    (root / "red" / "alias.png").symlink_to(root / "red" / "000.png")  # the same file twice
    (root / "blue" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link
    inner = colour_images(root / ".pool", per_class=2, classes=("x",))  # hidden: not a class of its own
    (root / "red" / "shared").symlink_to(inner / "x")  # a link to a folder inside DATA: followed

    source = open_source(str(root))
    labels = {}
    for item in source.items:
        labels.setdefault(item.label, []).append(item.path)
    assert sorted(labels) == ["blue", "red"]
    assert len(labels["blue"]) == 8 and all(p.startswith("blue/") for p in labels["blue"])
    assert len(labels["red"]) == 10  # its 8 files and the 2 behind the inner link, the alias once
    reasons = {entry["path"]: entry["reason"] for entry in source.ignored}
    assert "folder already read" in reasons["red/up"] and "folder already read" in reasons["blue/again"]
    assert "outside DATA" in reasons["disk"] and "outside DATA" in reasons["green"]
    assert "same file as red/000.png" in reasons["red/alias.png"]
    assert {e["path"]: e["reason"] for e in source.skipped}["blue/gone.png"].startswith("broken symlink")
    assert any("class folder 'disk' is not read" in w for w in source.warnings)
    # DATA itself may be a link: the user named it
    (tmp_path / "link-to-data").symlink_to(outside)
    assert [i.label for i in open_source(str(tmp_path / "link-to-data")).items] == ["green"] * 8


# --- special files: only regular files are read, with a size limit, in every command ----------

@pytest.mark.timeout(120)
def test_fifos_devices_and_huge_files_never_hang_or_fill_memory(tmp_path, tiny_run, capsys, isolated):
    root = colour_images(tmp_path / "data")
    os.mkfifo(root / "red" / "pipe.png")
    manifest = tmp_path / "m.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(root.rglob("0*.png"))]
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:  # a sparse 2 GB file named like an image
        handle.truncate(2 * 2**30)
    manifest.write_text("path,label\n" + "\n".join(rows + ["zero.png,red", "big.png,blue", "data/red/pipe.png,red"])
                        + "\n")
    config = load_config(overrides=["preprocess.size=32", "data.decode_workers=1"])
    dataset = load_dataset(str(manifest), config, progress=False)
    reasons = {s["path"]: s["reason"] for s in dataset.skipped}
    assert reasons["zero.png"].startswith("not a regular file (a character device)")
    assert reasons["data/red/pipe.png"].startswith("not a regular file (a FIFO")
    assert reasons["big.png"].startswith("file too large: 2048 MB exceeds data.max_file_mb=512")
    assert len(dataset) == 16
    assert main(["inspect", str(root), "--size", "32"]) == 0  # the FIFO inside a class folder: listed, no hang
    assert "pipe.png" in capsys.readouterr().out
    run, data = tiny_run
    good = data / "red" / "000.png"
    (tmp_path / "folder.png").mkdir()
    assert main(["predict", str(run), str(good), str(root / "red" / "pipe.png"), str(tmp_path / "zero.png"),
                 str(tmp_path / "folder.png"), "--json"]) == 2
    results = json.loads(capsys.readouterr().out)
    assert "top" in results[0] and "FIFO" in results[1]["error"] and "character device" in results[2]["error"]
    assert results[3]["error"].startswith("not a regular file (a folder)")


# --- non-UTF-8 file names ---------------------------------------------------------------------

def test_a_non_utf8_file_name_trains_and_is_recorded_escaped(tmp_path, isolated):
    root = colour_images(tmp_path / "data")
    Image.open(root / "red" / "000.png").transpose(Image.Transpose.ROTATE_90).save(
        os.fsdecode(bytes(root / "red") + b"/caf\xe9.png"))
    run = run_training(str(root), load_config(overrides=[*TINY, "strategy.name=feature-extraction", "train.epochs=1"]),
                       out=tmp_path / "run", progress=False)
    split = (run / "split.csv").read_text(encoding="utf-8")
    assert "red/caf\\xe9.png" in split and len(split.splitlines()) == 18
    assert json.loads((run / "metrics.json").read_text())["data"]["n_images"] == 17



def test_images_smaller_than_the_model_are_cached_at_their_own_size(tmp_path, monkeypatch, capsys):
    """A set of 20 x 20 images for a 32 px model is stored at 20 x 20 (never more pixels than the
    sources have; inspect says so, with the bytes per image) and the model resizes them in its
    graph: predict on a file gives the probabilities the run itself recorded for it. A set with one
    image larger than the model keeps the model's size."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    data = colour_images(tmp_path / "small", per_class=10)
    assert main(["inspect", str(data), "--json", "--set", "preprocess.size=32"]) == 0
    cached = json.loads(capsys.readouterr().out)["cached_as"]
    assert (cached["size"], cached["bytes_per_image"]) == (20, 20 * 20 * 3)
    config = load_config(overrides=[*TINY, "strategy.name=linear-probe"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["resize"]["size"] == 20 and meta["size"] == 32
    saved = load_config(run / "config.yaml")
    assert (saved.preprocess.size, saved.model.size) == (20, 32)
    row = next(r for r in csv.DictReader((run / "predictions.csv").open()) if r["split"] == "test")
    assert main(["predict", str(run), str(data / row["path"]), "--json", "--top-k", "2", "--engine", "torch"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"][0]
    assert top["class"] == row["pred"] and top["probability"] == pytest.approx(float(row[f"p_{row['pred']}"]),
                                                                                abs=1e-5)
    save(pattern(99, (40, 30)), data / "red" / "large.png")
    assert main(["inspect", str(data), "--json", "--set", "preprocess.size=32"]) == 0
    assert json.loads(capsys.readouterr().out)["cached_as"]["size"] == 32


def test_a_decoded_cache_over_the_disk_limit_is_refused_before_anything_is_written(tmp_path, capsys):
    """data.disk_limit_gb is the disk budget of the cache: a set whose decoded images cannot fit is
    one line (exit 2) naming the limit and what to do, and nothing is written to the cache."""
    data = colour_images(tmp_path / "data", per_class=10)
    cache = tmp_path / "cache"
    assert main(["inspect", str(data), "--set", "data.cache=disk", "--set", f"data.cache_dir={cache}",
                 "--set", "data.disk_limit_gb=0.00001"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.disk_limit_gb=1e-05 (10 KB)" in err and "data.cache=none" in err
    # 20 images of 20 x 20 x 3 bytes (+ 128 each): in a unit that shows the number, not "0.0 GB"
    assert "the decoded images need 27 KB in" in err, err
    assert not list(cache.rglob("*.npy"))
    assert main(["inspect", str(data), "--set", "data.cache=disk", "--set", f"data.cache_dir={cache}"]) == 0
    assert len(list(cache.rglob("*.npy"))) == 20
