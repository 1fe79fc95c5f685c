"""Labelled image folders we can build offline, from near to far from ImageNet's domain.

photos:      random crops of scikit-image's natural photos, one class per photo (near)
textures:    crops of scikit-image's brick, grass and gravel textures (near: natural textures)
faces:       scikit-image's LFW subset, faces vs non-faces (natural, tiny, grey)
microscopy:  crops of immunohistochemistry, retina and cell images (medical: different)
gratings:    synthetic sinusoidal gratings whose orientation is the class, in noise (far)
letters:     the letters A-J, upper and lower case in one class, in the fonts matplotlib ships, at 28 px
             grey, varied in size, slant, position, stroke and ink (a notMNIST-like set: different)
and the built-ins digits and fashion-mnist (different).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _crops(image: np.ndarray, count: int, rng, *, low: float = 0.3, high: float = 0.7, size: int = 160):
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    height, width = image.shape[:2]
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(low, high))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]).astype(np.uint8))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.Resampling.BILINEAR)


def _write(root: Path, classes: dict[str, np.ndarray], per_class: int, seed: int, **kwargs) -> Path:
    rng = np.random.default_rng(seed)
    for name, image in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, crop in enumerate(_crops(image, per_class, rng, **kwargs)):
            crop.save(root / name / f"{i:04d}.png")
    return root


def photos(root: Path, per_class: int = 60, seed: int = 0, low: float = 0.3, high: float = 0.7) -> Path:
    from skimage import data

    return _write(root, {"astronaut": data.astronaut(), "cat": data.chelsea(), "coffee": data.coffee(),
                         "rocket": data.rocket(), "camera": data.camera(), "clock": data.clock()}, per_class, seed,
                  low=low, high=high)


def textures(root: Path, per_class: int = 60, seed: int = 0) -> Path:
    from skimage import data

    return _write(root, {"brick": data.brick(), "grass": data.grass(), "gravel": data.gravel()}, per_class, seed,
                  low=0.15, high=0.4)


def microscopy(root: Path, per_class: int = 60, seed: int = 0) -> Path:
    from skimage import data

    return _write(root, {"ihc": data.immunohistochemistry(), "retina": data.retina(), "cell": data.cell()},
                  per_class, seed, low=0.1, high=0.3)


def faces(root: Path, seed: int = 0) -> Path:
    from skimage import data

    images = data.lfw_subset()
    for i, image in enumerate(images):
        label = "face" if i < 100 else "not-face"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / label / f"{i:03d}.png")
    return root


def gratings(root: Path, per_class: int = 60, seed: int = 0, size: int = 64) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    for k, angle in enumerate((0, 45, 90, 135)):
        (root / f"angle{angle}").mkdir(parents=True, exist_ok=True)
        theta = np.deg2rad(angle)
        for i in range(per_class):
            freq = rng.uniform(3, 8)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
            img = 128 + 50 * wave + rng.normal(0, 40, (size, size))
            colour = np.clip(np.stack([img * rng.uniform(0.6, 1.0) for _ in range(3)], axis=-1), 0, 255)
            Image.fromarray(colour.astype(np.uint8)).save(root / f"angle{angle}" / f"{i:04d}.png")
    return root


def letter_fonts() -> list[Path]:
    """The text fonts matplotlib ships (DejaVu, STIX, Computer Modern): the same on every machine with this
    project's dependencies. Symbol-only faces (STIX's size variants, cmex, cmsy) and the fallback are left out."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    skip = ("STIXSiz", "STIXNonUni", "cmex", "cmsy", "LastResort", "Display")
    return sorted(p for p in folder.glob("*.ttf") if not p.name.startswith(skip) and "Display" not in p.name)


def letters(root: Path, per_class: int = 100, seed: int = 0, size: int = 28) -> Path:
    """`per_class` images of each letter A-J, each in a seeded font and case, size (glyph 45-85% of the
    canvas), rotation (+-15 degrees), offset (+-3 px at 28), stroke (a blur then a threshold thickens or
    thins it) and ink/background levels with noise, rendered at 4x and reduced to `size` px grey."""
    from PIL import ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    fonts = letter_fonts()
    big = 4 * size
    for k, letter in enumerate("ABCDEFGHIJ"):
        (root / letter).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            char = letter if rng.random() < 0.5 else letter.lower()
            font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(big * rng.uniform(0.45, 0.85)))
            canvas = Image.new("L", (2 * big, 2 * big), 0)
            draw = ImageDraw.Draw(canvas)
            left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
            draw.text((big - (left + right) / 2, big - (top + bottom) / 2), char, fill=255, font=font)
            canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
            shift = rng.uniform(-3, 3, 2) * 4
            box = (big / 2 - shift[0], big / 2 - shift[1], 3 * big / 2 - shift[0], 3 * big / 2 - shift[1])
            glyph = canvas.crop(tuple(int(v) for v in box)).filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
            ink = np.asarray(glyph, float) / 255 > rng.uniform(0.2, 0.5)  # thicker or thinner strokes
            image = Image.fromarray((ink * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
            low, high = rng.uniform(0, 60), rng.uniform(160, 255)
            pixels = low + (high - low) * np.asarray(image, float) / 255 + rng.normal(0, 12, (size, size))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / letter / f"{i:04d}.png")
    return root


BUILDERS = {"photos": photos, "textures": textures, "faces": faces, "microscopy": microscopy, "gratings": gratings,
            "letters": letters}


def build(name: str, base: Path, **kwargs) -> str:
    """A DATA spec for `name`: a folder built under `base`, or a builtin."""
    if name in BUILDERS:
        root = base / (name + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items())))
        if not root.exists():
            BUILDERS[name](root, **kwargs)
        return str(root)
    return f"builtin:{name}"


def raw_features(spec: str):
    """(pooled features at 224 px, the dataset) of the bundled backbone, the way a careful 30-line script takes them:
    every image stretched to 224, normalised by the backbone's mean and std, one pass. Only transferlab's loaders of
    files and of the bundled weights are used, so every contender reads the same images and backbone."""
    import torch

    from transferlab.config import load_config
    from transferlab.data import load_dataset
    from transferlab.models.backbone import create_backbone

    model = create_backbone("tf_efficientnet_lite0").eval()
    dataset = load_dataset(spec, load_config(overrides=["preprocess.size=224", "preprocess.resize_mode=stretch"]),
                           progress=False)
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            batch = torch.from_numpy(dataset.images.take(range(start, min(start + 64, len(dataset)))))
            out.append(model((batch.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5))
    return torch.cat(out).numpy(), dataset
