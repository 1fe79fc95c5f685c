"""Fuzzing the one decode path: truncated and mutated real PNG, JPEG, GIF, TIFF, WebP and BMP files
must each end as an image or as a `BadImage` with a reason, never another exception, a hang or
unbounded memory."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transferlab.data.decode import BadImage, Limits, decode_bytes
from transferlab.preprocess import ResizeSpec

FORMATS = {"PNG": {}, "JPEG": {"quality": 80}, "GIF": {}, "TIFF": {"compression": "tiff_lzw"}, "WEBP": {},
           "BMP": {}, "PPM": {}}
SPEC = ResizeSpec(size=16)
# the limits bound the work per input: a header may claim up to this many pixels and no more
LIMITS = Limits(max_pixels=2_000_000, min_side=1, max_bytes=1_000_000)


def encoded(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(len(fmt))
    picture = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **FORMATS[fmt])
    return buffer.getvalue()


SEEDS = [encoded(fmt) for fmt in FORMATS] + [encoded("PNG", "P"), encoded("PNG", "LA"), encoded("TIFF", "CMYK"),
                                             encoded("GIF", "L")]


@st.composite
def damaged_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "header"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        elif kind == "truncate":
            del data[at:]
        else:  # the size fields live in the first bytes of every format: make them huge or zero
            field = draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff", b"\x7f\xff\x00\x01"]))
            offset = draw(st.integers(0, min(40, max(0, len(data) - 1))))
            data[offset : offset + len(field)] = field
    return bytes(data)


def check_damaged(data: bytes) -> None:
    try:
        pixels, meta = decode_bytes(data, SPEC, LIMITS)
    except BadImage as exc:
        assert str(exc), "a BadImage must say why"
        return
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert meta["width"] * meta["height"] <= LIMITS.max_pixels


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=damaged_files())
def test_any_damaged_file_ends_as_an_image_or_a_bad_image_with_a_reason(data):
    check_damaged(data)


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=3000, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=damaged_files())
def test_3000_damaged_files_end_as_an_image_or_a_bad_image_with_a_reason(data):
    check_damaged(data)


def test_memory_stays_bounded_over_many_damaged_files():
    """Decoding a few hundred headers that claim the largest allowed size grows the process by far
    less than they claim in total."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    claims = 0
    for k in range(300):
        picture = Image.new("L", (1400 + k, 1400))  # 2 Mpx each, a few KB encoded
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        data = buffer.getvalue()
        try:
            decode_bytes(data[: len(data) // 2], SPEC, LIMITS)  # truncated: must fail cleanly
        except BadImage:
            pass
        claims += picture.size[0] * picture.size[1] * 3
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert grown < 200 * 2**20 < claims
