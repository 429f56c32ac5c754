"""Scratch buffers the CPU pipeline reuses between chunks and calls."""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
