"""The data set registry: what a named set is (DatasetSpec), where its files are looked for,
and how a missing one is reported (with the way to get it). The built-in sets are declared in
catalog.py; `folder:PATH` and `imagefolder:PATH` are path kinds."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from fastclr.data.images import FolderIndex
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
    images are cropped to when the config sets no image_size. `check(root, split)`, if given,
    looks at a streamed split's layout without reading its images (class folders that agree,
    some image file), so that a run refuses a split it will need before it trains.
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
    check: Callable[[Path, str], None] | None = None

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


def locate(spec: DatasetSpec, split: str, data_dir, download: bool) -> Path:
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
        if spec.root is not None and not spec.root.is_dir():
            raise DataError(f"{spec.name}: {spec.root} is not a folder. {spec.how_to_get}")
        if spec.root is not None:
            missing = [f for f in spec.files(split) if not _exists_maybe_gz(spec.root / f)]
            raise DataError(f"{spec.name}: {spec.root} has no {', '.join(missing)}/ folder. "
                            f"{spec.how_to_get}")
        where = f"in {data_dir}" if data_dir else "in the usual places"
        raise DataError(f"{spec.name} ({split} split) not found {where}. {spec.how_to_get}")
    return root


def files_fingerprint(root: Path, names: list[str]) -> list[tuple[str, int]]:
    """(name, size) of a fixed-format set's files, for `images.fingerprint`."""
    entries = []
    for name in names:
        path = root / name
        if not path.is_file():
            path = path.with_name(path.name + ".gz")
        entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return entries


def index_split(spec: DatasetSpec, root: Path, split: str) -> FolderIndex:
    index = spec.index(root, split)
    if len(index) == 0:
        some = "; ".join(f"{p} ({why})" for p, why in index.skipped[:3])
        more = f": {some}{' ...' if len(index.skipped) > 3 else ''}" if some else ""
        raise DataError(f"{spec.name}: no readable image in {index.root} ({len(index.skipped)} "
                        f"unreadable{more}; {index.ignored} other files ignored). "
                        f"{spec.how_to_get}")
    return index


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
