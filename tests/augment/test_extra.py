"""The paper's other transformations (Figure 4: sobel, noise, cutout, rotate), op selection by
name and the one-branch protocol (Figure 5), each against a plain per-image reference; and the
default pipeline's draws and views, pinned to what they were before these ops existed."""

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from augment.test_augment import (FIGURE4_OPS, PIPELINE_TOL, TOL, as_float, assert_rate,
                                  assert_cuda_applies_as_cpu, cuda_views_without_waits, gen,
                                  real_images, reference_sobel, reference_view)
from fastclr import augment as A
from fixtures import HANG_SECONDS

# ---- with the new ops off, a seed gives the views it always gave ------------------------------

# Recorded with the code before sobel, noise, cutout and rotate existed (commit ba13cf9):
# a digest of every parameter the old AugmentParams had, and each view's mean, for two views
# of four random 3- or 1-channel images. The digest pins the random stream (any new draw
# before an old one changes it); the means pin `apply` with the new fields None.
OLD_FIELDS = ("size", "top", "left", "height", "width", "flip", "jitter", "brightness",
              "contrast", "saturation", "hue", "gray", "blur_sigma", "blur_kernel", "solarize")
BEFORE = {
    "small": ("173adae884536d62", [0.631622, 0.624824, 0.635061, 0.488707, 0.50405, 0.309576,
                                   0.52154, 0.570032]),
    "imagenet": ("ccf655682f7ee6de", [0.748931, 0.711087, 0.748682, 0.487805, 0.504598,
                                      0.105675, 0.575741, 0.640642]),
    "grey": ("4ca84ead86241391", [0.638469, 0.59849, 0.649749, 0.467866, 0.504787, 0.299762,
                                  0.536552, 0.55673]),
}


def digest(p: A.AugmentParams) -> str:
    h = hashlib.sha256()
    for name in OLD_FIELDS:
        value = getattr(p, name)
        h.update(name.encode())
        h.update(value.contiguous().numpy().tobytes() if isinstance(value, torch.Tensor)
                 else repr(value).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(BEFORE))
@pytest.mark.parametrize("native", [True, False], ids=["C-kernel", "tensor-ops"])
def test_default_pipeline_is_unchanged(case, native):
    if native and A.NATIVE is None:
        pytest.skip("the C kernel was not built")
    aug, channels, side = {"small": (A.SimCLRAugment.small_images(), 3, 32),
                           "imagenet": (A.SimCLRAugment.imagenet(size=24), 3, 40),
                           "grey": (A.SimCLRAugment(), 1, 28)}[case]
    aug.native = native
    images = torch.randint(0, 256, (4, channels, side, side), dtype=torch.uint8,
                           generator=gen(1))
    p = aug.sample_params(images, gen(5), views=2)
    assert (p.sobel, p.noise_std, p.noise, p.cutout, p.rotate) == (None,) * 5
    expected_digest, expected_means = BEFORE[case]
    assert digest(p) == expected_digest
    views = aug.stacked_views(images, gen(5))
    torch.testing.assert_close(views.mean(dim=(1, 2, 3)), torch.tensor(expected_means),
                               rtol=0, atol=2e-6)
    # the same parameters built without the new fields give the same bits
    old = A.AugmentParams(**{name: getattr(p, name) for name in OLD_FIELDS})
    assert torch.equal(A.apply(images, old, native=native), views)


# ---- each op against a per-image reference ----------------------------------------------------

@pytest.mark.parametrize("channels", [3, 1])
def test_new_ops_match_per_image_references(channels):
    x = as_float(real_images(12, 20, channels))
    mask = torch.arange(12) % 3 != 0
    ours = A.sobel(x, mask)
    for i in range(12):
        torch.testing.assert_close(ours[i], reference_sobel(x[i]) if mask[i] else x[i],
                                   rtol=0, atol=TOL)
    assert ours.min() >= 0 and ours.max() <= 1
    std = torch.linspace(0.0, 0.2, 12)
    noise = torch.randn(12, channels, 20, 20, generator=gen(30))
    ours = A.add_noise(x, std, noise)
    for i in range(12):
        ref = (x[i] + float(std[i]) * noise[i]).clamp(0, 1)
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=TOL)
    assert torch.equal(ours[0], x[0])                      # std 0: unchanged
    # boxes inside, at the borders, one pixel, the whole image, and empty (not applied)
    box = torch.tensor([[2, 3, 9, 10], [0, 0, 5, 5], [15, 12, 20, 20], [7, 7, 8, 8],
                        [0, 0, 20, 20], [0, 0, 0, 0]]).repeat(2, 1)
    ours = A.cutout(x, box)
    for i in range(12):
        top, left, bottom, right = box[i].tolist()
        ref = TF.erase(x[i], top, left, bottom - top, right - left, torch.tensor(0.0))
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=0)
    turns = torch.arange(12) % 4
    ours = A.rotate_quarters(x, turns)
    for i in range(12):
        assert torch.equal(ours[i], torch.rot90(x[i], int(turns[i]), dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        A.rotate_quarters(x[..., :10], turns)


def test_sobel_of_edges_and_flat_images():
    # a vertical step from 0 to 1 has the largest one-axis response, 4, next to the step
    x = torch.zeros(2, 1, 6, 6)
    x[0, :, :, 3:] = 1.0
    out = A.sobel(x, torch.tensor([True, True]))
    assert torch.allclose(out[0, 0, :, 2:4], torch.full((6, 2), 4 / (4 * math.sqrt(2))))
    assert (out[0, 0, :, :2] == 0).all() and (out[0, 0, :, 4:] == 0).all()
    assert (out[1] == 0).all()                             # flat: no gradient


# ---- the draws ---------------------------------------------------------------------------------

def test_new_draws_are_per_view_and_in_range():
    n, S = 4000, 32
    p = A.sample_params(gen(31), n, S, S, 3, sobel_p=0.3, noise_p=0.5, noise_std=(0.05, 0.2),
                        cutout_p=0.6, cutout_scale=(0.1, 0.5), rotate_p=0.7)
    assert_rate(p.sobel, 0.3)
    assert_rate(p.noise_std > 0, 0.5)
    noisy = p.noise_std[p.noise_std > 0]
    assert noisy.min() >= 0.05 and noisy.max() <= 0.2 and noisy.std() > 0.03
    assert p.noise.shape == (n, 3, S, S) and abs(float(p.noise.std()) - 1) < 0.01
    top, left, bottom, right = p.cutout.unbind(1)
    applied = bottom > top
    assert_rate(applied, 0.6)
    assert (p.cutout[~applied] == 0).all()
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= S).all() and (right <= S).all()
    # unclipped boxes are squares of side round(u S), u in the scale range; clipped ones less
    side_y, side_x = bottom - top, right - left
    inside = applied & (top > 0) & (left > 0) & (bottom < S) & (right < S)
    assert (side_y[inside] == side_x[inside]).all()
    assert side_y[inside].min() == round(0.1 * S) and side_y[inside].max() == round(0.5 * S)
    assert side_y[applied].max() <= round(0.5 * S) and side_x[applied].max() <= round(0.5 * S)
    assert len(set(zip(top[applied].tolist(), left[applied].tolist()))) > 500
    assert_rate(p.rotate > 0, 0.7)
    assert set(p.rotate.tolist()) == {0, 1, 2, 3}
    for k in (1, 2, 3):                                    # uniform over the three turns
        assert_rate(p.rotate[p.rotate > 0] == k, 1 / 3)


# ---- ops by name --------------------------------------------------------------------------------

def test_ops_names_and_errors():
    assert A.OPS == ("crop", "flip", "jitter", "gray", "sobel", "blur", "solarize", "noise",
                     "cutout", "rotate")
    assert A.check_ops(["rotate", "crop", "crop"]) == ("crop", "rotate")
    assert A.check_ops(None) is None
    with pytest.raises(ValueError, match="did you mean 'rotate'"):
        A.SimCLRAugment(ops=("crop", "rotation"))
    with pytest.raises(TypeError, match="tuple of op names"):
        A.SimCLRAugment(ops="crop")
    for name, value in (("noise_std", (0.2, 0.1)), ("cutout_scale", (0.0, 0.5)),
                        ("cutout_p", 1.5), ("rotate_p", -0.1)):
        with pytest.raises(ValueError, match=name):
            A.SimCLRAugment(**{name: value})


def test_op_names_import_without_torch():
    # config and command-line code read OPS before torch is imported
    code = ("import sys; from fastclr.augment.ops import OPS; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(OPS))")
    root = Path(A.__file__).parents[2]                  # this checkout, not an installed copy
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=HANG_SECONDS)
    assert out.returncode == 0 and out.stdout.strip() == "10", out.stderr


EVERYTHING = dict(flip_p=0.5, color_strength=1.0, color_p=1.0, gray_p=0.5, blur_p=1.0,
                  solarize_p=1.0, sobel_p=1.0, noise_p=1.0, cutout_p=1.0, rotate_p=1.0)


@pytest.mark.parametrize("channels", [3, 1])
def test_unlisted_ops_never_change_a_view(channels):
    images = real_images(8, 24, channels)
    aug = A.SimCLRAugment(size=20, ops=("crop", "flip"), **EVERYTHING)
    p = aug.sample_params(images, gen(32), views=2)
    for name in ("jitter", "gray", "blur_sigma", "solarize", "sobel", "noise_std", "cutout",
                 "rotate"):
        assert getattr(p, name) is None, name
    assert p.flip.any() and not p.flip.all()
    views = aug.stacked_views(images, gen(32))
    ref = A.resized_crop(images.repeat(2, 1, 1, 1), p.top, p.left, p.height, p.width, 20,
                         p.flip)
    torch.testing.assert_close(views, ref, rtol=0, atol=TOL)


def test_without_crop_views_are_the_whole_image():
    images = real_images(6, 30)[..., :24]                                # (6, 3, 30, 24)
    aug = A.SimCLRAugment(size=16, ops=("rotate",), rotate_p=1.0)
    p = aug.sample_params(images, gen(33), views=2)
    assert (p.top == 0).all() and (p.left == 0).all()
    assert (p.height == 30).all() and (p.width == 24).all() and not p.flip.any()
    views = aug.stacked_views(images, gen(33))
    for i in range(12):
        whole = TF.resize(as_float(images[i % 6]), [16, 16], antialias=True)
        ref = torch.rot90(whole, int(p.rotate[i]), dims=(-2, -1))
        torch.testing.assert_close(views[i], ref, rtol=0, atol=TOL)


# ---- one branch (Figure 5) ---------------------------------------------------------------------

@pytest.mark.parametrize("channels", [3, 1])
def test_one_branch_identity_view_and_shared_crop(channels):
    images = real_images(8, 32, channels)
    aug = A.SimCLRAugment(size=24, crop_scale=(0.2, 1.0), ops=("rotate",), one_branch=True,
                          **EVERYTHING)
    p = aug.sample_params(images, gen(34), views=2)
    first, second = p.select(slice(0, 8)), p.select(slice(8, 16))
    for name in ("top", "left", "height", "width"):              # one crop for both views
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert (p.height < 32).any()                                 # and a random one
    assert (first.rotate == 0).all() and (second.rotate > 0).all() and not p.flip.any()
    v1, v2 = aug.two_views(images, gen(34))
    crop = A.resized_crop(images, first.top, first.left, first.height, first.width, 24)
    torch.testing.assert_close(v1, crop, rtol=0, atol=TOL)     # the identity branch: crop only
    for i in range(8):                                           # the other: crop, then rotate
        torch.testing.assert_close(v2[i], torch.rot90(v1[i], int(second.rotate[i]), (-2, -1)),
                                   rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="pairs"):
        aug(images, gen(34))


@pytest.mark.parametrize("native", [True, False], ids=["C-kernel", "tensor-ops"])
def test_one_branch_with_every_op(native):
    if native and A.NATIVE is None:
        pytest.skip("the C kernel was not built")
    images = real_images(8, 40)
    aug = A.SimCLRAugment(size=32, one_branch=True, native=native, **{**EVERYTHING,
                          "blur_p": 0.5, "sobel_p": 0.3, "noise_p": 0.5, "cutout_p": 0.5})
    p = aug.sample_params(images, gen(35), views=2)
    first, second = p.select(slice(0, 8)), p.select(slice(8, 16))
    # the identity branch holds neutral values for every op the other branch has
    assert not first.flip.any() and not first.jitter.any() and (first.brightness == 1).all()
    assert (first.hue == 0).all() and not first.gray.any() and (first.blur_sigma == 0).all()
    assert not first.solarize.any() and not first.sobel.any() and (first.noise_std == 0).all()
    assert (first.cutout == 0).all() and (first.rotate == 0).all()
    # "crop" listed: the second view's box is a crop inside the first's
    assert (second.top >= first.top).all() and (second.left >= first.left).all()
    assert (second.top + second.height <= first.top + first.height).all()
    assert (second.left + second.width <= first.left + first.width).all()
    assert (second.height * second.width < first.height * first.width).any()
    views = aug.stacked_views(images, gen(35))
    for i in range(16):
        torch.testing.assert_close(views[i], reference_view(images[i % 8], p, i), rtol=0,
                                   atol=PIPELINE_TOL)


def test_crop_within_maps_the_view_frame_into_the_box():
    S = 16
    outer = A.sample_params(gen(36), 200, 50, 40, size=S)
    whole = A.sample_params(gen(37), 200, S, S, size=S, ops=())          # the whole S x S view
    same = A.params.crop_within(outer, whole)
    for name in ("top", "left", "height", "width"):
        assert torch.equal(getattr(same, name), getattr(outer, name))
    inner = A.sample_params(gen(38), 200, S, S, size=S, crop_scale=(0.01, 0.2))
    box = A.params.crop_within(outer, inner)
    assert (box.height >= 1).all() and (box.width >= 1).all()
    assert (box.top >= outer.top).all() and (box.left >= outer.left).all()
    assert (box.top + box.height <= outer.top + outer.height).all()
    assert (box.left + box.width <= outer.left + outer.width).all()
    # each edge is the inner edge scaled to the outer box, rounded: within half a pixel
    scaled_top = outer.top + inner.top * outer.height / S
    assert ((box.top - scaled_top).abs() <= 0.5 + 1e-9).all()


# ---- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_new_ops_match_cpu():
    images = real_images(16, 40)
    p = A.sample_params(gen(39), 32, 40, 40, size=32, blur_p=0.5, **FIGURE4_OPS)
    assert_cuda_applies_as_cpu(images, p)
    g, x = torch.Generator(device="cuda").manual_seed(0), images.cuda()
    for aug in (A.SimCLRAugment(size=32, **FIGURE4_OPS),
                A.SimCLRAugment(size=32, one_branch=True, ops=("crop", "noise", "rotate"),
                                **FIGURE4_OPS)):
        cuda_views_without_waits(aug, x, g, (16, 3, 32, 32))
