"""The batches a pretraining run draws: uint8 images on the training device, one global batch
cut per step and shared out among the processes.

Two sources with one interface (`steps_per_epoch`, `epoch(epoch, start)` yielding uint8
(B / world_size, C, S, S) on the device):

- InMemoryBatches: the whole data set already sits on the device; a batch is an index gather.
- StreamingBatches: an index of image files; DataLoader workers decode each file and take the
  random resized crops of its two views from the full-resolution image (or, in the older
  "square" mode, one random largest square), and the rest of the SimCLR augmentation runs
  batched on the device (DESIGN: data flow).

Both take the epoch's order from `epoch_order(n, seed, epoch)`, so a resumed run, and any
number of processes, see exactly the batches of one uninterrupted single-process run.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fastclr.errors import DataError, error_text
from PIL import Image

from fastclr.data.images import FolderIndex, crop_opened, decode_crops, decode_square, oriented_size

log = logging.getLogger("fastclr")

# consecutive files tried in place of one that fails to decode before giving up
MAX_SUBSTITUTES = 64


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of n images that epoch `epoch` of a run with `seed` visits, (n,) int64."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _check_batch(n: int, batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise DataError(f"batch_size {batch_size} is not divisible by the {world_size} "
                        "processes")
    if n < batch_size:
        raise DataError(f"the data set has {n} images, fewer than one batch of {batch_size}")


class InMemoryBatches:
    """Epochs of uint8 batches from images held on the training device.

    The global batch is cut from one permutation per epoch (seeded by seed and epoch, so a
    resumed run sees the same order), and each of `world_size` processes takes its own slice:
    together the processes see exactly what one process with the global batch would.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        _check_batch(len(images), batch_size, world_size)
        self.images = images
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.seed, self.rank = seed, rank
        self.steps_per_epoch = len(images) // batch_size  # the last partial batch is dropped
        self.failures = 0  # nothing is decoded here (StreamingBatches counts its failures)
        self.cropped = False  # batches hold images, not crops of views

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.images), self.seed, epoch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """uint8 (B / world_size, C, H, W) batches of `epoch`, from batch number `start` on."""
        order = self.order(epoch).to(self.images.device)
        for i in range(start, self.steps_per_epoch):
            begin = i * self.batch_size + self.rank * self.local
            yield self.images[order[begin: begin + self.local]]


class _CropFiles(Dataset):
    """Item i of epoch e: file i decoded to uint8 crops, (2, 3, S, S) the two views' random
    resized crops (with `crops`, a fastclr.augment CropBoxes) or (3, S, S) its random largest
    square; the randomness is drawn from (seed, e, i) alone, so it does not depend on the
    worker, the rank or where a run resumed.

    A file that fails to decode is replaced by the next files of the index in turn; the item
    reports what failed so the main process can count and name it.
    """

    def __init__(self, index: FolderIndex, size: int, seed: int, epoch: int, crops=None):
        self.index, self.size, self.seed, self.epoch = index, size, seed, epoch
        self.crops = crops

    def __len__(self) -> int:
        return len(self.index)

    def _draws(self, i: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, i))  # slot i's draws, any file

    def __getitem__(self, i: int):
        if self.crops is not None:         # (the DataLoader fetches batches: __getitems__)
            return self._crops(i, self._uniforms(self._draws(i)))
        failed = []
        n = len(self.index)
        for k in range(min(n, MAX_SUBSTITUTES)):
            j = (i + k) % n
            try:
                crop = decode_square(self.index.path(j), self.size, self._draws(i))  # (S, S, 3)
                return torch.from_numpy(crop).permute(2, 0, 1), failed
            except Exception as e:  # damaged file: PIL's plugins raise many exception types
                failed.append((self.index.paths[j], error_text(e)))
        return None, failed  # the main process raises: an error raised here would arrive wrapped

    def __getitems__(self, indices: list[int]) -> list:
        """A batch of items (the DataLoader's batched fetch). With crops, the whole batch is
        made here, in shared memory when in a worker (so handing it over copies nothing): the
        crop boxes of all its images, of many sizes, come from one call (per image a few dozen
        tensor ops would cost half as much as decoding it), each image's still drawn from its
        own seed, and each crop is written straight into its rows of the batch."""
        if self.crops is None:
            return [self[i] for i in indices]
        B, S = len(indices), self.size
        batch = _uint8_batch((2 * B, 3, S, S))
        rows = batch.numpy().reshape(2, B, 3, S, S)           # rows[:, k]: image k's views
        u = torch.from_numpy(np.stack([self._uniforms(self._draws(i)) for i in indices]))
        opened, sizes = [], []
        for i in indices:                                     # headers only
            try:
                img = Image.open(self.index.path(i))
                opened.append(img)
                width, height = oriented_size(img)
                sizes.append((height, width))
            except Exception:  # unreadable: its item finds a substitute below
                opened.append(None)
                sizes.append((1, 1))
        heights, widths = (torch.tensor(x).repeat_interleave(2) for x in zip(*sizes))
        boxes = self.crops.from_uniforms(u.view(2 * B, -1), heights, widths)
        boxes = boxes.view(B, 2, 4).tolist()
        failed = []
        try:
            for k, (i, img) in enumerate(zip(indices, opened)):
                try:
                    if img is None:
                        raise OSError("unreadable")
                    height, width = sizes[k]
                    crop_opened(img, width, height, boxes[k], S, self.crops.interpolation,
                                out=rows[:, k])
                except Exception:  # file i failed: slot i's draws on the next files in turn
                    crops, fails = self._crops(i, u[k])
                    failed += fails
                    if crops is None:
                        return [(None, failed)]
                    rows[:, k] = crops.numpy()
        finally:
            for img in opened:
                if img is not None:
                    img.close()
        return [(_Batch(batch), failed)]

    def _uniforms(self, rng: np.random.Generator) -> np.ndarray:
        return rng.random((2, self.crops.draws))                    # (views, draws)

    def _crops(self, i: int, u):
        """Item i as the two views' crops (2, 3, S, S): file i, or the next files in turn if
        it fails, with slot i's draws u (2, draws)."""
        failed = []
        n = len(self.index)
        u = torch.as_tensor(u)
        for k in range(min(n, MAX_SUBSTITUTES)):
            j = (i + k) % n
            try:
                crops = decode_crops(self.index.path(j), self.size,
                                     lambda h, w: self.crops.from_uniforms(u, h, w).tolist(),
                                     self.crops.interpolation)              # (2, 3, S, S)
                return torch.from_numpy(crops), failed
            except Exception as e:  # damaged file: PIL's plugins raise many exception types
                failed.append((self.index.paths[j], error_text(e)))
        return None, failed


class _Batch:
    """A batch __getitems__ made whole (the collate function passes it on)."""

    def __init__(self, images: torch.Tensor):
        self.images = images


def _uint8_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor, in shared memory inside a DataLoader worker (as torch's
    default collate makes its batches), so that handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).new(storage).view(shape)


def _collate(items):
    """The items' images as one uint8 batch: (B, 3, S, S) squares, or for crops the (2B, 3, S,
    S) batch __getitems__ already made (first views before second: rows i and B + i of image
    i)."""
    failed = [f for _, fails in items for f in fails]
    if any(img is None for img, _ in items):
        return None, failed
    if isinstance(items[0][0], _Batch):
        return items[0][0].images, failed
    batch = _uint8_batch((len(items), *items[0][0].shape))
    for k, (img, _) in enumerate(items):
        batch[k].copy_(img)
    return batch, failed


class StreamingBatches:
    """Epochs of uint8 batches decoded from files by DataLoader workers: (2B / world_size, 3,
    S, S) crops of the two views of each image (`crops` given: a fastclr.augment CropBoxes),
    or (B / world_size, 3, S, S) random largest squares (`crops` None, the older mode).

    With `crops` (the default in training): a worker opens file i of epoch e, reads its size
    from the header (after EXIF orientation), draws the random resized crop boxes of both
    views from (seed, e, i) with the run's crop sampler, decodes the file at the smallest
    JPEG scale that still leaves each box at least S pixels a side, and resizes each box to
    S x S. The device then applies the rest of the SimCLR augmentation (flip, colour, blur)
    to each crop: `SimCLRAugment.stacked_views(batch, generator, cropped=True)`. This is the
    paper's pipeline: each view an independent crop of the whole photo, its area measured
    against the photo, resampled from full-resolution pixels. Rows i and B + i of a batch
    are the two views of its image i (`cropped` is True).

    Without (`crops` None): the worker takes the largest square of the image at a random
    position (uniform over the offsets, drawn from (seed, e, i)) and resizes it to S x S; the
    device then draws both views' crops from that square. Both views stay independent over
    the square, but a crop's area is measured against the square (75% of a 4:3 photo), and a
    small crop is upsampled from at most S pixels instead of the file's.

    Memory holds the index (paths), a few batches in flight per worker, nothing else: it is the
    same for any folder size. The epoch order and each crop are functions of (seed, epoch,
    index), so batches are identical for any number of workers and a resumed epoch continues
    exactly; each process decodes only its own slice of each global batch.
    """

    def __init__(self, index: FolderIndex, size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 num_workers: int = 2, crops=None):
        _check_batch(len(index), batch_size, world_size)
        self.index, self.size, self.crops = index, size, crops
        self.cropped = crops is not None  # batches hold both views' crops (see the class)
        self.batch_size = batch_size
        self.local = batch_size // world_size
        self.seed, self.rank = seed, rank
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.steps_per_epoch = len(index) // batch_size  # the last partial batch is dropped
        self.failures = 0  # decode failures so far (each replaced by another image)
        self._named: set[str] = set()

    def order(self, epoch: int) -> torch.Tensor:
        return epoch_order(len(self.index), self.seed, epoch)

    def local_indices(self, epoch: int, start: int = 0) -> list[list[int]]:
        """The file indices this process decodes for each step of `epoch` from `start` on."""
        order = self.order(epoch)
        first = self.rank * self.local
        return [order[i * self.batch_size + first: i * self.batch_size + first + self.local]
                .tolist() for i in range(start, self.steps_per_epoch)]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """uint8 batches of `epoch` on the device, from step `start`: (2B / world_size, 3, S,
        S) crops with `crops`, else (B / world_size, 3, S, S) squares."""
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            _CropFiles(self.index, self.size, self.seed, epoch, self.crops),
            batch_sampler=self.local_indices(epoch, start), collate_fn=_collate,
            num_workers=self.num_workers, pin_memory=cuda,
            # the loader draws worker seeds from this generator, not from torch's global RNG
            generator=torch.Generator().manual_seed(self.seed))
        for images, failed in loader:
            if failed:
                self._report(failed)
            if images is None:
                raise DataError(f"{min(len(self.index), MAX_SUBSTITUTES)} images in a row of "
                                f"{self.index.root} could not be decoded (the last: "
                                f"{failed[-1][0]}: {failed[-1][1]}); is the folder readable?")
            yield images.to(self.device, non_blocking=cuda)

    def _report(self, failed: list[tuple[str, str]]) -> None:
        self.failures += len(failed)
        for rel, why in failed:
            if rel not in self._named:
                self._named.add(rel)
                log.warning("could not decode %s (%s): another image of the folder took its "
                            "place (named once; %d decode failures so far)",
                            self.index.root / rel, why, self.failures)
