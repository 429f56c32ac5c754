"""Crop + resize + flip as two 1-D resamplings (rows, then columns), batched over views.

The weights are torchvision's resize (antialiased bilinear), or the official code's bicubic
(`_bicubic_taps`); each output row is a weighted sum of whole input rows gathered with
index_select, so the cost is memcpy-like.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastclr.augment.workspace import Workspace


INTERPOLATIONS = ("bilinear", "bicubic")
KEYS_A = -0.5         # Keys' cubic convolution parameter, as TensorFlow's half-pixel bicubic
TF_CUBIC_TABLE = 1024  # TensorFlow looks the cubic weights up at this many steps per pixel


def _taps(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor | None,
          interpolation: str = "bilinear"):
    """1-D resampling of [start, start + length) to out_size samples: (index, weight) (n, S, k).

    index is the input row (or column) of each tap, weight its float32 weight. The weights
    are torchvision's resize (PyTorch's antialiased bilinear, like PIL's): a triangle filter
    on each output pixel's centre (align_corners=False), renormalised over the taps inside
    the crop so that borders clamp to the crop's edge, as resizing the cropped image does;
    when shrinking, the filter widens by the scale factor (the antialiasing) and k grows.
    """
    if interpolation == "bicubic":
        return _bicubic_taps(start, length, out_size, flip)
    if interpolation != "bilinear":
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                         f"{interpolation!r}")
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


def _bicubic_taps(start: Tensor, length: Tensor, out_size: int, flip: Tensor | None):
    """The official code's resize (tf2/data_util.py crop_and_resize: tf.image.resize with
    method BICUBIC, i.e. TensorFlow's resize_bicubic with half-pixel centres): Keys' cubic
    (a = -0.5) over the 4 input pixels around each output pixel's centre, the offset rounded
    to 1/1024 of a pixel as TensorFlow's weight table is, taps outside the crop dropped and
    the others renormalised; no antialiasing when shrinking. (index, weight) (n, S, 4)."""
    dev = start.device
    length = length.to(torch.float32)[:, None]                                     # (n, 1)
    src = (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5) * (
        length / out_size) - 0.5                                                   # (n, S)
    base = torch.floor(src)
    t = torch.round((src - base) * TF_CUBIC_TABLE) / TF_CUBIC_TABLE
    offsets = torch.arange(-1.0, 3.0, device=dev)                                  # (4,)
    j = base[..., None] + offsets                                                  # (n, S, 4)
    d = (t[..., None] - offsets).abs()
    a = KEYS_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1                                     # d <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a                                # 1 < d < 2
    w = torch.where(d <= 1, near, torch.where(d < 2, far, 0.0))
    w = torch.where((j >= 0) & (j <= length[..., None] - 1), w, 0.0)
    w = w / w.sum(-1, keepdim=True)
    index = torch.minimum(j.clamp(min=0.0), length[..., None] - 1).long() + start[:, None, None]
    if flip is not None:
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


def resized_crop(images: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor,
                 size: int, flip: Tensor | None = None, interpolation: str = "bilinear"
                 ) -> Tensor:
    """Crop box (top, left, height, width) (n,) of uint8 images (n, C, H, W), resize to
    size x size (bilinear, antialiased when shrinking; or the official bicubic), flip where
    flip (n,) is True; float32 (n, C, size, size), in [0, 1] for bilinear (bicubic can
    overshoot a little, as TensorFlow's does; the pipeline clips it)."""
    n, C, H, W = images.shape
    dev, ws = images.device, Workspace()
    plane = torch.arange(n * C, device=dev).view(n, C, 1)
    y_index, y_weight = _taps(top, height, H, size, None, interpolation)
    x_index, x_weight = _taps(left, width, W, size, flip, interpolation)
    rows = _resample_rows(images.reshape(n * C * H, W), plane * H, y_index, y_weight / 255,
                          torch.empty(n, C, size, W, device=dev), ws)
    rows_t = rows.transpose(-1, -2).reshape(n * C * W, size)
    z = _resample_rows(rows_t, plane * W, x_index, x_weight,
                       torch.empty(n, C, size, size, device=dev), ws, normalised=True)
    return z.transpose(-1, -2).contiguous()
