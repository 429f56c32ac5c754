"""Views/s of fastclr's whole training step, its FLOPs and MFU, against the loop peers use.

    python benchmarks/train_step.py --config fashion-mnist-cpu --device cpu     # ~1.5 min, 2 cores
    python benchmarks/train_step.py --config cifar10-resnet18 --device cuda --synthetic \\
        --compile --precision bf16 --steps 60

(a) fastclr: Run.train_step, the step `fastclr train` runs (the preset's model, batch,
    optimiser, precision, channels_last, torch.compile as asked): uint8 batches already on the
    device -> augmentation on the device -> one forward of the 2N views -> nt_xent -> backward
    -> optimiser. Its augmentation is also timed alone, for its share of a step.
(b) the peer loop (benchmarks/peer.py): per-image torchvision.transforms.v2 on PIL images in
    DataLoader workers feeding the same model, loss and optimiser with the same batch and
    the same torch threads. The model is built of PyTorch's own layers (nn.Conv2d,
    nn.BatchNorm2d), as a peer's torchvision ResNet is; on a CPU a second peer loop is timed
    too, with fastclr's layers (their own CPU backward where it is faster), so that its ratio
    measures the data path and the loop alone (--peer-layers).
All run in this process in alternating slices (other jobs on a shared machine slow both
alike), each after its warm-up (compilation included there); CUDA slices end with a
synchronize. A "view" is one augmented image, two per image; ratio = views/s of (a) / (b).
On Linux the CPU time of each slice is read too, the peer's workers included: the CPU-time
ratio (views per CPU-second) does not count time spent waiting for a busy core (but does
count threads that spin while they wait for each other).

FLOPs per view are counted by torch.utils.flop_counter.FlopCounterMode over one forward and
backward of the model and loss (matmuls and convolutions; the optimiser and the elementwise
ops are not counted, as is usual for MFU). MFU = FLOPs per view x views/s / the device's peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from fastclr import augment, distributed, models  # noqa: E402
from fastclr.config import load_config  # noqa: E402
from fastclr.data import Pretrain, load_pretrain  # noqa: E402
from fastclr.errors import FastclrError  # noqa: E402
from fastclr.loss import nt_xent  # noqa: E402
from fastclr.train.loop import _set_backends  # noqa: E402  the backends training sets
from fastclr.train.step import build_run  # noqa: E402
from peer import PEER_LAYERS, PeerLoop, peer_model, usable_cpus  # noqa: E402

# Dense tensor-core peaks in TFLOP/s from NVIDIA's data sheets: (bf16, tf32). fp32 training
# runs its matmuls and convolutions in TF32 on these GPUs (fastclr enables it), hence tf32.
# Matched in order against torch.cuda.get_device_name(); anything else needs --peak-tflops.
PEAK_TFLOPS = (("H100 PCIe", (756.0, 378.0)), ("H100 NVL", (835.0, 418.0)),
               ("H100", (989.4, 494.7)), ("H200", (989.4, 494.7)),
               ("GH200", (989.4, 494.7)), ("A100", (312.0, 156.0)))

# image shape (channels, side) of each fixed-format set, for --synthetic
SHAPES = {"fashion-mnist": (1, 28), "mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
          "stl10": (3, 96), "tiny-imagenet": (3, 64)}


def device_peak(device: torch.device, bf16: bool, flag: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it comes from)."""
    if flag is not None:
        return flag, "--peak-tflops"
    if device.type != "cuda":
        return None, "n/a (pass --peak-tflops for a CPU)"
    name = torch.cuda.get_device_name(device)
    for key, (peak_bf16, peak_tf32) in PEAK_TFLOPS:
        if key in name:
            return (peak_bf16, f"{name} bf16 dense") if bf16 else (peak_tf32, f"{name} tf32 dense")
    return None, f"n/a ({name} is not in the table; pass --peak-tflops)"


def images_for(cfg, synthetic: bool, count: int | None) -> Pretrain:
    """The preset's pretraining images, or random uint8 images of its shape."""
    if synthetic:
        if cfg.data not in SHAPES:
            raise SystemExit(f"--synthetic knows the shapes of {', '.join(SHAPES)}; not {cfg.data}")
        channels, side = SHAPES[cfg.data]
        side = cfg.image_size or side
        n = count or 8 * cfg.batch_size
        g = torch.Generator().manual_seed(0)
        return Pretrain.from_images(torch.randint(0, 256, (n, channels, side, side),
                                                  dtype=torch.uint8, generator=g), cfg.data)
    pretrain = load_pretrain(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
    if pretrain.streamed:
        raise SystemExit(f"{cfg.data} is streamed from files; use --synthetic")
    if count is not None and count < len(pretrain):
        return Pretrain.from_images(pretrain.images[:count], cfg.data)
    return pretrain


def count_flops(run, images: torch.Tensor) -> float:
    """FLOPs of one forward and backward of the model and the loss, per view."""
    from torch.utils.flop_counter import FlopCounterMode
    gen = torch.Generator(images.device).manual_seed(0)
    fmt = torch.channels_last if run.channels_last else torch.contiguous_format
    x = run.augment.stacked_views(images, gen, memory_format=fmt)  # (2n, C, S, S)
    n = len(images)
    amp = torch.autocast(images.device.type, dtype=torch.bfloat16) if run.autocast \
        else contextlib.nullcontext()
    # counted on PyTorch's own convolutions: the tiny-map products (models.tiny_map_conv) skip
    # the padding's zeros a convolution's count includes, and the count should not depend on
    # the CPU
    own, models.OWN_CONV_BACKWARD = models.OWN_CONV_BACKWARD, False
    try:
        with FlopCounterMode(display=False) as counter:
            with amp:
                _, z = run.model(x)
                loss = nt_xent(z[:n], z[n:], run.cfg.temperature)
            loss.backward()
    finally:
        models.OWN_CONV_BACKWARD = own
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its live children (the peer
    loop's DataLoader workers), read from Linux's /proc; elsewhere this process alone."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    try:
        children = set()
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            children.update((task / "children").read_text().split())
        for pid in children:
            # fields after the command's closing parenthesis: utime, stime are the 12th, 13th
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, IndexError):
        pass
    return total


class Timer:
    """Wall and CPU seconds of slices of work, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds, self.cpu, self.count = 0.0, 0.0, 0

    def time(self, work, count: int) -> None:
        self.sync()
        start, cpu = time.perf_counter(), cpu_seconds()
        work(count)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.cpu += cpu_seconds() - cpu
        self.count += count


def measure(args, cfg, run, peers: dict) -> dict:
    device = run.ctx.device
    batches = endless(run.batches)
    fmt = torch.channels_last if run.channels_last else torch.contiguous_format
    step = 0

    def ours(count: int) -> None:
        nonlocal step
        for _ in range(count):
            run.train_step(next(batches), step)
            step += 1

    fixed = next(batches)

    def augmentation(count: int) -> None:
        for _ in range(count):
            run.augment.stacked_views(fixed, run.generator, out=run.views, memory_format=fmt)

    started = time.perf_counter()
    ours(args.warmup)  # compilation, cudnn's algorithm search, first-touch of buffers
    augmentation(2)
    for peer in peers.values():
        peer.steps(2)
    warmup_seconds = time.perf_counter() - started
    timers = {"fastclr": Timer(device), "augment": Timer(device)}
    timers.update({f"peer:{layers}": Timer(device) for layers in peers})
    per_slice = -(-args.steps // args.rounds)
    # the ratio of each round alone: how much it moves from slice to slice
    round_ratios = {layers: [] for layers in peers}
    for _ in range(args.rounds):
        ours_before = timers["fastclr"].seconds
        timers["fastclr"].time(ours, per_slice)
        ours_slice = timers["fastclr"].seconds - ours_before
        timers["augment"].time(augmentation, per_slice)
        for layers, peer in peers.items():
            timer = timers[f"peer:{layers}"]
            before = timer.seconds
            timer.time(peer.steps, per_slice)
            round_ratios[layers].append((timer.seconds - before) / ours_slice)
    views = 2 * cfg.batch_size
    rate = {k: views * t.count / t.seconds for k, t in timers.items() if t.count}
    per_cpu = {k: views * t.count / t.cpu for k, t in timers.items() if t.count and t.cpu}
    return {"views_per_s": rate["fastclr"],
            "peers": [{"layers": layers, "views_per_s": rate[f"peer:{layers}"],
                       "ratio": rate["fastclr"] / rate[f"peer:{layers}"],
                       "round_ratios": round_ratios[layers],
                       "cpu_time_ratio": per_cpu["fastclr"] / per_cpu[f"peer:{layers}"]
                       if f"peer:{layers}" in per_cpu and "fastclr" in per_cpu else None}
                      for layers in peers],
            "step_ms": 1000 * timers["fastclr"].seconds / timers["fastclr"].count,
            "augment_ms": 1000 * timers["augment"].seconds / timers["augment"].count,
            "warmup_s": warmup_seconds, "timed_steps": timers["fastclr"].count}


def endless(batches):
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="fashion-mnist-cpu",
                   help="preset name or YAML file whose model, batch and augmentation to time")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=60,
                   help="timed steps of each loop, split into --rounds alternating slices "
                   "(CPU preset: ~0.35 s a step on 2 cores; H200: 20-60 ms). Keep 20 or more "
                   "a slice: the peer's workers and the model's threads reach their long-run "
                   "contention only over many steps (slices of 4 steps timed the peer loop "
                   "1.3x faster than its pace in training)")
    p.add_argument("--rounds", type=int, default=3, help="alternating slices (default 3)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first (compilation happens here; default 3)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: the preset's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="default: the preset's (auto: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    p.add_argument("--width", type=float, help="ResNet width multiplier (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch threads of this process, for both loops "
                   "(default: torch's choice)")
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help="the peer loop's DataLoader workers (default: the usable CPUs, "
                   f"{usable_cpus()} here)")
    p.add_argument("--data-dir", help="where the preset's data set is")
    p.add_argument("--images", type=int, help="use only this many images (default: all; "
                   "--synthetic: 8 batches)")
    p.add_argument("--synthetic", action="store_true",
                   help="random uint8 images of the data set's shape (the timing does not "
                   "depend on the pixels); for a machine without the data set")
    p.add_argument("--peak-tflops", type=float,
                   help="the device's peak for MFU (default: a table of NVIDIA data-center "
                   "GPUs, bf16 or tf32 dense; none for CPUs)")
    p.add_argument("--no-peer", action="store_true", help="time fastclr's step only")
    p.add_argument("--peer-layers", choices=(*PEER_LAYERS, "both"),
                   help="what the peer's model is built of: torch (nn.Conv2d, nn.BatchNorm2d, "
                   "as a peer's torchvision ResNet), fastclr (its layers with their own CPU "
                   "backward: the ratio then measures the data path and the loop alone) or "
                   "both, each a loop of its own (default: both on a CPU, torch elsewhere, "
                   "where the two are the same)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--show", metavar="JSON", help="print the report of a saved --json result "
                   "and exit (benchmarks/gpu.sh does)")
    return p.parse_args(argv)


def show(path: str) -> int:
    try:
        result = json.loads(open(path).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        print(f"no result in {path} (see the errors above)")
        return 1
    print(report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.show)
    overrides = {"device": args.device, "tensorboard": False, "final_eval": False,
                 "compile": args.compile, "precision": args.precision,
                 "batch_size": args.batch_size, "width": args.width, "threads": args.threads,
                 "data_dir": args.data_dir}
    try:
        cfg = load_config(args.config, overrides={k: v for k, v in overrides.items()
                                                  if v is not None})
        _set_backends(cfg)
        ctx = distributed.Context(0, 0, 1, distributed.resolve_device(cfg.device))
        pretrain = images_for(cfg, args.synthetic, args.images)
        run = build_run(cfg, ctx, pretrain)
    except FastclrError as e:
        print(f"train_step.py: {e}", file=sys.stderr)
        return 2
    layers = args.peer_layers or ("both" if ctx.device.type == "cpu" else "torch")
    peers = {} if args.no_peer else {
        kind: PeerLoop(cfg, peer_model(run.model, kind), pretrain.images, pretrain.shape[-1],
                       ctx.device, args.workers, run.total_steps, run.warmup_steps,
                       run.peak_lr, run.channels_last, run.autocast)
        for kind in (PEER_LAYERS if layers == "both" else (layers,))}
    flops = count_flops(run, next(endless(run.batches)))
    m = measure(args, cfg, run, peers)
    timed = [{"layers": p["layers"], "views_per_s": round(p["views_per_s"], 1),
              "ratio": round(p["ratio"], 2),
              "round_ratios": [round(r, 2) for r in p["round_ratios"]],
              "cpu_time_ratio": None if p["cpu_time_ratio"] is None
              else round(p["cpu_time_ratio"], 2)} for p in m["peers"]]
    first = timed[0] if timed else {}  # the peer as peers run it, where timed
    peak, peak_source = device_peak(ctx.device, run.autocast, args.peak_tflops)
    achieved = flops * m["views_per_s"] / 1e12
    native = ctx.device.type == "cpu" and augment.NATIVE is not None \
        and run.augment.native is not False
    result = {
        "config": cfg.name, "device": str(ctx.device), "device_name": (
            torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"),
        "arch": cfg.arch, "width": cfg.width, "stem": cfg.stem, "image": list(pretrain.shape),
        "batch": cfg.batch_size, "compile": cfg.compile, "bf16": run.autocast,
        "channels_last": run.channels_last, "threads": torch.get_num_threads(),
        "augment_kernel": "C" if native else "tensor-ops", "synthetic": args.synthetic,
        "views_per_s": round(m["views_per_s"], 1), "step_ms": round(m["step_ms"], 2),
        "augment_ms": round(m["augment_ms"], 2),
        "augment_share": round(m["augment_ms"] / m["step_ms"], 4),
        "gflop_per_view": round(flops / 1e9, 4), "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak, "peak_source": peak_source,
        "mfu": round(achieved / peak, 4) if peak else None,
        "warmup_s": round(m["warmup_s"], 1), "timed_steps": m["timed_steps"],
        "peer_workers": args.workers if timed else None,
        "peer_layers": first.get("layers"), "peer_views_per_s": first.get("views_per_s"),
        "ratio": first.get("ratio"), "round_ratios": first.get("round_ratios"),
        "cpu_time_ratio": first.get("cpu_time_ratio"), "peers": timed,
    }
    print(json.dumps(result) if args.json else report(result))
    return 0


def report(r: dict) -> str:
    mfu = f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s ({r['peak_source']})" \
        if r["mfu"] is not None else f"MFU {r['peak_source']}"
    lines = [
        f"{r['config']}: {r['arch']} x{r['width']:g} ({r['stem']} stem), views "
        f"{'x'.join(map(str, r['image']))}, batch {r['batch']}, {r['device_name']}, "
        f"{r['threads']} threads, compile {'on' if r['compile'] else 'off'}, "
        f"{'bf16' if r['bf16'] else 'fp32'}, "
        f"channels_last {'on' if r['channels_last'] else 'off'}, "
        f"augmentation: {r['augment_kernel']}{', synthetic images' if r['synthetic'] else ''}",
        f"  fastclr step  {r['views_per_s']:>10,.0f} views/s  ({r['step_ms']:.1f} ms a step, "
        f"augmentation {r['augment_ms']:.1f} ms = {100 * r['augment_share']:.1f}% of it)",
    ]
    # results saved before the second peer: one peer, its figures at the top level
    peers = r.get("peers") or ([{"layers": r.get("peer_layers", "fastclr"),
                                 "views_per_s": r["peer_views_per_s"], "ratio": r["ratio"],
                                 "round_ratios": r.get("round_ratios"),
                                 "cpu_time_ratio": r.get("cpu_time_ratio")}]
                               if r["ratio"] is not None else [])
    for p in peers:
        made_of = {"torch": "PyTorch's layers", "fastclr": "fastclr's layers"}[p["layers"]]
        lines.append(f"  peer loop     {p['views_per_s']:>10,.0f} views/s  (torchvision v2 "
                     f"per PIL image in {r['peer_workers']} DataLoader workers; the model of "
                     f"{made_of})")
        cpu = f" (views per CPU-second, workers included: {p['cpu_time_ratio']:.2f}x)" \
            if p.get("cpu_time_ratio") is not None else ""
        rounds = p.get("round_ratios") or []
        spread = f", rounds {min(rounds):.2f}-{max(rounds):.2f}x" if len(rounds) > 1 else ""
        lines.append(f"  ratio         {p['ratio']:>10.2f}x{spread}{cpu}")
    lines.append(f"  {r['gflop_per_view']:.3f} GFLOP a view (forward + backward); "
                 f"{r['achieved_tflops']:.3f} TFLOP/s achieved; {mfu}")
    lines.append(f"  {r['timed_steps']} timed steps a loop after {r['warmup_s']:.0f} s of warm-up")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
