"""The random parameters of a batch of views: one draw per view, from an explicit generator.

The distributions are torchvision's (RandomResizedCrop, ColorJitter, RandomGrayscale, ...),
drawn for all views at once; `engine.apply` turns them into pixels. Ops that are off draw
nothing, and the ops added for the paper's Figure 4/5 comparisons (sobel, noise, cutout,
rotate) draw after all the others: with them off, a seed gives the views it always gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Iterable

import torch
from torch import Tensor

from fastclr.augment.ops import OPS, check_ops

# torchvision's RandomResizedCrop tries this many random boxes before a centre crop.
CROP_TRIES = 10

# colour jitter: torchvision's formulas, or the official code's (tf.image's) with its first
# release's additive brightness (v1) or its later multiplicative one (v2); in a fixed order
# or a random one per view
COLOR_IMPLS = ("torchvision", "official-v2", "official-v1")
COLOR_ORDERS = ("fixed", "random")

# random resized crop boxes: torchvision's RandomResizedCrop, or the official code's
# tf.image.sample_distorted_bounding_box (data_util.py crop_and_resize)
CROP_SAMPLERS = ("torchvision", "official")
# the official crop_and_resize's arguments: the crop must cover this much of the image (its one
# bounding box is the whole image), tried this many times before the whole image is taken
OFFICIAL_MIN_COVERED = 0.1
OFFICIAL_CROP_TRIES = 100


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


def _sample_crops(generator: torch.Generator, n: int, height: int, width: int,
                  scale: tuple[float, float], ratio: tuple[float, float]):
    """torchvision's RandomResizedCrop box for n samples at once: (top, left, h, w) (n,) int64.

    All 10 tries are drawn at once; each sample keeps its first box that fits.
    """
    dev, f64 = generator.device, torch.float64
    u = torch.rand(n, CROP_TRIES, 2, generator=generator, device=dev, dtype=f64)
    corner = torch.rand(n, 2, generator=generator, device=dev, dtype=f64)
    return _crops_from_uniforms(u, corner, height, width, scale, ratio)


def _crops_from_uniforms(u: Tensor, corner: Tensor, height: int | Tensor, width: int | Tensor,
                         scale: tuple[float, float], ratio: tuple[float, float]):
    """`_sample_crops` from its draws: u (n, tries, 2) and corner (n, 2) uniforms in [0, 1),
    float64 (sizes are rounded like torchvision's Python floats); height and width ints, or
    (n,) tensors (a size per sample, as a loader of files of many sizes has)."""
    H, W, Hn, Wn = _size_forms(height, width, u.device)
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[..., 0])               # (n, tries)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))   # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)                              # (n, tries)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)   # first fitting try (0 if none)
    found = fits.any(dim=1)
    if isinstance(height, int):
        fh, fw = _centre_crop_size(height, width, ratio)   # torchvision's fallback
        fh, fw = float(fh), float(fw)
    else:
        fh, fw = _centre_crop_sizes(Hn, Wn, ratio)
    w = torch.where(found, w.gather(1, first).squeeze(1), fw)
    h = torch.where(found, h.gather(1, first).squeeze(1), fh)
    top = torch.where(found, torch.floor(corner[:, 0] * (Hn - h + 1)), (Hn - h) // 2)
    left = torch.where(found, torch.floor(corner[:, 1] * (Wn - w + 1)), (Wn - w) // 2)
    top = torch.minimum(top, Hn - h)     # in case u * (k + 1) rounds up to k + 1
    left = torch.minimum(left, Wn - w)
    return top.long(), left.long(), h.long(), w.long()


def _size_forms(height: int | Tensor, width: int | Tensor, device):
    """(H, W) shaped for (n, tries) maths and (Hn, Wn) for (n,) maths: the ints themselves, or
    float64 (n, 1) and (n,) tensors."""
    if isinstance(height, int) and isinstance(width, int):
        return height, width, height, width
    Hn = torch.as_tensor(height, device=device).to(torch.float64)
    Wn = torch.as_tensor(width, device=device).to(torch.float64)
    return Hn[:, None], Wn[:, None], Hn, Wn


def _centre_crop_sizes(H: Tensor, W: Tensor, ratio: tuple[float, float]):
    """`_centre_crop_size` for (n,) float64 sizes."""
    in_ratio = W / H
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fh = torch.where(narrow, torch.round(W / min(ratio)), H)
    fw = torch.where(wide, torch.round(H * max(ratio)), W)
    return fh, fw


def _sample_crops_official(generator: torch.Generator, n: int, height: int, width: int,
                           scale: tuple[float, float], ratio: tuple[float, float],
                           min_covered: float = OFFICIAL_MIN_COVERED,
                           tries: int = OFFICIAL_CROP_TRIES):
    """The official code's crop boxes for n samples at once: (top, left, h, w) (n,) int64.

    data_util.py crop_and_resize calls tf.image.sample_distorted_bounding_box with the whole
    image as its one bounding box, min_object_covered 0.1, area_range `scale`,
    aspect_ratio_range `ratio` and 100 attempts; this is that op's sampling (TensorFlow's
    sample_distorted_bounding_box_op.cc), vectorised over samples and attempts, in float32
    where it computes in float32. Per attempt: an aspect ratio a uniform (not log-uniform) in
    `ratio`; a height uniform over the integers from round(sqrt(min_area / a)) to the largest
    that fits (the area is then not uniform: small crops are likelier than torchvision's);
    width round(h a), nudged by a pixel of height when rounding leaves the area range; the
    attempt fails outside the area range or below min_covered of the image; the offset is
    uniform over [0, H - h) (a crop never touches the bottom or right edge unless it spans
    the image). The first attempt that succeeds is kept, else the whole image.
    """
    u = torch.rand(n, tries, 4, generator=generator, device=generator.device,
                   dtype=torch.float64)
    return _official_from_uniforms(u, height, width, scale, ratio, min_covered)


def _official_from_uniforms(u: Tensor, height: int | Tensor, width: int | Tensor,
                            scale: tuple[float, float], ratio: tuple[float, float],
                            min_covered: float = OFFICIAL_MIN_COVERED):
    """`_sample_crops_official` from its draws u (n, tries, 4) in [0, 1), float64; height and
    width ints, or (n,) tensors."""
    dev, f32 = u.device, torch.float32
    n = u.shape[0]
    H, W, Hn, Wn = _size_forms(height, width, dev)
    if not isinstance(H, int):      # the op's int32 sizes, in float32 maths
        H, W = H.to(f32), W.to(f32)
    aspect = (ratio[0] + (ratio[1] - ratio[0]) * u[..., 0]).to(f32)             # (n, tries)
    # float32 products as the C++ code forms them: (fraction * width) * height
    min_area = torch.tensor(scale[0], dtype=f32, device=dev).mul(W).mul(H)
    max_area = torch.tensor(scale[1], dtype=f32, device=dev).mul(W).mul(H)
    rint = torch.round                                   # lrintf: round half to even
    lo = rint(torch.sqrt(min_area / aspect))
    hi = rint(torch.sqrt(max_area / aspect))
    # the tallest crop whose rounded width fits: (width + 0.5 - eps) / a, truncated
    too_wide = rint(hi * aspect) > W
    wide = W if isinstance(W, int) else W.double()        # in double, as the C++ forms it
    fit = torch.floor((wide + 0.5 - 1e-7) / aspect.double()).to(f32)
    fit = torch.where(rint(fit * aspect) > W, fit - 1, fit)
    hi = torch.minimum(torch.where(too_wide, fit, hi), torch.as_tensor(H, dtype=f32))
    lo = torch.minimum(lo, hi)
    h = lo + torch.floor(u[..., 1] * (hi - lo + 1).double()).to(f32)      # uniform in [lo, hi]
    w = rint(h * aspect)
    area = w * h
    small = area < min_area                                  # one pixel taller, then shorter
    h = torch.where(small, h + 1, h)
    w = torch.where(small, rint(h * aspect), w)
    area = w * h
    large = area > max_area
    h = torch.where(large, h - 1, h)
    w = torch.where(large, rint(h * aspect), w)
    area = w * h
    ok = ((area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0)
          & (h > 0) & (area / (W * H) >= min_covered))
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = ok.any(dim=1)
    whole_h = float(Hn) if isinstance(Hn, int) else Hn.to(f32)
    whole_w = float(Wn) if isinstance(Wn, int) else Wn.to(f32)
    h = torch.where(found, h.gather(1, first).squeeze(1), whole_h).double()
    w = torch.where(found, w.gather(1, first).squeeze(1), whole_w).double()
    corner = u.gather(1, first[..., None].expand(n, 1, 4)).squeeze(1)[:, 2:]    # (n, 2)
    top = torch.floor(corner[:, 0] * (Hn - h))                   # [0, H - h), 0 if h = H
    left = torch.floor(corner[:, 1] * (Wn - w))
    return top.long(), left.long(), h.long(), w.long()


@dataclass(frozen=True)
class CropBoxes:
    """Random resized crop boxes drawn as SimCLRAugment draws them (its crop_scale, crop_ratio,
    crop_sampler; its crop_interpolation for whoever resizes them), for a loader that crops
    files before they are batched (streamed sets: fastclr.data.batches). Picklable, so
    DataLoader workers can hold it. A box comes from `draws` uniforms in [0, 1), so a loader
    can draw them per image from that image's own seed and turn a batch of images of
    different sizes into boxes in one call (`from_uniforms`)."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    sampler: str = "torchvision"
    interpolation: str = "bilinear"

    @property
    def draws(self) -> int:
        """Uniforms per box."""
        return OFFICIAL_CROP_TRIES * 4 if self.sampler == "official" else CROP_TRIES * 2 + 2

    def from_uniforms(self, u: Tensor, heights, widths) -> Tensor:
        """Boxes (n, 4) int64 (top, left, h, w) from u (n, draws) float64 uniforms, in images of
        heights and widths (ints, or (n,) tensors)."""
        if self.sampler == "official":
            box = _official_from_uniforms(u.view(len(u), OFFICIAL_CROP_TRIES, 4), heights,
                                          widths, self.scale, self.ratio)
        else:
            box = _crops_from_uniforms(u[:, :-2].reshape(len(u), CROP_TRIES, 2), u[:, -2:],
                                       heights, widths, self.scale, self.ratio)
        return torch.stack(box, dim=1)

    def __call__(self, generator: torch.Generator, n: int, height: int, width: int
                 ) -> list[tuple[int, int, int, int]]:
        """n boxes (top, left, h, w) in a height x width image."""
        u = torch.rand(n, self.draws, generator=generator, device=generator.device,
                       dtype=torch.float64)
        return [tuple(b) for b in self.from_uniforms(u, height, width).tolist()]


def _centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width
