"""Throughput of fastclr's batched SimCLR augmentation against torchvision's per-image pipeline.

    python benchmarks/augment.py [--threads 1] [--device cpu|cuda] [--sizes 32 96 28] [--json]

(a) fastclr.augment.SimCLRAugment.two_views on a uint8 batch (on --device);
(b) what most SimCLR code does: torchvision.transforms.v2 applied per PIL image on the CPU
    (RandomResizedCrop, RandomHorizontalFlip, RandomApply([ColorJitter], p=0.8),
    RandomGrayscale(p=0.2), ToImage, ToDtype(float32, scale=True)).
Both use the small-image settings (crop area 0.2..1, colour strength 0.5, no blur) at every
size, the same number of threads, in the same process. Size 28 is one-channel: PIL mode 'L',
where torchvision's saturation, hue and grayscale do nothing and fastclr skips them.
Inputs are random uint8 images: every op here costs the same whatever the pixel values.
(a) writes into one output tensor reused across calls (`out=`, as a training loop can do;
--fresh-out allocates one per call instead). The two are timed in alternating slices.
A "view" is one augmented image; ratio = views/s of (a) / views/s of (b).
On the CPU (a) runs fastclr's C kernel when it was built (the default path; `kernel` in the
output says which ran); --tensor-ops measures its pure PyTorch path instead (the one CUDA uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastclr import augment  # noqa: E402
from fastclr.augment import SimCLRAugment  # noqa: E402


def reference_pipeline(size: int):
    import torchvision.transforms.v2 as T
    s = 0.5
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
    ])


def measure(size: int, channels: int, batch: int, reference_images: int, device: str,
            reuse_out: bool, native: bool | None) -> dict[str, float]:
    """Views/s of both pipelines, timed in alternating slices of similar length.

    Other jobs on a shared machine change the speed of both pipelines over seconds;
    interleaving the two keeps their ratio honest even then. On the CPU the process's CPU
    time is recorded too: a ratio of CPU times does not count time spent waiting for a core.
    """
    from PIL import Image
    dev = torch.device(device)
    rng = np.random.default_rng(0)
    pil_shape = (size, size, 3) if channels == 3 else (size, size)
    pil_images = [Image.fromarray(rng.integers(0, 256, pil_shape, dtype=np.uint8),
                                  "RGB" if channels == 3 else "L") for _ in range(256)]
    reference = reference_pipeline(size)
    images = torch.from_numpy(rng.integers(0, 256, (batch, channels, size, size),
                                           dtype=np.uint8)).to(dev)
    aug = SimCLRAugment.small_images(native=native)
    gen = torch.Generator(device=dev).manual_seed(0)
    out = torch.empty(2 * batch, channels, size, size, device=dev) if reuse_out else None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def ours() -> tuple[float, float]:
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        aug.two_views(images, gen, out=out)
        sync()
        return time.perf_counter() - start, time.process_time() - cpu

    def theirs(count: int, offset: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(offset, offset + count):
            reference(pil_images[i % len(pil_images)])
        return time.perf_counter() - start, time.process_time() - cpu

    ours(), ours()                                   # warm-up: workspace, kernels
    per_image = theirs(32, 0)[0] / 32                # warm-up, and the slice length
    t_ours = min(ours()[0] for _ in range(2))
    slice_images = max(16, round(t_ours / per_image))
    rounds = max(3, -(-reference_images // slice_images))
    wall_ours = cpu_ours = wall_theirs = cpu_theirs = 0.0
    for r in range(rounds):
        wall, cpu = ours()
        wall_ours, cpu_ours = wall_ours + wall, cpu_ours + cpu
        wall, cpu = theirs(slice_images, r * slice_images)
        wall_theirs, cpu_theirs = wall_theirs + wall, cpu_theirs + cpu
    views_ours, views_theirs = 2 * batch * rounds, slice_images * rounds
    return {"ours": views_ours / wall_ours, "theirs": views_theirs / wall_theirs,
            "cpu_ratio": (views_ours / cpu_ours) / (views_theirs / cpu_theirs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both pipelines (default 1)")
    parser.add_argument("--device", default="cpu", help="device of fastclr's pipeline: "
                        "cpu or cuda (the reference always runs on the CPU)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="image sides; 28 is one-channel (default: 32 96 28 on cpu, "
                        "32 96 224 28 on cuda)")
    parser.add_argument("--batch", type=int, default=512,
                        help="images per call of the batched pipeline (2x views)")
    parser.add_argument("--reference-images", type=int, default=2000,
                        help="images timed through the per-image reference per size; the "
                        "batched pipeline runs as many calls, interleaved (at least 3)")
    parser.add_argument("--fresh-out", action="store_true",
                        help="allocate a new output tensor every call instead of reusing one")
    parser.add_argument("--tensor-ops", action="store_true",
                        help="on the CPU, time fastclr's PyTorch tensor ops, not its C kernel")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    native = False if args.tensor_ops else None
    native_ran = args.device == "cpu" and augment.NATIVE is not None and not args.tensor_ops
    kernel = "C" if native_ran else "tensor-ops"
    sizes = args.sizes or ([32, 96, 28] if args.device == "cpu" else [32, 96, 224, 28])
    result: dict = {"threads": args.threads, "device": args.device, "kernel": kernel,
                    "batch": args.batch, "reuse_out": not args.fresh_out}
    for size in sizes:
        channels = 1 if size == 28 else 3
        m = measure(size, channels, args.batch, args.reference_images, args.device,
                    reuse_out=not args.fresh_out, native=native)
        result[f"views_per_s_{size}"] = round(m["ours"], 1)
        result[f"reference_views_per_s_{size}"] = round(m["theirs"], 1)
        result[f"ratio_{size}"] = round(m["ours"] / m["theirs"], 2)
        if args.device == "cpu":
            result[f"cpu_time_ratio_{size}"] = round(m["cpu_ratio"], 2)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"threads={args.threads} device={args.device} kernel={kernel} batch={args.batch} "
          f"output={'reused' if not args.fresh_out else 'fresh'}")
    cpu = args.device == "cpu"
    print(f"{'size':>8} {'fastclr views/s':>16} {'torchvision views/s':>20} {'ratio':>7}"
          + (f" {'CPU-time ratio':>15}" if cpu else ""))
    for size in sizes:
        label = f"{size}{' grey' if size == 28 else ' RGB'}"
        print(f"{label:>8} {result[f'views_per_s_{size}']:>16,.0f} "
              f"{result[f'reference_views_per_s_{size}']:>20,.0f} {result[f'ratio_{size}']:>7.1f}"
              + (f" {result[f'cpu_time_ratio_{size}']:>15.1f}" if cpu else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
