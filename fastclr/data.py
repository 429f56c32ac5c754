"""Data sets by name, read from their official on-disk formats, and what a run pretrains on.

Two kinds of data set (DESIGN: data flow):

- Fixed-format sets (MNIST, Fashion-MNIST, CIFAR-10/100, STL-10, Tiny ImageNet) live whole in
  memory as uint8 (N, C, H, W), moved once to the training device, so a step never touches the
  CPU for data. The largest, STL-10's 105k pretraining images at 96 px, is 2.9 GB.
- Folder sets (`imagenet`, `imagefolder:PATH`, `folder:PATH`) are always streamed: the run
  holds an index of paths, and DataLoader workers decode and crop each file every epoch (see
  batches.StreamingBatches). A folder's size and its images' sizes are unknown in advance, so
  holding it in memory would mean fixing one crop per image for the whole run and decoding the
  entire folder before the first step; streaming keeps memory bounded for any folder and
  draws a fresh crop from the full file every epoch. Evaluation, which needs no new crop per
  epoch, decodes a labeled folder once at the training resolution (`load_split`).

Nothing is fetched from a network unless the user asks for it with `download=True`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fastclr.batches import InMemoryBatches, StreamingBatches
from fastclr.errors import DataError
from fastclr.formats import read_idx  # noqa: F401  (public: fastclr.data.read_idx)
from fastclr.images import FolderIndex, decode_many, fingerprint

CACHE_DIR = Path(os.environ.get("FASTCLR_CACHE", Path.home() / ".cache" / "fastclr"))

# Streamed sets are normalised with the ImageNet statistics (torchvision's constants) instead
# of statistics measured on the folder: they are exact for ImageNet, close for photos in
# general, cost no decoding at start-up, and the encoder's first BatchNorm absorbs any
# remaining per-channel offset and scale.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) with optional int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None = None
    name: str = ""
    source: str = ""
    fingerprint: str = ""  # sha256 of the files read (see images.fingerprint)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not read
    paths: list[str] | None = None  # the file of each image, for sets read from files

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        labels = None if self.labels is None else self.labels[index]
        paths = None if self.paths is None else [self.paths[i] for i in index.tolist()]
        return ImageSet(self.images[index], labels, self.classes, self.name, self.source,
                        self.fingerprint, self.skipped, paths)


@dataclass
class DatasetSpec:
    """How to find, read and (where a network exists) download one named data set.

    A fixed-format set has `read(root, split)` -> ImageSet; a folder set has
    `index(root, split)` -> FolderIndex and is streamed. `files` names what must exist in a
    directory (files or folders) for it to hold a split; `pretrain` names the split(s)
    pretraining uses; `train`/`test` the labeled splits evaluation uses. `root` pins a folder
    set given by path (folder:PATH), which --data-dir does not move; `size` is the side streamed
    images are cropped to when the config sets no image_size.
    """

    name: str
    read: Callable[[Path, str], ImageSet] | None
    files: Callable[[str], list[str]]
    how_to_get: str
    pretrain: tuple[str, ...] = ("train",)
    train: str = "train"
    test: str = "test"
    search: tuple[str, ...] = ()
    download: Callable[[Path], None] | None = None
    splits: tuple[str, ...] = ("train", "test")
    index: Callable[[Path, str], FolderIndex] | None = None
    labeled: bool = True
    size: int | None = None
    root: Path | None = None

    @property
    def streamed(self) -> bool:
        return self.index is not None


DATASETS: dict[str, DatasetSpec] = {}
# "folder" -> function(name, path) -> DatasetSpec, for --data folder:PATH and the like
PATH_KINDS: dict[str, Callable[[str, Path], DatasetSpec]] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered name, or of `folder:PATH` / `imagefolder:PATH`."""
    kind, sep, path = name.partition(":")
    if sep and kind in PATH_KINDS:
        if not path:
            raise DataError(f"{kind}: needs a path, as in {kind}:/data/photos")
        return PATH_KINDS[kind](name, Path(path).expanduser().absolute())
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(list_datasets())}, "
                        "or folder:PATH for a folder of images, imagefolder:PATH for class "
                        "folders (see `fastclr data`)")
    return DATASETS[name]


def is_labeled(name: str) -> bool:
    return get_spec(name).labeled


def candidate_roots(spec: DatasetSpec, data_dir: str | Path | None) -> list[Path]:
    """The directories searched for the data set's files, in order."""
    if spec.root is not None:
        return [spec.root]
    relative = [s for s in spec.search if not Path(s).is_absolute()]
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        return [base, *(base / s for s in relative), base / spec.name,
                *(base / spec.name / s for s in relative)]
    cache = CACHE_DIR / spec.name
    return [*(Path(s) for s in spec.search if Path(s).is_absolute()), cache,
            *(cache / s for s in relative)]


def find_root(spec: DatasetSpec, split: str, data_dir: str | Path | None) -> Path | None:
    """The first candidate directory that holds everything the split needs."""
    wanted = spec.files(split)
    for root in candidate_roots(spec, data_dir):
        if root.is_dir() and all(_exists_maybe_gz(root / f) for f in wanted):
            return root
    return None


def _exists_maybe_gz(path: Path) -> bool:
    return path.exists() or path.with_name(path.name + ".gz").is_file()


def _locate(spec: DatasetSpec, split: str, data_dir, download: bool) -> Path:
    if split not in spec.splits:
        raise DataError(f"{spec.name} has no split {split!r}; it has {', '.join(spec.splits)}")
    root = find_root(spec, split, data_dir)
    if root is None and download and spec.root is None:
        if spec.download is None:
            raise DataError(f"{spec.name} cannot be downloaded automatically. {spec.how_to_get}")
        target = Path(data_dir).expanduser() if data_dir else CACHE_DIR / spec.name
        try:
            spec.download(target)
        except Exception as e:  # any network or disk failure: one clear line
            raise DataError(f"downloading {spec.name} to {target} failed ({type(e).__name__}: "
                            f"{e}). {spec.how_to_get}") from None
        root = find_root(spec, split, target)
    if root is None:
        if spec.root is not None:
            raise DataError(f"{spec.name}: {spec.root} is not a folder. {spec.how_to_get}")
        where = f"in {data_dir}" if data_dir else "in the usual places"
        raise DataError(f"{spec.name} ({split} split) not found {where}. {spec.how_to_get}")
    return root


def _files_fingerprint(root: Path, names: list[str]) -> list[tuple[str, int]]:
    """(name, size) of a fixed-format set's files, for `images.fingerprint`."""
    entries = []
    for name in names:
        path = root / name
        if not path.is_file():
            path = path.with_name(path.name + ".gz")
        entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return entries


def _index(spec: DatasetSpec, root: Path, split: str) -> FolderIndex:
    index = spec.index(root, split)
    if len(index) == 0:
        some = "; ".join(f"{p} ({why})" for p, why in index.skipped[:3])
        more = f": {some}{' ...' if len(index.skipped) > 3 else ''}" if some else ""
        raise DataError(f"{spec.name}: no readable image in {index.root} ({len(index.skipped)} "
                        f"unreadable{more}; {index.ignored} other files ignored). "
                        f"{spec.how_to_get}")
    return index


def _sample(n: int, sample: int | None) -> torch.Tensor | None:
    """A fixed random subset of at most `sample` of n rows (seed 0), or None for all."""
    if sample is None or sample >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:sample]


def _memory_budget() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def load_split(name: str, split: str, data_dir: str | Path | None = None,
               download: bool = False, size: int | None = None,
               sample: int | None = None) -> ImageSet:
    """Read one split of a data set into memory; a missing one is a DataError saying how to get it.

    Fixed-format sets come at their stored size. A folder set's images are decoded once as
    size x size (the centred largest square, resized; default: the spec's size), the view
    evaluation feeds the encoder. `sample` keeps a fixed random subset of at most that many
    images (decoding only those, for a folder set).
    """
    spec = get_spec(name)
    root = _locate(spec, split, data_dir, download)
    if spec.streamed:
        index = _index(spec, root, split)
        side = size or spec.size
        rows = _sample(len(index), sample)
        rows = range(len(index)) if rows is None else rows.tolist()
        if len(rows) * 3 * side * side > _memory_budget():
            gib = len(rows) * 3 * side * side / 2**30
            raise DataError(f"{name} ({split}) would take {gib:.0f} GiB decoded at {side} px, "
                            "more than half of this machine's memory (evaluating a split this "
                            "large needs features streamed from files, not supported yet)")
        files = [index.path(i) for i in rows]
        images, kept, failures = decode_many(files, side)
        labels = None
        if index.labels is not None:
            labels = torch.from_numpy(index.labels[list(rows)])[kept]
        paths = [str(f) for f, ok in zip(files, kept.tolist()) if ok]
        result = ImageSet(images, labels, index.classes, name, str(root), index.fingerprint,
                          index.skipped + failures, paths)
    else:
        result = spec.read(root, split)
        result.name, result.source = name, str(root)
        if not result.fingerprint:
            result.fingerprint = fingerprint(_files_fingerprint(root, spec.files(split)))
        rows = _sample(len(result), sample)
        if rows is not None:
            result = result.subset(rows)
    if len(result) == 0:
        raise DataError(f"{name} ({split} split) in {root} holds no images")
    return result


# ---- what pretraining reads ------------------------------------------------------------------


@dataclass
class Pretrain:
    """The images a run pretrains on, described without decoding a folder.

    Exactly one of `images` (uint8 (N, C, H, W), in memory) and `index` (files, streamed) is
    set; `shape` is (C, S, S) of what the batches yield; `mean`/`std` are the per-channel input
    statistics the encoder normalises with.
    """

    name: str
    source: str
    count: int
    shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    fingerprint: str
    images: torch.Tensor | None = None
    index: FolderIndex | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    labels: torch.Tensor | None = None  # (N,) int64, for the online probe; None if unlabeled

    def __len__(self) -> int:
        return self.count

    @property
    def streamed(self) -> bool:
        return self.index is not None

    @classmethod
    def from_images(cls, images: torch.Tensor, name: str = "", source: str = "",
                    fingerprint: str = "", skipped=(), labels=None) -> "Pretrain":
        """uint8 (N, C, H, W) images held in memory, normalised with their own statistics."""
        mean, std = channel_stats(images)
        return cls(name, source, len(images), tuple(images.shape[1:]), mean, std, fingerprint,
                   images=images, skipped=list(skipped), labels=labels)


def load_pretrain(name: str, data_dir=None, download: bool = False,
                  image_size: int | None = None) -> Pretrain:
    """All images pretraining may use: fixed sets loaded, folders indexed. Labels are kept
    (for the online probe only) when pretraining reads one labeled split."""
    spec = get_spec(name)
    if spec.streamed:
        if len(spec.pretrain) != 1:
            raise ValueError(f"{name}: a streamed set pretrains on one split")
        root = _locate(spec, spec.pretrain[0], data_dir, download)
        index = _index(spec, root, spec.pretrain[0])
        side = image_size or spec.size
        return Pretrain(name, str(index.root), len(index), (3, side, side), IMAGENET_MEAN,
                        IMAGENET_STD, index.fingerprint, index=index, skipped=index.skipped)
    parts = [load_split(name, s, data_dir, download) for s in spec.pretrain]
    source, skipped = parts[0].source, [x for p in parts for x in p.skipped]
    labels = None
    if len(parts) == 1:
        images, fp, labels = parts[0].images, parts[0].fingerprint, parts[0].labels
    else:  # e.g. STL-10: unlabeled + train; the hash covers each split's files
        fp = fingerprint((f"{s}:{p.fingerprint}", len(p)) for s, p in zip(spec.pretrain, parts))
        images = torch.cat([p.images for p in parts])
    del parts  # after a cat, free the pieces (STL-10: 2.9 GB)
    return Pretrain.from_images(images, name, source, fp, skipped, labels)


def pretrain_batches(pretrain: Pretrain, batch_size: int, seed: int, rank: int = 0,
                     world_size: int = 1, device: torch.device | str = "cpu",
                     num_workers: int = 2) -> InMemoryBatches | StreamingBatches:
    """The batch source of a run: images moved to the device once, or files streamed."""
    if pretrain.streamed:
        return StreamingBatches(pretrain.index, pretrain.shape[-1], batch_size, seed, rank,
                                world_size, device, num_workers)
    return InMemoryBatches(pretrain.images.to(device), batch_size, seed, rank, world_size)


def channel_stats(images: torch.Tensor, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (from at most max_images)."""
    sample = images[:max_images].float().div_(255)
    dims = (0, 2, 3)
    return sample.mean(dims).tolist(), sample.std(dims).clamp_min(1e-3).tolist()


def describe(data_dir: str | Path | None = None) -> list[dict]:
    """For `fastclr data`: each registered set, how it is held, where it is looked for, found?"""
    rows = []
    for name in list_datasets():
        spec = DATASETS[name]
        found = {s: find_root(spec, s, data_dir) for s in spec.splits}
        rows.append({"name": name, "labeled": spec.labeled,
                     "held": "streamed" if spec.streamed else "in memory",
                     "found": {s: str(r) for s, r in found.items() if r is not None},
                     "missing": [s for s, r in found.items() if r is None],
                     "looked_in": [str(p) for p in candidate_roots(spec, data_dir)],
                     "how_to_get": spec.how_to_get})
    return rows


from fastclr import datasets as _builtin  # noqa: E402,F401  registers the built-in data sets
