"""Loading: a split into memory (ImageSet), and what a run pretrains on (Pretrain) with its
batch source."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastclr.data.batches import InMemoryBatches, StreamingBatches
from fastclr.data.images import FolderIndex, decode_many, fingerprint
from fastclr.data.registry import ImageSet, files_fingerprint, get_spec, index_split, locate
from fastclr.errors import DataError

log = logging.getLogger("fastclr")

# Streamed sets are normalised with the ImageNet statistics (torchvision's constants) instead
# of statistics measured on the folder: they are exact for ImageNet, close for photos in
# general, cost no decoding at start-up, and the encoder's first BatchNorm absorbs any
# remaining per-channel offset and scale.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


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
    root = locate(spec, split, data_dir, download)
    if spec.streamed:
        index = index_split(spec, root, split)
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
            result.fingerprint = fingerprint(files_fingerprint(root, spec.files(split)))
        rows = _sample(len(result), sample)
        if rows is not None:
            result = result.subset(rows)
    if len(result) == 0:
        raise DataError(f"{name} ({split} split) in {root} holds no images")
    return result


def check_evaluation_data(name: str, data_dir=None, download: bool = False) -> None:
    """Find the labeled splits an evaluation of `name` reads, without loading them: a run
    calls this before its first step, so that a missing split, or class folders that disagree,
    is refused before pretraining rather than after it. Unlabeled sets are not evaluated."""
    spec = get_spec(name)
    if not spec.labeled:
        return
    for split in dict.fromkeys((spec.train, spec.test)):
        root = locate(spec, split, data_dir, download)
        if spec.check is not None:
            spec.check(root, split)


# (source, file) pairs already named in this process: each unreadable file is named once,
# whether training, its kNN monitor, tracking or the final evaluation met it first
_NAMED: set[tuple[str, str]] = set()


def name_skipped(name: str, split: str, source: str, skipped: list[tuple[str, str]],
                 shown: int = 50) -> list[tuple[str, str]]:
    """Log the files of one split that could not be read and were left out, each file once
    per process (the first `shown` by name, then a count); returns those newly named."""
    new = [(p, why) for p, why in skipped if (source, p) not in _NAMED]
    if not new:
        return []
    _NAMED.update((source, p) for p, _ in new)
    log.warning("%s (%s split): left out %d unreadable files of %s:", name, split, len(new),
                source)
    for path, why in new[:shown]:
        log.warning("  skipped %s (%s)", path, why)
    if len(new) > shown:
        log.warning("  ... and %d more", len(new) - shown)
    return new


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
        root = locate(spec, spec.pretrain[0], data_dir, download)
        index = index_split(spec, root, spec.pretrain[0])
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
                     num_workers: int = 2, crops=None) -> InMemoryBatches | StreamingBatches:
    """The batch source of a run: images moved to the device once, or files streamed (with
    `crops`, a fastclr.augment CropBoxes, as the views' crops from the full-resolution files;
    see StreamingBatches)."""
    if pretrain.streamed:
        return StreamingBatches(pretrain.index, pretrain.shape[-1], batch_size, seed, rank,
                                world_size, device, num_workers, crops)
    return InMemoryBatches(pretrain.images.to(device), batch_size, seed, rank, world_size)


def channel_stats(images: torch.Tensor, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (from at most max_images)."""
    sample = images[:max_images].float().div_(255)
    dims = (0, 2, 3)
    return sample.mean(dims).tolist(), sample.std(dims).clamp_min(1e-3).tolist()
