"""The other transformations of the paper's Figure 4 (Chen et al. 2020, Section 3): Sobel
filtering, gaussian noise, cutout and rotation, batched with per-view parameters.

Each takes float views x (n, C, H, W) in [0, 1] and returns a new tensor; a view whose
parameter is neutral (mask False, std 0, empty box, 0 turns) comes back as it was. The
pipeline's order (`engine.apply`) is: crop+resize, flip, colour jitter, grayscale, sobel,
blur, solarize, noise, cutout, rotate; cutout follows noise so that the erased square is
exactly 0 (DeVries & Taylor 2017).

Rotate is last, although the paper lists it with crop and flip. Rotation by quarter turns
commutes with every op before it except crop and flip: the colour ops, solarize and grayscale
work pixel by pixel or with a global mean; Sobel's magnitude and the gaussian blur are
symmetric under quarter turns (the same kernel along both axes, symmetric padding); and the
random fields of noise and cutout (iid pixels; a square centred on a uniform pixel) have the
same distribution after a quarter turn (an even side's half-pixel offset from its centre
pixel aside). So rotating last is the same as rotating right after the flip: exactly (up to
float rounding) for the other ops, in distribution for noise and cutout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastclr.augment.colour import GRAY_WEIGHTS

# The largest gradient magnitude of the 3x3 Sobel kernels on [0, 1] images: |gx|, |gy| <= 4.
SOBEL_MAX = 4 * math.sqrt(2)


def sobel(x: Tensor, mask: Tensor) -> Tensor:
    """The Sobel gradient magnitude of the luma, in every channel, for the views in mask (n,).

    sqrt(gx^2 + gy^2) with the standard 3x3 kernels ([1, 2, 1] smoothing across, [-1, 0, 1]
    difference along each axis), replicate padding, divided by its largest possible value
    (SOBEL_MAX) to stay in [0, 1]. The luma is ITU-R 601-2's, as `random_grayscale`; one
    channel is its own luma.
    """
    n, C, H, W = x.shape
    if C == 3:
        wr, wg, wb = GRAY_WEIGHTS
        luma = (x[:, 0:1] * wr).add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb)
    else:
        luma = x
    p = torch.nn.functional.pad(luma, (1, 1, 1, 1), mode="replicate")      # (n, 1, H+2, W+2)
    across_y = p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]              # (n, 1, H, W+2)
    across_x = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]                 # (n, 1, H+2, W)
    gx = across_y[..., 2:] - across_y[..., :-2]
    gy = across_x[:, :, 2:] - across_x[:, :, :-2]
    magnitude = torch.hypot(gx, gy).mul_(1 / SOBEL_MAX)                    # (n, 1, H, W)
    return torch.where(mask[:, None, None, None], magnitude.expand_as(x), x)


def add_noise(x: Tensor, std: Tensor, noise: Tensor) -> Tensor:
    """x + std (n,) * noise (n, C, H, W) (standard normal draws), clamped to [0, 1]."""
    return torch.addcmul(x, noise, std[:, None, None, None].to(x.dtype)).clamp_(0.0, 1.0)


def cutout(x: Tensor, box: Tensor) -> Tensor:
    """Zero the box (n, 4) int64 = top, left, bottom, right (ends excluded) of each view."""
    n, C, H, W = x.shape
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 2:3])                     # (n, H)
    in_cols = (cols >= box[:, 1:2]) & (cols < box[:, 3:4])                     # (n, W)
    inside = in_rows[:, None, :, None] & in_cols[:, None, None, :]              # (n, 1, H, W)
    return x.masked_fill(inside, 0.0)


def rotate_quarters(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate square views x (n, C, S, S) by turns (n,) int quarter turns, as torch.rot90.

    One gather: output pixel (i, j), in coordinates centred on the image (u, v) = (2i - S + 1,
    2j - S + 1), reads the input at (cos u + sin v, cos v - sin u) for the angle k * 90 degrees.
    """
    n, C, S, W = x.shape
    if S != W:
        raise ValueError(f"quarter-turn rotation needs square views, got {S}x{W}")
    k = (turns % 4)[:, None, None]                                            # (n, 1, 1)
    cos = (k == 0).long() - (k == 2).long()
    sin = (k == 1).long() - (k == 3).long()
    u = 2 * torch.arange(S, device=x.device)[:, None] - (S - 1)               # (S, 1)
    v = 2 * torch.arange(S, device=x.device)[None, :] - (S - 1)               # (1, S)
    row = (cos * u + sin * v + (S - 1)) // 2                                  # (n, S, S)
    col = (cos * v - sin * u + (S - 1)) // 2
    source = (row * S + col).view(n, 1, S * S).expand(n, C, S * S)
    return x.reshape(n, C, S * S).gather(2, source).view(n, C, S, S)
