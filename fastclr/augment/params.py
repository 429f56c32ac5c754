"""The random parameters of a batch of views: one draw per view, from an explicit generator.

The distributions are torchvision's (RandomResizedCrop, ColorJitter, RandomGrayscale, ...),
drawn for all views at once; `engine.apply` turns them into pixels. Ops that are off draw
nothing, and the ops added for the paper's Figure 4/5 comparisons (sobel, noise, cutout,
rotate) draw after all the others: with them off, a seed gives the views it always gave.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable

import torch
from torch import Tensor

from fastclr.augment.crops import CROP_SAMPLERS, _sample_crops, _sample_crops_official
from fastclr.augment.ops import OPS, check_ops

# colour jitter: torchvision's formulas, or the official code's (tf.image's) with its first
# release's additive brightness (v1) or its later multiplicative one (v2); in a fixed order
# or a random one per view
COLOR_IMPLS = ("torchvision", "official-v2", "official-v1")
COLOR_ORDERS = ("fixed", "random")


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch of views; every tensor has the views as dim 0.

    A field that is None means the op is off for the whole batch (probability 0, zero strength,
    or an op that does not exist for one channel), which `apply` skips at no cost.
    """

    size: int                      # output side S
    top: Tensor                    # (N,) int64 crop box, in input pixels
    left: Tensor                   # (N,) int64
    height: Tensor                 # (N,) int64, >= 1
    width: Tensor                  # (N,) int64, >= 1
    flip: Tensor                   # (N,) bool, horizontal flip after the crop
    jitter: Tensor | None          # (N,) bool, colour jitter applied
    brightness: Tensor | None      # (N,) float factor; 1 where jitter is not applied
    contrast: Tensor | None        # (N,) float factor; 1 where jitter is not applied
    saturation: Tensor | None      # (N,) float factor; 1 where not applied; None for C == 1
    hue: Tensor | None             # (N,) float shift in turns; 0 where not applied; None: C == 1
    gray: Tensor | None            # (N,) bool, converted to grayscale; None for C == 1
    blur_sigma: Tensor | None      # (N,) float sigma in pixels; 0 where not blurred
    blur_kernel: int               # odd kernel side, ~10% of the output side
    solarize: Tensor | None        # (N,) bool
    # the ops of the paper's Figure 4/5 comparisons (fastclr/augment/extra.py); None: off
    sobel: Tensor | None = None    # (N,) bool, replaced by its Sobel gradient magnitude
    noise_std: Tensor | None = None  # (N,) float std of the added noise; 0 where not applied
    noise: Tensor | None = None    # (N, C, S, S) float standard normal draws, times noise_std
    cutout: Tensor | None = None   # (N, 4) int64 zeroed box top, left, bottom, right (ends
    #                                excluded) in output pixels, clipped; empty: not applied
    rotate: Tensor | None = None   # (N,) int64 quarter turns as torch.rot90 (counter-clockwise)
    # colour jitter as the official code does it (docs/fidelity.md); None/False: fastclr's
    brightness_shift: Tensor | None = None  # (N,) float additive brightness (official-v1),
    #                                         in place of `brightness`; 0 where not applied
    color_order: Tensor | None = None  # (N, 4) int64: the op (0 brightness, 1 contrast,
    #                                    2 saturation, 3 hue) of each slot; None: that order
    tf_formulas: bool = False      # contrast and saturation as tf.image's (each channel's mean;
    #                                HSV saturation), each jitter op clipped to [0, 1]
    interpolation: str = "bilinear"  # of the resize: bilinear (antialiased) or bicubic

    def __len__(self) -> int:
        return self.top.shape[0]

    def select(self, index: Tensor | slice) -> "AugmentParams":
        """The parameters of a subset of the views (the same index on every tensor)."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            picked[f.name] = value[index] if isinstance(value, Tensor) else value
        return replace(self, **picked)


def blur_kernel_size(side: int) -> int:
    """Odd kernel side about 10% of the image side (paper, Appendix A), at least 3."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def sample_params(generator: torch.Generator, n: int, height: int, width: int,
                  channels: int = 3, *, size: int | None = None,
                  crop_scale: tuple[float, float] = (0.2, 1.0),
                  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                  color_strength: float = 0.5, color_p: float = 0.8, gray_p: float = 0.2,
                  blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                  solarize_p: float = 0.0, sobel_p: float = 0.0, noise_p: float = 0.0,
                  noise_std: tuple[float, float] = (0.0, 0.1), cutout_p: float = 0.0,
                  cutout_scale: tuple[float, float] = (0.1, 0.5), rotate_p: float = 0.0,
                  ops: Iterable[str] | None = None, color_impl: str = "torchvision",
                  color_order: str = "fixed", crop_sampler: str = "torchvision",
                  crop_interpolation: str = "bilinear") -> AugmentParams:
    """Draw the random parameters of `n` views of (channels, height, width) images.

    All randomness comes from `generator` (its device is the device of the returned tensors),
    so a run is reproducible and resumable from the generator's state. The distributions are
    torchvision's: crop area uniform in crop_scale * H * W, aspect ratio log-uniform in
    crop_ratio, the first of 10 tries that fits, else a centre crop; jitter factors uniform in
    [max(0, 1 - x), 1 + x] with x = 0.8 s for brightness, contrast and saturation, hue shift
    uniform in [-0.2 s, 0.2 s] (paper, Appendix A, colour strength s). The ops of Figure 4:
    noise std uniform in noise_std; cutout side uniform in cutout_scale * size, its centre a
    uniform pixel (DeVries & Taylor 2017); rotation by 1, 2 or 3 quarter turns, uniform.

    `ops`: the names (fastclr.augment.ops.OPS) of the ops that may happen; an op not listed is
    off whatever its probability, and without "crop" every view is the whole image. None: all.

    `color_impl` "official-v1" draws an additive brightness shift uniform in [-0.8 s, 0.8 s]
    in the place of the factor (tf.image.random_brightness, the official code's first
    release); "official-v1"/"-v2" also mark contrast and saturation for tf.image's formulas.
    `color_order` "random" draws a random order of the four jitter ops per view, after every
    other draw. Neither changes any other draw.

    `crop_sampler` "official" draws the crop boxes as the official code's
    tf.image.sample_distorted_bounding_box call does (`_sample_crops_official`), in place of
    torchvision's; `crop_interpolation` "bicubic" resizes them as its tf.image.resize does
    (resample.py). With either, the later draws are not those of the default.
    """
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    if size is None:
        if height != width:
            raise ValueError("non-square images need an explicit output size")
        size = height
    on = set(OPS if ops is None else check_ops(ops))
    dev = generator.device

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=generator, device=dev).mul_(hi - lo).add_(lo)

    def bernoulli(p: float) -> Tensor:
        return torch.rand(n, generator=generator, device=dev) < p

    if crop_sampler not in CROP_SAMPLERS:
        raise ValueError(f"crop_sampler must be one of {', '.join(CROP_SAMPLERS)}, got "
                         f"{crop_sampler!r}")
    if "crop" in on and crop_sampler == "official":
        top, left, h, w = _sample_crops_official(generator, n, height, width, crop_scale,
                                                 crop_ratio)
    elif "crop" in on:
        top, left, h, w = _sample_crops(generator, n, height, width, crop_scale, crop_ratio)
    else:   # the whole image
        top = left = torch.zeros(n, dtype=torch.int64, device=dev)
        h = torch.full((n,), height, dtype=torch.int64, device=dev)
        w = torch.full((n,), width, dtype=torch.int64, device=dev)
    flip = bernoulli(flip_p) if "flip" in on else torch.zeros(n, dtype=torch.bool, device=dev)

    if color_impl not in COLOR_IMPLS or color_order not in COLOR_ORDERS:
        raise ValueError(f"color_impl must be one of {', '.join(COLOR_IMPLS)} and color_order "
                         f"one of {', '.join(COLOR_ORDERS)}; got {color_impl!r}, "
                         f"{color_order!r}")
    jitter = brightness = shift = contrast = saturation = hue = gray = None
    x, hue_x = 0.8 * color_strength, 0.2 * color_strength
    if "jitter" in on and color_p > 0 and color_strength > 0:
        jitter = bernoulli(color_p)
        # samples without jitter get neutral factors, so `apply` needs no mask for them
        if color_impl == "official-v1":     # the same draw, as a shift in [-x, x)
            shift = torch.where(jitter, uniform(-x, x), 0.0)
        else:
            brightness = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
        contrast = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
        if channels == 3:
            saturation = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
            hue = torch.where(jitter, uniform(-hue_x, hue_x), 0.0)
    if "gray" in on and channels == 3 and gray_p > 0:
        gray = bernoulli(gray_p)
    blur = None
    if "blur" in on and blur_p > 0:
        blur = torch.where(bernoulli(blur_p), uniform(*blur_sigma), 0.0)
    solarize = bernoulli(solarize_p) if "solarize" in on and solarize_p > 0 else None

    # Figure 4's ops, drawn after all of the above so that they leave its draws unchanged
    sobel = bernoulli(sobel_p) if "sobel" in on and sobel_p > 0 else None
    std = noise = None
    if "noise" in on and noise_p > 0:
        std = torch.where(bernoulli(noise_p), uniform(*noise_std), 0.0)
        noise = torch.randn(n, channels, size, size, generator=generator, device=dev)
    cutout = None
    if "cutout" in on and cutout_p > 0:
        applied = bernoulli(cutout_p)
        u = torch.rand(n, 3, generator=generator, device=dev, dtype=torch.float64)
        lo, hi = cutout_scale
        side = torch.round((lo + (hi - lo) * u[:, 0]) * size).clamp_(min=1).long()
        centre = torch.floor(u[:, 1:] * size).long().clamp_(max=size - 1)       # (n, 2) y, x
        start = centre - (side // 2)[:, None]
        box = torch.cat((start, start + side[:, None]), dim=1).clamp_(0, size)   # (n, 4)
        cutout = torch.where(applied[:, None], box, 0)
    rotate = None
    if "rotate" in on and rotate_p > 0:
        applied = bernoulli(rotate_p)
        k = torch.randint(1, 4, (n,), generator=generator, device=dev)
        rotate = torch.where(applied, k, 0)
    # the official code's random jitter order (data_util.py color_jitter_rand), last of all
    order = None
    if color_order == "random" and jitter is not None:
        order = torch.rand(n, 4, generator=generator, device=dev).argsort(dim=1)
    return AugmentParams(size=size, top=top, left=left, height=h, width=w, flip=flip,
                         jitter=jitter, brightness=brightness, contrast=contrast,
                         saturation=saturation, hue=hue, gray=gray, blur_sigma=blur,
                         blur_kernel=blur_kernel_size(size), solarize=solarize, sobel=sobel,
                         noise_std=std, noise=noise, cutout=cutout, rotate=rotate,
                         brightness_shift=shift, color_order=order,
                         tf_formulas=color_impl != "torchvision",
                         interpolation=crop_interpolation)


# What a view that does not take an op gets in a field of that op (see `cat_params`).
NEUTRAL = {"jitter": False, "brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0,
           "gray": False, "blur_sigma": 0.0, "solarize": False, "sobel": False,
           "noise_std": 0.0, "noise": 0.0, "cutout": 0, "rotate": 0, "brightness_shift": 0.0,
           "color_order": 0}


def cat_params(parts: list[AugmentParams]) -> AugmentParams:
    """The views of `parts` one after the other (same output size). A field that is None in
    some parts but not in others is filled with neutral values there (NEUTRAL: factor 1,
    shift 0, mask False, empty cutout box), which leave those views as they are."""
    plain = {"size": parts[0].size, "blur_kernel": parts[0].blur_kernel,
             "tf_formulas": parts[0].tf_formulas, "interpolation": parts[0].interpolation}
    for name, value in plain.items():
        if any(getattr(p, name) != value for p in parts):
            raise ValueError(f"parameters of different {name} cannot be joined")
    joined = {}
    for f in fields(AugmentParams):
        values = [getattr(p, f.name) for p in parts]
        if not isinstance(values[0], Tensor) and f.name not in NEUTRAL:
            continue                                   # the plain fields above
        like = next((v for v in values if v is not None), None)
        if like is None:
            joined[f.name] = None
            continue
        joined[f.name] = torch.cat([
            v if v is not None else
            torch.full((len(p), *like.shape[1:]), NEUTRAL[f.name], dtype=like.dtype,
                       device=like.device)
            for p, v in zip(parts, values)])
    return AugmentParams(**plain, **joined)


def crop_within(outer: AugmentParams, inner: AugmentParams) -> AugmentParams:
    """`inner`, whose boxes are crops of the S x S views of `outer`, with those boxes moved into
    the input images: one box per view, the crop of a crop, resampled once.

    The inner box's edges are scaled from the S x S view to the outer box and rounded to whole
    input pixels, at least one pixel inside the outer box; resampling once (not twice) is the
    other difference from cropping the resized view itself.
    """
    S = inner.size
    edges = []
    for start, length, inner_start, inner_length in (
            (outer.top, outer.height, inner.top, inner.height),
            (outer.left, outer.width, inner.left, inner.width)):
        length = length.to(torch.float64)        # (a * L) / S is exact for whole boxes
        lo = torch.round(inner_start * length / S).long()
        hi = torch.round((inner_start + inner_length) * length / S).long()
        lo = torch.minimum(lo, length.long() - 1)
        hi = torch.maximum(hi, lo + 1)
        edges.append((start + lo, hi - lo))
    (top, height), (left, width) = edges
    return replace(inner, top=top, left=left, height=height, width=width)
