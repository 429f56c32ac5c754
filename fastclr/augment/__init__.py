"""Batched, per-sample random SimCLR augmentations (Chen et al. 2020, Section 3 and Appendix A).

Every image in a batch gets its own random parameters, drawn in one call from an explicit
`torch.Generator`, and the whole batch is transformed by one short sequence of tensor ops: no
Python loop over images and no host-device sync, so the same code runs on CPU and CUDA.

    aug = SimCLRAugment.small_images()
    view1, view2 = aug.two_views(images_uint8, generator)        # (N, C, S, S) float32 each

    params = sample_params(generator, n, height, width, channels, **options)  # per-sample
    views = apply(images_uint8, params)                                       # tensors

Semantics follow torchvision.transforms.v2 per image (tests/augment/ checks each op):
random resized crop (bilinear, antialiased when shrinking), horizontal flip, colour jitter,
random grayscale, gaussian blur, solarization; and, off by default, the other transformations
the paper compares (Figure 4): Sobel filtering, gaussian noise, cutout and rotation by quarter
turns (fastclr/augment/extra.py). They are applied in this order: crop+resize, flip, colour
jitter, grayscale, sobel, blur, solarize, noise, cutout, rotate (rotating last is the same as
right after the flip: quarter turns commute with the ops between; extra.py says why).
The one deliberate difference: colour jitter applies its four ops in a fixed order
(brightness, contrast, saturation, hue: the order of `color_jitter_nonrand` in the paper's
code, whose default, like torchvision's, is a random order per image); see `apply`.

Views are float32 in [0, 1], not mean/std normalised (the model normalises its input).

On CPU tensors, crop, resize, flip and colour run by default in a small C kernel
(fastclr/augment/_cpu.c, built at install where a C compiler is; `NATIVE`), which does the same
arithmetic one view at a time in cache: the tensor ops pass over a chunk of views some
thirty-five times (twenty for hue), and on a CPU those passes, not the arithmetic, set the
speed. The tensor ops stay the CUDA path and the fallback (and run the ops after colour on
both); tests hold the two to the same results (1e-5).
"""

from fastclr.augment.colour import (GRAY_WEIGHTS, adjust_brightness, adjust_contrast,
                                    adjust_hue, adjust_saturation, gaussian_blur,
                                    random_grayscale, solarize)
from fastclr.augment.engine import NATIVE, apply
from fastclr.augment.extra import add_noise, cutout, rotate_quarters, sobel
from fastclr.augment.params import AugmentParams, blur_kernel_size, sample_params
from fastclr.augment.pipeline import SimCLRAugment
from fastclr.augment.resample import resized_crop
from fastclr.augment.workspace import Workspace

__all__ = ["AugmentParams", "GRAY_WEIGHTS", "NATIVE", "SimCLRAugment", "Workspace",
           "add_noise", "adjust_brightness", "adjust_contrast", "adjust_hue",
           "adjust_saturation", "apply", "blur_kernel_size", "cutout", "gaussian_blur",
           "random_grayscale", "resized_crop", "rotate_quarters", "sample_params", "sobel",
           "solarize"]
