"""Image files as RGB uint8 pixels, and indexes of image folders (paths, never pixels).

Every image a user can point fastclr at goes through `load_rgb`, so one folder of mixed files
gives one consistent kind of tensor: EXIF orientation applied (`PIL.ImageOps.exif_transpose`),
palette and grayscale expanded to RGB, 16-bit samples scaled (not clipped) to 8 bits, and
transparency composited on white, which is what an image viewer shows (the colour under a fully
transparent pixel is arbitrary, often black, so dropping alpha would show garbage).

A folder is indexed once: its files are listed and each header is checked with PIL
(`Image.open` + `verify`, which reads no pixels), so the index of a million files costs a
directory walk and a header read each, and holds paths, not images.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from fastclr.errors import error_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# PIL's 16- and 32-bit integer grayscale modes; PIL's own convert() clips these at 255
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded PIL image as 8-bit RGB, oriented as its EXIF tag says (`img` itself is
    rotated in place; the result may be `img`)."""
    ImageOps.exif_transpose(img, in_place=True)  # a copy would cost ~3 ms per photo
    if img.mode in _WIDE_GRAY:
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))  # (H, W): L
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode one file to an RGB PIL image; raises whatever PIL raises for a bad file.

    With `min_side`, a JPEG is decoded at a reduced scale (PIL's draft mode: 1/2, 1/4 or 1/8
    in the DCT) as long as its shorter side stays >= min_side: several times faster for photos
    much larger than the training views, with no visible loss after the final resize.
    """
    with Image.open(path) as img:
        if min_side is not None and img.format == "JPEG":
            w, h = img.size
            short = min(w, h)
            if short > 2 * min_side:
                img.draft("RGB", (-(-w * min_side // short), -(-h * min_side // short)))
        img.load()
        return to_rgb(img)


def square_box(width: int, height: int, rng: np.random.Generator | None = None):
    """The largest square in a width x height image: centred, or at a uniform random offset."""
    side = min(width, height)
    if rng is None:
        x0, y0 = (width - side) // 2, (height - side) // 2
    else:
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
    return (x0, y0, x0 + side, y0 + side)


def decode_square(path: str | Path, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One file as a uint8 (size, size, 3) array: the largest square, resized to `size`.

    The square is centred when `rng` is None (evaluation: the usual "resize the shorter side,
    centre crop") and at a random offset otherwise (streamed pretraining: see batches.py).
    PIL's bilinear resize widens its filter when shrinking, so downscaling is antialiased.
    """
    img = load_rgb(path, min_side=size)
    square = img.crop(square_box(img.width, img.height, rng))  # nothing outside it bleeds in
    # reducing_gap: shrink by an integer factor with a box filter first, then resample; Pillow
    # documents 3.0 as indistinguishable from a full resample, at about half the cost
    out = square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(out)  # (S, S, 3) uint8, writable


# EXIF orientations that swap width and height (rotations by a quarter turn)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened, not yet decoded image as `to_rgb` will orient it."""
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def decode_crops(path: str | Path, size: int, boxes, interpolation: str = "bilinear",
                 out: np.ndarray | None = None) -> np.ndarray:
    """Random resized crops of one file, taken from the full-resolution image: uint8
    (k, 3, size, size), written into `out` if given.

    `boxes(height, width)` gives the k crop boxes (top, left, h, w) in the pixels of the
    oriented image, from its header, before any pixel is decoded. A JPEG is then decoded at
    the smallest DCT scale (1/2, 1/4 or 1/8, PIL's draft mode) that still leaves every box
    at least `size` pixels a side, so a crop is never resampled from fewer pixels than the
    file has for it up to the output size (at a reduced scale a box's edges round to the
    nearest decoded pixel). Each box is cropped, then resized to size x size with torch's
    antialiased bilinear (or bicubic) resize of uint8 images: the crop's edges clamp, as
    torchvision's resized crop and fastclr's own (fastclr.augment.resample) do, and it runs
    about twice as fast as PIL's.
    """
    with Image.open(path) as img:
        width, height = oriented_size(img)
        return crop_opened(img, width, height, boxes(height, width), size, interpolation, out)


def crop_opened(img: Image.Image, width: int, height: int, crops, size: int,
                interpolation: str = "bilinear", out: np.ndarray | None = None) -> np.ndarray:
    """`decode_crops` of an opened, not yet decoded image of oriented size width x height
    (`oriented_size`), with its boxes already drawn."""
    if img.format == "JPEG":
        # the largest power-of-two reduction every crop affords, at most 8
        slack = min(min(h, w) for _, _, h, w in crops) // size
        reduce = 1
        while reduce < 8 and 2 * reduce <= slack:
            reduce *= 2
        if reduce > 1:
            w, h = img.size
            img.draft("RGB", (-(-w // reduce), -(-h // reduce)))
    img.load()
    img = to_rgb(img)
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]   # (1, 3, H', W') view
    sx, sy = img.width / width, img.height / height                    # 1 unless reduced
    if out is None:
        out = np.empty((len(crops), 3, size, size), dtype=np.uint8)
    views = torch.from_numpy(out)
    for k, (top, left, h, w) in enumerate(crops):
        t0, l0 = round(top * sy), round(left * sx)
        t1, l1 = max(t0 + 1, round((top + h) * sy)), max(l0 + 1, round((left + w) * sx))
        view = F.interpolate(pixels[:, :, t0:t1, l0:l1], size=(size, size), mode=interpolation,
                             align_corners=False, antialias=True)          # (1, 3, S, S) uint8
        views[k].copy_(view[0])
    return out


def decode_many(paths: Sequence[Path], size: int, threads: int | None = None):
    """Decode files with `decode_square` (centred) into uint8 (N, 3, size, size).

    Returns (images, kept, failures): `kept` is a bool (len(paths),) mask of the files that
    decoded, `images` holds only those, `failures` lists (path, reason). PIL releases the GIL
    while it decodes and resizes, so threads give a real speed-up here.
    """
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    kept = torch.zeros(len(paths), dtype=torch.bool)

    def one(i: int):
        try:
            out[i] = torch.from_numpy(decode_square(paths[i], size)).permute(2, 0, 1)
            kept[i] = True
            return None
        except Exception as e:  # any damaged file: PIL's plugins raise many exception types
            return (str(paths[i]), error_text(e))

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        failures = [f for f in pool.map(one, range(len(paths))) if f is not None]
    return (out if bool(kept.all()) else out[kept]), kept, failures


def check_header(path: Path) -> str | None:
    """None if PIL can identify the file and parse its header; else why not.

    Reads no pixel data (a truncated image passes here and is caught when decoded)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.verify()
        return None
    except Exception as e:  # any damaged file: PIL's plugins raise many exception types
        return error_text(e)


def center_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float images -> (N, C, size, size): shorter side resized to `size`, centre crop.

    The tensor counterpart of `decode_square` without rng, used to feed evaluation images at the
    training resolution; a no-op when the images already have that size.
    """
    n, c, h, w = images.shape
    if h == w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=nh < h)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top: top + size, left: left + size]


def fingerprint(entries: Iterable[tuple[str, int]]) -> str:
    """sha256 over sorted 'relative/path<TAB>size' lines: a data set's identity in run.json."""
    h = hashlib.sha256()
    for rel, size in sorted(entries):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()


class PackedPaths:
    """A read-only list of strings stored as one byte buffer plus offsets.

    A million Python str objects would be copied page by page into every forked DataLoader
    worker as their reference counts change; two numpy arrays are shared as they are.
    """

    def __init__(self, items: Sequence[str]):
        encoded = [s.encode() for s in items]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]: self.offsets[i + 1]].tobytes().decode()


@dataclass
class FolderIndex:
    """The image files under `root`: sorted relative paths, optional int64 labels (N,)."""

    root: Path
    paths: PackedPaths
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) unreadable
    ignored: int = 0  # files without an image extension
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        return self.root / self.paths[i]


def _walk(top: Path):
    """Non-hidden files under `top`, recursively, in sorted order.

    Symlinked folders are followed (a class folder of an image folder may be a link, and so may
    any folder below it), each real folder once: a link to a folder above `top` is not
    followed (no loop, and no class folder reading its siblings), and two links to one folder
    do not index its images twice.
    """
    def key(path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:  # vanished or unreadable since it was listed
            return None
        return st.st_dev, st.st_ino

    seen = {key(p) for p in Path(os.path.realpath(top)).parents}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        here = key(dirpath)
        if here is None or here in seen:
            dirnames[:] = []
            continue
        seen.add(here)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def has_image_file(top: Path) -> bool:
    """Whether any file under `top` has an image extension (stops at the first; reads none)."""
    return any(path.suffix.lower() in IMAGE_EXTENSIONS for path in _walk(top))


def index_folder(root: Path, classes: list[str] | None = None) -> FolderIndex:
    """Index every image under `root`, checking each header once.

    With `classes`, images are read from `root/<class>/**` and labeled by the class's position
    in that list (ImageNet-style class folders); otherwise every image under root counts,
    unlabeled. Unreadable files are listed in `skipped`, never indexed.
    """
    tops = [(root / c, i) for i, c in enumerate(classes)] if classes is not None else [(root, -1)]
    found: list[tuple[str, int, int]] = []  # (relative path, size, label)
    skipped, ignored = [], 0
    for top, label in tops:
        for path in _walk(top):
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            why = check_header(path)
            if why is not None:
                skipped.append((rel, why))
                continue
            found.append((rel, path.stat().st_size, label))
    found.sort()
    labels = np.array([f[2] for f in found], dtype=np.int64) if classes is not None else None
    return FolderIndex(root, PackedPaths([f[0] for f in found]), labels, classes, skipped,
                       ignored, fingerprint((f[0], f[1]) for f in found))


def class_folders(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `root`: the classes of an image folder."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
