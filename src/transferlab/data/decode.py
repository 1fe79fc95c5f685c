"""Decode and validate one image: open, check, orient, convert to RGB, resize.

Every way a file can be unusable becomes a `BadImage` with a reason a person can act on;
nothing here raises anything else for a bad file. The file is opened read-only.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from transferlab.preprocess import ResizeSpec, resize_image

# We check the pixel count ourselves, against a configurable limit, before decoding.
Image.MAX_IMAGE_PIXELS = None
_SRGB = None


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason."""


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except PermissionError:
        raise BadImage("permission denied: make the file readable") from None
    except OSError as exc:
        raise BadImage(f"cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise BadImage("empty file (0 bytes)")
    return data


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_image(data: bytes, *, max_pixels: int, min_side: int) -> tuple[Image.Image, dict]:
    """Fully decoded, EXIF-oriented RGB image from encoded `data`, and what it was."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (unknown format: a renamed or non-image file?)") from None
    except Exception as exc:  # PIL raises many types for damaged headers
        raise BadImage(f"cannot open image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(
            f"too large: {width}x{height} = {width * height / 1e6:.0f} Mpx exceeds data.max_pixels="
            f"{max_pixels} (a possible decompression bomb; raise data.max_pixels if it is genuine)"
        )
    meta = {"format": image.format or "", "mode": image.mode, "width": width, "height": height}
    try:
        image.load()
    except Exception as exc:
        raise BadImage(f"truncated or corrupt {image.format or 'image'} data: {exc}") from None
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
    if min(image.size) < min_side:
        raise BadImage(f"too small: {image.size[0]}x{image.size[1]} px (shorter side below data.min_side={min_side})")
    return image, meta


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB version of any PIL mode: alpha composited on `background`, 16-bit and float scaled."""
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
        values = np.asarray(image, dtype=np.float64)
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


def decode_file(path: Path, spec: ResizeSpec, *, max_pixels: int, min_side: int,
                data: bytes | None = None) -> tuple[np.ndarray, dict]:
    """Cached-ready pixels (size, size, 3) uint8 and metadata of the image file at `path`."""
    data = read_bytes(path) if data is None else data
    image, meta = open_image(data, max_pixels=max_pixels, min_side=min_side)
    try:
        rgb = to_rgb(image, spec.alpha_background)
    except Exception as exc:
        raise BadImage(f"cannot convert mode {meta['mode']} to RGB: {exc}") from None
    meta["bytes"] = len(data)
    return resize_image(rgb, spec), meta


def decode_array(array: np.ndarray, spec: ResizeSpec) -> tuple[np.ndarray, dict]:
    """Cached-ready pixels of an in-memory uint8 (H, W) or (H, W, 3) image of a built-in set."""
    image = Image.fromarray(array, "L" if array.ndim == 2 else "RGB").convert("RGB")
    meta = {"format": "array", "mode": "L" if array.ndim == 2 else "RGB",
            "width": int(array.shape[1]), "height": int(array.shape[0]), "bytes": int(array.nbytes)}
    return resize_image(image, spec), meta
