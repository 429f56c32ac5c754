"""Data sets by name, read from their official on-disk formats, and the batches a run draws.

Small data sets live whole in memory as uint8 (N, C, H, W), on the training device, so a step
never touches the CPU for data (DESIGN: data flow). Nothing is fetched from a network unless
the user asks for it with `download=True`.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from fastclr.errors import DataError

CACHE_DIR = Path(os.environ.get("FASTCLR_CACHE", Path.home() / ".cache" / "fastclr"))


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) with optional int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None = None
    name: str = ""
    source: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, self.classes, self.name, self.source)


@dataclass
class DatasetSpec:
    """How to find, read and (where a network exists) download one named data set.

    `read(root, split)` returns an ImageSet from a directory that holds the files; `files`
    names what must exist there for a split (used to find the directory); `pretrain` names the
    split(s) pretraining uses; `train`/`test` the labeled splits evaluation uses.
    """

    name: str
    read: Callable[[Path, str], ImageSet]
    files: Callable[[str], list[str]]
    how_to_get: str
    pretrain: tuple[str, ...] = ("train",)
    train: str = "train"
    test: str = "test"
    search: tuple[str, ...] = ()
    download: Callable[[Path], None] | None = None
    splits: tuple[str, ...] = ("train", "test")


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(list_datasets())}, "
                        "or folder:PATH for a folder of images")
    return DATASETS[name]


def find_root(spec: DatasetSpec, split: str, data_dir: str | Path | None) -> Path | None:
    """The first candidate directory that holds every file the split needs."""
    wanted = spec.files(split)
    relative = [s for s in spec.search if not Path(s).is_absolute()]
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        candidates = [base, base / spec.name, *(base / s for s in relative)]
    else:
        cache = CACHE_DIR / spec.name
        candidates = [*(Path(s) for s in spec.search if Path(s).is_absolute()), cache,
                      *(cache / s for s in relative)]
    for root in candidates:
        if all(_exists_maybe_gz(root / f) for f in wanted):
            return root
    return None


def _exists_maybe_gz(path: Path) -> bool:
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def load_split(name: str, split: str, data_dir: str | Path | None = None,
               download: bool = False) -> ImageSet:
    """Read one split of a named data set; a missing one is a DataError that says how to get it."""
    spec = get_spec(name)
    if split not in spec.splits:
        raise DataError(f"{name} has no split {split!r}; it has {', '.join(spec.splits)}")
    root = find_root(spec, split, data_dir)
    if root is None and download:
        if spec.download is None:
            raise DataError(f"{name} cannot be downloaded automatically. {spec.how_to_get}")
        target = Path(data_dir).expanduser() if data_dir else CACHE_DIR / spec.name
        try:
            spec.download(target)
        except Exception as e:  # any network or disk failure: one clear line
            raise DataError(f"downloading {name} to {target} failed ({type(e).__name__}: {e}). "
                            f"{spec.how_to_get}") from None
        root = find_root(spec, split, target)
    if root is None:
        where = f"in {data_dir}" if data_dir else "in the usual places"
        raise DataError(f"{name} ({split} split) not found {where}. {spec.how_to_get}")
    images = spec.read(root, split)
    images.name, images.source = name, str(root)
    if len(images) == 0:
        raise DataError(f"{name} ({split} split) in {root} holds no images")
    return images


def load_pretrain(name: str, data_dir=None, download: bool = False) -> ImageSet:
    """All images pretraining may use (labels dropped when splits are concatenated)."""
    spec = get_spec(name)
    parts = [load_split(name, s, data_dir, download) for s in spec.pretrain]
    if len(parts) == 1:
        return parts[0]
    return ImageSet(torch.cat([p.images for p in parts]), None, parts[0].classes, name,
                    parts[0].source)


# ---- IDX (MNIST, Fashion-MNIST) ------------------------------------------------------------

_IDX_TYPES = {0x08: torch.uint8}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally .gz) as in LeCun's MNIST format description."""
    if not path.is_file():
        path = path.with_name(path.name + ".gz")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} has a truncated IDX header")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for s in shape:
        count *= s
    if len(raw) - header != count:
        raise DataError(f"{path} holds {len(raw) - header} bytes of data; its header says "
                        f"{count} (truncated or corrupt file)")
    if count == 0:  # frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _idx_reader(prefixes: dict[str, str], classes: list[str]):
    def read(root: Path, split: str) -> ImageSet:
        p = prefixes[split]
        images = read_idx(root / f"{p}-images-idx3-ubyte")
        labels = read_idx(root / f"{p}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root}: images {tuple(images.shape)} and labels "
                            f"{tuple(labels.shape)} do not match")
        if int(labels.max()) >= len(classes):
            raise DataError(f"{root}: label {int(labels.max())} out of range")
        return ImageSet(images.unsqueeze(1).contiguous(), labels.long(), classes)
    return read


def _idx_files(prefixes: dict[str, str]):
    return lambda split: [f"{prefixes[split]}-images-idx3-ubyte",
                          f"{prefixes[split]}-labels-idx1-ubyte"]


def _torchvision_download(cls_name: str):
    def download(target: Path) -> None:
        import torchvision.datasets as tvd
        getattr(tvd, cls_name)(root=str(target), download=True)
    return download


_MNIST_PREFIX = {"train": "train", "test": "t10k"}

register(DatasetSpec(
    name="fashion-mnist",
    read=_idx_reader(_MNIST_PREFIX, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    files=_idx_files(_MNIST_PREFIX),
    how_to_get=("Install it with `sudo apt-get install dataset-fashion-mnist` (files land in "
                "/usr/share/datasets/fashion-mnist), pass --data-dir DIR holding the four IDX "
                "files, or add --download where a network exists."),
    search=("/usr/share/datasets/fashion-mnist", "FashionMNIST/raw", "fashion-mnist"),
    download=_torchvision_download("FashionMNIST"),
))

register(DatasetSpec(
    name="mnist",
    read=_idx_reader(_MNIST_PREFIX, [str(i) for i in range(10)]),
    files=_idx_files(_MNIST_PREFIX),
    how_to_get=("Pass --data-dir DIR holding the four MNIST IDX files (train-images-idx3-ubyte "
                "...), or add --download where a network exists."),
    search=("/usr/share/datasets/mnist", "MNIST/raw", "mnist"),
    download=_torchvision_download("MNIST"),
))


# ---- batches ---------------------------------------------------------------------------------


def channel_stats(images: torch.Tensor, max_images: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (from at most max_images)."""
    sample = images[:max_images].float().div_(255)
    dims = (0, 2, 3)
    return sample.mean(dims).tolist(), sample.std(dims).clamp_min(1e-3).tolist()


class InMemoryBatches:
    """Epochs of uint8 batches from images held on the training device.

    The global batch is cut from one permutation per epoch (seeded by seed and epoch, so a
    resumed run sees the same order), and each of `world_size` processes takes its own slice:
    together the processes see exactly what one process with the global batch would.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise DataError(f"batch_size {batch_size} is not divisible by the {world_size} "
                            "processes")
        if len(images) < batch_size:
            raise DataError(f"the data set has {len(images)} images, fewer than one batch of "
                            f"{batch_size}")
        self.images = images
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.seed, self.rank = seed, rank
        self.steps_per_epoch = len(images) // batch_size  # the last partial batch is dropped

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=g)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """uint8 (B / world_size, C, H, W) batches of `epoch`, from batch number `start` on."""
        order = self.order(epoch).to(self.images.device)
        for i in range(start, self.steps_per_epoch):
            begin = i * self.batch_size + self.rank * self.local
            yield self.images[order[begin: begin + self.local]]
