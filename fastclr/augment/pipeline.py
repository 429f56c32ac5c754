"""SimCLRAugment: two random views per image, the paper's data augmentation."""

from __future__ import annotations

import torch
from torch import Tensor

from fastclr.augment.engine import apply
from fastclr.augment.crops import CROP_SAMPLERS, CropBoxes
from fastclr.augment.ops import OPS, check_ops
from fastclr.augment.params import (COLOR_IMPLS, COLOR_ORDERS, AugmentParams, cat_params,
                                    crop_within, sample_params)
from fastclr.augment.resample import INTERPOLATIONS
from fastclr.augment.workspace import Workspace


class SimCLRAugment:
    """Two independent random views per image: the paper's data augmentation (Section 3,
    Appendix A; Figure 5: crop plus colour distortion is the composition that matters).

    Keyword arguments mirror fastclr.config's augment options; `size` is the output side
    (None: the input's side); `native` as in `apply`. Views are float32 in [0, 1], not
    normalised.

    Figure 4's other ops are off by default (probability 0): sobel_p, noise_p with noise_std
    (the paper gives no range; std up to 0.1, some 25 of 255 levels, is plain to see yet keeps
    objects recognisable, and drawing it from 0 gives a spread of strengths like blur's
    sigma), cutout_p with cutout_scale (the square's side as a fraction of the view's; 0.5 is
    DeVries & Taylor's best 16 of 32 px on CIFAR-10, 0.25 their CIFAR-100 size), rotate_p.

    `ops`: the op names (fastclr.augment.ops.OPS) that may happen, each still with its own
    probability; an op not listed is off, and without "crop" a view is the whole image
    resized. None: all. `one_branch`: Figure 5's protocol (Section 3: "we always first
    randomly crop images and resize them to the same resolution, and we then apply the
    targeted transformation(s) only to one branch ..., while leaving the other branch as the
    identity"): the two views of an image share one random crop; the first view is that crop
    alone, the second gets the listed ops on top of it, "crop" being a second random crop of
    the first (see params.crop_within). One-branch views come in pairs (`two_views`).

    `color_impl` and `color_order`: the colour jitter's formulas and order (docs/fidelity.md):
    torchvision's in a fixed order (the default, the C kernel's), or the official code's
    ("official-v2": tf.image's contrast and saturation; "official-v1" also an additive
    brightness), and/or a random order per view ("random", as the official code's default
    and torchvision's ColorJitter); those run as tensor ops (`colour.jitter`).
    `crop_sampler` and `crop_interpolation`: torchvision's RandomResizedCrop boxes and
    antialiased bilinear resize (the defaults), or the official code's
    tf.image.sample_distorted_bounding_box boxes ("official", crops._sample_crops_official)
    and tf.image.resize's bicubic ("bicubic", resample._bicubic_taps).
    """

    def __init__(self, size: int | None = None, crop_scale: tuple[float, float] = (0.2, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 color_strength: float = 0.5, color_p: float = 0.8, gray_p: float = 0.2,
                 blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_p: float = 0.0, sobel_p: float = 0.0, noise_p: float = 0.0,
                 noise_std: tuple[float, float] = (0.0, 0.1), cutout_p: float = 0.0,
                 cutout_scale: tuple[float, float] = (0.1, 0.5), rotate_p: float = 0.0,
                 ops: tuple[str, ...] | None = None, one_branch: bool = False,
                 color_impl: str = "torchvision", color_order: str = "fixed",
                 crop_sampler: str = "torchvision", crop_interpolation: str = "bilinear",
                 native: bool | None = None):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {crop_ratio}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {blur_sigma}")
        if not 0 <= noise_std[0] <= noise_std[1] <= 1:
            raise ValueError(f"noise_std must satisfy 0 <= low <= high <= 1, got {noise_std}")
        if not 0 < cutout_scale[0] <= cutout_scale[1] <= 1:
            raise ValueError("cutout_scale (a fraction of the side) must satisfy "
                             f"0 < low <= high <= 1, got {cutout_scale}")
        for name, p in (("flip_p", flip_p), ("color_p", color_p), ("gray_p", gray_p),
                        ("blur_p", blur_p), ("solarize_p", solarize_p), ("sobel_p", sobel_p),
                        ("noise_p", noise_p), ("cutout_p", cutout_p), ("rotate_p", rotate_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if not 0 <= color_strength <= 2.5:
            raise ValueError("color_strength must lie in [0, 2.5] (a hue shift of at most "
                             f"half a turn), got {color_strength}")
        for name, value, allowed in (("color_impl", color_impl, COLOR_IMPLS),
                                     ("color_order", color_order, COLOR_ORDERS),
                                     ("crop_sampler", crop_sampler, CROP_SAMPLERS),
                                     ("crop_interpolation", crop_interpolation, INTERPOLATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if color_impl != "torchvision" and color_strength > 1.25:
            raise ValueError("the official jitter's contrast and saturation factors lie in "
                             "[1 - 0.8 s, 1 + 0.8 s], which tf.image refuses below 0: "
                             f"color_strength must be <= 1.25 with it, got {color_strength}")
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.options = dict(size=size, crop_scale=tuple(crop_scale),
                            crop_ratio=tuple(crop_ratio), flip_p=flip_p,
                            color_strength=color_strength, color_p=color_p, gray_p=gray_p,
                            blur_p=blur_p, blur_sigma=tuple(blur_sigma), solarize_p=solarize_p,
                            sobel_p=sobel_p, noise_p=noise_p, noise_std=tuple(noise_std),
                            cutout_p=cutout_p, cutout_scale=tuple(cutout_scale),
                            rotate_p=rotate_p, ops=check_ops(ops), color_impl=color_impl,
                            color_order=color_order, crop_sampler=crop_sampler,
                            crop_interpolation=crop_interpolation)
        self.one_branch = bool(one_branch)
        self.native = native            # see `apply`
        self.workspace = Workspace()

    @classmethod
    def small_images(cls, **overrides) -> "SimCLRAugment":
        """CIFAR-like images (<= 64 px): no blur and colour strength 0.5 (paper, appendix
        B.9), crop area 0.2..1 (the common choice of later CIFAR work; B.9 keeps ImageNet's
        0.08..1)."""
        return cls(**{"crop_scale": (0.2, 1.0), "color_strength": 0.5, "blur_p": 0.0,
                      **overrides})

    @classmethod
    def imagenet(cls, **overrides) -> "SimCLRAugment":
        """ImageNet-like images: blur with p = 0.5, colour strength 1.0, crop area 0.08..1
        (paper, Appendix A)."""
        return cls(**{"crop_scale": (0.08, 1.0), "color_strength": 1.0, "blur_p": 0.5,
                      **overrides})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"SimCLRAugment({args}, one_branch={self.one_branch!r})"

    def crop_boxes(self) -> CropBoxes:
        """This augmentation's random resized crop, for a loader that crops full-resolution
        files itself (streamed sets); the views of its crops then come from
        `stacked_views(crops, generator, cropped=True)`."""
        o = self.options
        return CropBoxes(o["crop_scale"], o["crop_ratio"], o["crop_sampler"],
                         o["crop_interpolation"])

    def sample_params(self, images: Tensor, generator: torch.Generator,
                      views: int = 1, cropped: bool = False) -> AugmentParams:
        """Parameters of `views` views of each image of the batch (view-major order).

        `cropped`: the images are already the random resized crops of the views (from
        `crop_boxes`), one view each: every op but the crop."""
        _check_generator(images, generator)
        n, C, H, W = images.shape
        if cropped:
            if self.one_branch or views != 1:
                raise ValueError("cropped images take one view each, and not one_branch "
                                 "(whose second crop lies inside the first)")
            ops = [op for op in (self.options["ops"] or OPS) if op != "crop"]
            return sample_params(generator, n, H, W, C, **{**self.options, "ops": ops})
        if not self.one_branch:
            return sample_params(generator, views * n, H, W, C, **self.options)
        if views != 2:
            raise ValueError("one_branch=True makes pairs of views (the identity branch and "
                             "the transformed one): use two_views or stacked_views")
        # the shared crop, then the targeted ops drawn on its S x S view
        shared = sample_params(generator, n, H, W, C, **{**self.options, "ops": ("crop",)})
        S = shared.size
        targeted = crop_within(shared, sample_params(generator, n, S, S, C, **self.options))
        return cat_params([shared, targeted])

    def __call__(self, images: Tensor, generator: torch.Generator, *,
                 out: Tensor | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """One random view of each image: uint8 (N, C, H, W) -> float32 (N, C, S, S).

        Not with one_branch=True, whose views come in pairs."""
        params = self.sample_params(images, generator)
        return apply(images, params, out=out, memory_format=memory_format,
                     workspace=self.workspace, native=self.native)

    def two_views(self, images: Tensor, generator: torch.Generator, *,
                  out: Tensor | None = None,
                  memory_format: torch.memory_format = torch.contiguous_format
                  ) -> tuple[Tensor, Tensor]:
        """Two views of each image (independent unless one_branch), drawn and applied in one
        batched pass of 2N.

        Both are halves of one (2N, C, S, S) tensor, `out` if given (see `apply`).
        """
        both = self.stacked_views(images, generator, out=out, memory_format=memory_format)
        n = images.shape[0]
        return both[:n], both[n:]

    def stacked_views(self, images: Tensor, generator: torch.Generator, *,
                      out: Tensor | None = None,
                      memory_format: torch.memory_format = torch.contiguous_format,
                      cropped: bool = False) -> Tensor:
        """The two views of each image as one (2N, C, S, S) tensor: rows i and N + i are the
        two views of image i, ready for one forward pass of the encoder.

        `cropped`: `images` (2N, C, S, S) are already the two random resized crops of each
        image in that order (a streamed set's loader took them from the full-resolution
        files with `crop_boxes`); the rest of the augmentation is applied to each."""
        if cropped:
            params = self.sample_params(images, generator, cropped=True)
            return apply(images, params, out=out, memory_format=memory_format,
                         workspace=self.workspace, native=self.native)
        params = self.sample_params(images, generator, views=2)
        return apply(images, params, out=out, memory_format=memory_format,
                     workspace=self.workspace, native=self.native)


def _check_generator(images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError("pass a torch.Generator: augmentations never use the global RNG")
    if generator.device.type != images.device.type:
        raise ValueError(f"the generator is on {generator.device} but the images are on "
                         f"{images.device}; create it with torch.Generator(device=...)")


# SimCLRAugment arguments that config options of another name set
_OPTION_NAMES = {"size": "image_size", "ops": "augment_ops"}


def augment_from_config(cfg, channels: int | None = None) -> SimCLRAugment:
    """The training augmentation of a run's config (fastclr.config.Config): every argument of
    SimCLRAugment comes from the option of the same name. With `channels` (the data's), an op
    the user asked for that cannot act on one-channel images is refused."""
    import inspect

    from fastclr.errors import ConfigError

    names = [p for p in inspect.signature(SimCLRAugment).parameters if p != "native"]
    kwargs = {p: getattr(cfg, _OPTION_NAMES.get(p, p)) for p in names}
    asked = [n.strip() for n in (cfg.augment or "").split(",")]
    if channels == 1 and "gray" in asked:
        raise ConfigError("augment: gray needs colour images; this data set has one channel "
                          "(its colour distortion is brightness and contrast)")
    return SimCLRAugment(**kwargs)
