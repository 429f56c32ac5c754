"""Batched, per-sample random SimCLR augmentations (Chen et al. 2020, Section 3 and Appendix A).

Every image in a batch gets its own random parameters, drawn in one call from an explicit
`torch.Generator`, and the whole batch is transformed by one short sequence of tensor ops: no
Python loop over images and no host-device sync, so the same code runs on CPU and CUDA.

    aug = SimCLRAugment.small_images()
    view1, view2 = aug.two_views(images_uint8, generator)        # (N, C, S, S) float32 each

    params = sample_params(generator, n, height, width, channels, **options)  # per-sample
    views = apply(images_uint8, params)                                       # tensors

Semantics follow torchvision.transforms.v2 per image (tests/test_augment.py checks each op):
random resized crop (bilinear, antialiased when shrinking), horizontal flip, colour jitter,
random grayscale, gaussian blur, solarization. The one deliberate difference: colour jitter
applies its four ops in a fixed order (brightness, contrast, saturation, hue: the order of
`color_jitter_nonrand` in the paper's code, whose default, like torchvision's, is a random
order per image); see `apply`.

Views are float32 in [0, 1], not mean/std normalised (the model normalises its input).

On CPU tensors, crop, resize, flip and colour run by default in a small C kernel
(fastclr/_augment_cpu.c, built at install where a C compiler is; `NATIVE`), which does the same
arithmetic one view at a time in cache: the tensor ops below pass over a chunk of views some
thirty-five times (twenty for hue), and on a CPU those passes, not the arithmetic, set the speed. The tensor ops
stay the CUDA path and the fallback; tests hold the two to the same results (1e-5).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor

try:    # the C kernel for CPU tensors (fastclr/_augment_cpu.c), built at install when possible
    from fastclr import _augment_cpu as NATIVE
except ImportError:                # no compiler at install time: the PyTorch code does it all
    NATIVE = None

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale for tensors.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# torchvision's RandomResizedCrop tries this many random boxes before a centre crop.
CROP_TRIES = 10

# Bytes of one float (n, C, S, S) buffer per chunk. On CPU small enough that the pipeline's
# dozen buffers mostly stay in the last-level cache between its ~100 ops, large enough to
# amortise their per-call overhead (1-3 MiB measured best on a 2-core EPYC VM); on GPU
# chunks only bound the peak memory.
CPU_CHUNK_BYTES = 3 << 20
GPU_CHUNK_BYTES = 256 << 20

# The C kernel splits a batch over torch.get_num_threads() threads when each gets this many
# views; below that a thread's start costs more than it saves.
NATIVE_VIEWS_PER_THREAD = 32


# ---- parameters -----------------------------------------------------------------------------

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
                  solarize_p: float = 0.0) -> AugmentParams:
    """Draw the random parameters of `n` views of (channels, height, width) images.

    All randomness comes from `generator` (its device is the device of the returned tensors),
    so a run is reproducible and resumable from the generator's state. The distributions are
    torchvision's: crop area uniform in crop_scale * H * W, aspect ratio log-uniform in
    crop_ratio, the first of 10 tries that fits, else a centre crop; jitter factors uniform in
    [max(0, 1 - x), 1 + x] with x = 0.8 s for brightness, contrast and saturation, hue shift
    uniform in [-0.2 s, 0.2 s] (paper, Appendix A, colour strength s).
    """
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    if size is None:
        if height != width:
            raise ValueError("non-square images need an explicit output size")
        size = height
    dev = generator.device

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=generator, device=dev).mul_(hi - lo).add_(lo)

    def bernoulli(p: float) -> Tensor:
        return torch.rand(n, generator=generator, device=dev) < p

    top, left, h, w = _sample_crops(generator, n, height, width, crop_scale, crop_ratio)
    flip = bernoulli(flip_p)

    jitter = brightness = contrast = saturation = hue = gray = None
    x, hue_x = 0.8 * color_strength, 0.2 * color_strength
    if color_p > 0 and color_strength > 0:
        jitter = bernoulli(color_p)
        # samples without jitter get neutral factors, so `apply` needs no mask for them
        brightness = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
        contrast = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
        if channels == 3:
            saturation = torch.where(jitter, uniform(max(0.0, 1 - x), 1 + x), 1.0)
            hue = torch.where(jitter, uniform(-hue_x, hue_x), 0.0)
    if channels == 3 and gray_p > 0:
        gray = bernoulli(gray_p)
    blur = None
    if blur_p > 0:
        blur = torch.where(bernoulli(blur_p), uniform(*blur_sigma), 0.0)
    solarize = bernoulli(solarize_p) if solarize_p > 0 else None
    return AugmentParams(size=size, top=top, left=left, height=h, width=w, flip=flip,
                         jitter=jitter, brightness=brightness, contrast=contrast,
                         saturation=saturation, hue=hue, gray=gray, blur_sigma=blur,
                         blur_kernel=blur_kernel_size(size), solarize=solarize)


def _sample_crops(generator: torch.Generator, n: int, height: int, width: int,
                  scale: tuple[float, float], ratio: tuple[float, float]):
    """torchvision's RandomResizedCrop box for n samples at once: (top, left, h, w) (n,) int64.

    All 10 tries are drawn at once; each sample keeps its first box that fits.
    """
    dev = generator.device
    f64 = torch.float64  # sizes are rounded like torchvision's Python floats
    u = torch.rand(n, CROP_TRIES, 2, generator=generator, device=dev, dtype=f64)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])      # (n, tries)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * aspect))   # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)                      # (n, tries)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)   # first fitting try (0 if none)
    found = fits.any(dim=1)
    fh, fw = _centre_crop_size(height, width, ratio)   # torchvision's fallback
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fw))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fh))
    corner = torch.rand(n, 2, generator=generator, device=dev, dtype=f64)
    top = torch.where(found, torch.floor(corner[:, 0] * (height - h + 1)), (height - h) // 2)
    left = torch.where(found, torch.floor(corner[:, 1] * (width - w + 1)), (width - w) // 2)
    top = torch.minimum(top, height - h)     # in case u * (k + 1) rounds up to k + 1
    left = torch.minimum(left, width - w)
    return top.long(), left.long(), h.long(), w.long()


def _centre_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


# ---- applying parameters --------------------------------------------------------------------

class Workspace:
    """Scratch buffers that outlive one chunk (and, held by SimCLRAugment, one call).

    Fresh CPU memory costs a page fault per 4 KiB whenever glibc has handed freed memory back
    to the OS, which in a VM can cost more than the op that writes it; so the CPU pipeline
    writes its large intermediates into these buffers instead of allocating new tensors.
    """

    def __init__(self):
        self._buffers: dict[tuple, Tensor] = {}
        self._views: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], device: torch.device,
            dtype: torch.dtype = torch.float32) -> Tensor:
        """A tensor of `shape` with undefined contents; the same memory on every call."""
        key = (name, shape, device, dtype)
        view = self._views.get(key)
        if view is None:
            numel = math.prod(shape)
            buf = self._buffers.get((name, dtype))
            if buf is None or buf.numel() < numel or buf.device != device:
                buf = self._buffers[name, dtype] = torch.empty(numel, device=device,
                                                               dtype=dtype)
                self._views = {k: v for k, v in self._views.items()
                               if (k[0], k[3]) != (name, dtype)}
            view = self._views[key] = buf[:numel].view(shape)
        return view


def apply(images: Tensor, params: AugmentParams, *, out: Tensor | None = None,
          memory_format: torch.memory_format = torch.contiguous_format,
          workspace: Workspace | None = None, native: bool | None = None) -> Tensor:
    """Augment a uint8 batch (N, C, H, W) with `params`: float32 views (len(params), C, S, S).

    `params` may hold k views per image (len(params) == k * N, view-major): view i is of image
    i % N, so two views need no copy of the input. Order of ops: crop+resize+flip, colour
    jitter (brightness, contrast, saturation, hue), grayscale, blur, solarize, as in the
    paper's Appendix A (and BYOL for solarize). Colour jitter uses that fixed order rather
    than torchvision's random per-sample order: batched, a random order needs the hue op (the
    costliest) in all four slots, or six brightness/contrast/saturation slots around one hue
    slot, about doubling the cost of colour; each op on its own matches torchvision.

    `out`: a float32 (len(params), C, S, S) tensor to write the views into (a training loop
    can reuse one: fresh memory costs a page fault per 4 KiB, on CPU a large part of the
    work); `memory_format` is the new output's layout when out is None.

    `native`: on CPU tensors, run crop and colour in the C kernel (fastclr/_augment_cpu.c;
    one view at a time in cache, several times faster than the tensor ops) rather than the
    PyTorch code both devices share. None: the kernel whenever it was built (`NATIVE`).
    The two agree to float rounding (tests/test_augment.py).
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    n_views, (N, C, H, W) = len(params), images.shape
    if N == 0 or n_views % N:
        raise ValueError(f"{n_views} views do not divide evenly over {N} images")
    S, dev = params.size, images.device
    if params.top.device != dev:
        raise ValueError(f"params are on {params.top.device} but the images are on {dev}; "
                         "draw them with a generator on the images' device")
    if out is None:
        out = torch.empty((n_views, C, S, S), dtype=torch.float32, device=dev,
                          memory_format=memory_format)
    elif out.shape != (n_views, C, S, S) or out.dtype != torch.float32 or out.device != dev:
        raise ValueError(f"out must be float32 {(n_views, C, S, S)} on {dev}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    # Everything per view that does not touch pixels, for all views at once: the 1-D taps
    # (n_views, S, k) of the y and x resampling (row within the image, weight) and colour.
    y_index, y_weight = _taps(params.top, params.height, H, S, None)
    x_index, x_weight = _taps(params.left, params.width, W, S, params.flip)
    y_weight = y_weight * (1 / 255)                     # uint8 -> [0, 1] ...
    if params.brightness is not None:                   # ... and brightness, for free
        y_weight = y_weight * params.brightness[:, None, None]
    if native is None:
        native = NATIVE is not None
    if native and dev.type == "cpu":
        _apply_native(images, params, H, W, y_index, y_weight, x_index, x_weight, out)
        return out
    # the tensor ops: chunks of views small enough to keep their buffers in cache on CPU
    per_image = 4 * C * max(S * S, S * W)
    if dev.type == "cpu":
        ws = workspace if workspace is not None else Workspace()
        chunk = max(1, min(N, CPU_CHUNK_BYTES // per_image))
    else:   # the caching allocator already reuses memory
        ws, chunk = Workspace(), max(1, min(N, GPU_CHUNK_BYTES // per_image))
    colour = _colour_coefficients(params, C)
    # first row of each (view slot, channel) plane in a chunk's buffers: (chunk, C, 1)
    plane = torch.arange(chunk * C, device=dev).view(chunk, C, 1)
    for view in range(n_views // N):
        for a in range(0, N, chunk):
            b = min(a + chunk, N)
            i, j = view * N + a, view * N + b
            _apply_chunk(images[a:b], S, plane[:b - a], y_index[i:j], y_weight[i:j],
                         x_index[i:j], x_weight[i:j], {k: v[i:j] for k, v in colour.items()},
                         params.select(slice(i, j)) if _has_spatial_extras(params) else None,
                         out[i:j], ws)
    return out


def _apply_native(images: Tensor, p: AugmentParams, H: int, W: int, y_index: Tensor,
                  y_weight: Tensor, x_index: Tensor, x_weight: Tensor, out: Tensor) -> None:
    """`apply` on CPU tensors through the C kernel, over torch.get_num_threads() threads."""
    if NATIVE is None:
        raise RuntimeError("fastclr's C augmentation kernel was not built (no C compiler at "
                           "install time?); pass native=False or reinstall with one")
    # the kernel trusts its indices: check them once here (params may come from a user)
    for index, size, axis in ((y_index, H, "rows"), (x_index, W, "columns")):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise ValueError(f"crop boxes reach outside the images' {size} {axis}")
    images = images.contiguous()
    C, S, n_views = images.shape[1], p.size, len(p)

    def flat(t: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    def ptr(t: Tensor | None) -> int:
        return 0 if t is None else t.data_ptr()

    yi, yw, xi, xw = (flat(y_index, torch.int64), flat(y_weight), flat(x_index, torch.int64),
                      flat(x_weight))
    rgb = C == 3        # saturation, hue and grayscale do not exist for one channel
    contrast = flat(p.contrast)
    saturation = flat(1.0 - p.saturation) if rgb and p.saturation is not None else None
    hue = flat(6.0 * p.hue) if rgb and p.hue is not None else None
    gray = flat(p.gray) if rgb and p.gray is not None else None
    head = (ptr(images), *images.shape, S, yi.shape[-1], xi.shape[-1], ptr(yi), ptr(yw),
            ptr(xi), ptr(xw), ptr(contrast), ptr(saturation), ptr(hue), ptr(gray), ptr(out),
            *out.stride())
    threads = max(1, min(torch.get_num_threads(), n_views // NATIVE_VIEWS_PER_THREAD))
    bounds = [n_views * t // threads for t in range(threads + 1)]
    if threads == 1:
        NATIVE.apply(*head, 0, n_views)
    else:   # the kernel releases the GIL: each thread takes a contiguous range of views
        list(_thread_pool(threads).map(lambda t: NATIVE.apply(*head, bounds[t], bounds[t + 1]),
                                       range(threads)))
    if _has_spatial_extras(p):
        torch.clamp(_spatial_extras(out, p), 0.0, 1.0, out=out)


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="fastclr-augment")
        return _pools[threads]


def _has_spatial_extras(p: AugmentParams) -> bool:
    return p.blur_sigma is not None or p.solarize is not None


def _spatial_extras(z: Tensor, p: AugmentParams) -> Tensor:
    """Blur, then solarize, the views z (n, C, S, S) with p's n parameters; a new tensor."""
    if p.blur_sigma is not None:
        z = gaussian_blur(z, p.blur_sigma, p.blur_kernel)
    if p.solarize is not None:
        z = solarize(z, p.solarize)
    return z


def _colour_coefficients(p: AugmentParams, C: int) -> dict[str, Tensor]:
    """Per-view colour factors, shaped to broadcast over (n, C, P) or (n, P)."""
    coef = {}
    if p.contrast is not None:
        coef["contrast"] = p.contrast[:, None, None]
        coef["contrast_keep"] = (1.0 - p.contrast)                 # (n,) times the mean luma
    if p.saturation is not None and C == 3:
        coef["saturation_keep"] = (1.0 - p.saturation)[:, None, None]
    if p.hue is not None and C == 3:
        coef["hue_sixths"] = 6.0 * p.hue[:, None]
    if p.gray is not None and C == 3:
        coef["gray"] = p.gray.to(torch.float32)[:, None, None]
    return coef


def _apply_chunk(images: Tensor, S: int, plane: Tensor, y_index: Tensor, y_weight: Tensor,
                 x_index: Tensor, x_weight: Tensor, colour: dict[str, Tensor],
                 extras: AugmentParams | None, out: Tensor, ws: Workspace) -> None:
    """The pipeline on n images (n, C, H, W) uint8, one view each, written into out."""
    n, C, H, W = images.shape
    dev = images.device
    # resample y straight from the uint8 rows: (n, C, S, W), already scaled to [0, 1]
    rows = _resample_rows(images.reshape(n * C * H, W), plane * H, y_index, y_weight,
                          ws.get("rows", (n, C, S, W), dev), ws)
    rows_t = ws.get("rows_t", (n, C, W, S), dev)
    rows_t.view(n * C, W, S).copy_(rows.view(n * C, S, W).transpose(1, 2))
    # resample x: (n, C, S_x, S_y), the image transposed. Colour ops do not care about pixel
    # order, and the transpose back is fused into the final clamp into `out`.
    z = _resample_rows(rows_t.view(n * C * W, S), plane * W, x_index, x_weight,
                       ws.get("z", (n, C, S, S), dev), ws, normalised=True)
    z = z.view(n, C, S * S)
    if "contrast" in colour:         # jitter on: brightness and contrast are always drawn
        z.clamp_(0.0, 1.0)           # brightness's clamp; its factor is in the crop's weights
        _contrast_(z, colour["contrast"], colour["contrast_keep"])
    if "saturation_keep" in colour:
        _saturation_(z, colour["saturation_keep"], ws)
    if "hue_sixths" in colour:
        _hue_(z, colour["hue_sixths"], ws)
    if "gray" in colour:
        _grayscale_(z, colour["gray"], ws)
    z = z.view(n, C, S, S).transpose(-1, -2)                        # y and x back in order
    if extras is not None:
        z = _spatial_extras(z, extras)
    # float rounding can leave a value an ulp outside [0, 1]: clamp while copying out
    torch.clamp(z, 0.0, 1.0, out=out)


# ---- geometry -------------------------------------------------------------------------------

def _taps(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None):
    """1-D resampling of [start, start + length) to out_size samples: (index, weight) (n, S, k).

    index is the input row (or column) of each tap, weight its float32 weight. The weights
    are torchvision's resize (PyTorch's antialiased bilinear, like PIL's): a triangle filter
    on each output pixel's centre (align_corners=False), renormalised over the taps inside
    the crop so that borders clamp to the crop's edge, as resizing the cropped image does;
    when shrinking, the filter widens by the scale factor (the antialiasing) and k grows.
    """
    dev = start.device
    length = length.to(torch.float32)[:, None]                                     # (n, 1)
    scale = length / out_size
    centre = scale * (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5)  # (n, S)
    if in_size <= out_size and in_size >= 2:
        # never shrinking: plain bilinear, source x = centre - 1/2 clamped into the crop,
        # between rows j and j + 1 of the image (j + 1 may lie past the crop, at weight 0)
        src = torch.minimum((centre - 0.5).clamp_(min=0.0), length - 1) + start[:, None]
        j = src.floor().clamp_(max=in_size - 2.0)
        t = (src - j)[..., None]
        index = j.long()[..., None] + torch.arange(2, device=dev)               # (n, S, 2)
        w = torch.cat((1.0 - t, t), dim=-1)
        if flip is not None:
            index = torch.where(flip[:, None, None], index.flip(1), index)
            w = torch.where(flip[:, None, None], w.flip(1), w)
        return index, w
    k = 2 * in_size // out_size + 1               # taps of the widest (whole-image) filter
    support = scale.clamp(min=1.0)
    lo = torch.floor(centre - support + 0.5).clamp_(min=0.0)
    hi = torch.minimum(torch.floor(centre + support + 0.5), length)
    j = lo[..., None] + torch.arange(k, device=dev, dtype=torch.float32)         # (n, S, k)
    w = (1.0 - ((j - centre[..., None] + 0.5) / support[..., None]).abs()).clamp_(min=0.0)
    w = w * (j < hi[..., None])
    w = w / w.sum(-1, keepdim=True)
    index = torch.minimum(j, length[..., None] - 1).long() + start[:, None, None]
    if flip is not None:     # a flipped view reads its output pixels right to left
        index = torch.where(flip[:, None, None], index.flip(1), index)
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return index, w


def _resample_rows(rows: Tensor, first: Tensor, index: Tensor, weight: Tensor, out: Tensor,
                   ws: Workspace, normalised: bool = False) -> Tensor:
    """1-D resampling of a chunk along its row axis: each output row a weighted sum of rows.

    rows (n * C * L, D) float or uint8: n images of C planes of L rows; first (n, C, 1) the
    first row of each plane; index, weight (n, S, k) the taps of each view; out (n, C, S, D)
    float. out[b, c, i] = sum_t weight[b, i, t] * rows[first[b, c] + index[b, i, t]]: one
    index_select per tap gathers whole rows at memcpy speed, then a multiply-add. Bilinear
    taps are two adjacent rows, gathered as one pair per output row; `normalised` says the
    weights of each output row sum to 1.
    """
    n, C, S, D = out.shape
    k = index.shape[-1]
    pairs = k == 2 and rows.shape[0] >= 2
    if pairs:                         # (R - 1, 2, D): row r and r + 1, without a copy
        rows = rows.as_strided((rows.shape[0] - 1, 2, D), (D, D, 1))
        index = index[..., :1]
    # (taps, n, C, S) row numbers, tap-major so that each tap's are one contiguous vector
    at = torch.add(index.permute(2, 0, 1)[:, :, None], first,
                   out=ws.get("rows_index", (index.shape[-1], n, C, S), out.device, torch.int64))
    if pairs:
        tap = ws.get("pair", (n, C, S, 2, D), out.device, rows.dtype)
        torch.index_select(rows, 0, at[0].view(-1), out=tap.view(n * C * S, 2, D))
        if rows.dtype.is_floating_point and normalised:      # w0 = 1 - w1: one lerp
            torch.lerp(tap[..., 0, :], tap[..., 1, :], weight[:, None, :, 1, None], out=out)
        else:
            torch.mul(tap[..., 0, :], weight[:, None, :, 0, None], out=out)
            out.addcmul_(tap[..., 1, :], weight[:, None, :, 1, None])
        return out
    tap = ws.get("tap", (n, C, S, D), out.device, rows.dtype)
    for t in range(k):
        torch.index_select(rows, 0, at[t].view(-1), out=tap.view(n * C * S, D))
        w = weight[:, None, :, t, None]                               # (n, 1, S, 1)
        if t == 0:
            torch.mul(tap, w, out=out)
        else:
            out.addcmul_(tap, w)
    return out


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


def resized_crop(images: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor,
                 size: int, flip: Tensor | None = None) -> Tensor:
    """Crop box (top, left, height, width) (n,) of uint8 images (n, C, H, W), resize to
    size x size (bilinear, antialiased when shrinking), flip where flip (n,) is True;
    float32 (n, C, size, size) in [0, 1]."""
    n, C, H, W = images.shape
    dev, ws = images.device, Workspace()
    plane = torch.arange(n * C, device=dev).view(n, C, 1)
    y_index, y_weight = _taps(top, height, H, size, None)
    x_index, x_weight = _taps(left, width, W, size, flip)
    rows = _resample_rows(images.reshape(n * C * H, W), plane * H, y_index, y_weight / 255,
                          torch.empty(n, C, size, W, device=dev), ws)
    rows_t = rows.transpose(-1, -2).reshape(n * C * W, size)
    z = _resample_rows(rows_t, plane * W, x_index, x_weight,
                       torch.empty(n, C, size, size, device=dev), ws, normalised=True)
    return z.transpose(-1, -2).contiguous()


# ---- the SimCLR view generator --------------------------------------------------------------

class SimCLRAugment:
    """Two independent random views per image: the paper's data augmentation (Section 3,
    Appendix A; Figure 5: crop plus colour distortion is the composition that matters).

    Keyword arguments mirror fastclr.config's augment options; `size` is the output side
    (None: the input's side); `native` as in `apply`. Views are float32 in [0, 1], not
    normalised.
    """

    def __init__(self, size: int | None = None, crop_scale: tuple[float, float] = (0.2, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 color_strength: float = 0.5, color_p: float = 0.8, gray_p: float = 0.2,
                 blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_p: float = 0.0, native: bool | None = None):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {crop_ratio}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {blur_sigma}")
        for name, p in (("flip_p", flip_p), ("color_p", color_p), ("gray_p", gray_p),
                        ("blur_p", blur_p), ("solarize_p", solarize_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if not 0 <= color_strength <= 2.5:
            raise ValueError("color_strength must lie in [0, 2.5] (a hue shift of at most "
                             f"half a turn), got {color_strength}")
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.options = dict(size=size, crop_scale=tuple(crop_scale),
                            crop_ratio=tuple(crop_ratio), flip_p=flip_p,
                            color_strength=color_strength, color_p=color_p, gray_p=gray_p,
                            blur_p=blur_p, blur_sigma=tuple(blur_sigma), solarize_p=solarize_p)
        self.native = native            # see `apply`
        self.workspace = Workspace()

    @classmethod
    def small_images(cls, **overrides) -> "SimCLRAugment":
        """CIFAR-like images (<= 64 px): no blur, colour strength 0.5, crop area 0.2..1
        (paper, Appendix B.9)."""
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
        return f"SimCLRAugment({args})"

    def sample_params(self, images: Tensor, generator: torch.Generator,
                      views: int = 1) -> AugmentParams:
        """Parameters of `views` views of each image of the batch (view-major order)."""
        _check_generator(images, generator)
        n, C, H, W = images.shape
        return sample_params(generator, views * n, H, W, C, **self.options)

    def __call__(self, images: Tensor, generator: torch.Generator, *,
                 out: Tensor | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """One random view of each image: uint8 (N, C, H, W) -> float32 (N, C, S, S)."""
        params = self.sample_params(images, generator)
        return apply(images, params, out=out, memory_format=memory_format,
                     workspace=self.workspace, native=self.native)

    def two_views(self, images: Tensor, generator: torch.Generator, *,
                  out: Tensor | None = None,
                  memory_format: torch.memory_format = torch.contiguous_format
                  ) -> tuple[Tensor, Tensor]:
        """Two independent views of each image, drawn and applied in one batched pass of 2N.

        Both are halves of one (2N, C, S, S) tensor, `out` if given (see `apply`).
        """
        both = self.stacked_views(images, generator, out=out, memory_format=memory_format)
        n = images.shape[0]
        return both[:n], both[n:]

    def stacked_views(self, images: Tensor, generator: torch.Generator, *,
                      out: Tensor | None = None,
                      memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """The two views of each image as one (2N, C, S, S) tensor: rows i and N + i are the
        two views of image i, ready for one forward pass of the encoder."""
        params = self.sample_params(images, generator, views=2)
        return apply(images, params, out=out, memory_format=memory_format,
                     workspace=self.workspace, native=self.native)


def _check_generator(images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError("pass a torch.Generator: augmentations never use the global RNG")
    if generator.device.type != images.device.type:
        raise ValueError(f"the generator is on {generator.device} but the images are on "
                         f"{images.device}; create it with torch.Generator(device=...)")
