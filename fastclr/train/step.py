"""One training step, and the Run that holds what it needs (SimCLR algorithm 1).

One step: a batch of uint8 images on the device -> two per-sample random views -> one forward
of f and g on all 2N views -> NT-Xent over the global batch -> backward -> optimiser. The step
never reads a tensor on the host: a non-finite loss is turned into a skipped optimiser step on
the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr import distributed
from fastclr.augment import SimCLRAugment
from fastclr.augment.pipeline import augment_from_config
from fastclr.config import Config
from fastclr.data import Pretrain, pretrain_batches
from fastclr.data.batches import InMemoryBatches, StreamingBatches
from fastclr.eval.monitor import OnlineProbe
from fastclr.errors import ConfigError, DataError
from fastclr.loss import build_loss
from fastclr.norms import convert_grouped_batchnorm
from fastclr.models import SimCLR, build_model, channels_last_ok
from fastclr.optim import Layout, build_optimizer, lr_at, peak_lr
from fastclr.spec import ModelSpec


def step_seed(seed: int, step: int, rank: int) -> int:
    """The augmentation seed of one step on one process: randomness is a function of the step,
    so a resumed run draws exactly the views the uninterrupted run would have drawn."""
    return (seed * 2**52 + rank * 2**32 + step) % 2**64


def forward_step(forward: nn.Module, augment: SimCLRAugment, images: torch.Tensor,
                 generator: torch.Generator, loss_fn: Callable | None, world_size: int = 1,
                 autocast: bool = False, views: torch.Tensor | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 labels: torch.Tensor | None = None, cropped: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward half of a step (SimCLR algorithm 1): uint8 images (n, C, H, W) -> two random
    views each -> f and g on all 2n in one forward -> the loss over the global batch
    (`loss_fn(z1, z2, distributed)`, see fastclr.loss.build_loss; None: the supervised
    objective, cross-entropy of both views against `labels`).

    `cropped`: `images` holds both views' crops already (rows i and n + i, a streamed set's
    batch), and the augmentation does the rest to each.

    Returns the loss, a bool tensor "skip this step" (the loss is not finite on some process),
    h (2n, feat_dim) and the views (2n, C, S, S), `views` if given. `Run.train_step` and the
    Lightning module (fastclr.lightning) both call it.
    """
    # (2n, C, S, S) in fp32: rows i and n + i are two views of image i, one forward for both
    x = augment.stacked_views(images, generator, out=views, memory_format=memory_format,
                              **({"cropped": True} if cropped else {}))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        h, z = forward(x)  # (2n, feat_dim), (2n, proj_dim) or (2n, classes)
        n = len(x) // 2
        if loss_fn is None:  # supervised: both views of each image carry its label
            loss = F.cross_entropy(z.float(), torch.cat([labels, labels]))
        else:
            loss = loss_fn(z[:n], z[n:], distributed=world_size > 1)
    bad = ~torch.isfinite(loss.detach())
    if world_size > 1:  # every process must skip the same steps
        bad = distributed.all_reduce_max(bad.to(torch.uint8)).bool()
    return loss, bad, h, x


class BufferGuard:
    """Keeps BN running statistics of a step whose loss was not finite from being kept.

    BN updates its running mean/var in the forward pass, before the loss is known; a skipped
    step must not leave NaN statistics behind. Restoring is branch-free (no host sync).
    The buffers of each dtype (running statistics; num_batches_tracked) are copied end to end
    into one tensor: three ops a step, not two or three per buffer (a ResNet-50 has 159).
    """

    def __init__(self, model: nn.Module):
        buffers = [b for b in model.buffers() if b.dtype != torch.bool]
        self.groups = [_LaidOut([b for b in buffers if b.dtype == dtype])
                       for dtype in dict.fromkeys(b.dtype for b in buffers)]

    def save(self) -> None:
        for g in self.groups:
            torch._foreach_copy_(g.saved_pieces, g.buffers)

    def restore_if(self, bad: torch.Tensor) -> None:
        for g in self.groups:
            torch.where(bad, g.saved, torch.cat(g.flat_views), out=g.kept)  # NaN-safe select
            torch._foreach_copy_(g.buffers, g.kept_pieces)


class _LaidOut:
    """Buffers of one dtype, and two tensors as long as all of them, with views cut to their
    shapes; made once: the buffers are updated in place, so their 1-D views stay theirs."""

    def __init__(self, buffers: list[torch.Tensor]):
        layout = Layout(buffers)
        self.buffers = buffers
        self.flat_views = [b.view(-1) for b in buffers]
        self.saved, self.kept = layout.flatten(buffers), layout.flatten(buffers)
        self.saved_pieces = layout.unflatten(self.saved)
        self.kept_pieces = layout.unflatten(self.kept)


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
    loss: Callable  # (z1, z2, distributed) -> scalar, or None for the supervised objective
    views: torch.Tensor | None = None  # the augmentation's output buffer, reused
    probe: OnlineProbe | None = None  # optional linear probe on stop-gradient h

    def train_step(self, images: torch.Tensor, step: int, labels: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step; returns the loss and a bool tensor 'this step was skipped'.
        `labels` (n,) of the images feed the online probe, if there is one, and the supervised
        objective."""
        cfg = self.cfg
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.generator.manual_seed(step_seed(cfg.seed, step, self.ctx.rank))
        self.guard.save()
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # the views are written into the same buffer every step (fresh pages cost more than
        # the maths). A streamed set's batch may hold both views' crops already
        # (StreamingBatches), and the augmentation then does the rest to each
        loss, bad, h, self.views = forward_step(
            self.forward, self.augment, images, self.generator, self.loss, self.ctx.world_size,
            self.autocast, self.views, fmt, labels, cropped=self.batches.cropped)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.found_inf = bad.float()
        self.optimizer.step()
        self.guard.restore_if(bad)
        if self.probe is not None and labels is not None:
            self.probe.step(h[:len(h) // 2], labels, bad)  # first view's h, detached inside
        return loss.detach(), bad


def build_run(cfg: Config, ctx: distributed.Context, pretrain: Pretrain) -> Run:
    classes = supervised_classes(cfg, pretrain)
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    model = build_model(ModelSpec.from_config(cfg, pretrain.shape[0], pretrain.mean, pretrain.std,
                                              classes))
    if ctx.world_size > 1 and cfg.sync_bn:
        model = distributed.convert_sync_batchnorm(model, ctx.device)
    if cfg.bn_groups > 1:
        if ctx.world_size > 1:
            raise ConfigError("bn_groups imitates several devices without global BN in one "
                              "process; with several processes, use --sync-bn false")
        model = convert_grouped_batchnorm(model, cfg.bn_groups)
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
    augment = augment_from_config(cfg, pretrain.shape[0])
    crops = None
    if pretrain.streamed and cfg.stream_crop == "full":
        if cfg.one_branch or "crop" not in (cfg.augment_ops or ("crop",)):
            raise ConfigError("stream_crop full takes each view's crop in the loader; the "
                              "one-branch protocol and --augment without crop need "
                              "--stream-crop square")
        crops = augment.crop_boxes()
    batches = pretrain_batches(pretrain, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size,
                               ctx.device, cfg.num_workers, crops)
    total = cfg.epochs * batches.steps_per_epoch
    warmup = round(cfg.warmup_epochs * batches.steps_per_epoch)
    precision = cfg.precision if cfg.precision != "auto" else (
        "bf16" if ctx.device.type == "cuda" else "fp32")
    loss = loss_from_config(cfg)
    return Run(cfg, ctx, model, forward, optimizer, augment, batches, total,
               warmup, peak_lr(cfg.lr_rule, cfg.batch_size, cfg.base_lr),
               torch.Generator(ctx.device), precision == "bf16", BufferGuard(model),
               channels_last, loss)


def loss_from_config(cfg: Config) -> Callable | None:
    """The run's loss (z1, z2, distributed) -> scalar; None for the supervised objective."""
    if cfg.objective == "supervised":
        return None
    return build_loss(cfg.loss, cfg.temperature, cfg.l2_norm, cfg.margin, cfg.semi_hard,
                      cfg.loss_reduction)


def supervised_classes(cfg: Config, pretrain: Pretrain) -> int | None:
    """The class count of the supervised objective, which needs labels held in memory."""
    if cfg.objective != "supervised":
        return None
    if pretrain.labels is None or pretrain.streamed:
        raise DataError(f"the supervised objective needs labeled images held in memory; "
                        f"{cfg.data} pretrains on {'streamed' if pretrain.streamed else 'unlabeled'}"
                        " images")
    return int(pretrain.labels.max()) + 1


def checkpoint_state(run: Run, step: int, extra: dict) -> dict:
    """Everything an exact resume needs. The data order and the views are functions of (seed,
    epoch) and (seed, step, rank), so they need no saved generator; the global RNG is saved
    for anything else that draws from it."""
    return {"step": step, "model": run.model.state_dict(), "spec": run.model.spec.to_dict(),
            "optimizer": run.optimizer.state_dict(), "config": run.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(), **extra}


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())
