"""Readers of the official on-disk formats of fixed data sets: files in, uint8 tensors out.

- IDX (MNIST, Fashion-MNIST): LeCun's format, optionally gzipped.
- CIFAR-10/100 "python version": pickled dicts, read by an unpickler that builds nothing but
  plain containers and numpy arrays (a pickle can otherwise run any code it names).
- STL-10 binary: raw uint8 images stored column-major, read through a memory map.
- Tiny ImageNet: JPEG folders plus text files naming each image's class.

Each reader returns images as uint8 (N, C, H, W) and labels as int64 (N,) or None.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from fastclr.errors import DataError
from fastclr.data.images import decode_many, fingerprint

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


# ---- CIFAR-10/100 (python version) -----------------------------------------------------------


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes as _codecs.encode(text, "latin1") under protocols 0-2
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# The only callables a CIFAR batch needs: numpy's array reconstruction (numpy 1.x pickles, as
# in the official files, name numpy.core; numpy 2 names numpy._core) and its dtype.
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that resolves no global except numpy's array and dtype constructors.

    pickle's REDUCE/BUILD opcodes can only call what find_class returns, so a file that asks
    for os.system, builtins.eval or anything else stops here with UnpicklingError.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id")


def load_pickle(path: Path):
    """Unpickle a data file safely (bytes keys kept as bytes, as the Python 2 files need)."""
    try:
        raw = path.read_bytes()
        return _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"refusing to unpickle {path}: {e} (a data batch holds only arrays, "
                        "lists and strings; this file is damaged or not what it claims)") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle makes numpy's array rebuilding
        # raise nearly anything (SystemError, OverflowError, MemoryError... found by
        # tests/test_properties.py); every one of them means "not a readable data batch"
        raise DataError(f"cannot read {path} as a pickled data batch ({type(e).__name__})") from None


def read_cifar(root: Path, files: list[str], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR batches -> uint8 (N, 3, 32, 32), int64 (N,).

    Each row of b'data' is 3072 bytes: the 1024 red values of the 32x32 image in row-major
    order, then green, then blue (Krizhevsky's description on the data set page), so a plain
    reshape gives (N, C, H, W).
    """
    images, labels = [], []
    for name in files:
        batch = load_pickle(root / name)
        data = batch.get(b"data") if isinstance(batch, dict) else None
        got = batch.get(label_key) if isinstance(batch, dict) else None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072 or got is None or len(got) != len(data):
            raise DataError(f"{root / name} is not a CIFAR batch (need {label_key!r} and a "
                            "uint8 (N, 3072) b'data' array)")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(got, dtype=np.int64)))
    return torch.cat(images), torch.cat(labels)


def read_cifar_names(path: Path, key: bytes) -> list[str] | None:
    """Class names from a CIFAR meta file, or None if it is absent."""
    if not path.is_file():
        return None
    meta = load_pickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


# ---- STL-10 (binary) -----------------------------------------------------------------------

STL_SIDE = 96


def read_stl10_images(path: Path, chunk: int = 4096) -> torch.Tensor:
    """An STL-10 *_X.bin file -> uint8 (N, 3, 96, 96).

    The file is N images of 3 x 96 x 96 bytes, each channel stored column-major (the first 96
    bytes are the first column of red). The file is memory-mapped and transposed chunk by chunk
    into one tensor, so the 2.7 GB unlabeled split costs its own size in memory, not twice.
    """
    per_image = 3 * STL_SIDE * STL_SIDE
    size = path.stat().st_size
    if size == 0 or size % per_image:
        raise DataError(f"{path} holds {size} bytes, not a whole number of 96x96x3 images "
                        "(truncated or not an STL-10 file)")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, STL_SIDE, STL_SIDE)
    out = torch.empty(len(raw), 3, STL_SIDE, STL_SIDE, dtype=torch.uint8)
    for i in range(0, len(raw), chunk):
        # (n, C, W, H) on disk -> (n, C, H, W)
        out[i: i + chunk] = torch.from_numpy(np.ascontiguousarray(raw[i: i + chunk]
                                                                  .transpose(0, 1, 3, 2)))
    del raw
    return out


def read_stl10_labels(path: Path, count: int) -> torch.Tensor:
    """An STL-10 *_y.bin file (one byte per image, classes 1..10) -> int64 (N,) in 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count or labels.min(initial=1) < 1 or labels.max(initial=1) > 10:
        raise DataError(f"{path} does not hold {count} labels in 1..10 (damaged STL-10 file)")
    return torch.from_numpy(labels - 1)


# ---- Tiny ImageNet -------------------------------------------------------------------------

TINY_SIDE = 64


def tiny_imagenet_listing(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, labels, wnids) of a Tiny ImageNet split, as its text files describe it.

    train: train/<wnid>/images/*.JPEG; val: val/images/<file> with the class of each file in
    val/val_annotations.txt (tab-separated: file, wnid, box). Labels index wnids.txt.
    """
    wnids = (root / "wnids.txt").read_text().split()
    label_of = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for i, wnid in enumerate(wnids):
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataError(f"{folder} is missing (incomplete Tiny ImageNet)")
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in (".jpeg", ".jpg") and not p.name.startswith("."):
                    paths.append(p)
                    labels.append(i)
    else:
        for n, line in enumerate((root / "val" / "val_annotations.txt").read_text().splitlines()):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in label_of:
                raise DataError(f"{root / 'val' / 'val_annotations.txt'} line {n + 1}: "
                                "expected '<file>\\t<wnid>...' with a wnid from wnids.txt")
            paths.append(root / "val" / "images" / fields[0])
            labels.append(label_of[fields[1]])
    return paths, labels, wnids


def read_tiny_imagenet(root: Path, split: str):
    """Tiny ImageNet split -> (uint8 (N, 3, 64, 64), int64 (N,), wnids, fingerprint, skipped).

    Grayscale JPEGs (a few hundred in the official train split) become RGB; a file that does not
    decode is skipped and reported rather than failing the whole set.
    """
    paths, labels, wnids = tiny_imagenet_listing(root, split)
    entries = []
    for p in paths:
        try:
            entries.append((p.relative_to(root).as_posix(), p.stat().st_size))
        except OSError:
            entries.append((p.relative_to(root).as_posix(), -1))
    images, kept, failures = decode_many(paths, TINY_SIDE)
    labels = torch.tensor(labels, dtype=torch.int64)[kept]
    return images, labels, wnids, fingerprint(entries), failures
