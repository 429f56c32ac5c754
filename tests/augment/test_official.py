"""The official code's augmentation choices (docs/fidelity.md), augmentation side: its colour
jitter (tf.image's formulas, the first release's additive brightness, a random order per view)
and its crop sampler, each against a per-image transcription of the official formulas, and
against TensorFlow's own ops where TensorFlow is installed (the `tf` fixture skips otherwise).
With the new options at their defaults, nothing changes (test_extra.py pins that)."""

import colorsys
import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from augment.test_augment import (PIPELINE_TOL, TOL, as_float, assert_cuda_applies_as_cpu,
                                  cuda_views_without_waits, gen,
                                  real_images)
from fastclr import augment as A

JITTER_ONLY = dict(ops=("jitter",), color_p=1.0)   # views = the jittered images themselves


# ---- the draws --------------------------------------------------------------------------------

def test_the_official_jitter_draws_what_the_default_draws():
    base = A.sample_params(gen(1), 64, 32, 32, 3, color_strength=1.0)
    v2 = A.sample_params(gen(1), 64, 32, 32, 3, color_strength=1.0, color_impl="official-v2")
    v1 = A.sample_params(gen(1), 64, 32, 32, 3, color_strength=1.0, color_impl="official-v1")
    rnd = A.sample_params(gen(1), 64, 32, 32, 3, color_strength=1.0, color_order="random")
    assert v2.tf_formulas and v1.tf_formulas and not base.tf_formulas and not rnd.tf_formulas
    for name in ("top", "left", "height", "width", "flip", "jitter", "contrast", "saturation",
                 "hue", "gray"):
        for other in (v2, v1, rnd):
            assert torch.equal(getattr(other, name), getattr(base, name)), name
    assert torch.equal(v2.brightness, base.brightness) and v1.brightness is None
    # v1's shift is the same uniform draw mapped onto [-0.8, 0.8) instead of [0.2, 1.8)
    on = base.jitter
    torch.testing.assert_close(v1.brightness_shift[on], base.brightness[on] - 1.0)
    assert (v1.brightness_shift[~on] == 0).all() and on.any() and not on.all()
    # the random order: a permutation of the four ops per view, drawn last
    assert rnd.color_order.shape == (64, 4)
    assert (rnd.color_order.sort(dim=1).values == torch.arange(4)).all()
    assert base.color_order is None and base.brightness_shift is None


def test_random_order_is_uniform_over_the_24_orders():
    p = A.sample_params(gen(2), 24_000, 8, 8, 3, color_order="random", color_p=1.0)
    counts = {}
    for row in p.color_order.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(4)))
    assert all(abs(c - 1000) < 150 for c in counts.values())   # ~5 standard deviations


def test_official_jitter_needs_strength_at_most_1_25():
    with pytest.raises(ValueError, match="1.25"):
        A.SimCLRAugment(color_strength=1.5, color_impl="official-v2")
    A.SimCLRAugment(color_strength=1.5, color_order="random")        # torchvision's: fine
    from fastclr.config import load_config
    from fastclr.errors import ConfigError
    with pytest.raises(ConfigError, match="1.25"):
        load_config("fashion-mnist-cpu", overrides={"color_impl": "official-v1",
                                                   "color_strength": 2.0})


# ---- per-image references -----------------------------------------------------------------------

def tf_contrast(x: np.ndarray, f: float) -> np.ndarray:
    """tf.image.adjust_contrast, written out: each channel around its own mean."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - mean) * f + mean, 0, 1)


def hsv_map(x: np.ndarray, fn) -> np.ndarray:
    """Apply fn(h, s, v) -> (h, s, v) to every pixel of an RGB image (3, H, W), with colorsys."""
    out = np.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*x[:, i, j])
            out[:, i, j] = colorsys.hsv_to_rgb(*fn(h, s, v))
    return out


def tf_saturation(x, f):
    return np.clip(hsv_map(x, lambda h, s, v: (h, min(max(s * f, 0.0), 1.0), v)), 0, 1)


def tf_hue(x, d):
    return np.clip(hsv_map(x, lambda h, s, v: ((h + d) % 1.0, s, v)), 0, 1)


def official_reference(x: np.ndarray, p: A.AugmentParams, i: int, tf_formulas: bool):
    """One view's jitter as the official code's color_jitter_rand does it: the ops in the
    view's order, each clipped; tf.image's formulas (or torchvision's, to check the order)."""
    if not p.jitter[i]:
        return x
    order = p.color_order[i].tolist() if p.color_order is not None else [0, 1, 2, 3]
    for k in order:
        if k == 0:
            x = np.clip(x + float(p.brightness_shift[i]), 0, 1) \
                if p.brightness_shift is not None else np.clip(x * float(p.brightness[i]), 0, 1)
        elif k == 1:
            x = tf_contrast(x, float(p.contrast[i])) if tf_formulas else \
                TF.adjust_contrast(torch.from_numpy(x), float(p.contrast[i])).numpy()
        elif k == 2 and x.shape[0] == 3:
            x = tf_saturation(x, float(p.saturation[i])) if tf_formulas else \
                TF.adjust_saturation(torch.from_numpy(x), float(p.saturation[i])).numpy()
        elif k == 3 and x.shape[0] == 3:
            x = tf_hue(x, float(p.hue[i])) if tf_formulas else \
                TF.adjust_hue(torch.from_numpy(x), float(p.hue[i])).numpy()
    return x


@pytest.mark.parametrize("impl,order", [("torchvision", "random"), ("official-v2", "fixed"),
                                        ("official-v2", "random"), ("official-v1", "random")])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("native", [True, False], ids=["C-kernel", "tensor-ops"])
def test_jitter_matches_per_image_reference(impl, order, channels, native):
    if native and A.NATIVE is None:
        pytest.skip("the C kernel was not built")
    images = real_images(16, 12, channels)
    p = A.sample_params(gen(4), 16, 12, 12, channels, color_strength=1.0, color_p=0.8,
                        ops=("jitter",), color_impl=impl, color_order=order)
    views = A.apply(images, p, native=native)
    for i in range(16):
        ref = official_reference(as_float(images[i]).numpy().astype(np.float64), p, i,
                                 impl != "torchvision")
        torch.testing.assert_close(views[i], torch.from_numpy(ref).float(), rtol=0,
                                   atol=PIPELINE_TOL)


def test_one_channel_official_v2_is_torchvision():
    # a single channel's mean is its luma's mean, and saturation and hue do not exist
    images = real_images(24, 28, 1)
    ours = A.SimCLRAugment(color_strength=1.0, color_impl="official-v2").stacked_views(
        images, gen(6))
    default = A.SimCLRAugment(color_strength=1.0).stacked_views(images, gen(6))
    torch.testing.assert_close(ours, default, rtol=0, atol=TOL)
    v1 = A.SimCLRAugment(color_strength=1.0, color_impl="official-v1").stacked_views(
        images, gen(6))
    assert (v1 - default).abs().max() > 0.1                             # additive brightness


@pytest.mark.parametrize("options", [dict(color_impl="official-v1", color_order="random",
                                          blur_p=0.5, size=24, gray_p=0.5),
                                     dict(color_impl="official-v2", one_branch=True, size=24)])
def test_official_jitter_in_the_whole_pipeline(options):
    # crop, flip, gray and blur around it, C kernel and tensor ops alike
    images = real_images(8, 40)
    outs = []
    for native in ([True, False] if A.NATIVE is not None else [False]):
        aug = A.SimCLRAugment(color_strength=1.0, native=native, **options)
        outs.append(aug.stacked_views(images, gen(7)))
    assert outs[0].shape == (16, 3, 24, 24) and 0 <= outs[0].min() and outs[0].max() <= 1
    torch.testing.assert_close(outs[0], outs[-1], rtol=0, atol=TOL)


# ---- against TensorFlow's own ops -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("impl", ["official-v1", "official-v2"])
def test_jitter_matches_tf_image(tf, impl):
    # data_util.py color_jitter_rand with the draws replaced by ours: tf.image's ops in the
    # view's order, each followed by clip_by_value(0, 1), then rgb_to_grayscale
    images = real_images(12, 16)
    p = A.sample_params(gen(8), 12, 16, 16, 3, color_strength=1.0, color_p=0.8, gray_p=0.3,
                        ops=("jitter", "gray"), color_impl=impl, color_order="random")
    views = A.apply(images, p)
    for i in range(12):
        x = tf.constant(as_float(images[i]).permute(1, 2, 0).numpy())   # (H, W, 3)
        if p.jitter[i]:
            for k in p.color_order[i].tolist():
                if k == 0:
                    x = tf.image.adjust_brightness(x, float(p.brightness_shift[i])) \
                        if impl == "official-v1" else x * float(p.brightness[i])
                elif k == 1:
                    x = tf.image.adjust_contrast(x, float(p.contrast[i]))
                elif k == 2:
                    x = tf.image.adjust_saturation(x, float(p.saturation[i]))
                else:
                    x = tf.image.adjust_hue(x, float(p.hue[i]))
                x = tf.clip_by_value(x, 0.0, 1.0)
        if p.gray[i]:
            x = tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])
        theirs = torch.from_numpy(x.numpy()).permute(2, 0, 1)
        torch.testing.assert_close(views[i], theirs, rtol=0, atol=PIPELINE_TOL)


# ---- the crop sampler and the resize ----------------------------------------------------------

def area_fractions(p: A.AugmentParams, H: int, W: int) -> np.ndarray:
    return (p.height * p.width).double().numpy() / (H * W)


@pytest.mark.parametrize("H,W", [(224, 224), (375, 500), (32, 32)])
def test_official_crops_follow_the_official_constraints(H, W):
    p = A.sample_params(gen(9), 20_000, H, W, 3, size=32, crop_scale=(0.08, 1.0),
                        crop_sampler="official")
    area = area_fractions(p, H, W)
    aspect = (p.width / p.height).double().numpy()
    assert area.min() >= 0.1 - 1e-9 and area.max() <= 1.0          # min_object_covered 0.1
    assert (p.top >= 0).all() and (p.left >= 0).all()
    # the offset is uniform over [0, H - h): flush with the bottom/right only when spanning
    assert ((p.top + p.height < H) | (p.height == H)).all()
    assert ((p.left + p.width < W) | (p.width == W)).all()
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    # smaller crops than torchvision's on average (the 0.42 against 0.48 at 224 px)
    tv = area_fractions(A.sample_params(gen(9), 20_000, H, W, 3, size=32,
                                        crop_scale=(0.08, 1.0)), H, W)
    assert area.mean() < tv.mean() - 0.03
    if (H, W) == (224, 224):
        assert area.mean() == pytest.approx(0.42, abs=0.01)
        assert tv.mean() == pytest.approx(0.48, abs=0.01)


def test_the_torchvision_sampler_is_still_the_default():
    a = A.sample_params(gen(10), 64, 40, 40, 3, size=32, crop_scale=(0.08, 1.0))
    b = A.sample_params(gen(10), 64, 40, 40, 3, size=32, crop_scale=(0.08, 1.0),
                        crop_sampler="torchvision", crop_interpolation="bilinear")
    for name in ("top", "left", "height", "width", "flip", "brightness"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.slow
@pytest.mark.parametrize("H,W", [(224, 224), (375, 500)])
def test_official_crops_match_tf_sample_distorted_bounding_box(tf, H, W):
    # data_util.py crop_and_resize's call, 3000 times, against ours: the same distribution
    # of area and aspect ratio (two-sample Kolmogorov-Smirnov distances)
    tf.random.set_seed(0)
    boxes = []
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    for _ in range(3000):
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            [H, W, 3], bounding_boxes=whole, min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100,
            use_image_if_no_bounding_boxes=True)
        boxes.append((*begin.numpy()[:2], *size.numpy()[:2]))
    top, left, h, w = np.array(boxes, dtype=np.float64).T
    p = A.sample_params(gen(11), 20_000, H, W, 3, size=32, crop_scale=(0.08, 1.0),
                        crop_ratio=(3 / 4, 4 / 3), crop_sampler="official")

    def ks(a, b):
        grid = np.sort(np.concatenate([a, b]))
        return np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                      - np.searchsorted(np.sort(b), grid, side="right") / len(b)).max()

    ours_area, theirs_area = area_fractions(p, H, W), h * w / (H * W)
    assert ks(ours_area, theirs_area) < 0.035       # the 0.1% critical value is ~0.038
    assert ks((p.width / p.height).double().numpy(), w / h) < 0.035
    assert ks((p.top.double() / (H - p.height.double()).clamp(min=1)).numpy(),
              top / np.maximum(H - h, 1)) < 0.035
    assert ((top + h < H) | (h == H)).all() and theirs_area.min() >= 0.1
    assert ours_area.mean() == pytest.approx(theirs_area.mean(), abs=0.01)
    # and torchvision's differs from both, measurably
    tv = area_fractions(A.sample_params(gen(11), 20_000, H, W, 3, size=32,
                                        crop_scale=(0.08, 1.0)), H, W)
    assert ks(tv, theirs_area) > 0.06


def reference_bicubic_row(row: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow's half-pixel bicubic along one row, written out per output pixel."""
    n, a = len(row), -0.5

    def keys(d):
        d = abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0

    result = []
    for i in range(out):
        x = (i + 0.5) * n / out - 0.5
        base = math.floor(x)
        t = round((x - base) * 1024) / 1024
        taps = [(base + k, keys(t - k)) for k in (-1, 0, 1, 2) if 0 <= base + k < n]
        total = sum(wt for _, wt in taps)
        result.append(sum(row[j] * wt for j, wt in taps) / total)
    return np.array(result)


@pytest.mark.parametrize("crop,out", [(12, 20), (20, 12), (7, 7), (33, 16)])
def test_bicubic_resize_matches_its_formula(crop, out):
    images = real_images(1, 40)
    one = torch.tensor([0])
    view = A.resized_crop(images, one + 3, one + 5, one + crop, one + crop, out,
                          interpolation="bicubic")                       # (1, 3, out, out)
    x = as_float(images[0, :, 3:3 + crop, 5:5 + crop]).double().numpy()
    rows = np.stack([[reference_bicubic_row(x[c, :, j], out) for j in range(crop)]
                     for c in range(3)])                                 # (3, crop, out): y
    ref = np.stack([[reference_bicubic_row(rows[c, :, i], out) for i in range(out)]
                    for c in range(3)]).transpose(0, 2, 1)               # (3, out, out)
    torch.testing.assert_close(view[0].double(), torch.from_numpy(ref).transpose(1, 2),
                               rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("crop,out", [(12, 20), (30, 16), (16, 16)])
def test_bicubic_resize_matches_tf_image_resize(tf, crop, out):
    images = real_images(2, 40)
    one = torch.tensor([0, 0])
    view = A.resized_crop(images, one + 2, one + 4, one + crop, one + crop, out,
                          interpolation="bicubic")
    for i in range(2):
        x = as_float(images[i, :, 2:2 + crop, 4:4 + crop]).permute(1, 2, 0).numpy()
        theirs = tf.image.resize(x[None], [out, out], method="bicubic")[0].numpy()
        torch.testing.assert_close(view[i], torch.from_numpy(theirs).permute(2, 0, 1),
                                   rtol=0, atol=TOL)


@pytest.mark.parametrize("native", [True, False], ids=["C-kernel", "tensor-ops"])
def test_official_crops_in_the_pipeline(native):
    if native and A.NATIVE is None:
        pytest.skip("the C kernel was not built")
    images = real_images(6, 40)
    aug = A.SimCLRAugment(size=24, crop_scale=(0.08, 1.0), crop_sampler="official",
                          crop_interpolation="bicubic", color_strength=1.0, native=native)
    views = aug.stacked_views(images, gen(12))
    p = aug.sample_params(images, gen(12), views=2)
    ref = A.apply(images, p, native=False)
    assert views.shape == (12, 3, 24, 24) and 0 <= views.min() and views.max() <= 1
    torch.testing.assert_close(views, ref, rtol=0, atol=TOL)


# ---- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_official_options_match_cpu_without_waiting():
    images = real_images(16, 40)
    options = dict(size=32, color_strength=1.0, crop_scale=(0.08, 1.0), gray_p=0.3,
                   blur_p=0.5, color_impl="official-v1", color_order="random",
                   crop_sampler="official", crop_interpolation="bicubic")
    p = A.sample_params(gen(13), 32, 40, 40, **options)
    assert_cuda_applies_as_cpu(images, p)
    g, x = torch.Generator(device="cuda").manual_seed(0), images.cuda()
    aug = A.SimCLRAugment(**options)
    cuda_views_without_waits(aug, x, g, (16, 3, 32, 32))
