"""fastclr.augment against torchvision.transforms.v2 applied per image with the same parameters,
plus the distributions, reproducibility and shape contracts of the batched sampler."""

import functools
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastclr import augment as A

# Differences come from float32 rounding only: the same triangle/gaussian weights summed in
# another order, the luma and HSV maths written another way. Observed maxima are ~2e-6.
TOL = 1e-5
# A whole pipeline chains eight ops, each with clamps that can turn a rounding difference
# at 1.0 into one op later; still far below one uint8 level (0.004).
PIPELINE_TOL = 1e-4


@functools.cache
def photo() -> torch.Tensor:
    """A real photo, uint8 (3, H, W): matplotlib's sample image, or smooth noise without it."""
    try:
        import matplotlib.cbook
        from PIL import Image
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return TF.pil_to_tensor(Image.open(f).convert("RGB"))      # (3, 600, 512)
    except Exception:                                                  # pragma: no cover
        noise = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
        smooth = torch.nn.functional.interpolate(noise, size=(600, 512), mode="bicubic")
        return (smooth.clamp(0, 1)[0] * 255).round().to(torch.uint8)


def real_images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """n uint8 (channels, size, size) patches of a photo, each at a random place and scale."""
    g = torch.Generator().manual_seed(seed)
    _, H, W = photo().shape
    out = []
    for _ in range(n):
        side = int(torch.randint(size, min(H, W) // 2, (1,), generator=g))
        top = int(torch.randint(0, H - side + 1, (1,), generator=g))
        left = int(torch.randint(0, W - side + 1, (1,), generator=g))
        patch = TF.resize(photo()[:, top:top + side, left:left + side], [size, size],
                          antialias=True)
        out.append(patch)
    images = torch.stack(out)
    if channels == 1:
        images = TF.rgb_to_grayscale(images)
    return images


def assert_cuda_applies_as_cpu(images: torch.Tensor, p) -> None:
    """The parameters `p` applied on CUDA give the CPU tensor ops' views."""
    cpu = A.apply(images, p, native=False)
    moved = A.AugmentParams(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v)
                               for k, v in vars(p).items()})
    torch.testing.assert_close(A.apply(images.cuda(), moved).cpu(), cpu, rtol=0,
                               atol=PIPELINE_TOL)


def cuda_views_without_waits(aug, x: torch.Tensor, g: torch.Generator, shape: tuple):
    """Two views of CUDA images `x`, asserting that drawing and applying never wait for the
    device (after a warm-up call for CUDA's lazy set-up), that they have `shape` and that
    they differ and stay in [0, 1]."""
    aug.two_views(x, g)
    torch.cuda.set_sync_debug_mode("error")
    try:
        v1, v2 = aug.two_views(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v1.is_cuda and v1.shape == shape
    assert not torch.equal(v1, v2) and v1.min() >= 0 and v1.max() <= 1
    return v1, v2


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32) / 255


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- each op against torchvision -------------------------------------------------------------

@pytest.mark.parametrize("in_size,out_size", [(32, 32), (24, 40), (64, 24), (33, 17)])
def test_resized_crop_and_flip_match_torchvision(in_size, out_size):
    # (64, 24) and (33, 17) shrink most crops: the antialiased (widened) filter
    images = real_images(24, in_size)
    p = A.sample_params(gen(1), 24, in_size, in_size, size=out_size, crop_scale=(0.08, 1.0))
    ours = A.resized_crop(images, p.top, p.left, p.height, p.width, out_size, p.flip)
    assert ours.shape == (24, 3, out_size, out_size) and ours.dtype == torch.float32
    assert p.flip.any() and not p.flip.all()
    for i in range(24):
        ref = TF.resized_crop(as_float(images[i]), int(p.top[i]), int(p.left[i]),
                              int(p.height[i]), int(p.width[i]), [out_size, out_size],
                              antialias=True)
        if p.flip[i]:
            ref = TF.hflip(ref)
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("H,W,size", [(20, 16, 12), (20, 16, 40), (1, 5, 4)])
def test_crops_at_the_edges_match_torchvision(H, W, size):
    # one-pixel crops at the last row/column, whole images, flips: the taps' boundary cases
    images = real_images(1, 24)[:, :, :H, :W].expand(8, 3, H, W).contiguous()
    top = torch.tensor([H - 1, 0, 0, H - 1, 0, H // 2, 0, max(H - 2, 0)])
    left = torch.tensor([0, W - 1, 0, W - 1, 0, W // 3, 1, W - 2])
    height = torch.tensor([1, H, H, 1, 1, H - H // 2, H, min(2, H)])
    width = torch.tensor([W, 1, W, 1, 1, W // 2, W - 1, 2])
    flip = torch.tensor([False, True, True, False, True, True, False, True])
    ours = A.resized_crop(images, top, left, height, width, size, flip)
    for i in range(8):
        ref = TF.resized_crop(as_float(images[i]), int(top[i]), int(left[i]), int(height[i]),
                              int(width[i]), [size, size], antialias=True)
        ref = TF.hflip(ref) if flip[i] else ref
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("name,lo,hi", [("brightness", 0.0, 2.0), ("contrast", 0.0, 2.0),
                                        ("saturation", 0.0, 2.0), ("hue", -0.5, 0.5)])
def test_colour_ops_match_torchvision(name, lo, hi):
    x = as_float(real_images(32, 20))
    factor = torch.rand(32, generator=gen(2)) * (hi - lo) + lo
    factor[0] = lo                                     # the extremes too
    factor[1] = hi
    ours = getattr(A, f"adjust_{name}")(x, factor)
    tv = getattr(TF, f"adjust_{name}")
    for i in range(32):
        torch.testing.assert_close(ours[i], tv(x[i], float(factor[i])), rtol=0, atol=TOL)


def test_hue_on_saturated_and_grey_pixels():
    # ties between channels pick torchvision's hue formula; grey pixels stay grey
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 8, 8)   # 64 colours
    x = rgb.expand(9, 3, 8, 8).contiguous()
    shift = torch.linspace(-0.5, 0.5, 9)
    ours = A.adjust_hue(x, shift)
    for i in range(9):
        torch.testing.assert_close(ours[i], TF.adjust_hue(x[i], float(shift[i])), rtol=0,
                                   atol=TOL)


def test_grayscale_blur_solarize_match_torchvision():
    x = as_float(real_images(16, 24))
    mask = torch.arange(16) % 3 == 0
    ours = A.random_grayscale(x, mask)
    for i in range(16):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=TOL)
    sigma = torch.linspace(0.1, 2.0, 16)
    sigma[::4] = 0.0                                   # not blurred
    k = A.blur_kernel_size(96)
    assert k == 9
    ours = A.gaussian_blur(x, sigma, k)
    for i in range(16):
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) if sigma[i] > 0 else x[i]
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=TOL)
    ours = A.solarize(x, mask)
    for i in range(16):
        ref = TF.solarize(x[i], 0.5) if mask[i] else x[i]
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=0)


# Figure 4's other ops, each on about half of the views
FIGURE4_OPS = dict(sobel_p=0.3, noise_p=0.5, noise_std=(0.02, 0.2), cutout_p=0.5,
                   rotate_p=0.7)


def reference_sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of one image (C, H, W): luma, replicate padding, the two 3x3
    kernels as convolutions, divided by 4 sqrt(2); in every channel."""
    luma = TF.rgb_to_grayscale(x) if x.shape[0] == 3 else x                     # (1, H, W)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = torch.nn.functional.pad(luma[None], (1, 1, 1, 1), mode="replicate")
    gx = torch.nn.functional.conv2d(padded, kx.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(padded, kx.T.reshape(1, 1, 3, 3))
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)[0] / (4 * math.sqrt(2))
    return magnitude.expand_as(x)


def reference_view(image: torch.Tensor, p: A.AugmentParams, i: int) -> torch.Tensor:
    """torchvision per image with the parameters of view i, in fastclr's order."""
    x = TF.resized_crop(as_float(image), int(p.top[i]), int(p.left[i]), int(p.height[i]),
                        int(p.width[i]), [p.size, p.size], antialias=True)
    if p.flip[i]:
        x = TF.hflip(x)
    if p.jitter is not None and p.jitter[i]:
        x = TF.adjust_brightness(x, float(p.brightness[i]))
        x = TF.adjust_contrast(x, float(p.contrast[i]))
        if p.saturation is not None:
            x = TF.adjust_saturation(x, float(p.saturation[i]))
            x = TF.adjust_hue(x, float(p.hue[i]))
    if p.gray is not None and p.gray[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.sobel is not None and p.sobel[i]:
        x = reference_sobel(x)
    if p.blur_sigma is not None and p.blur_sigma[i] > 0:
        s = float(p.blur_sigma[i])
        x = TF.gaussian_blur(x, [p.blur_kernel] * 2, [s, s])
    if p.solarize is not None and p.solarize[i]:
        x = TF.solarize(x, 0.5)
    if p.noise_std is not None:
        x = (x + float(p.noise_std[i]) * p.noise[i]).clamp(0, 1)
    if p.cutout is not None:
        top, left, bottom, right = p.cutout[i].tolist()
        x = TF.erase(x, top, left, bottom - top, right - left, torch.tensor(0.0))
    if p.rotate is not None:
        x = torch.rot90(x, int(p.rotate[i]), dims=(-2, -1))
    return x


@pytest.mark.parametrize("channels,in_size,options", [
    (3, 32, dict(color_strength=0.5)),
    (3, 40, dict(size=32, color_strength=1.0, blur_p=0.5, solarize_p=0.3,
                 crop_scale=(0.08, 1.0))),
    (1, 28, dict(color_strength=1.0)),
    (3, 40, dict(size=32, blur_p=0.5, solarize_p=0.3, **FIGURE4_OPS)),
    (1, 28, dict(size=24, color_strength=1.0, blur_p=0.5, **FIGURE4_OPS)),
])
@pytest.mark.parametrize("native", [True, False], ids=["C-kernel", "tensor-ops"])
def test_pipeline_matches_torchvision_per_image(channels, in_size, options, native,
                                                monkeypatch):
    if native and A.NATIVE is None:
        pytest.skip("the C kernel was not built")
    # small chunks, so that views of one call cross chunk and view boundaries
    monkeypatch.setattr(A.engine, "CPU_CHUNK_BYTES", 4 * channels * 32 * 32 * 5)
    images = real_images(12, in_size, channels)
    p = A.sample_params(gen(3), 24, in_size, in_size, channels, **options)   # 2 views each
    views = A.apply(images, p, native=native)
    size = options.get("size", in_size)
    assert views.shape == (24, channels, size, size)
    for i in range(24):
        ref = reference_view(images[i % 12], p, i)
        torch.testing.assert_close(views[i], ref, rtol=0, atol=PIPELINE_TOL)


# ---- the C kernel (CPU) against the tensor ops (both devices) --------------------------------

needs_native = pytest.mark.skipif(A.NATIVE is None, reason="the C kernel was not built")


def test_c_kernel_is_built_where_a_compiler_is():
    # an install with a C compiler must not fall back to the slow path without notice
    import shutil
    import sysconfig
    has_compiler = shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is not None
    if not has_compiler:
        pytest.skip("no C compiler here, so no kernel is expected")
    assert A.NATIVE is not None, "pip install -e . did not build fastclr/augment/_cpu.c"


@needs_native
@pytest.mark.parametrize("channels,in_hw,options", [
    (3, (32, 32), dict(color_strength=0.5)),
    (3, (64, 48), dict(size=24, color_strength=1.0, crop_scale=(0.08, 1.0))),   # antialiased
    (3, (20, 30), dict(size=40, color_strength=2.5, gray_p=0.5)),               # upsampled
    (3, (40, 40), dict(size=32, blur_p=0.5, solarize_p=0.5, color_p=1.0)),
    (3, (32, 32), dict(color_p=0.0, gray_p=0.0)),                                # crop only
    (1, (28, 28), dict(color_strength=1.0)),
    (1, (50, 36), dict(size=17)),
    (3, (40, 40), dict(size=32, blur_p=0.5, **FIGURE4_OPS)),
    (1, (28, 28), dict(color_strength=1.0, **FIGURE4_OPS)),
])
def test_c_kernel_matches_tensor_ops(channels, in_hw, options):
    H, W = in_hw
    images = real_images(10, max(H, W), channels)[..., :H, :W]       # not contiguous
    p = A.sample_params(gen(20), 30, H, W, channels, **options)     # three views each
    ours = A.apply(images, p, native=True)
    ref = A.apply(images, p, native=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)
    # any output layout: channels_last, and a strided slice of a bigger buffer
    cl = A.apply(images, p, native=True, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ours, rtol=0, atol=0)
    S = p.size
    big = torch.full((30, channels, S, 2 * S), -1.0)
    A.apply(images, p, native=True, out=big[..., ::2])
    torch.testing.assert_close(big[..., ::2], ours, rtol=0, atol=0)
    assert (big[..., 1::2] == -1).all()                                # nothing else written


@needs_native
def test_c_kernel_hue_ties_and_grey_pixels():
    # exact ties between channels take torchvision's formula in the kernel too
    levels = torch.tensor([0, 64, 128, 255], dtype=torch.uint8)
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 8, 8)
    images = rgb.expand(9, 3, 8, 8).contiguous()
    p = A.sample_params(gen(21), 9, 8, 8, 3, color_strength=1.0, color_p=1.0, gray_p=0.0,
                        flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    p = A.AugmentParams(**{**vars(p), "brightness": torch.ones(9), "contrast": torch.ones(9),
                           "saturation": torch.ones(9), "hue": torch.linspace(-0.5, 0.5, 9)})
    views = A.apply(images, p, native=True)
    for i in range(9):
        ref = TF.adjust_hue(as_float(images[i]), float(p.hue[i]))
        torch.testing.assert_close(views[i], ref, rtol=0, atol=TOL)


@needs_native
def test_c_kernel_threads_give_identical_views():
    images = real_images(64, 32)
    p = A.sample_params(gen(22), 128, 32, 32, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = A.apply(images, p, native=True)
        torch.set_num_threads(3)               # 128 views: three threads of 42-43 views
        three = A.apply(images, p, native=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


@needs_native
def test_c_kernel_refuses_boxes_outside_the_image():
    # (shrinking: the taps follow the box; bilinear taps are clamped into the image anyway)
    images = real_images(4, 16)
    p = A.sample_params(gen(23), 4, 16, 16, 3, size=8)
    bad = A.AugmentParams(**{**vars(p), "top": p.top + 16})
    with pytest.raises(ValueError, match="outside the images"):
        A.apply(images, bad, native=True)


# ---- parameters: bounds and rates ------------------------------------------------------------

def test_crop_boxes_in_bounds_and_distribution():
    n, H, W = 4000, 40, 30
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    p = A.sample_params(gen(4), n, H, W, size=32, crop_scale=scale, crop_ratio=ratio)
    h, w = p.height.double(), p.width.double()
    assert (p.top >= 0).all() and (p.left >= 0).all()
    assert (p.top + p.height <= H).all() and (p.left + p.width <= W).all()
    assert (h >= 1).all() and (w >= 1).all()
    # w and h are rounded from sqrt(area * aspect), sqrt(area / aspect): half a pixel each
    area_hi = (torch.sqrt(torch.tensor(scale[1] * H * W * ratio[1])) + 0.5) * \
        (torch.sqrt(torch.tensor(scale[1] * H * W / ratio[0])) + 0.5)
    assert (h * w >= scale[0] * H * W - (h + w) / 2 - 0.25).all()
    assert (h * w <= area_hi).all()
    aspect = w / h
    assert (aspect >= ratio[0] * (1 - 0.5 / w) / (1 + 0.5 / h) - 1e-9).all()
    assert (aspect <= ratio[1] * (1 + 0.5 / w) / (1 - 0.5 / h) + 1e-9).all()
    # corners are uniform over the valid range: top averages (H - h) / 2
    spread = (H - h)
    z = ((p.top.double() - spread / 2).sum() / torch.sqrt((spread * (spread + 2) / 12).sum()))
    assert abs(float(z)) < 5


def test_crop_falls_back_to_torchvision_centre_crop():
    # no box of aspect 2 and full area fits a square image: torchvision's centre crop
    p = A.sample_params(gen(5), 50, 32, 32, crop_scale=(1.0, 1.0), crop_ratio=(2.0, 2.0))
    assert (p.width == 32).all() and (p.height == 16).all()
    assert (p.top == 8).all() and (p.left == 0).all()


def assert_rate(mask: torch.Tensor, p: float) -> None:
    """A Bernoulli(p) sample's mean lies within 5 sigma of p (p-value ~6e-7)."""
    n = mask.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.float().mean().item() - p) < 5 * sigma + 1e-12, (mask.float().mean(), p)


def test_probabilities_and_factor_ranges():
    n, s = 5000, 1.0
    p = A.sample_params(gen(6), n, 32, 32, color_strength=s, blur_p=0.5, solarize_p=0.2)
    assert_rate(p.flip, 0.5)
    assert_rate(p.jitter, 0.8)
    assert_rate(p.gray, 0.2)
    assert_rate(p.blur_sigma > 0, 0.5)
    assert_rate(p.solarize, 0.2)
    on = p.jitter
    for name in ("brightness", "contrast", "saturation"):
        f = getattr(p, name)
        assert (f[on] >= max(0, 1 - 0.8 * s)).all() and (f[on] <= 1 + 0.8 * s).all()
        assert (f[~on] == 1).all()                   # neutral when jitter is off
        assert f[on].std() > 0.3                     # uniform on [0.2, 1.8]: std 0.46
    assert (p.hue[on].abs() <= 0.2 * s).all() and (p.hue[~on] == 0).all()
    sigma = p.blur_sigma[p.blur_sigma > 0]
    assert (sigma >= 0.1).all() and (sigma <= 2.0).all()
    assert p.blur_kernel == A.blur_kernel_size(32) == 3


def test_off_ops_are_absent():
    p = A.sample_params(gen(7), 10, 32, 32, color_strength=0.0, gray_p=0.0)
    assert p.jitter is None and p.brightness is None and p.hue is None and p.gray is None
    assert p.blur_sigma is None and p.solarize is None


# ---- reproducibility --------------------------------------------------------------------------

def test_same_seed_same_views_and_no_global_rng():
    images = real_images(8, 32)
    aug = A.SimCLRAugment.small_images()
    state = torch.get_rng_state()
    a1, b1 = aug.two_views(images, gen(8))
    a2, b2 = aug.two_views(images, gen(8))
    assert torch.equal(torch.get_rng_state(), state)     # never the global RNG
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = aug.two_views(images, gen(9))
    assert not torch.equal(a1, a3)
    # a generator carries on: resuming from a saved state repeats the next batch
    g = gen(10)
    aug(images, g)
    saved = g.get_state()
    v1 = aug(images, g)
    v2 = aug(images, torch.Generator().set_state(saved))
    assert torch.equal(v1, v2)


def test_views_differ_across_samples_and_between_the_two_views():
    images = real_images(1, 32).expand(16, 3, 32, 32).contiguous()   # one image, 16 times
    aug = A.SimCLRAugment.small_images()
    p = aug.sample_params(images, gen(11), views=2)
    assert len(set(zip(p.top.tolist(), p.left.tolist(), p.height.tolist(),
                       p.width.tolist()))) > 24
    v1, v2 = aug.two_views(images, gen(11))
    flat = torch.cat([v1, v2]).flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(32) * 1e9).min() > 0.1
    assert v1.data_ptr() != v2.data_ptr() and v1.is_contiguous() and v2.is_contiguous()


# ---- shapes, types, grayscale data ---------------------------------------------------------------

@pytest.mark.parametrize("channels,size", [(3, None), (3, 24), (1, None), (1, 40)])
def test_output_contract(channels, size):
    images = real_images(6, 32, channels)
    aug = A.SimCLRAugment(size=size)
    v = aug(images, gen(12))
    side = size or 32
    assert v.shape == (6, channels, side, side) and v.dtype == torch.float32
    assert v.is_contiguous() and v.min() >= 0 and v.max() <= 1
    v1, v2 = aug.two_views(images, gen(12))
    assert v1.shape == v2.shape == (6, channels, side, side)
    cl = aug(images, gen(12), memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, aug(images, gen(12)), rtol=0, atol=0)
    out = torch.empty(12, channels, side, side)
    w1, w2 = aug.two_views(images, gen(12), out=out)
    assert w1.data_ptr() == out.data_ptr()
    torch.testing.assert_close(torch.cat([w1, w2]), torch.cat([v1, v2]), rtol=0, atol=0)


def test_one_channel_gets_only_brightness_and_contrast():
    images = real_images(16, 28, channels=1)
    p = A.sample_params(gen(13), 16, 28, 28, 1, color_strength=1.0, color_p=1.0, gray_p=1.0,
                        flip_p=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert p.saturation is None and p.hue is None and p.gray is None
    views = A.apply(images, p)
    for i in range(16):   # the whole image, then brightness and contrast only
        x = TF.adjust_brightness(as_float(images[i]), float(p.brightness[i]))
        x = TF.adjust_contrast(x, float(p.contrast[i]))
        torch.testing.assert_close(views[i], x, rtol=0, atol=TOL)


def test_presets_and_validation():
    small, big = A.SimCLRAugment.small_images(), A.SimCLRAugment.imagenet(size=64)
    assert small.options["crop_scale"] == (0.2, 1.0) and small.options["blur_p"] == 0.0
    assert small.options["color_strength"] == 0.5
    assert big.options["crop_scale"] == (0.08, 1.0) and big.options["blur_p"] == 0.5
    assert big.options["color_strength"] == 1.0 and big.options["size"] == 64
    images = real_images(4, 80)
    assert big(images, gen(14)).shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match="gray_p"):
        A.SimCLRAugment(gray_p=1.5)
    with pytest.raises(ValueError, match="uint8"):
        small(images.float(), gen(14))
    with pytest.raises(TypeError, match="Generator"):
        small(images, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_parameters():
    images = real_images(32, 40)
    options = dict(size=32, color_strength=1.0, blur_p=0.5, solarize_p=0.2)
    p = A.sample_params(gen(15), 64, 40, 40, **options)
    cpu = A.apply(images, p)
    moved = A.AugmentParams(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v)
                               for k, v in vars(p).items()})
    cuda = A.apply(images.cuda(), moved)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=PIPELINE_TOL)
    g = torch.Generator(device="cuda").manual_seed(0)
    v1, v2 = A.SimCLRAugment.imagenet(size=32).two_views(images.cuda(), g)
    assert v1.is_cuda and v1.shape == (32, 3, 32, 32) and not torch.equal(v1, v2)
