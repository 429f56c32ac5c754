"""Pictures of a run: what the model sees, how training went, where the embeddings lie."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def save_augmentation_grid(images_uint8: Tensor, view1: Tensor, view2: Tensor,
                           path: str | os.PathLike, nrow: int = 4) -> Path:
    """Write a PNG showing each original image next to its two augmented views.

    images_uint8 (N, C, H, W) uint8; view1, view2 (N, C, S, S) float in [0, 1] (the
    pipeline's output, before any normalisation); C is 1 or 3. Each tile is
    [original | view 1 | view 2], `nrow` tiles per row. Originals are resized to S for
    display only; small images are enlarged by a whole factor (nearest) to at least 96 px so
    a person can see them. The file is written atomically (temp file, then rename).
    """
    if not (images_uint8.shape[0] == view1.shape[0] == view2.shape[0]):
        raise ValueError("images and views must have the same batch size")
    n, S = view1.shape[0], view1.shape[-1]
    original = images_uint8.detach().to("cpu", torch.float32) / 255
    if original.shape[-2:] != (S, S):
        original = F.interpolate(original, size=(S, S), mode="bilinear", antialias=True,
                                 align_corners=False)
    parts = [original, view1.detach().float().cpu(), view2.detach().float().cpu()]
    parts = [p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p for p in parts]   # grey -> RGB
    gap = torch.ones(n, 3, S, max(1, S // 16))                     # white line between the three
    tiles = torch.cat([parts[0], gap, parts[1], gap, parts[2]], dim=-1)      # (n, 3, S, ~3S)
    grid = _tile(tiles, nrow, pad=max(2, S // 6))
    zoom = max(1, -(-96 // S))
    grid = grid.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return _write_png_atomically(pixels, Path(path))


def _tile(tiles: Tensor, nrow: int, pad: int) -> Tensor:
    """(n, 3, h, w) tiles -> (3, H, W) image, nrow per row, white padding around each."""
    n, _, h, w = tiles.shape
    cols = max(1, min(nrow, n))
    rows = -(-n // cols)
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, top:top + h, left:left + w] = tiles[i]
    return grid


def _write_png_atomically(pixels, path: Path) -> Path:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(pixels, mode="RGB").save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp's 0600 is not what a plot wants
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
