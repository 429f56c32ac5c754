"""Images/s of the streaming loader alone: files decoded and cropped in DataLoader workers,
no model, no device augmentation (DESIGN: measure, don't guess).

    python benchmarks/streaming.py FOLDER [--size 224] [--workers 2] [--batch-size 64]
                                          [--batches 30] [--stream-crop full] [--json]

It times fastclr's StreamingBatches (by default as training uses it: both views' random
resized crops, area 0.08-1, taken from the full-resolution file, so an image is two S x S
crops; `--stream-crop square`: one random largest square) and, in the same process on the
same files with the same workers and batch size, a reference loader as most SimCLR code
writes it (torchvision: PIL open + convert("RGB") + RandomResizedCrop(S) + PILToTensor per
image, one view), and prints both rates and their ratio. The folder's index is repeated so that the timed batches come from one
epoch: steady state, no worker start-up inside the timing (the first `--warmup` batches are
not timed either). The two loaders are timed in alternation `--repeats` times and the medians
reported, so that load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastclr.data.batches import StreamingBatches  # noqa: E402
from fastclr.data.images import FolderIndex, PackedPaths, index_folder  # noqa: E402


def repeated(index: FolderIndex, count: int) -> FolderIndex:
    """The index's files repeated to at least `count` entries (paths only, nothing decoded)."""
    paths = [index.paths[i] for i in range(len(index))]
    paths = (paths * (count // len(paths) + 1))[:count]
    return FolderIndex(index.root, PackedPaths(paths))


class ReferenceCrops(Dataset):
    """The usual per-image torchvision pipeline, for comparison."""

    def __init__(self, index: FolderIndex, size: int):
        from PIL import Image
        from torchvision import transforms

        self.index, self.open = index, Image.open
        self.transform = transforms.Compose([transforms.RandomResizedCrop(size),
                                             transforms.PILToTensor()])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        for k in range(len(self.index)):  # a broken file would end the epoch: take the next
            try:
                with self.open(self.index.path((i + k) % len(self.index))) as img:
                    return self.transform(img.convert("RGB"))
            except OSError:
                continue
        raise OSError("no file decodes")


def rate(batches, warmup: int, timed: int, batch_size: int) -> float:
    """Images/s over `timed` batches after `warmup` untimed ones."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(timed):
        next(it)
    return timed * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of images (searched recursively)")
    p.add_argument("--size", type=int, default=224, help="side of the crops, pixels")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30, help="timed batches per loader")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--repeats", type=int, default=3, help="alternating timings of each loader")
    p.add_argument("--no-reference", action="store_true", help="time fastclr's loader only")
    p.add_argument("--stream-crop", choices=("full", "square"), default="full",
                   help="full: both views' crops from the full-resolution file (training's "
                   "default); square: one random largest square per image")
    p.add_argument("--crop-sampler", choices=("torchvision", "official"), default="torchvision")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    index = index_folder(Path(args.folder))
    index_seconds = time.perf_counter() - start
    if len(index) == 0:
        sys.exit(f"no readable image in {args.folder}")
    need = (args.warmup + args.batches) * args.batch_size
    files = repeated(index, need)

    crops = None
    if args.stream_crop == "full":
        from fastclr.augment.crops import CropBoxes
        crops = CropBoxes((0.08, 1.0), (3 / 4, 4 / 3), args.crop_sampler)
    ours = StreamingBatches(files, args.size, args.batch_size, seed=0,
                            num_workers=args.workers, crops=crops)
    loader = DataLoader(ReferenceCrops(files, args.size), batch_size=args.batch_size,
                        num_workers=args.workers, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    mine, theirs = [], []
    for r in range(args.repeats):
        mine.append(rate(ours.epoch(r), args.warmup, args.batches, args.batch_size))
        if not args.no_reference:
            theirs.append(rate(loader, args.warmup, args.batches, args.batch_size))
    result = {"folder": str(Path(args.folder).resolve()), "files": len(index),
              "skipped": len(index.skipped), "index_seconds": round(index_seconds, 3),
              "size": args.size, "workers": args.workers, "batch_size": args.batch_size,
              "stream_crop": args.stream_crop,
              "timed_images": args.batches * args.batch_size, "repeats": args.repeats,
              "images_per_s": round(statistics.median(mine), 1),
              "images_per_s_runs": [round(x, 1) for x in mine],
              "decode_failures": ours.failures}
    if theirs:
        ref = statistics.median(theirs)
        result["reference_images_per_s"] = round(ref, 1)
        result["reference_images_per_s_runs"] = [round(x, 1) for x in theirs]
        result["ratio_vs_reference"] = round(result["images_per_s"] / ref, 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['files']} files indexed in {result['index_seconds']:.2f} s "
          f"({result['skipped']} unreadable skipped)")
    what = "two view crops" if args.stream_crop == "full" else "one square"
    print(f"fastclr streaming ({what} per image): {result['images_per_s']:.1f} images/s at "
          f"{args.size} px with {args.workers} workers (batch {args.batch_size}; median of "
          f"{args.repeats} x {result['timed_images']} images)")
    if "reference_images_per_s" in result:
        print(f"torchvision reference: {result['reference_images_per_s']:.1f} images/s; "
              f"ratio {result['ratio_vs_reference']:.2f}x")


if __name__ == "__main__":
    main()
