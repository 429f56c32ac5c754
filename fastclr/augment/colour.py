"""Colour, blur and solarize on float views in [0, 1]: the in-place ops the pipeline runs on
chunks, per-op public functions (new tensor out) that tests hold to torchvision, and the
official code's colour jitter (`jitter`: tf.image's formulas, a random order) as tensor ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.augment.workspace import Workspace

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale for tensors.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# ---- colour ---------------------------------------------------------------------------------
# In-place ops on z (n, C, P): n views, C channels, P pixels in any order, values in [0, 1].
# Per-view factors come pre-shaped (n, 1, 1) or (n, 1); neutral factors leave a view as is.

def _gray(z: Tensor, out: Tensor) -> Tensor:
    """Luma (n, P) of RGB z (n, 3, P), written into out."""
    wr, wg, wb = GRAY_WEIGHTS
    return torch.mul(z[:, 0], wr, out=out).add_(z[:, 1], alpha=wg).add_(z[:, 2], alpha=wb)


def _contrast_(z: Tensor, factor: Tensor, keep: Tensor) -> None:
    """Blend with the mean of the grayscale image: c z + (1 - c) mean, clamped.

    factor (n, 1, 1) is c, keep (n,) is 1 - c.
    """
    means = z.mean(dim=-1)                                           # (n, C)
    if z.shape[1] == 3:   # mean of the luma, without forming the luma image
        wr, wg, wb = GRAY_WEIGHTS
        mean = means[:, 0] * wr + means[:, 1] * wg + means[:, 2] * wb
    else:
        mean = means[:, 0]
    z.mul_(factor).add_((keep * mean)[:, None, None]).clamp_(0.0, 1.0)


def _saturation_(z: Tensor, keep: Tensor, ws: Workspace) -> None:
    """Blend RGB with its grayscale image: s z + (1 - s) gray, clamped; keep (n, 1, 1) = 1 - s.
    """
    gray = _gray(z, ws.get("plane0", z.shape[::2], z.device))       # (n, P)
    z.lerp_(gray[:, None].expand_as(z), keep).clamp_(0.0, 1.0)      # z + (1 - s)(gray - z)


def _hue_(z: Tensor, sixths: Tensor, ws: Workspace) -> None:
    """Rotate the HSV hue of RGB z (n, 3, P) by sixths (n, 1) sixths of a turn; keep S, V.

    torchvision's RGB -> HSV -> RGB, in few passes. With M = max, m = min, C = M - m and h
    the hue in sixths of a turn, HSV -> RGB gives each channel as m + C * clamp(2 - d, 0, 1),
    d the circular distance of h from the channel's own hue (red 0, green 2, blue 4); for h
    in [0, 6), 2 - d = ||h - hue_c| - 3| - 1.
    """
    n, _, P = z.shape
    plane = lambda i: ws.get(f"plane{i}", (n, P), z.device)  # noqa: E731
    r, g, b = z.unbind(1)                                             # (n, P) views
    vmax = torch.amax(z, 1, out=plane(0))
    vmin = torch.amin(z, 1, out=plane(1))
    chroma = torch.sub(vmax, vmin, out=plane(2))
    # torchvision takes the hue formula of the first maximal channel of r, g, b; vmax - x is
    # 0 exactly where x is the max and in (0, 1] elsewhere, so its ceil is a 0/1 mask
    not_r = torch.sub(vmax, r, out=plane(3)).ceil_()
    not_g = torch.sub(vmax, g, out=plane(4)).ceil_()
    # h = (g - b) / C if r is max, 2 + (b - r) / C if g is, 4 + (r - g) / C if b is
    h = torch.sub(g, b, out=plane(5))
    h_gb = torch.lerp(torch.sub(b, r, out=plane(6)), torch.sub(r, g, out=plane(7)), not_g,
                      out=plane(6))
    torch.lerp(h, h_gb, not_r, out=h)
    h.div_(torch.clamp(chroma, min=1e-30, out=plane(7)))   # grey pixels: 0 / tiny = 0
    # + 2 where g or b is the max, + 2 more where b is: 2 not_r (1 + not_g)
    h.add_(not_g.add_(1.0).mul_(not_r), alpha=2.0).add_(sixths)      # (n, P) in [-4, 8]
    h.sub_(torch.mul(h, 1 / 6, out=plane(7)).floor_().mul_(6.0))     # wrap to [0, 6)
    # t = ||h - hue_c| - 3| clamped to [1, 2] is 1 + clamp(2 - d, 0, 1); so the channel is
    # m + C (t - 1) = C t + (m - C)
    # (built with arange: a tensor from a Python list would be a host-to-device copy on CUDA)
    centres = torch.arange(0.0, 6.0, 2.0, device=z.device).view(1, 3, 1)
    t = torch.sub(h[:, None], centres, out=z)                         # (n, 3, P), reuses z
    t.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0).mul_(chroma[:, None])
    t.add_(torch.sub(vmin, chroma, out=plane(3))[:, None])


def _grayscale_(z: Tensor, mask: Tensor, ws: Workspace) -> None:
    """Replace the RGB views with mask (n, 1, 1) = 1 by their luma in all three channels."""
    gray = _gray(z, ws.get("plane0", z.shape[::2], z.device))       # (n, P)
    z.lerp_(gray[:, None].expand_as(z), mask)


# ---- blur and solarize ----------------------------------------------------------------------

def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample gaussian blur of (n, C, H, W) float; sigma (n,), 0 leaves a sample as is.

    The paper's blur (Appendix A: sigma in [0.1, 2.0], kernel 10% of the side) with
    torchvision's gaussian_blur per image: kernel exp(-t^2 / (2 sigma^2)) over kernel_size
    taps, normalised, reflect padding; here two depthwise 1-D convolutions, one kernel per
    (sample, channel).
    """
    n, C, H, W = x.shape
    r = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - r        # (K,)
    s = sigma.to(torch.float32).clamp(min=1e-6)[:, None]
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(-1, keepdim=True)                                                # (n, K)
    k = torch.where((sigma > 0)[:, None], k, (t == 0).to(torch.float32))  # else identity
    k = k.repeat_interleave(C, dim=0)                                              # (n*C, K)
    y = F.pad(x.reshape(1, n * C, H, W), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(n * C, 1, 1, kernel_size), groups=n * C)               # along x
    y = F.conv2d(y, k.view(n * C, 1, kernel_size, 1), groups=n * C)               # along y
    return y.view(n, C, H, W)


def solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert pixels >= threshold in the samples of mask (n,) bool (torchvision's solarize)."""
    flip = (x >= threshold) & mask[:, None, None, None]
    return torch.where(flip, 1.0 - x, x)


# ---- public per-op functions: (n, C, H, W) float in [0, 1] in, new tensor out ---------------

def _per_pixel(op, x: Tensor, *args) -> Tensor:
    n, C, H, W = x.shape
    z = x.to(torch.float32, copy=True).reshape(n, C, H * W)
    op(z, *args)
    return z.view(n, C, H, W)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Per-view brightness: clamp(f x) with factor (n,)."""
    return (x * factor[:, None, None, None]).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Per-view contrast: blend with the mean luma (torchvision's semantics)."""
    return _per_pixel(_contrast_, x, factor[:, None, None], 1.0 - factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Per-view saturation of RGB: blend with the luma image."""
    return _per_pixel(_saturation_, x, (1.0 - factor)[:, None, None], Workspace())


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Per-view HSV hue rotation of RGB by shift (n,) turns in [-0.5, 0.5]."""
    return _per_pixel(_hue_, x, 6.0 * shift[:, None], Workspace())


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Luma (ITU-R 601-2, as torchvision) in all channels of the RGB views in mask (n,)."""
    return _per_pixel(_grayscale_, x, mask.to(torch.float32)[:, None, None], Workspace())


# ---- the official code's colour jitter (docs/fidelity.md) ------------------------------------
# The official data_util.py color_jitter applies tf.image's random_brightness (v1: additive;
# v2: a multiplicative factor, as here), random_contrast, random_saturation and random_hue, in
# a random order per image by default, clipping to [0, 1] after each. Where tf.image differs
# from torchvision: contrast stretches each channel around its own mean (torchvision: around
# the mean luma), saturation scales the HSV saturation (torchvision: blends with the luma
# image). Brightness as a factor and hue are the same maths in both.

def adjust_brightness_shift(x: Tensor, shift: Tensor) -> Tensor:
    """Additive brightness, clipped: clamp(x + d) with shift (n,) (tf.image.adjust_brightness,
    the official code's first release)."""
    return (x + shift[:, None, None, None]).clamp_(0.0, 1.0)


def adjust_contrast_tf(x: Tensor, factor: Tensor) -> Tensor:
    """tf.image.adjust_contrast, clipped: each channel (x - m) c + m around its own spatial
    mean m; factor (n,). For one channel, the same as torchvision's."""
    mean = x.mean(dim=(-2, -1), keepdim=True)                                # (n, C, 1, 1)
    return ((x - mean) * factor[:, None, None, None] + mean).clamp_(0.0, 1.0)


def adjust_saturation_tf(x: Tensor, factor: Tensor) -> Tensor:
    """tf.image.adjust_saturation of RGB (n, 3, H, W), clipped: HSV saturation times factor
    (n,), clipped to [0, 1], hue and value kept.

    With V = max, C = max - min: keeping H and V, every channel moves along V - x, so the
    result is V - (V - x) r with r = S' / S = min(f, V / C) (S' clipped at 1).
    """
    v = x.amax(dim=1, keepdim=True)                                          # (n, 1, H, W)
    chroma = v - x.amin(dim=1, keepdim=True)
    f = factor[:, None, None, None]
    ratio = torch.minimum(f.expand_as(chroma), v / chroma.clamp(min=1e-30))  # grey: C = 0
    return (v - (v - x) * ratio).clamp_(0.0, 1.0)


def jitter(x: Tensor, p) -> Tensor:
    """Colour jitter of views x (n, C, H, W) in [0, 1] with the parameters of p (AugmentParams)
    where p.jitter says, in p.color_order per view (None: brightness, contrast, saturation,
    hue); tf.image's formulas where p.tf_formulas. A new tensor; views without jitter are
    returned exactly as they were.

    Batched, a random order computes every op in each of the four slots and keeps it where
    the view's order has it: four times the work of a fixed order.
    """
    rgb = x.shape[1] == 3
    tf = p.tf_formulas

    def brightness(y):
        if p.brightness_shift is not None:
            return adjust_brightness_shift(y, p.brightness_shift)
        return adjust_brightness(y, p.brightness)

    def contrast(y):
        return adjust_contrast_tf(y, p.contrast) if tf else adjust_contrast(y, p.contrast)

    def saturation(y):
        return adjust_saturation_tf(y, p.saturation) if tf else \
            adjust_saturation(y, p.saturation)

    def hue(y):
        out = adjust_hue(y, p.hue)
        return out.clamp_(0.0, 1.0) if tf else out

    ops = (brightness, contrast, saturation, hue) if rgb else (brightness, contrast)
    applied = p.jitter[:, None, None, None]                                  # (n, 1, 1, 1)
    y = x
    if p.color_order is None:
        for op in ops:
            y = torch.where(applied, op(y), y)
        return y
    for slot in range(4):
        for k, op in enumerate(ops):
            pick = applied & (p.color_order[:, slot] == k)[:, None, None, None]
            y = torch.where(pick, op(y), y)
    return y
