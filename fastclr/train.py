"""The pretraining loop (SimCLR algorithm 1), the same code on a laptop CPU and on many GPUs.

One step: a batch of uint8 images on the device -> two per-sample random views -> one forward
of f and g on all 2N views -> NT-Xent over the global batch -> backward -> optimiser. The step
never reads a tensor on the host: a non-finite loss is turned into a skipped optimiser step on
the device, and losses are read only every `log_every` steps.
"""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fastclr import augment as augment_module
from fastclr import distributed
from fastclr.augment import SimCLRAugment
from fastclr.batches import InMemoryBatches, StreamingBatches
from fastclr.checkpoint import (checkpoint_path, export_encoder, latest_checkpoint,
                                load_checkpoint, prune_checkpoints, remove_stale_temp,
                                save_checkpoint)
from fastclr.config import Config
from fastclr.data import Pretrain, get_spec, load_pretrain, load_split, pretrain_batches
from fastclr.errors import CheckpointError
from fastclr.evaluate import OnlineProbe, extract_features, knn_top1
from fastclr.loss import nt_xent
from fastclr.models import SimCLR, channels_last_ok, model_from_config
from fastclr.optim import build_optimizer, lr_at, peak_lr
from fastclr.runfolder import (MetricsLog, check_compatible, default_run_dir, find_resume,
                               log_skipped, record_train_time, setup_logging, write_run_info)

log = logging.getLogger("fastclr")


def augment_from_config(cfg: Config) -> SimCLRAugment:
    return SimCLRAugment(size=cfg.image_size, crop_scale=cfg.crop_scale,
                         crop_ratio=cfg.crop_ratio, flip_p=cfg.flip_p,
                         color_strength=cfg.color_strength, color_p=cfg.color_p,
                         gray_p=cfg.gray_p, blur_p=cfg.blur_p, blur_sigma=cfg.blur_sigma,
                         solarize_p=cfg.solarize_p)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The augmentation seed of one step on one process: randomness is a function of the step,
    so a resumed run draws exactly the views the uninterrupted run would have drawn."""
    return (seed * 2**52 + rank * 2**32 + step) % 2**64


class BufferGuard:
    """Keeps BN running statistics of a step whose loss was not finite from being kept.

    BN updates its running mean/var in the forward pass, before the loss is known; a skipped
    step must not leave NaN statistics behind. Restoring is branch-free (no host sync).
    """

    def __init__(self, model: nn.Module):
        self.buffers = [b for b in model.buffers() if b.dtype != torch.bool]
        self.saved = [b.clone() for b in self.buffers]

    def save(self) -> None:
        for s, b in zip(self.saved, self.buffers):
            s.copy_(b)

    def restore_if(self, bad: torch.Tensor) -> None:
        for b, s in zip(self.buffers, self.saved):
            b.copy_(torch.where(bad, s, b))


class Stopped(Exception):
    """Training stopped early on a signal, after saving a checkpoint to resume from."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} "
                         "saved: run the same command again to resume")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopSignals:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's pre-emption warning) ask the loop to finish its
    step, save and stop; a second Ctrl-C stops at once. Handlers are restored on exit."""

    NAMES = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: no more waiting
        if self.received is None:
            self.received = name
            print(f"\nfastclr: {name} received: finishing this step, then saving a checkpoint "
                  "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """What the loop needs, built once: used by train() and by tests that drive single steps."""

    cfg: Config
    ctx: distributed.Context
    model: SimCLR  # the plain module: what checkpoints hold
    forward: nn.Module  # what the step calls: maybe DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    augment: SimCLRAugment
    batches: InMemoryBatches | StreamingBatches
    total_steps: int
    warmup_steps: int
    peak_lr: float
    generator: torch.Generator
    autocast: bool
    guard: BufferGuard
    channels_last: bool
    views: torch.Tensor | None = None  # the augmentation's output buffer, reused
    probe: OnlineProbe | None = None  # optional linear probe on stop-gradient h

    def train_step(self, images: torch.Tensor, step: int, labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the loss and a bool tensor 'this step was skipped'.
        `labels` (n,) of the images feed the online probe, if there is one."""
        cfg, device = self.cfg, self.ctx.device
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.generator.manual_seed(step_seed(cfg.seed, step, self.ctx.rank))
        self.guard.save()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # (2n, C, S, S) in fp32: rows i and n + i are two views of image i, one forward for
        # both; written into the same buffer every step (fresh pages cost more than the maths)
        x = self.augment.stacked_views(images, self.generator, out=self.views, memory_format=fmt)
        self.views = x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            h, z = self.forward(x)  # (2n, feat_dim), (2n, proj_dim)
            n = len(images)
            loss = nt_xent(z[:n], z[n:], cfg.temperature, distributed=self.ctx.world_size > 1)
        bad = ~torch.isfinite(loss.detach())
        if self.ctx.world_size > 1:  # every process must skip the same steps
            bad = distributed.all_reduce_max(bad.to(torch.uint8)).bool()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.found_inf = bad.float()
        self.optimizer.step()
        self.guard.restore_if(bad)
        if self.probe is not None and labels is not None:
            self.probe.step(h[:n], labels, bad)  # first view's h, detached inside
        return loss.detach(), bad


def build_run(cfg: Config, ctx: distributed.Context, pretrain: Pretrain) -> Run:
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    model = model_from_config(cfg, pretrain.shape[0], pretrain.mean, pretrain.std)
    if ctx.world_size > 1 and cfg.sync_bn:
        model = distributed.convert_sync_batchnorm(model, ctx.device)
    model = model.to(ctx.device)
    channels_last = channels_last_ok(model, ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: nn.Module = model
    if ctx.world_size > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward = torch.compile(forward)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.weight_decay, cfg.momentum,
                                cfg.trust_coefficient)
    batches = pretrain_batches(pretrain, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size,
                               ctx.device, cfg.num_workers)
    total = cfg.epochs * batches.steps_per_epoch
    warmup = round(cfg.warmup_epochs * batches.steps_per_epoch)
    precision = cfg.precision if cfg.precision != "auto" else (
        "bf16" if ctx.device.type == "cuda" else "fp32")
    return Run(cfg, ctx, model, forward, optimizer, augment_from_config(cfg), batches, total,
               warmup, peak_lr(cfg.lr_rule, cfg.batch_size, cfg.base_lr),
               torch.Generator(ctx.device), precision == "bf16", BufferGuard(model),
               channels_last)


# ---- checkpoints ----------------------------------------------------------------------------


def checkpoint_state(run: Run, step: int, extra: dict) -> dict:
    """Everything an exact resume needs. The data order and the views are functions of (seed,
    epoch) and (seed, step, rank), so they need no saved generator; the global RNG is saved
    for anything else that draws from it."""
    return {"step": step, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "config": run.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(), **extra}


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


# ---- monitoring -----------------------------------------------------------------------------


class Monitor:
    """kNN top-1 on labeled training images: a bank and disjoint queries, both from the train
    split, so the best checkpoint it picks was never chosen by the test set."""

    def __init__(self, cfg: Config, device: torch.device, bank_size=10_000, query_size=2_000):
        spec = get_spec(cfg.data)
        size = cfg.image_size  # features at the training resolution (folder sets decode at it)
        images = load_split(cfg.data, spec.train, cfg.data_dir, size=size,
                            sample=bank_size + query_size)
        cut = len(images) * bank_size // (bank_size + query_size)
        self.bank = images.subset(torch.arange(cut))
        self.query = images.subset(torch.arange(cut, len(images)))
        self.cfg, self.device = cfg, device

    def __call__(self, encoder: nn.Module) -> float:
        bs, size = self.cfg.eval_batch_size, self.cfg.image_size
        fb = extract_features(encoder, self.bank.images, bs, self.device, size=size)
        fq = extract_features(encoder, self.query.images, bs, self.device, size=size)
        return knn_top1(fb, self.bank.labels, fq, self.query.labels, self.cfg.knn_k,
                        self.cfg.knn_temperature)


# ---- the loop -------------------------------------------------------------------------------


def train(cfg: Config, progress: bool = True) -> Path:
    """Pretrain as `cfg` says; returns the run folder (checkpoints, metrics, encoder, report)."""
    ctx = distributed.setup(cfg.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, ctx, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a global switch: put it back
        distributed.teardown()


def _train(cfg: Config, ctx: distributed.Context, progress: bool) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    resume_from = find_resume(cfg, run_dir)
    saved, changed = None, []
    if resume_from is not None:
        saved = load_checkpoint(resume_from, map_location=ctx.device)
        changed = check_compatible(saved["config"], cfg, resume_from)

    pretrain = load_pretrain(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
    if ctx.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp(run_dir / "checkpoints")
            write_run_info(run_dir, cfg, ctx, pretrain)
        except OSError as e:
            raise CheckpointError(f"cannot write to the run folder {run_dir}: "
                                  f"{e.strerror or e}") from None
    distributed.barrier()
    setup_logging(run_dir, ctx.is_main)
    if changed:
        log.info("resuming with changed options: %s", ", ".join(changed))
    if ctx.is_main:
        log_skipped(pretrain)

    run = build_run(cfg, ctx, pretrain)
    step, best_knn, seconds_before = 0, -1.0, 0.0  # seconds: pretraining up to the checkpoint
    if saved is not None:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        step, best_knn = saved["step"], saved.get("best_knn", -1.0)
        seconds_before = saved.get("train_seconds", 0.0)
        torch.set_rng_state(saved["torch_rng"].cpu())
        log.info("resumed from %s at step %d", resume_from, step)

    spe = run.batches.steps_per_epoch
    label_batches = None
    if cfg.online_probe and ctx.is_main:
        if pretrain.labels is None or pretrain.streamed:
            log.warning("online_probe: %s has no labels for its pretraining images; no probe",
                        cfg.data)
        else:
            classes = int(pretrain.labels.max()) + 1
            run.probe = OnlineProbe(run.model.encoder.feat_dim, classes).to(ctx.device)
            # same seed and length as run.batches, so label batch i goes with image batch i
            label_batches = InMemoryBatches(pretrain.labels.to(ctx.device), cfg.batch_size,
                                            cfg.seed, ctx.rank, ctx.world_size)
    last_step = run.total_steps if cfg.max_steps is None else min(run.total_steps, cfg.max_steps)
    labeled = get_spec(cfg.data).labeled
    if cfg.knn_every and not labeled:
        log.info("kNN monitor off: %s has no labels", cfg.data)
    monitor = Monitor(cfg, ctx.device) if cfg.knn_every and labeled and ctx.is_main else None
    metrics = MetricsLog(run_dir, cfg.tensorboard, step) if ctx.is_main else None
    held = f"streamed by {cfg.num_workers} workers" if pretrain.streamed else "in memory"
    log.info("fastclr: %s on %s, %s images %s %s, %s (width %s, %s stem), global batch %d, "
             "%d epochs = %d steps, peak lr %.3g (%s), world size %d",
             cfg.name, ctx.device, len(pretrain), tuple(pretrain.shape), held, cfg.arch,
             cfg.width, cfg.stem, cfg.batch_size, cfg.epochs, run.total_steps, run.peak_lr,
             cfg.optimizer, ctx.world_size)
    if ctx.device.type == "cpu" and augment_module.NATIVE is None:
        log.info("augmentation runs on PyTorch tensor ops: fastclr's C kernel was not built "
                 "(no C compiler at install time?), so CPU augmentation is several times slower")

    loop_start = tick = time.perf_counter()
    bar = None
    if progress and ctx.is_main and step < last_step:
        from tqdm import tqdm
        bar = tqdm(total=last_step, initial=step, unit="step", dynamic_ncols=True,
                   file=sys.stderr, mininterval=1.0)

    def save(at: int, best: bool = False) -> None:
        if not ctx.is_main:
            return
        if not all_finite(run.model):
            raise CheckpointError(f"step {at}: the model holds non-finite values; not writing a "
                                  "checkpoint (the last good one stays)")
        seconds = seconds_before + time.perf_counter() - loop_start
        state = checkpoint_state(run, at, {"best_knn": best_knn, "train_seconds": seconds})
        save_checkpoint(checkpoint_path(run_dir, at), state)
        if best:
            save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
        prune_checkpoints(run_dir, cfg.keep_checkpoints)

    device = ctx.device
    loss_sum = torch.zeros((), device=device)  # finite losses since the last log line
    good = torch.zeros((), device=device)
    skipped = torch.zeros((), device=device)  # every process skips the same steps
    bad_run = torch.zeros((), device=device)  # current streak of non-finite steps
    worst_run = torch.zeros((), device=device)
    tick_step = step
    run.forward.train()
    with StopSignals() as signals:
        while step < last_step:
            epoch = step // spe
            labels = label_batches.epoch(epoch, start=step % spe) \
                if label_batches is not None else itertools.repeat(None)
            for images, batch_labels in zip(run.batches.epoch(epoch, start=step % spe), labels):
                loss, bad = run.train_step(images, step, batch_labels)
                loss_sum += torch.where(bad, 0.0, loss)
                good += (~bad).float()
                skipped += bad.float()
                bad_run = (bad_run + 1) * bad.float()
                worst_run = torch.maximum(worst_run, bad_run)
                step += 1
                done = step >= last_step
                # one process acts on a signal at once; several agree at the next log line
                stop = signals.received is not None and ctx.world_size == 1
                if step % cfg.log_every == 0 or done or step % spe == 0 or stop:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    now = time.perf_counter()
                    flag = torch.tensor(float(signals.received is not None), device=device)
                    summed = torch.stack([loss_sum, good, flag])
                    if ctx.world_size > 1:
                        summed = distributed.all_reduce_sum(summed)
                    loss_v, good_v, stop_v = summed.tolist()
                    skipped_v, worst_v = skipped.item(), worst_run.item()
                    views = 2 * cfg.batch_size * (step - tick_step) / max(now - tick, 1e-9)
                    mean_loss = loss_v / good_v if good_v else float("nan")
                    lr = run.optimizer.param_groups[0]["lr"]
                    if metrics is not None:
                        probe = {"probe_top1": run.probe.read()} if run.probe is not None else {}
                        metrics.write(step, {"epoch": step / spe, "loss": mean_loss, "lr": lr,
                                             "views_per_s": views, "skipped_steps": skipped_v,
                                             **probe})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}",
                                        views_s=f"{views:.0f}", refresh=False)
                        bar.update(step - bar.n)
                    if worst_v >= cfg.max_nonfinite:
                        raise FloatingPointError(
                            f"{int(worst_v)} non-finite losses in a row by step {step} (lr "
                            f"{lr:.3g}); those steps were skipped and the last checkpoint is "
                            "intact. Try a lower base_lr, a longer warmup or --precision fp32.")
                    if stop_v > 0 and not done:
                        save(step)
                        if bar is not None:
                            bar.close()
                        raise Stopped(signals.received or "a signal on another process", step,
                                      checkpoint_path(run_dir, step))
                    loss_sum.zero_()
                    good.zero_()
                    tick, tick_step = time.perf_counter(), step
                if step % cfg.checkpoint_every == 0 and not done:
                    save(step)
                    tick = time.perf_counter()
                if done:
                    break
            if step % spe == 0 and monitor is not None and (step // spe) % cfg.knn_every == 0:
                knn = monitor(run.model.encoder)
                better = knn > best_knn
                best_knn = max(best_knn, knn)
                log.info("epoch %d: kNN top-1 %.2f%% (monitor: %d bank / %d held-out train "
                         "images)",
                         step // spe, 100 * knn, len(monitor.bank), len(monitor.query))
                metrics.write(step, {"epoch": step / spe, "knn_top1": knn})
                save(step, best=better)
                tick = time.perf_counter()
    if bar is not None:
        bar.close()
    if ctx.is_main and latest_checkpoint(run_dir) != checkpoint_path(run_dir, step):
        save(step)
    if ctx.is_main:
        meta = {"arch": cfg.arch, "width": cfg.width, "stem": cfg.stem,
                "in_channels": pretrain.shape[0],
                "mean": run.model.encoder.mean.flatten().tolist(),
                "std": run.model.encoder.std.flatten().tolist(),
                "feat_dim": run.model.encoder.feat_dim, "data": cfg.data, "step": step}
        export_encoder(run.model.encoder, run_dir / "encoder.safetensors", meta)
        seconds = seconds_before + time.perf_counter() - loop_start
        record_train_time(run_dir, seconds)
        if metrics is not None:
            metrics.close()
        log.info("pretraining done: %d steps, %.1f s of training; encoder saved to %s", step,
                 seconds, run_dir / "encoder.safetensors")
        if run.batches.failures:
            log.warning("%d times an image failed to decode and another took its place (the "
                        "files are named above)", run.batches.failures)
    return run_dir


