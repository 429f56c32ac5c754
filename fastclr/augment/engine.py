"""`apply`: augment a uint8 batch with its views' parameters, in one batched pass.

On CPU tensors crop, resize, flip and colour run in the C kernel (`_cpu.c`, `NATIVE`) when it
was built; the tensor ops here are the CUDA path and the fallback, in chunks small enough to
stay in cache.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch
from torch import Tensor

from fastclr.augment.colour import (_contrast_, _grayscale_, _hue_, _saturation_, gaussian_blur,
                                    jitter, random_grayscale, solarize)
from fastclr.augment.extra import add_noise, cutout, rotate_quarters, sobel
from fastclr.augment.params import AugmentParams
from fastclr.augment.resample import _resample_rows, _taps
from fastclr.augment.workspace import Workspace

try:    # the C kernel for CPU tensors (fastclr/augment/_cpu.c), built at install when possible
    from fastclr.augment import _cpu as NATIVE
except ImportError:                # no compiler at install time: the PyTorch code does it all
    NATIVE = None

# Bytes of one float (n, C, S, S) buffer per chunk. On CPU small enough that the pipeline's
# dozen buffers mostly stay in the last-level cache between its ~100 ops, large enough to
# amortise their per-call overhead (1-3 MiB measured best on a 2-core EPYC VM); on GPU
# chunks only bound the peak memory.
CPU_CHUNK_BYTES = 3 << 20
GPU_CHUNK_BYTES = 256 << 20

# The C kernel splits a batch over torch.get_num_threads() threads when each gets this many
# views; below that a thread's start costs more than it saves.
NATIVE_VIEWS_PER_THREAD = 32


def apply(images: Tensor, params: AugmentParams, *, out: Tensor | None = None,
          memory_format: torch.memory_format = torch.contiguous_format,
          workspace: Workspace | None = None, native: bool | None = None) -> Tensor:
    """Augment a uint8 batch (N, C, H, W) with `params`: float32 views (len(params), C, S, S).

    `params` may hold k views per image (len(params) == k * N, view-major): view i is of image
    i % N, so two views need no copy of the input. Order of ops: crop+resize+flip, colour
    jitter (brightness, contrast, saturation, hue), grayscale, blur, solarize, as in the
    paper's Appendix A (and BYOL for solarize), with Figure 4's others where they fit: sobel
    before blur, then noise, cutout and rotate (fastclr/augment/extra.py says why rotating
    last is the same as right after the flip). Colour jitter uses that fixed order rather
    than torchvision's random per-sample order: batched, a random order needs the hue op (the
    costliest) in all four slots, or six brightness/contrast/saturation slots around one hue
    slot, about doubling the cost of colour; each op on its own matches torchvision.

    `out`: a float32 (len(params), C, S, S) tensor to write the views into (a training loop
    can reuse one: fresh memory costs a page fault per 4 KiB, on CPU a large part of the
    work); `memory_format` is the new output's layout when out is None.

    `native`: on CPU tensors, run crop and colour in the C kernel (fastclr/augment/_cpu.c;
    one view at a time in cache, several times faster than the tensor ops) rather than the
    PyTorch code both devices share. None: the kernel whenever it was built (`NATIVE`).
    The two agree to float rounding (tests/augment/).

    The official code's jitter (params with a random `color_order`, an additive
    `brightness_shift` or tf.image's formulas) runs as tensor ops on both devices, after crop,
    resize and flip (which still take the C kernel on CPU): see `colour.jitter`.
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
    if (params.noise_std is None) != (params.noise is None) or (
            params.noise is not None and params.noise.shape != (n_views, C, S, S)):
        raise ValueError(f"params.noise_std and params.noise go together, the noise "
                         f"{(n_views, C, S, S)} like the views")
    if _official_colour(params):
        return _apply_official_colour(images, params, out, workspace, native)
    # Everything per view that does not touch pixels, for all views at once: the 1-D taps
    # (n_views, S, k) of the y and x resampling (row within the image, weight) and colour.
    y_index, y_weight = _taps(params.top, params.height, H, S, None, params.interpolation)
    x_index, x_weight = _taps(params.left, params.width, W, S, params.flip, params.interpolation)
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


def _official_colour(p: AugmentParams) -> bool:
    return p.jitter is not None and (p.color_order is not None or p.tf_formulas
                                     or p.brightness_shift is not None)


# the fields of the ops after crop, resize and flip, all off
_AFTER_RESAMPLING_OFF = dict(jitter=None, brightness=None, brightness_shift=None, contrast=None,
                             saturation=None, hue=None, gray=None, color_order=None,
                             tf_formulas=False, sobel=None, blur_sigma=None, solarize=None,
                             noise_std=None, noise=None, cutout=None, rotate=None)


def _apply_official_colour(images: Tensor, p: AugmentParams, out: Tensor,
                           workspace: Workspace | None, native: bool | None) -> Tensor:
    """`apply` with the official code's colour jitter: crop, resize and flip into `out` (the
    C kernel on CPU where built), then jitter, grayscale and the later ops as tensor ops."""
    apply(images, replace(p, **_AFTER_RESAMPLING_OFF), out=out, workspace=workspace,
          native=native)
    z = jitter(out, p)
    if p.gray is not None and out.shape[1] == 3:
        z = random_grayscale(z, p.gray)
    if _has_spatial_extras(p):
        z = _spatial_extras(z, p)
    torch.clamp(z, 0.0, 1.0, out=out)
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
    return any(v is not None for v in (p.sobel, p.blur_sigma, p.solarize, p.noise_std,
                                       p.cutout, p.rotate))


def _spatial_extras(z: Tensor, p: AugmentParams) -> Tensor:
    """The ops after colour on the views z (n, C, S, S) with p's n parameters, in order:
    sobel, blur, solarize, noise, cutout, rotate; a new tensor (z is not written)."""
    if p.sobel is not None:
        z = sobel(z, p.sobel)
    if p.blur_sigma is not None:
        z = gaussian_blur(z, p.blur_sigma, p.blur_kernel)
    if p.solarize is not None:
        z = solarize(z, p.solarize)
    if p.noise_std is not None:
        z = add_noise(z, p.noise_std, p.noise)
    if p.cutout is not None:
        z = cutout(z, p.cutout)
    if p.rotate is not None:
        z = rotate_quarters(z, p.rotate)
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
