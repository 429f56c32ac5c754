"""The pretraining loop (SimCLR algorithm 1), the same code on a laptop CPU and on many GPUs.

One step: a batch of uint8 images on the device -> two per-sample random views -> one forward
of f and g on all 2N views -> NT-Xent over the global batch -> backward -> optimiser. The step
never reads a tensor on the host: a non-finite loss is turned into a skipped optimiser step on
the device, and losses are read only every `log_every` steps.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

import torch

from fastclr import distributed
from fastclr.augment import engine as augment_engine
from fastclr.checkpoint import (checkpoint_path, export_encoder, latest_checkpoint,
                                load_checkpoint, prune_checkpoints, remove_stale_temp,
                                save_checkpoint)
from fastclr.config import Config
from fastclr.data import get_spec, load_pretrain
from fastclr.data.batches import InMemoryBatches
from fastclr.errors import CheckpointError
from fastclr.eval.monitor import Monitor, OnlineProbe
from fastclr.train.runfolder import (MetricsLog, check_compatible, default_run_dir, find_resume,
                                     log_skipped, record_train_time, setup_logging,
                                     write_run_info)
from fastclr.train.signals import StopSignals, Stopped
from fastclr.train.step import all_finite, build_run, checkpoint_state

log = logging.getLogger("fastclr")


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
    if ctx.device.type == "cpu" and augment_engine.NATIVE is None:
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
