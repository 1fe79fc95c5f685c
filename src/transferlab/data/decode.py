"""The one decode path: read a file safely, open and check it, orient, convert to RGB, resize.

Every command (inspect, train, cv, evaluate, predict, explain, serve) reads images through
`read_file` -> `open_image` -> `to_rgb`, so every one applies the same checks: regular files only
(a FIFO, a device or a folder named like an image is refused without blocking), a size limit
before reading, the decompression-bomb pixel limit before decoding, truncation, and a minimum
side. Every way a file can be unusable becomes a `BadImage` with a reason a person can act on;
nothing here raises anything else for a bad file. Files are opened read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from transferlab.preprocess import ResizeSpec, resize_image

_SRGB = None
_PIL_LIMIT = threading.Lock()


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason, `kind` its class
    (unreadable, too-large, not-an-image, damaged: what an HTTP API answers with)."""

    def __init__(self, message: str, kind: str = "damaged"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """What a file may be before it is decoded (data.max_file_mb, data.max_pixels, data.min_side)."""

    max_pixels: int = 89_478_485
    min_side: int = 8
    max_bytes: int = 512 * 2**20

    @classmethod
    def of(cls, data_config) -> Limits:
        return cls(max_pixels=data_config.max_pixels, min_side=data_config.min_side,
                   max_bytes=int(data_config.max_file_mb * 2**20))


FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def read_file(path: Path, max_bytes: int = Limits.max_bytes) -> bytes:
    """The bytes of the regular file at `path` (symlinks followed), at most `max_bytes` of them.

    The file is opened non-blocking and checked on the open descriptor, so a FIFO or device
    (even one swapped in after the folder was listed) is refused at once instead of hanging or
    filling memory.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BadImage("file not found" if not os.path.islink(path) else "broken symlink (its target does not exist)") \
            from None
    except PermissionError:
        raise BadImage("permission denied: make the file readable") from None
    except OSError as exc:
        raise BadImage(f"cannot read file: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # checked before io.open, which refuses a folder with its own error
        os.close(fd)
        kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise BadImage(f"not a regular file ({kind}): only image files are read")
    with open(fd, "rb", closefd=True) as handle:
        if info.st_size > max_bytes:
            raise BadImage(f"file too large: {info.st_size / 2**20:.0f} MB exceeds data.max_file_mb="
                           f"{max_bytes / 2**20:g} (raise it if the file is genuine)", "too-large")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise BadImage(f"cannot read file: {exc.strerror or exc}") from None
    check_size(data, max_bytes)  # it may have grown while being read
    return data


def check_size(data: bytes, max_bytes: int) -> None:
    """Refuse empty bytes, and more than `max_bytes` of them (data.max_file_mb)."""
    if not data:
        raise BadImage("empty file (0 bytes)", "not-an-image")
    if len(data) > max_bytes:
        raise BadImage(f"file too large: more than data.max_file_mb={max_bytes / 2**20:g} MB", "too-large")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def own_bomb_check():
    """PIL's process-wide bomb guard off while one header is read (we check the size against our
    own, configurable limit right after), then restored: the guard belongs to whoever else uses
    PIL in this process."""
    with _PIL_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF oddities and the like: we report our own reasons
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def reduction(width: int, height: int, fit: tuple[int, int]) -> int:
    """The largest of 2, 4 and 8 that keeps a width x height image at least twice `fit` (its longer
    side, its shorter side) after dividing both sides by it; else 1."""
    factor = 1
    while factor < 8 and max(width, height) >= 4 * factor * fit[0] and min(width, height) >= 4 * factor * fit[1]:
        factor *= 2
    return factor


def open_image(data: bytes, limits: Limits = Limits(), fit: tuple[int, int] | None = None) -> tuple[Image.Image, dict]:
    """Fully decoded, EXIF-oriented image from encoded `data`, and what it was. With `fit` (the
    smallest longer and shorter side the caller needs), an image more than twice as large is
    decoded smaller: a JPEG at 1/2, 1/4 or 1/8 scale by PIL's draft, others reduced right after
    decoding; without it (or an image not that large) the pixels are exactly the file's."""
    with own_bomb_check():
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise BadImage("not an image (unknown format: a renamed or non-image file?)", "not-an-image") from None
        except Exception as exc:  # PIL raises many types for damaged headers
            raise BadImage(f"cannot open image: {str(exc)[:200]}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise BadImage(f"too large: {width}x{height} = {width * height / 1e6:.0f} Mpx exceeds data.max_pixels="
                           f"{limits.max_pixels} (a possible decompression bomb; raise data.max_pixels if it is "
                           "genuine)", "too-large")
        meta = {"format": image.format or "", "mode": image.mode, "width": width, "height": height}
        factor = reduction(width, height, fit) if fit else 1
        if factor > 1 and image.format == "JPEG":
            image.draft(image.mode, (width // factor, height // factor))
        try:
            image.load()
        except Exception as exc:
            raise BadImage(f"truncated or corrupt {image.format or 'image'} data: {str(exc)[:200]}") from None
    if factor > 1 and image.size == (width, height) and image.mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        image = image.reduce(factor)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation not in (1, None):
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:
            raise BadImage(f"cannot apply EXIF orientation {orientation}: {exc}") from None
        meta["orientation"] = int(orientation)
        meta["width"], meta["height"] = image.size
    if min(image.size) < limits.min_side:
        raise BadImage(f"too small: {image.size[0]}x{image.size[1]} px (shorter side below "
                       f"data.min_side={limits.min_side})")
    return image, meta


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB version of any PIL mode: alpha composited on `background`, 16-bit and float scaled,
    embedded ICC profiles converted to sRGB."""
    global _SRGB
    mode = image.mode
    icc = image.info.get("icc_profile")
    if icc and mode in ("RGB", "RGBA", "CMYK"):
        try:  # camera and design files in Adobe RGB, P3 or CMYK profiles -> sRGB
            _SRGB = _SRGB or ImageCms.createProfile("sRGB")
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if mode == "RGBA" else "RGB"
            image = ImageCms.profileToProfile(image, source, _SRGB, outputMode=out_mode)
            mode = image.mode
        except Exception:
            pass  # a broken profile: fall back to the plain conversion below
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if mode != "I" or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.max() <= 1.0 and values.min() >= 0.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def load_rgb(data: bytes, limits: Limits, background: tuple[int, int, int], fit: tuple[int, int] | None = None
             ) -> tuple[Image.Image, dict]:
    """Checked, oriented RGB picture of encoded `data` (what explain and serve show), and its metadata."""
    image, meta = open_image(data, limits, fit)
    try:
        rgb = to_rgb(image, background)
    except Exception as exc:
        raise BadImage(f"cannot convert mode {meta['mode']} to RGB: {str(exc)[:200]}") from None
    meta["bytes"] = len(data)
    return rgb, meta


def decode_bytes(data: bytes, spec: ResizeSpec, limits: Limits) -> tuple[np.ndarray, dict]:
    """Model-ready pixels (size, size, 3) uint8 and metadata of encoded image `data`."""
    rgb, meta = load_rgb(data, limits, spec.alpha_background)
    try:
        return resize_image(rgb, spec), meta
    except Exception as exc:
        raise BadImage(f"cannot resize: {str(exc)[:200]}") from None


def decode_file(path: Path, spec: ResizeSpec, limits: Limits, *, data: bytes | None = None
                ) -> tuple[np.ndarray, dict]:
    """Model-ready pixels and metadata of the image file at `path` (the same checks everywhere)."""
    return decode_bytes(read_file(Path(path), limits.max_bytes) if data is None else data, spec, limits)


def decode_array(array: np.ndarray, spec: ResizeSpec) -> tuple[np.ndarray, dict]:
    """Model-ready pixels of an in-memory uint8 (H, W) or (H, W, 3) image of a built-in set."""
    image = Image.fromarray(array, "L" if array.ndim == 2 else "RGB").convert("RGB")
    meta = {"format": "array", "mode": "L" if array.ndim == 2 else "RGB",
            "width": int(array.shape[1]), "height": int(array.shape[0]), "bytes": int(array.nbytes)}
    return resize_image(image, spec), meta
