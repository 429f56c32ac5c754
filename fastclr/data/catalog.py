"""The data sets fastclr knows by name, and the `folder:` / `imagefolder:` path kinds.

Each entry says where the set's files are looked for, what must be there, how to read them
(formats.py, images.py) and how to get them; data.py does the finding and loading. Importing
fastclr.data imports this module, which registers everything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastclr.data import formats
from fastclr.data.registry import PATH_KINDS, DatasetSpec, ImageSet, register
from fastclr.errors import DataError
from fastclr.data.formats import read_idx
from fastclr.data.images import (IMAGE_EXTENSIONS, FolderIndex, class_folders,
                                  has_image_file, index_folder)


def _torchvision_download(cls_name: str):
    def download(target: Path) -> None:
        import torchvision.datasets as tvd
        getattr(tvd, cls_name)(root=str(target), download=True)
    return download


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


_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                    "ship", "truck"]


def _read_cifar10(root: Path, split: str) -> ImageSet:
    images, labels = formats.read_cifar(root, _cifar10_files(split), b"labels")
    classes = formats.read_cifar_names(root / "batches.meta", b"label_names") or _CIFAR10_CLASSES
    _check_labels(root, labels, len(classes))
    return ImageSet(images, labels, classes)


def _cifar10_files(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _read_cifar100(root: Path, split: str) -> ImageSet:
    images, labels = formats.read_cifar(root, [split], b"fine_labels")
    classes = formats.read_cifar_names(root / "meta", b"fine_label_names") or \
        [str(i) for i in range(100)]
    _check_labels(root, labels, len(classes))
    return ImageSet(images, labels, classes)


def _check_labels(root: Path, labels: torch.Tensor, num_classes: int) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{root}: labels outside 0..{num_classes - 1} (damaged files)")


_CIFAR_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

register(DatasetSpec(
    name="cifar10",
    read=_read_cifar10,
    files=_cifar10_files,
    how_to_get=(f"Download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
                f"{_CIFAR_PAGE}, extract it into DIR (it makes DIR/cifar-10-batches-py) and "
                "pass --data-dir DIR, or add --download where a network exists."),
    search=("cifar-10-batches-py",),
    download=_torchvision_download("CIFAR10"),
))

register(DatasetSpec(
    name="cifar100",
    read=_read_cifar100,
    files=lambda split: [split],
    how_to_get=(f"Download the CIFAR-100 python version (cifar-100-python.tar.gz) from "
                f"{_CIFAR_PAGE}, extract it into DIR (it makes DIR/cifar-100-python) and "
                "pass --data-dir DIR, or add --download where a network exists."),
    search=("cifar-100-python",),
    download=_torchvision_download("CIFAR100"),
))


_STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                  "truck"]


def _read_stl10(root: Path, split: str) -> ImageSet:
    images = formats.read_stl10_images(root / f"{split}_X.bin")
    labels = None
    if split != "unlabeled":
        labels = formats.read_stl10_labels(root / f"{split}_y.bin", len(images))
    names = root / "class_names.txt"
    classes = names.read_text().split() if names.is_file() else _STL10_CLASSES
    return ImageSet(images, labels, classes)


register(DatasetSpec(
    name="stl10",
    read=_read_stl10,
    files=lambda split: [f"{split}_X.bin"] + ([] if split == "unlabeled" else [f"{split}_y.bin"]),
    how_to_get=("Download the STL-10 binary files (stl10_binary.tar.gz) from "
                "https://cs.stanford.edu/~acoates/stl10/, extract them into DIR (it makes "
                "DIR/stl10_binary) and pass --data-dir DIR, or add --download where a network "
                "exists."),
    # SimCLR has no STL-10 experiments; the usual STL-10 protocol (the reason the set has an
    # unlabeled split) pretrains on the 100k unlabeled images plus the 5k labeled training
    # images, and evaluates train -> test, as here.
    pretrain=("unlabeled", "train"),
    search=("stl10_binary",),
    download=_torchvision_download("STL10"),
    splits=("train", "test", "unlabeled"),
))


def _read_tiny(root: Path, split: str) -> ImageSet:
    images, labels, wnids, fp, failures = formats.read_tiny_imagenet(root, split)
    return ImageSet(images, labels, wnids, fingerprint=fp, skipped=failures)


register(DatasetSpec(
    name="tiny-imagenet",
    read=_read_tiny,
    files=lambda split: ["wnids.txt", "train"] if split == "train" else
    ["wnids.txt", "val/val_annotations.txt", "val/images"],
    how_to_get=("Download tiny-imagenet-200.zip (http://cs231n.stanford.edu/"
                "tiny-imagenet-200.zip), unzip it into DIR (it makes DIR/tiny-imagenet-200) "
                "and pass --data-dir DIR."),
    test="val",
    search=("tiny-imagenet-200",),
    splits=("train", "val"),
))


def _split_classes(root: Path, split: str) -> list[str]:
    """The classes of root/<split>/<class>/**: the folders of root/train, shared by every split
    (a split may lack some of them, never have others)."""
    top, train = root / split, root / "train"
    if not top.is_dir():
        raise DataError(f"{top} is not a folder: images go in {top}/<class>/*")
    classes = class_folders(train if train.is_dir() else top)
    if not classes:
        where = train if train.is_dir() else top
        raise DataError(f"{where} has no class folders: images go in {where}/<class>/* (a "
                        "folder of images without classes can be read as --data folder:PATH)")
    extra = sorted(set(class_folders(top)) - set(classes))
    if extra:
        raise DataError(f"{top} has class folders that {train} lacks: "
                        f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return classes


def _index_class_folders(root: Path, split: str) -> FolderIndex:
    """root/<split>/<class>/**, labeled by the class's position among root/train's folders."""
    return index_folder(root / split, _split_classes(root, split))


def _check_class_folders(root: Path, split: str) -> None:
    """What indexing root/<split> would refuse, found without reading an image."""
    classes = _split_classes(root, split)
    top = root / split
    if not any(has_image_file(top / c) for c in classes):
        named = ", ".join(classes[:3]) + (" ..." if len(classes) > 3 else "")
        raise DataError(f"{top} has no image file in a class folder of {root / 'train'} "
                        f"({named})")


register(DatasetSpec(
    name="imagenet",
    read=None,
    index=_index_class_folders,
    check=_check_class_folders,
    files=lambda split: [split],
    how_to_get=("ImageNet (ILSVRC-2012) is not downloadable without registration at "
                "https://image-net.org; arrange it in class folders as DIR/train/<wnid>/*.JPEG "
                "and DIR/val/<wnid>/*.JPEG (the validation images moved into folders named by "
                "their class) and pass --data-dir DIR."),
    test="val",
    search=("imagenet", "ILSVRC2012"),
    splits=("train", "val"),
    size=224,
))

_EXTS = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def _folder_spec(name: str, path: Path) -> DatasetSpec:
    return DatasetSpec(
        name=name, read=None, files=lambda split: [],
        index=lambda root, split: index_folder(root),
        how_to_get=(f"Pass --data folder:PATH with a folder of images ({_EXTS}; subfolders are "
                    "searched too)."),
        splits=("train",), test="", labeled=False, size=96, root=path)


def _imagefolder_spec(name: str, path: Path) -> DatasetSpec:
    return DatasetSpec(
        name=name, read=None, files=lambda split: [split], index=_index_class_folders,
        check=_check_class_folders,
        how_to_get=(f"imagefolder:PATH wants images ({_EXTS}) in PATH/train/<class>/* and "
                    f"PATH/val/<class>/*; for a folder of images without classes, use "
                    f"--data folder:{path}"),
        test="val", splits=("train", "val"), size=96, root=path)


PATH_KINDS.update(folder=_folder_spec, imagefolder=_imagefolder_spec)
