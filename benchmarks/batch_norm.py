"""Batch norm's training forward + backward in a preset's encoder: PyTorch's against fastclr's.

    python benchmarks/batch_norm.py [--config fashion-mnist-cpu] [--threads N] [--json]

PyTorch's CPU kernels for channels-last features are slow on some channel counts, and
fastclr.norms.BatchNorm2d then computes training batch norm its own way: on AVX-512 CPUs, where
the channel count is not a multiple of 16, a backward of matrix-vector products over the
(N*H*W, C) view ("rows"); elsewhere, for fewer than 16 channels, PyTorch's kernels on a wide
view ("wide"). This finds the input shape of every batch norm in the preset's
encoder (one forward of a batch of 2 x batch_size views, channels-last), and times a training
forward + backward of each distinct shape with nn.BatchNorm2d and with fastclr's, in
alternating slices in one process. Shapes where fastclr's is the native one are timed too
(the ratio there is ~1: both run the same kernel). Per step = time x layers of that shape.
Then the whole training step (augmentation, forward, loss, backward, LARS) of two copies of the
preset's run, one with fastclr.norms.OWN_BACKWARD off, in alternating slices (random images of
the data set's shape: the timing does not depend on the pixels).

By default this times the way this CPU takes; --own rows or --own wide times either on any CPU,
as it would run there (norms.WIDE_VECTORS: whether this CPU has AVX-512).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import Counter

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastclr import distributed, norms  # noqa: E402
from fastclr.config import load_config  # noqa: E402
from fastclr.models import build_model  # noqa: E402
from fastclr.norms import BatchNorm2d  # noqa: E402
from fastclr.spec import ModelSpec  # noqa: E402
from fastclr.train.loop import _set_backends  # noqa: E402  the backends training sets
from fastclr.train.step import build_run  # noqa: E402
from train_step import SHAPES, Timer, endless, images_for  # noqa: E402


OWN_BACKWARDS = ("_ChannelsLastBatchNormBackward", "_WideBatchNormBackward")


def layer_inputs(cfg, batch: int, wanted, key) -> Counter:
    """key(module, input) of each module of the preset's encoder with wanted(module), with
    counts, from one forward of 2 x batch random views in channels-last."""
    channels, side = SHAPES[cfg.data]
    side = cfg.image_size or side
    spec = ModelSpec.from_config(cfg, channels, [0.0] * channels, [1.0] * channels)
    model = build_model(spec).to(memory_format=torch.channels_last)
    found: Counter = Counter()
    hooks = [m.register_forward_pre_hook(lambda m, a: found.update([key(m, a[0])]))
             for m in model.modules() if wanted(m)]
    x = torch.randn(2 * batch, channels, side, side)
    with torch.no_grad():
        model(x.contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    return found


def layer_shapes(cfg, batch: int) -> Counter:
    """(N, C, H, W) of each 2-D batch norm's input in the preset's encoder, with counts."""
    return layer_inputs(cfg, batch, lambda m: isinstance(m, nn.BatchNorm2d),
                        lambda m, x: tuple(x.shape))


def alternate(works: list, rounds: int, count: int) -> list[float]:
    """Seconds per call of each of two works (work(n) makes n calls), timed in `rounds`
    slices of `count` calls, each work first in every other round."""
    timers = [Timer(torch.device("cpu")), Timer(torch.device("cpu"))]
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            timers[i].time(works[i], count)
    return [t.seconds / t.count for t in timers]


def time_pair(shape: tuple, rounds: int, steps: int) -> tuple[float, float, bool]:
    """Seconds per forward + backward of nn.BatchNorm2d and of fastclr's, alternated, and
    whether fastclr's took its own backward."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)

    def calls(layer):
        def work(n: int) -> None:
            for _ in range(n):
                layer(x).backward(grad)
        work(1)  # warm-up
        return work

    layers = [nn.BatchNorm2d(shape[1]), BatchNorm2d(shape[1])]
    own = type(layers[1](x).grad_fn).__name__ in OWN_BACKWARDS
    native, ours = alternate([calls(layer) for layer in layers], rounds, steps)
    return native, ours, own


def time_steps(cfg, rounds: int, steps: int, use_own=None) -> tuple[float, float]:
    """Seconds per training step with PyTorch's kernel and with fastclr's, alternated;
    `use_own(flag)` switches fastclr's on or off (default: norms.OWN_BACKWARD). Eager steps
    take turns in one run (the layers read the switch at every call: the same weights, memory
    and data for both); compiled ones in two copies of the run, as the switch is read once, at
    compilation."""
    if use_own is None:
        def use_own(flag: bool) -> None:
            norms.OWN_BACKWARD = flag
    _set_backends(cfg)
    ctx = distributed.Context(0, 0, 1, torch.device("cpu"))
    images = images_for(cfg, True, None)
    runs = {}  # (run, its batches, its step count) by copy: one copy unless compiled

    def steps_with(own: bool):
        use_own(own)
        torch.manual_seed(0)
        copy = own if cfg.compile else None
        if copy not in runs:
            run = build_run(cfg, ctx, images)
            runs[copy] = run, endless(run.batches), itertools.count()
        run, data, step = runs[copy]

        def work(n: int) -> None:
            use_own(own)
            for _ in range(n):
                run.train_step(next(data), next(step))
        work(2)  # warm-up (compilation included)
        return work

    try:
        return tuple(alternate([steps_with(False), steps_with(True)], rounds, steps))
    finally:
        use_own(True)


def layer_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a per-layer benchmark (this one, conv_backward.py)."""
    parser.add_argument("--config", default="fashion-mnist-cpu", help="preset name or YAML")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step, 2 views each (default: the preset's)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating slices (each side first in every other one)")
    parser.add_argument("--steps", type=int, default=10, help="calls a slice")
    parser.add_argument("--step-steps", type=int, default=10,
                        help="training steps a slice in the whole-step timing (0: skip it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = layer_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--own", choices=("this-cpu", "rows", "wide"), default="this-cpu",
                        help="fastclr's way to time (default: the one this CPU takes)")
    args = parser.parse_args(argv)
    wide = norms.WIDE_VECTORS
    if args.own != "this-cpu":
        norms.WIDE_VECTORS = args.own == "rows"
    way = "rows" if norms.WIDE_VECTORS else "wide"
    cpu_line = (f"this CPU {'has' if wide else 'lacks'} AVX-512 (fastclr takes the "
                f"{'rows' if wide else 'wide'} way); timed: the {way} way")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"device": "cpu", "tensorboard": False, "final_eval": False}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfg = load_config(args.config, overrides=overrides)
    rows = []
    shapes = layer_shapes(cfg, cfg.batch_size)
    for shape, count in sorted(shapes.items(), key=lambda kv: (-kv[0][2], kv[0][1])):
        native, ours, own = time_pair(shape, args.rounds, args.steps)
        rows.append({"shape": list(shape), "layers": count, "native_ms": native * 1e3,
                     "fastclr_ms": ours * 1e3, "own_backward": own})
    total_native = sum(r["native_ms"] * r["layers"] for r in rows)
    total_ours = sum(r["fastclr_ms"] * r["layers"] for r in rows)
    result = {"config": args.config, "threads": torch.get_num_threads(), "rows": rows,
              "wide_vectors": wide, "own": way, "per_step_native_ms": total_native,
              "per_step_fastclr_ms": total_ours,
              "ratio": total_native / total_ours}
    if args.step_steps:
        native, ours = time_steps(cfg, args.rounds, args.step_steps)
        result.update(step_native_ms=native * 1e3, step_fastclr_ms=ours * 1e3,
                      step_ratio=native / ours)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.config}: batch norm forward + backward, {torch.get_num_threads()} threads; "
          f"{cpu_line}")
    print(f"{'input (N, C, H, W)':>22} {'layers':>6} {'PyTorch ms':>11} {'fastclr ms':>11} "
          f"{'ratio':>6}  backward")
    for r in rows:
        print(f"{str(tuple(r['shape'])):>22} {r['layers']:>6} {r['native_ms']:>11.2f} "
              f"{r['fastclr_ms']:>11.2f} {r['native_ms'] / r['fastclr_ms']:>6.2f}  "
              f"{'fastclr' if r['own_backward'] else 'native'}")
    print(f"{'a step, all layers':>22} {sum(r['layers'] for r in rows):>6} {total_native:>11.1f} "
          f"{total_ours:>11.1f} {result['ratio']:>6.2f}")
    if args.step_steps:
        print(f"{'whole training step':>22} {'':>6} {result['step_native_ms']:>11.1f} "
              f"{result['step_fastclr_ms']:>11.1f} {result['step_ratio']:>6.2f}  "
              f"({args.rounds} x {args.step_steps} steps each, alternating)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
