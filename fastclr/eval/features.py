"""Frozen features: h and z of a trained encoder, and the proof that it stayed frozen.

Every frozen-encoder protocol runs inside `frozen(encoder)`, which proves afterwards that no
weight and no BN statistic moved: a "linear evaluation" that quietly fine-tunes the backbone is
the classic bug (SimCLR section 4: linear evaluation trains a classifier on a frozen network).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
import torch.nn as nn

from fastclr.data.images import center_view
from fastclr.errors import DataError


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (features are cast back to fp32), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the frozen-encoder guarantee -----------------------------------------------------------


class EncoderChangedError(RuntimeError):
    """A frozen-encoder protocol changed the encoder's weights or BN statistics (a bug here)."""


def state_digest(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer of `module`, by state_dict name.

    Buffers matter as much as weights: a BN layer left in train mode changes no weight but
    moves running_mean/var on every forward, and the features with them.
    """
    digests = {}
    for name, t in module.state_dict().items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bytes of any dtype
        digests[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    return digests


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Run a frozen-encoder protocol: eval mode, no gradients, and proof afterwards.

    Inside, `module` is in eval mode with requires_grad off. On leaving, modes and flags are
    restored and EncoderChangedError is raised if any parameter or buffer differs from before
    (SimCLR section 4: linear evaluation trains a classifier on a *frozen* base network).
    """
    before = state_digest(module)
    modes = [m.training for m in module.modules()]
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for m, mode in zip(module.modules(), modes):
            m.training = mode
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
    changed = [k for k, v in state_digest(module).items() if before.get(k) != v]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                          else "")
        raise EncoderChangedError(f"the frozen encoder changed during evaluation: {shown}")


# ---- features -------------------------------------------------------------------------------


def require_channels(encoder: nn.Module, images: torch.Tensor, data: str) -> None:
    """Refuse images (N, C, H, W) with another channel count than the encoder takes (a
    grayscale encoder on RGB photos), before any feature is computed."""
    channels = encoder.spec.in_channels
    if images.shape[1] != channels:
        raise DataError(f"{data} has {images.shape[1]}-channel images; the encoder takes "
                        f"{channels} (it was trained on {_kind(channels)} images)")


def _kind(channels: int) -> str:
    return {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")



@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str = "cpu", size: int | None = None) -> torch.Tensor:
    """h = f(x) for uint8 images (N, C, H, W) (or float views in [0, 1]): float32
    (N, feat_dim) on `device`, eval mode.

    With `size` (the training resolution), images of another size are first resized (shorter
    side) and centre-cropped to size x size, so the encoder sees objects at the scale it was
    trained on; images already size x size pass unchanged.
    """
    from fastclr.models import channels_last_ok

    device = torch.device(device)
    channels_last = channels_last_ok(encoder, device)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i: i + batch_size].to(device, non_blocking=True)
            x = x.float() if x.is_floating_point() else x.float().div_(255)
            if size is not None:
                x = center_view(x, size)  # (n, C, size, size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device):
                out.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def project(head: nn.Module, h: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """z = g(h) for cached features h (N, feat_dim) -> (N, proj_dim), head in eval mode.

    Linear evaluation on z is the paper's h-versus-z comparison (section 4.2, Figure 8).
    """
    was_training = head.training
    head.eval()  # BN in the head uses its running statistics, not the batch's
    try:
        return torch.cat([head(h[i: i + batch_size]).float()
                          for i in range(0, len(h), batch_size)])
    finally:
        head.train(was_training)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline: each image flattened to a vector in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255
