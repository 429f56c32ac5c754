"""The pretraining loop (SimCLR algorithm 1), the same code on a laptop CPU and on many GPUs.

`Trainer.fit` resumes or starts a run, trains it step by step (`step.Run.train_step`), logs,
checkpoints, watches the kNN monitor, tracks how h and z form (fastclr.eval.tracking), and
exports the encoder. The step never reads a tensor on
the host; losses and skipped steps are read once per log line (`RunningStats`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path

import torch

from fastclr import distributed
from fastclr.augment import engine as augment_engine
from fastclr.augment.pipeline import augment_from_config
from fastclr.checkpoint import (checkpoint_path, export_encoder, latest_checkpoint,
                                load_checkpoint, prune_checkpoints, remove_stale_temp,
                                save_checkpoint)
from fastclr.config import Config, with_absolute_paths
from fastclr.data import check_evaluation_data, get_spec, load_pretrain
from fastclr.data.batches import InMemoryBatches
from fastclr.errors import CheckpointError
from fastclr.eval.monitor import Monitor, OnlineProbe
from fastclr.eval.tracking import Tracker, tracking_steps
from fastclr.optim import lr_at
from fastclr.train.runfolder import (MetricsLog, RunLock, RunRecord, check_identity,
                                     default_run_dir, find_resume, log_skipped,
                                     record_train_time, saved_config, setup_logging,
                                     write_config)
from fastclr.train.signals import StopSignals, Stopped
from fastclr.train.step import all_finite, build_run, checkpoint_state

log = logging.getLogger("fastclr")


def train(cfg: Config, progress: bool = True) -> Path:
    """Pretrain as `cfg` says; returns the run folder (checkpoints, metrics, encoder, report)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with distributed.joined(cfg.device) as ctx:
            return Trainer(cfg, ctx, progress).fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)  # a global switch: put it back


class RunningStats:
    """Losses and skipped steps since the last log line, kept on the device (a step never
    syncs with the host) and read, summed over the processes, once per log line."""

    def __init__(self, device: torch.device):
        zero = lambda: torch.zeros((), device=device)  # noqa: E731
        self.loss_sum, self.good = zero(), zero()  # finite losses since the last read
        self.skipped, self.bad_run, self.worst_run = zero(), zero(), zero()  # whole run

    def add(self, loss: torch.Tensor, bad: torch.Tensor) -> None:
        self.loss_sum += torch.where(bad, 0.0, loss)
        self.good += (~bad).float()
        self.skipped += bad.float()  # every process skips the same steps
        self.bad_run = (self.bad_run + 1) * bad.float()  # the current streak of bad steps
        self.worst_run = torch.maximum(self.worst_run, self.bad_run)

    def read(self, world_size: int, stop: bool) -> tuple[float, float, float, bool]:
        """(mean loss, skipped steps, longest streak, whether any process was signalled)."""
        summed = torch.stack([self.loss_sum, self.good,
                              torch.tensor(float(stop), device=self.good.device)])
        if world_size > 1:
            summed = distributed.all_reduce_sum(summed)
        loss, good, stopping = summed.tolist()
        self.loss_sum.zero_()
        self.good.zero_()
        mean = loss / good if good else float("nan")
        return mean, self.skipped.item(), self.worst_run.item(), stopping > 0


class Trainer:
    """One session of one run: resume (or start), train to the last step, export."""

    def __init__(self, cfg: Config, ctx: distributed.Context, progress: bool = True):
        # saved in config.yaml, checkpoints and the export: data paths from any directory
        self.cfg, self.ctx, self.progress = with_absolute_paths(cfg), ctx, progress
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        self.step, self.best_knn, self.seconds_before = 0, -1.0, 0.0
        self.monitor = self.tracker = self.labels = self.metrics = self.bar = None

    def fit(self) -> Path:
        cfg, ctx = self.cfg, self.ctx
        with self._lock():
            self._prepare()  # a signal here stops at once: there is nothing to save yet
            run, spe = self.run, self.run.batches.steps_per_epoch
            stats, started_at = RunningStats(ctx.device), self.step
            self.loop_start = self.tick = time.perf_counter()
            self.tick_step = self.step
            run.forward.train()
            try:
                with StopSignals() as signals:
                    self._track(start=True)
                    while self.step < self.last_step:
                        epoch = self.step // spe
                        for images, labels in self._batches(epoch):
                            loss, bad = run.train_step(images, self.step, labels)
                            stats.add(loss, bad)
                            self.step += 1
                            done = self.step >= self.last_step
                            # one process acts on a signal at once; several agree at the next log
                            alone = signals.received is not None and ctx.world_size == 1
                            if (self.step % cfg.log_every == 0 or done or self.step % spe == 0
                                    or alone):
                                self._log_line(stats, signals, done)
                            self._track()
                            if self.step % cfg.checkpoint_every == 0 and not done:
                                self._save()
                            if done:
                                break
                        if self.step % spe == 0 and self._monitor_due():
                            self._watch()
            except BaseException as e:
                self._end(self._outcome(e))
                raise
            self._finish(trained=self.step > started_at)
        return self.run_dir

    # ---- set-up ---------------------------------------------------------------------------

    def _lock(self):
        """The one-writer lock, held by rank 0, taken before anything in the folder is read."""
        if not self.ctx.is_main:
            return contextlib.nullcontext()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp(self.run_dir / "checkpoints")
            return RunLock(self.run_dir)
        except OSError as e:
            raise CheckpointError(f"cannot write to the run folder {self.run_dir}: "
                                  f"{e.strerror or e}") from None

    def _prepare(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        _set_backends(cfg)
        resume_from = find_resume(cfg, self.run_dir)
        state = load_checkpoint(resume_from, map_location=ctx.device) if resume_from else None
        old = saved_config(self.run_dir, resume_from, state)
        allowed, others = check_identity(old, cfg, self.run_dir) if old else ([], [])
        distributed.barrier()  # rank 0 made the folder
        setup_logging(self.run_dir, ctx.is_main)
        pretrain = load_pretrain(cfg.data, cfg.data_dir, cfg.download, cfg.image_size)
        if cfg.final_eval:  # what the evaluation after pretraining reads is there now
            check_evaluation_data(cfg.data, cfg.data_dir, cfg.download)
        self.run = build_run(cfg, ctx, pretrain)
        self.image_size = pretrain.shape[-1]  # of the views, recorded in the export
        if state is not None:
            self._restore(state, resume_from)
        self.record = RunRecord(self.run_dir)
        if ctx.is_main:
            write_config(self.run_dir, cfg)
            self.record.start(cfg, ctx.world_size, str(ctx.device), pretrain, self.step,
                              allowed)
        if allowed:
            log.info("resuming with changed training options (allowed): %s", ", ".join(allowed))
            if old is not None and old.epochs != cfg.epochs:
                self._log_schedule_change(old)
        if others:
            log.info("resuming with changed options: %s", ", ".join(others))
        if ctx.is_main:
            log_skipped(pretrain)
        self.last_step = self.run.total_steps if cfg.max_steps is None else \
            min(self.run.total_steps, cfg.max_steps)
        self._set_up_watchers(pretrain)
        if ctx.is_main:
            self.metrics = MetricsLog(self.run_dir, cfg.tensorboard, self.step)
        self._log_banner(pretrain)
        if self.step >= self.last_step and state is not None:
            log.info("the run is finished at step %d: nothing to train (to train longer, "
                     "add --epochs N --allow-change epochs)", self.step)
        if self.progress and ctx.is_main and self.step < self.last_step:
            from tqdm import tqdm
            self.bar = tqdm(total=self.last_step, initial=self.step, unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def _restore(self, state: dict, path: Path) -> None:
        run = self.run
        if state["spec"] != run.model.spec.to_dict():
            raise CheckpointError(f"cannot resume {path}: it holds another model (its spec "
                                  "differs from this config's); use another --run-dir")
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best_knn = state["step"], state.get("best_knn", -1.0)
        self.seconds_before = state.get("train_seconds", 0.0)
        torch.set_rng_state(state["torch_rng"].cpu())
        log.info("resumed from %s at step %d", path, self.step)

    def _set_up_watchers(self, pretrain) -> None:
        """The tracker; the kNN monitor and the online probe, each only where the data set has
        labels; and the label batches the probe and the supervised objective read."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.track_every and ctx.is_main:
            every = tracking_steps(cfg, self.run.batches.steps_per_epoch)
            self.tracker = Tracker(cfg, ctx.device, self.run_dir, every,
                                   augment_from_config(cfg, pretrain.shape[0]), self.step)
        labeled = get_spec(cfg.data).labeled
        if cfg.knn_every and not labeled:
            log.info("kNN monitor off: %s has no labels", cfg.data)
        if cfg.knn_every and labeled and ctx.is_main:
            self.monitor = Monitor(cfg, ctx.device)
        has_labels = pretrain.labels is not None and not pretrain.streamed
        if cfg.online_probe and ctx.is_main and not has_labels:
            log.warning("online_probe: %s; no probe", _why_no_probe(cfg.data, labeled, pretrain))
        if cfg.online_probe and ctx.is_main and has_labels:
            classes = int(pretrain.labels.max()) + 1
            self.run.probe = OnlineProbe(self.run.model.encoder.feat_dim, classes).to(ctx.device)
        if has_labels and (self.run.probe is not None or cfg.objective == "supervised"):
            # same seed and length as the image batches, so label batch i goes with batch i
            self.labels = InMemoryBatches(pretrain.labels.to(ctx.device), cfg.batch_size,
                                                cfg.seed, ctx.rank, ctx.world_size)

    def _batches(self, epoch: int):
        """(images, labels or None) of the epoch, from the step the run is at."""
        start = self.step % self.run.batches.steps_per_epoch
        labels = self.labels.epoch(epoch, start=start) if self.labels is not None \
            else itertools.repeat(None)
        return zip(self.run.batches.epoch(epoch, start=start), labels)

    # ---- during training ------------------------------------------------------------------

    def _log_line(self, stats: RunningStats, signals: StopSignals, done: bool) -> None:
        """Read the running statistics (the only host sync), log them, act on a signal."""
        cfg, run, spe = self.cfg, self.run, self.run.batches.steps_per_epoch
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        loss, skipped, worst, stop = stats.read(self.ctx.world_size, signals.received is not None)
        views = 2 * cfg.batch_size * (self.step - self.tick_step) / max(now - self.tick, 1e-9)
        lr = run.optimizer.param_groups[0]["lr"]
        if self.metrics is not None:
            probe = {"probe_top1": run.probe.read()} if run.probe is not None else {}
            self.metrics.write(self.step, {"epoch": self.step / spe, "loss": loss, "lr": lr,
                                           "views_per_s": views, "skipped_steps": skipped,
                                           **probe})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", views_s=f"{views:.0f}",
                                 refresh=False)
            self.bar.update(self.step - self.bar.n)
        if worst >= cfg.max_nonfinite:
            raise FloatingPointError(
                f"{int(worst)} non-finite losses in a row by step {self.step} (lr {lr:.3g}); "
                "those steps were skipped and the last checkpoint is intact. Try a lower "
                "base_lr, a longer warmup or --precision fp32.")
        if stop and not done:
            self._save()
            raise Stopped(signals.received or "a signal on another process", self.step,
                          checkpoint_path(self.run_dir, self.step))
        self.tick, self.tick_step = time.perf_counter(), self.step

    def _save(self, best: bool = False) -> None:
        if self.ctx.is_main:
            if not all_finite(self.run.model):
                raise CheckpointError(f"step {self.step}: the model holds non-finite values; "
                                      "not writing a checkpoint (the last good one stays)")
            state = checkpoint_state(self.run, self.step, {"best_knn": self.best_knn,
                                                           "train_seconds": self._seconds()})
            save_checkpoint(checkpoint_path(self.run_dir, self.step), state)
            if best:
                save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)
            prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
            self.record.update(self.step)
        self.tick = time.perf_counter()  # saving is not training: keep it out of views/s

    def _track(self, start: bool = False) -> None:
        """A tracking point, if one is due at this step; at the start of a session only if it
        is not recorded yet (a resumed run may have measured its step before it stopped)."""
        t = self.tracker
        if t is None or not t.due(self.step, self.last_step) or (start and t.recorded(self.step)):
            return
        scalars, cosines = t(self.run.model, self.step)
        self.metrics.write(self.step, {"epoch": self.step / self.run.batches.steps_per_epoch,
                                       **scalars})
        self.metrics.histograms(self.step, cosines)
        self.tick += scalars["dynamics/seconds"]  # not training: keep it out of views/s
        get = lambda m, s: scalars.get(f"dynamics/{m}_{s}", float("nan"))  # noqa: E731
        knn = "" if t.k is None else (f"kNN top-1 h {100 * get('knn_top1', 'h'):.1f}%, "
                                      f"z {100 * get('knn_top1', 'z'):.1f}%; ")
        log.info("step %d: %scontrastive top-1 z %.1f%%; effective rank h %.1f, z %.1f; "
                 "cosine of positives %.2f, negatives %.2f (z) [%.1f s]", self.step, knn,
                 100 * get("contrastive_top1", "z"), get("effective_rank", "h"),
                 get("effective_rank", "z"), get("cos_pos", "z"), get("cos_neg", "z"),
                 scalars["dynamics/seconds"])

    def _monitor_due(self) -> bool:
        spe = self.run.batches.steps_per_epoch
        return self.monitor is not None and (self.step // spe) % self.cfg.knn_every == 0

    def _watch(self) -> None:
        """The kNN monitor at an epoch's end; its best checkpoint becomes best.pt."""
        knn = self.monitor(self.run.model.encoder)
        better, self.best_knn = knn > self.best_knn, max(self.best_knn, knn)
        epoch = self.step // self.run.batches.steps_per_epoch
        log.info("epoch %d: kNN top-1 %.2f%% (monitor: %d bank / %d held-out train images)",
                 epoch, 100 * knn, len(self.monitor.bank), len(self.monitor.query))
        self.metrics.write(self.step, {"epoch": epoch, "knn_top1": knn})
        self._save(best=better)

    # ---- the end --------------------------------------------------------------------------

    def _finish(self, trained: bool) -> None:
        if not self.ctx.is_main:
            return
        if latest_checkpoint(self.run_dir) != checkpoint_path(self.run_dir, self.step):
            self._save()
        exported = self.run_dir / "encoder.safetensors"
        if trained or not exported.is_file():
            meta = {"data": self.cfg.data, "step": self.step,
                    "feat_dim": self.run.model.encoder.feat_dim,
                    "image_size": self.image_size, "config": self.cfg.to_dict()}
            export_encoder(self.run.model.encoder, exported, meta)
            record_train_time(self.run_dir, self._seconds())
        if self.metrics is not None:
            self.metrics.close()
        self._end("finished" if self.step >= self.run.total_steps
                  else f"stopped at --max-steps {self.cfg.max_steps}")
        log.info("pretraining done: %d steps, %.1f s of training; encoder saved to %s",
                 self.step, self._seconds(), exported)
        if self.tracker is not None and self.tracker.points:
            self._log_tracking_cost()
        if self.run.batches.failures:
            log.warning("%d times an image failed to decode and another took its place (the "
                        "files are named above)", self.run.batches.failures)

    def _log_tracking_cost(self) -> None:
        t, total = self.tracker, time.perf_counter() - self.loop_start
        share = t.seconds / max(total, 1e-9)
        log.info("tracking: %d points in this session, %.1f s of its %.1f s (%.1f%%); "
                 "`fastclr inspect %s` draws them", t.points, t.seconds, total, 100 * share,
                 self.run_dir)
        if share > 0.05:
            log.warning("tracking took more than 5% of training: raise --track-every or "
                        "lower --track-images")

    def _end(self, outcome: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.ctx.is_main and hasattr(self, "record") and self.record.sessions:
            self.record.update(self.step, outcome)

    def _outcome(self, error: BaseException) -> str:
        if isinstance(error, Stopped):
            return f"stopped by {error.signal_name}"
        if isinstance(error, KeyboardInterrupt):
            return "interrupted"
        return f"failed: {type(error).__name__}: {error}"

    def _seconds(self) -> float:
        """Pretraining seconds over all sessions, up to now."""
        return self.seconds_before + time.perf_counter() - self.loop_start

    # ---- what the log says ----------------------------------------------------------------

    def _log_banner(self, pretrain) -> None:
        cfg, ctx, run = self.cfg, self.ctx, self.run
        held = f"streamed by {cfg.num_workers} workers" if pretrain.streamed else "in memory"
        log.info("fastclr: %s on %s, %s images %s %s, %s (width %s, %s stem), global batch %d, "
                 "%d epochs = %d steps, peak lr %.3g (%s), world size %d", cfg.name,
                 ctx.device, len(pretrain), tuple(pretrain.shape), held, cfg.arch, cfg.width,
                 cfg.stem, cfg.batch_size, cfg.epochs, run.total_steps, run.peak_lr,
                 cfg.optimizer, ctx.world_size)
        t = self.tracker
        if t is not None:
            log.info("tracking h and z every %d steps on %d held-out training images%s", t.every,
                     len(t.probe), "" if t.k is None else
                     f" (kNN: k={t.k} against {len(t.bank)} other training images)")
        if ctx.device.type == "cpu" and augment_engine.NATIVE is None:
            log.info("augmentation runs on PyTorch tensor ops: fastclr's C kernel was not built "
                     "(no C compiler at install time?), so CPU augmentation is several times "
                     "slower")

    def _log_schedule_change(self, old: Config) -> None:
        run, spe = self.run, self.run.batches.steps_per_epoch
        before = lr_at(self.step, old.epochs * spe, run.warmup_steps, run.peak_lr)
        after = lr_at(self.step, run.total_steps, run.warmup_steps, run.peak_lr)
        log.info("epochs %d -> %d: the cosine schedule now spans %d steps; at step %d the lr "
                 "goes from %.3g to %.3g and decays to 0 again by the new end", old.epochs,
                 self.cfg.epochs, run.total_steps, self.step, before, after)


def _why_no_probe(data: str, labeled: bool, pretrain) -> str:
    if not labeled:
        return f"{data} has no labels"
    if pretrain.streamed:  # the probe's label batches are cut from labels held in memory
        return (f"{data} is streamed from files, and the probe reads labels of sets held in "
                "memory (the kNN monitor, --knn-every N, does use this set's labels)")
    return f"{data} pretrains on images without labels (its unlabeled split)"


def _set_backends(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
