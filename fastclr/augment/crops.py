"""Random resized crop boxes, drawn for a whole batch at once from an explicit generator:
torchvision's RandomResizedCrop, or the official SimCLR code's
tf.image.sample_distorted_bounding_box (`--crop-sampler official`). `params.sample_params`
draws them for the views; `CropBoxes` draws them for a loader that crops files itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# torchvision's RandomResizedCrop tries this many random boxes before a centre crop.
CROP_TRIES = 10

# random resized crop boxes: torchvision's RandomResizedCrop, or the official code's
# tf.image.sample_distorted_bounding_box (data_util.py crop_and_resize)
CROP_SAMPLERS = ("torchvision", "official")
# the official crop_and_resize's arguments: the crop must cover this much of the image (its one
# bounding box is the whole image), tried this many times before the whole image is taken
OFFICIAL_MIN_COVERED = 0.1
OFFICIAL_CROP_TRIES = 100


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
