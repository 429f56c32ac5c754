"""SimCLR as a LightningModule, for a code base that already has its Trainer, loggers and callbacks.

An adapter over fastclr's own parts, not a second implementation: the step's forward half is
`fastclr.train.step.forward_step` (views drawn on the device after the transfer, one
forward of f and g on all 2N views, NT-Xent over the global batch with every process's views as
negatives), the optimiser is `fastclr.optim.build_optimizer` (LARS by default) and the learning
rate is `fastclr.optim.lr_at`, set every step. Its first step's loss equals `fastclr train`'s
on the same batch and seed (tests/test_lightning.py). Needs `pip install 'fastclr[lightning]'`.

    from fastclr.config import load_config
    from fastclr.lightning import SimCLRModule

    cfg = load_config("cifar10-resnet18")
    module = SimCLRModule(cfg, in_channels=3, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    trainer = lightning.Trainer(max_epochs=cfg.epochs, sync_batchnorm=True)
    trainer.fit(module, train_dataloaders=loader)  # uint8 (N, C, H, W) batches, no transforms
    module.save_encoder("encoder.safetensors")  # for fastclr eval / embed / export

The DataLoader yields uint8 images (N, C, H, W), or (images, labels) for the online probe,
with no transforms: augmentation runs batched on the device. Mixed precision is the Trainer's
(`precision="bf16-mixed"`), as is SyncBatchNorm across processes (`sync_batchnorm=True`, the
paper's global BN, section 3); `cfg.batch_size` is the global batch the learning-rate rule
scales with (the DataLoader's batch times the number of processes). The schedule spans the
Trainer's run (`estimated_stepping_batches`: max_epochs or max_steps), its warmup
`cfg.warmup_epochs` of the Trainer's epochs (of cfg.epochs when the Trainer counts steps).
"""

from __future__ import annotations

import torch

try:
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as e:
    raise ImportError("fastclr.lightning needs Lightning: pip install 'fastclr[lightning]'") from e

from fastclr.augment.pipeline import augment_from_config
from fastclr.checkpoint import export_encoder
from fastclr.config import Config, config_from_dict
from fastclr.eval.monitor import OnlineProbe
from fastclr.models import build_model, channels_last_ok
from fastclr.optim import build_optimizer, lr_at, peak_lr
from fastclr.spec import ModelSpec
from fastclr.train.step import BufferGuard, forward_step, loss_from_config, step_seed


class SimCLRModule(L.LightningModule):
    """SimCLR (Chen et al., ICML 2020, algorithm 1) for `lightning.Trainer.fit`.

    `config` is a fastclr Config (or its dict): model, augmentation, loss, optimiser and
    schedule options are read from it exactly as `fastclr train` reads them; `in_channels`,
    `mean`, `std` are the data's (the encoder normalises its input itself). `num_classes`
    turns on the online linear probe when `config.online_probe` is set.
    """

    def __init__(self, config: Config | dict, in_channels: int = 3,
                 mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                 std: tuple[float, ...] = (0.25, 0.25, 0.25), num_classes: int | None = None):
        super().__init__()
        cfg = config if isinstance(config, Config) else config_from_dict(config)
        # plain containers only, so the checkpoint loads with weights_only=True
        self.save_hyperparameters({"config": cfg.to_dict(), "in_channels": in_channels,
                                   "mean": list(mean), "std": list(std),
                                   "num_classes": num_classes})
        if cfg.online_probe and num_classes is None:
            raise ValueError("config.online_probe needs num_classes")
        if cfg.objective == "supervised" and num_classes is None:
            raise ValueError("the supervised objective needs num_classes")
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # the initial weights of `fastclr train`
            torch.manual_seed(cfg.seed)
            self.model = build_model(ModelSpec.from_config(cfg, in_channels, mean, std,
                                                           num_classes))
        self.augment = augment_from_config(cfg, in_channels)
        self.loss_fn = loss_from_config(cfg)
        self.num_classes = num_classes
        self.generator: torch.Generator | None = None
        self.guard: BufferGuard | None = None
        self.skip: torch.Tensor | None = None  # this step's "not finite": 1.0 skips it
        self.memory_format = torch.contiguous_format
        self.total_steps = self.warmup_steps = 0
        self.peak_lr = peak_lr(cfg.lr_rule, cfg.batch_size, cfg.base_lr)
        # the probe is kept out of the module's children: under DDP its parameters, which the
        # loss never reaches, would be waited for by every gradient reduction
        self.__dict__["probe"] = None

    @property
    def encoder(self) -> torch.nn.Module:
        """f: what is kept after pretraining."""
        return self.model.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = f(x) for [0, 1] images (N, C, H, W)."""
        return self.model.encoder(x)

    def configure_optimizers(self):
        cfg = self.cfg
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if (self.trainer.max_epochs or 0) > 0 else cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.total_steps / epochs)
        return build_optimizer(cfg.optimizer, self.model, cfg.weight_decay, cfg.momentum,
                               cfg.trust_coefficient)

    def on_fit_start(self) -> None:
        if channels_last_ok(self.model, self.device):  # as `fastclr train` runs it
            self.model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        self.generator = torch.Generator(self.device)
        self.guard = BufferGuard(self.model)  # after the move: it holds the buffers themselves
        if self.cfg.online_probe:
            self.__dict__["probe"] = OnlineProbe(self.encoder.feat_dim,
                                                 self.num_classes).to(self.device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = (batch, None) if torch.is_tensor(batch) else (
            batch[0], batch[1] if len(batch) > 1 else None)
        step, world = self.global_step, self.trainer.world_size
        if step == 0 and len(images) * world != self.cfg.batch_size:
            rank_zero_warn(f"the global batch is {len(images) * world} images, but the "
                           f"learning rate follows config.batch_size = {self.cfg.batch_size}")
        optimizer = self.optimizers(use_pl_optimizer=False)
        lr = lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.generator.manual_seed(step_seed(self.cfg.seed, step, self.global_rank))
        self.guard.save()
        loss, bad, h, _ = forward_step(self.model, self.augment, images, self.generator,
                                       self.loss_fn, world, memory_format=self.memory_format,
                                       labels=labels)
        # a non-finite loss skips the step on the device (no host sync), as in `fastclr train`:
        # LARS and torch's fused optimisers read found_inf; BN statistics are put back after
        # the backward (which reads them), in on_train_batch_end
        optimizer.found_inf = self.skip = bad.float()
        if self.probe is not None and labels is not None:
            self.probe.step(h[:len(images)], labels, bad)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/lr", lr)
        self.log("train/skipped", bad.float(), reduce_fx="sum")
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.guard.restore_if(self.skip.bool())

    def on_train_epoch_end(self) -> None:
        if self.probe is not None:
            self.log("train/probe_top1", self.probe.read(), rank_zero_only=True)

    def save_encoder(self, path) -> None:
        """Write f as fastclr's encoder.safetensors, which `fastclr eval`, `embed` and
        `export` read (with this config, so they know the data set)."""
        export_encoder(self.encoder, path, {"config": self.cfg.to_dict(),
                                            "step": int(self.global_step)})
