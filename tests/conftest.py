"""Shared fixtures: tiny synthetic image folders, including every kind of bad file."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.config import load_config

# a tiny, fast model for runs whose numbers do not matter: timm's test network, random weights, 32 px
TINY = ["train.report=false", "model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32",
        "train.batch_size=8", "train.workers=0", "data.decode_workers=1", "train.early_stopping=null",
        "data.val_fraction=0.2", "data.test_fraction=0.2", "augment.preset=none",
        "audit.enabled=false"]  # the audit's own tests (test_audit.py, the cv test) turn it on
TINY_FLAGS = [arg for item in TINY for arg in ("--set", item)]
SCRIPT = Path(sys.executable).with_name("transferlab")  # the console script pip installed


def pytest_configure(config) -> None:
    """The suite's own cache folder (decoded images, features, engine exports), removed at its end: no test
    reads or trims the user's ~/.cache/transferlab (a cache of 60,000 entries made every load 3 s slower)."""
    import tempfile

    if "TRANSFERLAB_CACHE" not in os.environ:
        config._transferlab_cache = tempfile.mkdtemp(prefix="transferlab-test-cache-")
        os.environ["TRANSFERLAB_CACHE"] = config._transferlab_cache


def pytest_unconfigure(config) -> None:
    import shutil

    folder = getattr(config, "_transferlab_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("TRANSFERLAB_CACHE", None)


def interactive_sigint() -> None:
    """preexec_fn for a child that the test will Ctrl-C: SIGINT as a terminal delivers it. A suite
    started in the background by a non-interactive shell (`make test &`) runs with SIGINT
    ignored, and a child would inherit that and never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def pattern(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A distinct RGB picture per seed (smooth gradients plus a block), so files are never identical."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    img = (base + 3 * x[..., None] + 2 * y[..., None] * rng.integers(1, 3, 3)) % 256
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# file (relative to the root) -> the start of the reason it must be skipped with
BAD_FILES = {
    "cat/empty.jpg": "empty file",
    "cat/truncated.jpg": "truncated",
    "dog/truncated.png": "truncated",
    "dog/notes.jpg": "not an image",
    "dog/bomb.png": "too large",
    "cat/tiny.png": "too small",
}
IGNORED_FILES = {".DS_Store": "hidden file", "cat/.hidden.jpg": "hidden file", "dog/readme.txt": "not an image extension",
                 "loose.jpg": "not inside a class folder"}


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """root/<class>/<file> with good images in many modes and every bad case the loader must name."""
    root = tmp_path / "photos"
    for i in range(6):
        save(pattern(i), root / "cat" / f"cat_{i}.jpg", quality=92)
        save(pattern(100 + i), root / "dog" / f"dog_{i}.png")
    # modes that must become correct RGB
    save(pattern(200).convert("L"), root / "dog" / "grey_L.png")
    la = pattern(201).convert("LA")
    save(la, root / "dog" / "grey_alpha_LA.png")
    rgba = pattern(202).convert("RGBA")
    rgba.putalpha(128)
    save(rgba, root / "cat" / "half_transparent_RGBA.png")
    p = pattern(203).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.info["transparency"] = 0
    save(p, root / "cat" / "palette_P.png", transparency=0)
    save(pattern(204).convert("CMYK"), root / "dog" / "print_CMYK.jpg")
    deep = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    save(deep, root / "dog" / "deep_I16.png")
    # EXIF-rotated photo: stored 40x30 landscape, orientation 6 means display rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    save(pattern(205), root / "cat" / "rotated_exif.jpg", exif=exif.tobytes(), quality=92)
    save(pattern(206), root / "cat" / "chat_été_😀.jpg", quality=92)
    # duplicates: within a class, and across classes (a label conflict)
    same = jpeg_bytes(pattern(300))
    (root / "cat" / "dup_a.jpg").write_bytes(same)
    (root / "cat" / "dup_b.jpg").write_bytes(same)
    other = png_bytes(pattern(301))
    (root / "cat" / "conflict.png").write_bytes(other)
    (root / "dog" / "conflict.png").write_bytes(other)
    # bad files
    (root / "cat" / "empty.jpg").write_bytes(b"")
    whole = jpeg_bytes(pattern(400, (120, 90)))
    (root / "cat" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    whole_png = png_bytes(pattern(401, (120, 90)))
    (root / "dog" / "truncated.png").write_bytes(whole_png[: len(whole_png) // 2])
    (root / "dog" / "notes.jpg").write_text("this is not a picture\n")
    save(Image.new("1", (9500, 9500)), root / "dog" / "bomb.png")  # 90.25 Mpx, above the default limit
    save(Image.new("RGB", (1, 1), (255, 0, 0)), root / "cat" / "tiny.png")
    # ignored
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "cat" / ".hidden.jpg").write_bytes(jpeg_bytes(pattern(500)))
    (root / "dog" / "readme.txt").write_text("labels by hand\n")
    (root / "loose.jpg").write_bytes(jpeg_bytes(pattern(501)))
    (root / "empty_class").mkdir()
    return root


@pytest.fixture
def small_config():
    """A config that caches at 32 px in memory with one decode process: fast and deterministic."""
    return load_config(overrides=["preprocess.size=32", "data.cache=memory", "data.decode_workers=1"])


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """Three classes of 10 images each whose colour decides the class: a learnable toy task."""
    root = tmp_path / "colors"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(10):
            img = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            img[..., k] = rng.integers(160, 256, (24, 24), dtype=np.uint8)
            save(Image.fromarray(img), root / name / f"{name}_{i}.png")
    return root


def colour_images(root: Path, per_class: int = 8, classes=("red", "blue")) -> Path:
    """A class-folder tree of 20 x 20 PNGs, each class one dominant colour channel."""
    rng = np.random.default_rng(len(classes) * per_class)
    for k, name in enumerate(classes):
        for i in range(per_class):
            img = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            img[..., k % 3] = rng.integers(160, 256, (20, 20), dtype=np.uint8)
            save(Image.fromarray(img), root / name / f"{i:03d}.png")
    return root


MULTI = ("red", "green", "blue")  # the labels of multilabel_set: which colour bands an image holds


def multilabel_set(root: Path, *, images: int = 48, form: str = "labels", seed: int = 0) -> Path:
    """A multi-label manifest of 24 x 24 PNGs, each holding 0 to 3 colour bands (a horizontal band per colour
    present: red, green, blue); its labels are the colours present. `form` labels: a path,labels CSV with
    names joined by ';'; columns: one 0/1 column per colour. Every combination appears, the empty one too."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(images):
        present = [c for c in range(3) if (i >> c) & 1] if i < 8 else [c for c in range(3) if rng.random() < 0.5]
        img = rng.integers(0, 50, (24, 24, 3), dtype=np.uint8)
        for c in present:
            img[8 * c: 8 * c + 8, :, c] = rng.integers(170, 256, (8, 24), dtype=np.uint8)
        save(Image.fromarray(img), root / "images" / f"{i:03d}.png")
        rows.append((f"images/{i:03d}.png", [MULTI[c] for c in present]))
    with open(root / "labels.csv", "w", encoding="utf-8") as handle:
        if form == "labels":
            handle.write("path,labels\n" + "".join(f"{p},{';'.join(names)}\n" for p, names in rows))
        else:
            handle.write("path," + ",".join(MULTI) + "\n" + "".join(
                f"{p}," + ",".join("1" if c in names else "0" for c in MULTI) + "\n" for p, names in rows))
    return root / "labels.csv"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A cache of the test's own and no run directory inherited from the environment."""
    from transferlab.rundir import RUN_DIR_ENV

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run (feature extraction, 1 epoch) that read-only tests copy or read: (run, data)."""
    from transferlab.run import run_training
    from transferlab.rundir import RUN_DIR_ENV

    tmp = tmp_path_factory.mktemp("tiny-run")
    saved = {k: os.environ.get(k) for k in ("TRANSFERLAB_CACHE", RUN_DIR_ENV)}
    os.environ["TRANSFERLAB_CACHE"] = str(tmp / "cache")
    os.environ.pop(RUN_DIR_ENV, None)
    try:
        data = colour_images(tmp / "data")
        run = run_training(str(data), load_config(overrides=[*TINY, "strategy.name=feature-extraction",
                                                             "train.epochs=1"]), out=tmp / "run", progress=False)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return run, data


def one_error_line(capsys, *fragments: str, absent: tuple[str, ...] = ()) -> str:
    """The one error line a command printed (no traceback), containing every fragment."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    for fragment in absent:
        assert fragment not in lines[0], (fragment, lines[0])
    return lines[0]


def post_image(url: str, field: str, name: str, data: bytes, extra: dict | None = None) -> tuple[int, dict]:
    """POST multipart/form-data with the standard library (what curl -F does)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"]
    for key, value in (extra or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "api/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
