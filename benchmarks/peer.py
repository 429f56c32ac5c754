"""The training loop most SimCLR code uses, built from a fastclr config for comparisons.

Per image, in DataLoader worker processes: a PIL image (as torchvision's data sets hand them
out) through torchvision.transforms.v2 twice (RandomResizedCrop, RandomHorizontalFlip,
RandomApply([ColorJitter], p), RandomGrayscale(p), blur and solarize where the config has
them, ToImage, ToDtype(float32, scale=True)), with the config's settings; the two views are
collated on the CPU and copied to the device. The step itself is the same as fastclr's: the
same model (a copy, in the same memory format, compiled and autocast alike), one forward of
the 2N views, the same nt_xent and the same optimiser and lr schedule. Like most loops it
reads the loss on the host every step (`loss.item()`, for its progress bar). The model is
built of PyTorch's own layers, as a peer's torchvision ResNet is (`torch_layers`), or, to
measure the data path and the loop alone, of fastclr's (the caller's choice).

Used by benchmarks/train_step.py (views/s) and benchmarks/time_to_accuracy.py.
"""

from __future__ import annotations

import contextlib
import copy
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from fastclr import norms
from fastclr.augment import blur_kernel_size
from fastclr.config import Config
from fastclr.data.batches import epoch_order
from fastclr.loss import nt_xent
from fastclr.models import SmallMapConv2d
from fastclr.optim import build_optimizer, lr_at

# which layers the peer's model is built of (benchmarks' --peer-layers)
PEER_LAYERS = ("torch", "fastclr")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torch_layers(model: nn.Module) -> nn.Module:
    """`model` built of PyTorch's own layers, as a peer's torchvision ResNet is, in place:
    fastclr's layers that change only how a CPU step computes the backward
    (models.SmallMapConv2d, norms.BatchNorm2d) become nn.Conv2d and nn.BatchNorm2d. The
    parameters and buffers stay the same objects, so the forward gives the same numbers."""
    for m in model.modules():
        if type(m) is SmallMapConv2d:
            m.__class__ = nn.Conv2d
        elif type(m) is norms.BatchNorm2d:
            m.__class__ = nn.BatchNorm2d
    return model


def peer_model(model: nn.Module, layers: str) -> nn.Module:
    """A copy of fastclr's `model` for the peer loop, of `layers` (PEER_LAYERS)."""
    twin = copy.deepcopy(model)
    return torch_layers(twin) if layers == "torch" else twin


def peer_transform(cfg: Config, size: int):
    """One random view of a PIL image, torchvision.transforms.v2 with `cfg`'s settings."""
    import torchvision.transforms.v2 as T
    s = cfg.color_strength
    ops = [T.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
           T.RandomHorizontalFlip(cfg.flip_p),
           T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=cfg.color_p),
           T.RandomGrayscale(cfg.gray_p)]
    if cfg.blur_p:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(size), cfg.blur_sigma)],
                                 p=cfg.blur_p))
    if cfg.solarize_p:
        ops.append(T.RandomSolarize(0.5, p=cfg.solarize_p))
    return T.Compose(ops + [T.ToImage(), T.ToDtype(torch.float32, scale=True)])


class PILPairs(Dataset):
    """Item i: two views of image i, made from a PIL image the way torchvision's data sets
    serve them (Image.fromarray of the stored uint8 pixels)."""

    def __init__(self, images: torch.Tensor, transform):
        # (N, H, W) for one channel (mode L), (N, H, W, 3) for RGB
        array = images.cpu().numpy()
        self.pixels = array[:, 0] if array.shape[1] == 1 else np.ascontiguousarray(
            array.transpose(0, 2, 3, 1))
        self.mode = "L" if array.shape[1] == 1 else "RGB"
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.pixels[i], self.mode)
        return self.transform(image), self.transform(image)


class NextIndices(Sampler):
    """The indices of the next `count` batches of an endless run of shuffled epochs (the same
    orders as fastclr's, `epoch_order`): each slice of steps gets a loader iterator of its
    own that ends with the slice, so no worker prefetches while something else is timed."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self.epoch, self.position, self.indices = 0, 0, []
        self.steps_per_epoch = n // batch
        self.order = epoch_order(n, seed, 0).tolist()

    def take(self, count: int) -> None:
        self.indices = []
        for _ in range(count):
            if self.position == self.steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
                self.order = epoch_order(self.n, self.seed, self.epoch).tolist()
            start = self.position * self.batch
            self.indices += self.order[start: start + self.batch]
            self.position += 1

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PeerLoop:
    """The peer-style loop: `steps(k)` trains k steps, data loading included."""

    def __init__(self, cfg: Config, model: nn.Module, images: torch.Tensor, size: int,
                 device: torch.device, workers: int, total_steps: int, warmup_steps: int,
                 peak_lr: float, channels_last: bool, autocast: bool):
        self.cfg, self.device, self.autocast = cfg, device, autocast
        self.model = model.to(device)  # plain module: what the time-to-accuracy probe reads
        self.forward = torch.compile(model) if cfg.compile else model
        self.optimizer = build_optimizer(cfg.optimizer, model, cfg.weight_decay, cfg.momentum,
                                         cfg.trust_coefficient)
        self.schedule = (total_steps, warmup_steps, peak_lr)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.sampler = NextIndices(len(images), cfg.batch_size, cfg.seed)
        self.loader = DataLoader(PILPairs(images, peer_transform(cfg, size)),
                                 batch_size=cfg.batch_size, sampler=self.sampler,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=device.type == "cuda", drop_last=True)
        self.step, self.last_loss = 0, float("nan")

    def steps(self, count: int) -> None:
        self.sampler.take(count)
        self.forward.train()
        for x1, x2 in self.loader:
            n = len(x1)
            # (2n, C, S, S): one forward for both views, as fastclr does
            x = torch.cat([x1, x2]).to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=self.format)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, *self.schedule)
            amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast \
                else contextlib.nullcontext()
            with amp:
                _, z = self.forward(x)
                loss = nt_xent(z[:n], z[n:], self.cfg.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.last_loss = loss.item()  # the progress bar's read, every step
            self.step += 1
