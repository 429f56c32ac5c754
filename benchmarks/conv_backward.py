"""Convolutions' training forward + backward on CPU: PyTorch's against fastclr's.

    python benchmarks/conv_backward.py [--config fashion-mnist-cpu] [--compile] [--json]
    python benchmarks/conv_backward.py --precision fp32     # the tiny-map products

oneDNN's bf16 backward of a convolution on CPU is slow on small feature maps;
fastclr.models.SmallMapConv2d then computes it (a 1x1's whole backward, a 3x3's weight
gradient) as matrix products over the channels-last (N*H*W, C) views. This finds every
convolution of the preset's encoder (input shape, output channels, kernel, stride; one forward
of 2 x batch_size views), times a bf16-autocast forward + backward of each with nn.Conv2d and
with fastclr's layer in alternating slices in one process (where fastclr's keeps the native
backward, both run the same kernels), then the whole training step in bf16 (augmentation,
forward, loss, backward, LARS) of two copies of the preset's run, one with
fastclr.models.OWN_CONV_BACKWARD off, in alternating slices (random images).

fastclr takes its own backward only on CPUs with native bf16 (AMX or AVX-512 BF16,
models.NATIVE_BF16_CPU); this script times it on any CPU, as it would run there, and says
whether this CPU is one of them.

With --precision fp32 it times the fp32 step instead (eager unless --compile), where fastclr
computes a convolution whose output has 4 pixels or fewer (a strided 1x1: 16) as matrix
products (models.tiny_map_conv) on CPUs without AVX-512 (norms.WIDE_VECTORS false); likewise
timed on any CPU as it would run there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastclr import models, norms  # noqa: E402
from fastclr.config import load_config  # noqa: E402
from fastclr.models import SmallMapConv2d  # noqa: E402
from batch_norm import (alternate, layer_arguments, layer_inputs,  # noqa: E402
                        time_steps)

CL = torch.channels_last


def layer_shapes(cfg, batch: int) -> Counter:
    """((N, C, H, W) input, output channels, kernel, stride) of each convolution fastclr may
    give its own backward, with counts."""
    return layer_inputs(cfg, batch, lambda m: isinstance(m, SmallMapConv2d),
                        lambda m, x: (tuple(x.shape), m.out_channels, m.kernel_size[0],
                                      m.stride[0]))


def time_pair(shape: tuple, cout: int, kernel: int, stride: int, rounds: int, steps: int,
              bf16: bool = True) -> tuple[float, float, bool]:
    """Seconds per forward + backward (bf16 autocast or fp32) of nn.Conv2d and of
    SmallMapConv2d, alternated, and whether fastclr's took a way of its own."""
    x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_()
    geometry = (shape[1], cout, kernel, stride, (kernel - 1) // 2)
    layers = [nn.Conv2d(*geometry, bias=False).to(memory_format=CL),
              SmallMapConv2d(*geometry, bias=False).to(memory_format=CL)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        grad = torch.randn_like(layers[0](x))
        own = type(layers[1](x).grad_fn).__name__ != "ConvolutionBackward0"

    def calls(layer):
        def work(n: int) -> None:
            for _ in range(n):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    y = layer(x)
                y.backward(grad)
        work(1)  # warm-up
        return work

    native, ours = alternate([calls(layer) for layer in layers], rounds, steps)
    return native, ours, own


def use_own(flag: bool) -> None:
    models.OWN_CONV_BACKWARD = flag


def own_anywhere(module, flag: str, kind: str, needs: bool = True) -> tuple[bool, str]:
    """Sets `module.flag` (whether this CPU is of the kind fastclr's own way needs: `needs`)
    to `needs`, so that the own way is timed on any CPU as it would run on such a one. Returns
    whether this CPU is of that kind and a line saying so (`kind`: what the flag says a CPU
    has)."""
    has = getattr(module, flag)
    setattr(module, flag, needs)
    fits = has == needs
    return fits, (f"this CPU {'has' if has else 'lacks'} {kind} (fastclr "
                  f"{'takes' if fits else 'would not take'} the 'fastclr' rows' way)")


def main(argv: list[str] | None = None) -> int:
    parser = layer_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (the own backward, CPUs with native bf16) or fp32 "
                             "(the tiny-map products, CPUs without AVX-512)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the whole-step copies (default: on in bf16, where "
                             "fastclr's bf16 CPU step is fastest; off in fp32)")
    args = parser.parse_args(argv)
    bf16 = args.precision == "bf16"
    if args.compile is None:
        args.compile = bf16
    if bf16:
        fits, cpu_line = own_anywhere(models, "NATIVE_BF16_CPU", "native bf16")
    else:
        fits, cpu_line = own_anywhere(norms, "WIDE_VECTORS", "AVX-512", needs=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"device": "cpu", "tensorboard": False, "final_eval": False,
                 "precision": args.precision, "compile": args.compile}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfg = load_config(args.config, overrides=overrides)
    rows = []
    shapes = layer_shapes(cfg, cfg.batch_size)
    for (shape, cout, kernel, stride), count in sorted(
            shapes.items(), key=lambda kv: (-kv[0][0][2], kv[0][2], kv[0][0][1])):
        native, ours, own = time_pair(shape, cout, kernel, stride, args.rounds, args.steps,
                                      bf16)
        rows.append({"shape": list(shape), "out": cout, "kernel": kernel, "stride": stride,
                     "layers": count, "native_ms": native * 1e3, "fastclr_ms": ours * 1e3,
                     "own_backward": own})
    total_native = sum(r["native_ms"] * r["layers"] for r in rows)
    total_ours = sum(r["fastclr_ms"] * r["layers"] for r in rows)
    result = {"config": args.config, "threads": torch.get_num_threads(), "rows": rows,
              "precision": args.precision, "cpu_takes_it": fits,
              "compile": args.compile, "per_step_native_ms": total_native,
              "per_step_fastclr_ms": total_ours, "ratio": total_native / total_ours}
    if args.step_steps:
        native, ours = time_steps(cfg, args.rounds, args.step_steps, use_own)
        result.update(step_native_ms=native * 1e3, step_fastclr_ms=ours * 1e3,
                      step_ratio=native / ours)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.config}: convolutions, {args.precision} forward + backward, "
          f"{torch.get_num_threads()} threads; {cpu_line}")
    print(f"{'input (N, C, H, W)':>22} {'out':>4} {'kernel':>6} {'stride':>6} {'layers':>6} "
          f"{'PyTorch ms':>11} {'fastclr ms':>11} {'ratio':>6}  backward")
    for r in rows:
        print(f"{str(tuple(r['shape'])):>22} {r['out']:>4} {r['kernel']:>6} {r['stride']:>6} "
              f"{r['layers']:>6} "
              f"{r['native_ms']:>11.2f} {r['fastclr_ms']:>11.2f} "
              f"{r['native_ms'] / r['fastclr_ms']:>6.2f}  "
              f"{'fastclr' if r['own_backward'] else 'native'}")
    print(f"{'a step, all layers':>22} {'':>4} {'':>6} {'':>6} "
          f"{sum(r['layers'] for r in rows):>6} "
          f"{total_native:>11.1f} {total_ours:>11.1f} {result['ratio']:>6.2f}")
    if args.step_steps:
        print(f"{'whole training step':>22} {'':>4} {'':>6} {'':>6} {'':>6} "
              f"{result['step_native_ms']:>11.1f} {result['step_fastclr_ms']:>11.1f} "
              f"{result['step_ratio']:>6.2f}  ({args.rounds} x {args.step_steps} "
              f"{args.precision} steps each, "
              f"alternating, compile {'on' if args.compile else 'off'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
