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
(brightness, contrast, saturation, hue: the order of the paper's pseudo-code, appendix A, and
of `color_jitter_nonrand` in its code, whose default, like torchvision's, is a random order
per image); see `apply`. The official code's choices are options (docs/fidelity.md): its
jitter (tf.image's formulas, the first release's additive brightness, a random order;
`colour.jitter`, tensor ops), its crop sampler (tf.image.sample_distorted_bounding_box,
`crops._sample_crops_official`) and bicubic resize (`resample._bicubic_taps`).

Ops are chosen by name (`OPS`, in fastclr.augment.ops, which imports without torch: this
package imports its modules on first use), and `SimCLRAugment(one_branch=True)` gives
Figure 5's asymmetric pairs: a crop on one branch, the crop and the chosen ops on the other.

Views are float32 in [0, 1], not mean/std normalised (the model normalises its input).

On CPU tensors, crop, resize, flip and colour run by default in a small C kernel
(fastclr/augment/_cpu.c, built at install where a C compiler is; `NATIVE`), which does the same
arithmetic one view at a time in cache: the tensor ops pass over a chunk of views some
thirty-five times (twenty for hue), and on a CPU those passes, not the arithmetic, set the
speed. The tensor ops stay the CUDA path and the fallback (and run the ops after colour on
both); tests hold the two to the same results (1e-5).
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it, imported on first use (PEP 562), so that
# `from fastclr.augment.ops import OPS` costs no torch import
_EXPORTS = {
    "GRAY_WEIGHTS": "colour", "adjust_brightness": "colour", "adjust_contrast": "colour",
    "adjust_hue": "colour", "adjust_saturation": "colour", "gaussian_blur": "colour",
    "random_grayscale": "colour", "solarize": "colour",
    "add_noise": "extra", "cutout": "extra", "rotate_quarters": "extra", "sobel": "extra",
    "NATIVE": "engine", "apply": "engine",
    "OPS": "ops", "check_ops": "ops",
    "AugmentParams": "params", "blur_kernel_size": "params", "cat_params": "params",
    "sample_params": "params",
    "SimCLRAugment": "pipeline",
    "resized_crop": "resample",
    "Workspace": "workspace",
}
_MODULES = ("colour", "engine", "extra", "ops", "params", "pipeline", "resample", "workspace")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_MODULES})
