"""Linear top-1 against minutes of pretraining: fastclr's loop and the loop peers use.

    python benchmarks/time_to_accuracy.py --minutes 1 2 5 10        # 18-23 min on 2 cores
    python benchmarks/time_to_accuracy.py --minutes 0.2 0.5 --images 4000 \\
        --probe-train 2000 --probe-test 1000                         # a smoke test

Both loops train the same preset (default fashion-mnist-cpu) from the same initial weights
with the same recipe: its model, batch, augmentation settings, optimiser (LARS with the
preset's warmup and cosine schedule over its epochs) and seed. They differ in the loop:
(a) fastclr's (Run.train_step: augmentation batched on the device), (b) the peer loop of
benchmarks/peer.py (per-image torchvision.transforms.v2 on PIL images in DataLoader workers),
whose model is built of PyTorch's own layers as a peer's is (or of fastclr's, --peer-layers).
The two take turns in slices of --slice-seconds, each with a clock of its own that runs only
in its slices, so other jobs on a shared machine slow both alike. When a loop's clock passes
a mark, its encoder is copied; a loop that reaches the end of the preset's schedule stops,
and later marks show its finished encoder. Each copy is then evaluated the same way: frozen
features h of the un-augmented train and test images and fastclr's linear probe on them
(L-BFGS logistic regression, L2 strength chosen on held-out train features).

Writes OUT/time_to_accuracy.json and OUT/time_to_accuracy.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from fastclr import distributed  # noqa: E402
from fastclr.checkpoint import atomic_write  # noqa: E402
from fastclr.config import load_config  # noqa: E402
from fastclr.data import Pretrain, get_spec, load_pretrain, load_split  # noqa: E402
from fastclr.errors import FastclrError  # noqa: E402
from fastclr.eval.features import extract_features, frozen  # noqa: E402
from fastclr.eval.plots import _save_png  # noqa: E402
from fastclr.eval.probes import linear_probe  # noqa: E402
from fastclr.train.loop import _set_backends  # noqa: E402  the backends training sets
from fastclr.train.step import build_run  # noqa: E402
from peer import PEER_LAYERS, PeerLoop, peer_model, usable_cpus  # noqa: E402


class Side:
    """One loop with its own clock: `advance(seconds)` trains about that long (whole steps),
    `snapshot()` copies its encoder at the current clock."""

    def __init__(self, name: str, encoder: torch.nn.Module, total_steps: int):
        self.name, self.encoder, self.total_steps = name, encoder, total_steps
        self.clock, self.step, self.snapshots = 0.0, 0, []

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def snapshot(self, mark: float) -> None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.encoder.state_dict().items()}
        self.snapshots.append({"mark_min": mark / 60, "minutes": self.clock / 60,
                               "step": self.step, "state": state})


class FastclrSide(Side):
    def __init__(self, run):
        super().__init__("fastclr", run.model.encoder, run.total_steps)
        self.run, self.batches = run, self._batches()

    def _batches(self):
        epoch = 0
        while True:
            yield from self.run.batches.epoch(epoch)
            epoch += 1

    def advance(self, seconds: float) -> None:
        self.run.forward.train()
        start = time.perf_counter()
        while not self.finished:
            self.run.train_step(next(self.batches), self.step)
            self.step += 1
            if time.perf_counter() - start >= seconds:
                break
        if self.run.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        self.clock += time.perf_counter() - start


class PeerSide(Side):
    def __init__(self, loop: PeerLoop, total_steps: int):
        super().__init__("peer", loop.model.encoder, total_steps)
        self.loop, self.step_seconds = loop, None

    def advance(self, seconds: float) -> None:
        # a slice's steps are fixed when its loader iterator starts: estimate them
        count = 2 if self.step_seconds is None else max(1, round(seconds / self.step_seconds))
        count = min(count, self.total_steps - self.step)
        start = time.perf_counter()
        self.loop.steps(count)
        if self.loop.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        self.clock += elapsed
        self.step += count
        if count > 1 or self.step_seconds is None:  # a lone step carries the loader's start
            self.step_seconds = elapsed / count


def train_in_turns(sides: list[Side], marks: list[float], slice_seconds: float) -> None:
    """Alternate slices until every side has passed its last mark or finished its schedule."""
    pending = {s.name: list(marks) for s in sides}
    while any(pending.values()):
        for side in sides:
            todo = pending[side.name]
            if not todo:
                continue
            if not side.finished:
                side.advance(min(slice_seconds, max(todo[0] - side.clock, 1e-3)))
            while todo and (side.clock >= todo[0] or side.finished):
                side.snapshot(todo.pop(0))
            print(f"  {side.name:8s} {side.clock / 60:6.2f} min  step {side.step:6d} / "
                  f"{side.total_steps}", flush=True)


def evaluate(sides: list[Side], cfg, probe_train: int | None, probe_test: int | None,
             device: torch.device) -> tuple[int, int]:
    """Linear top-1 of every snapshot, the same protocol for both loops; returns the numbers
    of train and test images used."""
    spec = get_spec(cfg.data)
    train = load_split(cfg.data, spec.train, cfg.data_dir, cfg.download, sample=probe_train)
    test = load_split(cfg.data, spec.test, cfg.data_dir, cfg.download, sample=probe_test)
    for side in sides:
        encoder, done = copy.deepcopy(side.encoder), {}
        for snap in side.snapshots:
            if snap["step"] not in done:  # a finished loop's later marks share one encoder
                encoder.load_state_dict(snap["state"])
                with frozen(encoder):
                    f_train = extract_features(encoder, train.images, cfg.eval_batch_size,
                                               device, cfg.image_size)
                    f_test = extract_features(encoder, test.images, cfg.eval_batch_size,
                                              device, cfg.image_size)
                done[snap["step"]] = linear_probe(f_train, train.labels, f_test, test.labels)
            snap["linear_top1"] = done[snap["step"]]["top1"]
            print(f"  {side.name:8s} {snap['minutes']:6.2f} min  step {snap['step']:6d}  "
                  f"linear top-1 {100 * snap['linear_top1']:.2f}%", flush=True)
    return len(train), len(test)


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for name, colour in (("fastclr", "tab:blue"), ("peer", "tab:orange")):
        rows = result[name]
        ax.plot([r["minutes"] for r in rows], [100 * r["linear_top1"] for r in rows],
                marker="o", color=colour, label=result["labels"][name])
    ax.set(xlabel="pretraining minutes (each loop's own clock)", ylabel="linear top-1 (%)",
           title=f"{result['config']}: time to accuracy, {result['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save_png(fig, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="fashion-mnist-cpu", help="preset to pretrain")
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5, 10],
                   help="marks on each loop's clock where its encoder is evaluated")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--workers", type=int, default=usable_cpus(),
                   help=f"the peer loop's DataLoader workers (default: the usable CPUs, "
                   f"{usable_cpus()} here)")
    p.add_argument("--data-dir", help="where the preset's data set is")
    p.add_argument("--images", type=int, help="pretrain on only this many images (a fixed "
                   "subset; default all); the schedule's epochs shrink with it")
    p.add_argument("--probe-train", type=int, help="train images of the linear probe (a "
                   "fixed random subset; default all)")
    p.add_argument("--probe-test", type=int, help="test images scored (default all)")
    p.add_argument("--slice-seconds", type=float, default=20.0,
                   help="length of each loop's turn (default 20)")
    p.add_argument("--peer-layers", choices=PEER_LAYERS, default="torch",
                   help="what the peer's model is built of: torch (nn.Conv2d, nn.BatchNorm2d, "
                   "as a peer's torchvision ResNet; default) or fastclr (its layers with their "
                   "own CPU backward)")
    p.add_argument("--out", default="runs/time-to-accuracy", help="folder for JSON and PNG")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"device": args.device, "threads": args.threads, "data_dir": args.data_dir}
    try:
        cfg = load_config(args.config, overrides={k: v for k, v in overrides.items()
                                                  if v is not None})
        _set_backends(cfg)
        ctx = distributed.Context(0, 0, 1, distributed.resolve_device(cfg.device))
        pretrain = load_pretrain(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
        if pretrain.streamed:
            raise SystemExit(f"{cfg.data} is streamed from files: not supported here")
        if args.images is not None and args.images < len(pretrain):
            rows = torch.randperm(len(pretrain), generator=torch.Generator().manual_seed(0))
            pretrain = Pretrain.from_images(pretrain.images[rows[:args.images]], cfg.data)
        run = build_run(cfg, ctx, pretrain)
    except FastclrError as e:
        print(f"time_to_accuracy.py: {e}", file=sys.stderr)
        return 2
    peer = PeerLoop(cfg, peer_model(run.model, args.peer_layers), pretrain.images,
                    pretrain.shape[-1],
                    ctx.device, args.workers, run.total_steps, run.warmup_steps, run.peak_lr,
                    run.channels_last, run.autocast)
    sides = [FastclrSide(run), PeerSide(peer, run.total_steps)]
    marks = sorted(60 * m for m in args.minutes)
    print(f"{cfg.name}: {len(pretrain)} images, {run.total_steps} steps ({cfg.epochs} "
          f"epochs of batch {cfg.batch_size}), marks {args.minutes} min, "
          f"{torch.get_num_threads()} threads, {args.workers} peer workers", flush=True)
    started = time.perf_counter()
    train_in_turns(sides, marks, args.slice_seconds)
    trained = time.perf_counter() - started
    print("evaluating the snapshots", flush=True)
    n_train, n_test = evaluate(sides, cfg, args.probe_train, args.probe_test, ctx.device)
    result = {
        "config": cfg.name, "device": str(ctx.device), "threads": torch.get_num_threads(),
        "peer_workers": args.workers, "peer_layers": args.peer_layers,
        "pretrain_images": len(pretrain),
        "schedule_steps": run.total_steps, "epochs": cfg.epochs, "batch": cfg.batch_size,
        "optimizer": f"{cfg.optimizer} (both loops; lr peak {run.peak_lr:.3g}, "
                     f"{run.warmup_steps} warmup steps, cosine to step {run.total_steps})",
        "probe": f"linear (L-BFGS) on frozen h: {n_train} train / {n_test} test images",
        "marks_min": args.minutes, "wall_seconds_training": round(trained, 1),
        "labels": {"fastclr": "fastclr (augmentation batched on the device)",
                   "peer": f"peer loop (torchvision per PIL image, {args.workers} workers)"},
    }
    for side in sides:
        result[side.name] = [{k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in s.items() if k != "state"} for s in side.snapshots]
        result[f"{side.name}_finished_min"] = round(side.clock / 60, 3) if side.finished \
            else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(result, indent=2).encode()
    atomic_write(out / "time_to_accuracy.json", lambda f: f.write(blob))
    plot(result, out / "time_to_accuracy.png")
    print(f"wrote {out / 'time_to_accuracy.json'} and {out / 'time_to_accuracy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
