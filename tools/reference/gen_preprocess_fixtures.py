#!/usr/bin/env python3
"""Create the preprocessing parity fixtures used by crates/resnet-data/tests/preprocess_parity.rs.

For every case this writes a small synthetic test image and the tensor that torchvision produces
for it with the standard ImageNet evaluation transform

    Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])

applied to `Image.open(path).convert("RGB")`. Expected tensors are stored as [3, crop, crop]
float32 .npy files (torchvision's CHW layout). `cases.txt` lists one case per line:

    <image file> <resize> <crop> <expected .npy file>

The images are generated deterministically (seeded numpy), so re-running the script reproduces
the same files as long as Pillow's encoders do not change. Run it with the reference venv:

    tools/reference/.venv/bin/python tools/reference/gen_preprocess_fixtures.py
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms

OUT_DIR = Path(__file__).resolve().parent / "fixtures" / "preprocess"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def photo_like_rgb(width: int, height: int) -> np.ndarray:
    """Smooth gradients, a few hard-edged shapes and mild noise: exercises both the smooth and
    the high-frequency parts of the resampler and of lossy codecs. The noise is seeded by the
    size, so adding an image never changes the others."""
    rng = np.random.RandomState(width * 100_003 + height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xs / width, ys / height
    red = 255 * (0.5 + 0.5 * np.sin(6.0 * u + 2.0 * v))
    green = 255 * v * (1 - 0.5 * u)
    blue = 255 * (0.5 + 0.5 * np.cos(9.0 * u * v + 1.0))
    img = np.stack([red, green, blue], axis=-1)
    # A disc, a rectangle and a thin diagonal line with sharp edges.
    disc = (xs - 0.3 * width) ** 2 + (ys - 0.6 * height) ** 2 < (0.18 * min(width, height)) ** 2
    img[disc] = [240, 230, 40]
    rect = (xs > 0.6 * width) & (xs < 0.85 * width) & (ys > 0.15 * height) & (ys < 0.45 * height)
    img[rect] = [20, 40, 200]
    line = np.abs((xs - ys * width / height)) < 1.5
    img[line] = [255, 255, 255]
    img += rng.normal(0.0, 6.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def save_offset_frame_gif(path: Path) -> None:
    """A palette GIF whose only frame covers part of a larger logical screen and has a
    transparent colour: PIL fills the uncovered area with the transparent index, whose palette
    entry is a distinctive green here."""
    frame = Image.fromarray(photo_like_rgb(120, 90)).quantize(colors=31, dither=Image.Dither.NONE)
    palette = frame.getpalette()[: 32 * 3]
    palette[31 * 3 : 32 * 3] = [10, 200, 30]  # index 31 becomes the transparent colour
    frame.putpalette(palette)
    pixels = np.array(frame)
    pixels[10:30, 20:60] = 31  # a transparent hole inside the frame
    frame = Image.fromarray(pixels, mode="P")
    frame.putpalette(palette)
    tmp = path.with_suffix(".tmp.gif")
    frame.save(tmp, transparency=31, optimize=False)
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    # Enlarge the logical screen and move the image descriptor (found by walking the blocks).
    screen_w, screen_h, left, top = 200, 150, 50, 40
    struct.pack_into("<HH", data, 6, screen_w, screen_h)
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # extension blocks: introducer, label, sub-blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C, "expected an image descriptor"
    struct.pack_into("<HH", data, pos + 1, left, top)
    path.write_bytes(bytes(data))


def make_images() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like_rgb(500, 375)).save(OUT_DIR / "photo.jpg", quality=90)
    Image.fromarray(photo_like_rgb(300, 400)).convert("L").save(OUT_DIR / "gray.jpg", quality=85)
    # Pillow writes CMYK JPEGs with an Adobe marker and inverted samples, as Photoshop does.
    Image.fromarray(photo_like_rgb(240, 180)).convert("CMYK").save(OUT_DIR / "cmyk.jpg", quality=90)

    rgba = np.concatenate([photo_like_rgb(300, 200), np.zeros((200, 300, 1), np.uint8)], axis=-1)
    rgba[..., 3] = np.linspace(0, 255, 300).astype(np.uint8)[None, :]  # alpha 0 at the left edge
    Image.fromarray(rgba, mode="RGBA").save(OUT_DIR / "alpha.png")

    Image.fromarray(photo_like_rgb(240, 320)).convert("L").save(OUT_DIR / "gray.png")

    # 16-bit grayscale spanning 0..1023: PIL opens it as mode I;16 and convert("RGB") clips
    # values above 255 (it does not scale), so about three quarters of the image saturates.
    ramp = np.linspace(0, 1023, 180)[None, :] + 40 * np.sin(np.arange(150) / 7.0)[:, None]
    Image.fromarray(np.clip(ramp, 0, 65535).astype(np.uint16)).save(OUT_DIR / "gray16.png")

    Image.new("RGB", (1, 1), (200, 30, 120)).save(OUT_DIR / "tiny.png")
    Image.fromarray(photo_like_rgb(1000, 20)).save(OUT_DIR / "wide.png")
    Image.fromarray(photo_like_rgb(60, 400)).save(OUT_DIR / "tall.png")
    Image.fromarray(photo_like_rgb(256, 320)).save(OUT_DIR / "already256.png")

    palette_img = Image.fromarray(photo_like_rgb(320, 240)).quantize(colors=64)
    second = Image.fromarray(255 - photo_like_rgb(320, 240)).quantize(colors=64)
    palette_img.save(OUT_DIR / "palette.gif", save_all=True, append_images=[second])
    save_offset_frame_gif(OUT_DIR / "offset_frame.gif")

    Image.fromarray(photo_like_rgb(400, 300)).save(OUT_DIR / "photo.webp", quality=85)
    Image.fromarray(photo_like_rgb(200, 150)).save(OUT_DIR / "photo.bmp")


# (image, resize, crop). The flagship cases use the ImageNet evaluation sizes (256 -> 224, and
# the v2 recipe's 232 on the JPEG). Each float32 [3, 224, 224] result is 600 KB, so the other
# cases use smaller sizes, which run the same code paths, to keep the fixtures near 5 MB.
# "wide.png" at 48 -> 56 makes CenterCrop pad with zeros (the resized image is 2400 x 48), and
# "already256.png" is already 256 on its shorter side, so Resize returns it unchanged.
# "tall.png" (60 x 400 -> 56 x 373) loses more than twice as many rows as columns, which makes
# Pillow 13 run its vertical resampling pass before the horizontal one.
CASES = [
    ("photo.jpg", 256, 224),
    ("photo.jpg", 232, 224),
    ("photo.webp", 256, 224),
    ("alpha.png", 256, 224),
    ("gray16.png", 256, 224),
    ("offset_frame.gif", 256, 224),
    ("gray.jpg", 128, 112),
    ("cmyk.jpg", 128, 112),
    ("gray.png", 128, 112),
    ("tiny.png", 64, 56),
    ("wide.png", 64, 56),
    ("wide.png", 48, 56),
    ("tall.png", 56, 56),
    ("already256.png", 256, 112),
    ("palette.gif", 128, 112),
    ("photo.bmp", 128, 112),
]


def main() -> None:
    make_images()
    lines = []
    for image_name, resize, crop in CASES:
        transform = transforms.Compose(
            [
                transforms.Resize(resize),
                transforms.CenterCrop(crop),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        with Image.open(OUT_DIR / image_name) as img:
            tensor = transform(img.convert("RGB"))
        expected = tensor.numpy().astype("<f4")
        assert expected.shape == (3, crop, crop), expected.shape
        expected_name = f"{Path(image_name).stem}_{Path(image_name).suffix[1:]}_r{resize}_c{crop}.npy"
        np.save(OUT_DIR / expected_name, expected)
        lines.append(f"{image_name} {resize} {crop} {expected_name}")
    header = (
        f"# Generated by tools/reference/gen_preprocess_fixtures.py with Pillow {PIL.__version__},"
        f" torch {torch.__version__}, torchvision {torchvision.__version__}.\n"
        "# image resize crop expected_chw_float32_npy\n"
    )
    (OUT_DIR / "cases.txt").write_text(header + "\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in OUT_DIR.iterdir())
    print(f"wrote {len(lines)} cases to {OUT_DIR} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
