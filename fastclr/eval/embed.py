"""`fastclr embed`: the features h of a data set, saved for use anywhere else.

Writes OUT.npy, float32 (N, feat_dim), row p = h of item p, and OUT.index.jsonl, one JSON
object per row: position, split, index within the split, label and class name (null when
unlabeled) and source path (null unless the data set records one per image). h is what the
paper recommends for downstream use (section 4.2), not the head's z.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastclr.checkpoint import atomic_write
from fastclr.data import ImageSet, get_spec, load_split
from fastclr.data.load import name_skipped
from fastclr.errors import DataError
from fastclr.eval.features import extract_features, frozen, require_channels
from fastclr.paths import embedding_paths


def embedding_parts(data: str, split: str = "all", data_dir=None,
                    size: int | None = None) -> list[tuple[str, ImageSet]]:
    """(split name, images) pairs to embed: one split, or every split of the data set.

    Image folders are decoded as `size` x size (the training resolution; the centred largest
    square), as evaluation sees them.
    """
    spec = get_spec(data)
    if split != "all" and split not in spec.splits:
        raise DataError(f"{data} has no split {split!r}; it has {', '.join(spec.splits)} "
                        "(or use --split all)")
    splits = spec.splits if split == "all" else (split,)
    parts = [(s, load_split(data, s, data_dir, size=size)) for s in splits]
    for s, images in parts:  # an unreadable file has no row: say which
        name_skipped(data, s, images.source, images.skipped)
    return parts


def embed(encoder: nn.Module, parts: list[tuple[str, ImageSet]], batch_size: int = 512,
          device: torch.device | str = "cpu", size: int | None = None
          ) -> tuple[torch.Tensor, list[dict]]:
    """Features (N, feat_dim) of every image of every part, on the CPU, and one index row
    per image."""
    for _, images in parts:
        require_channels(encoder, images.images, images.name)
    features, rows = [], []
    with frozen(encoder):
        for split, images in parts:
            features.append(extract_features(encoder, images.images, batch_size, device,
                                             size).cpu())
            paths = images.paths  # per-image files, for sets read from files
            labels = images.labels.tolist() if images.labels is not None else None
            for i in range(len(images)):
                label = labels[i] if labels is not None else None
                name = images.classes[label] if label is not None and images.classes else None
                rows.append({"position": len(rows), "split": split, "index": i,
                             "label": label, "class": name,
                             "source": str(paths[i]) if paths is not None else None})
    return torch.cat(features), rows


def index_path(npy_path: str | Path) -> Path:
    """OUT.npy -> OUT.index.jsonl, beside it."""
    return embedding_paths(npy_path)[1]


def write_embedding(path: str | Path, features: torch.Tensor, rows: list[dict]
                    ) -> tuple[Path, Path]:
    """Atomically write features (N, D) to PATH.npy and the N index rows to PATH.index.jsonl."""
    if len(features) != len(rows):
        raise ValueError(f"{len(features)} feature rows but {len(rows)} index rows")
    path, index = embedding_paths(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, features.float().numpy())
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(index, lambda f: f.write(text))
    return path, index
