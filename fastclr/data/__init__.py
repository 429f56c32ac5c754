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

from fastclr.data.formats import read_idx
from fastclr.data.load import (IMAGENET_MEAN, IMAGENET_STD, Pretrain, channel_stats,
                               check_evaluation_data, load_pretrain, load_split,
                               pretrain_batches)
from fastclr.data.registry import (CACHE_DIR, DATASETS, PATH_KINDS, DatasetSpec, ImageSet,
                                   candidate_roots, describe, find_root, get_spec, is_labeled,
                                   list_datasets, register)
from fastclr.data import catalog as _catalog  # noqa: E402,F401  registers the built-in sets

__all__ = ["CACHE_DIR", "DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "PATH_KINDS",
           "DatasetSpec", "ImageSet", "Pretrain", "candidate_roots", "channel_stats",
           "check_evaluation_data",
           "describe", "find_root", "get_spec", "is_labeled", "list_datasets", "load_pretrain",
           "load_split", "pretrain_batches", "read_idx", "register"]
