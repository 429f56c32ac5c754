"""LARS, parameter groups and the learning-rate schedule (SimCLR section 2.2 and appendix B).

The schedule is a pure function of the step: linear warmup from 0, then a cosine decay to 0
without restarts, applied every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

DEFAULT_BASE_LR = {"sqrt": 0.075, "linear": 0.3, "constant": 1e-3}


def peak_lr(rule: str, batch_size: int, base_lr: float | None = None) -> float:
    """The paper's scaling rules (appendix B.1): linear 0.3 x B/256, or 0.075 x sqrt(B)."""
    base = DEFAULT_BASE_LR[rule] if base_lr is None else base_lr
    if rule == "sqrt":
        return base * math.sqrt(batch_size)
    if rule == "linear":
        return base * batch_size / 256
    if rule == "constant":
        return base
    raise ValueError(f"unknown lr rule {rule!r}")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """lr for optimiser step `step` (0-based): peak*step/warmup, then cosine from peak to 0."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights get weight decay and LARS adaptation; biases and norm parameters get neither.

    As in the official SimCLR code, which excludes 'bias' and 'batch_normalization' variables
    from both. Every 1-D parameter here is a bias or a norm scale/shift.
    """
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as SimCLR uses it.

    For each parameter w with gradient g (after adding weight decay wd * w):
        trust = eta * ||w|| / ||g||  (1 where either norm is 0, or for excluded parameters)
        v     = momentum * v + lr * trust * g
        w     = w - v
    Like torch's fused optimisers under a GradScaler, it skips the whole step when its
    `found_inf` attribute is a nonzero 0-d tensor, without reading it on the host (no sync).
    """

    def __init__(self, params, lr: float = 0.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 1e-3):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars=True)
        super().__init__(params, defaults)
        self.found_inf: torch.Tensor | None = None
        self._layouts: dict[tuple, Layout] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One group's step over the group's tensors laid end to end (`Layout`, each tensor in
        its memory order): the same arithmetic in the same order as ten ops per parameter, in
        a dozen ops whatever the depth. The pieces written back have their tensors' strides,
        so a GPU's foreach ops take their one-launch path; the trust ratio reaches each piece
        through one repeat, not a multiply per parameter."""
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        layout = self._layout(params)
        scaled = layout.flatten([p.grad for p in params])  # a copy: updated in place from here
        if group["weight_decay"]:
            scaled.add_(layout.flatten(params), alpha=group["weight_decay"])
        if group["lars"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(layout.unflatten(scaled)))
            trust = torch.where((w_norm > 0) & (g_norm > 0),
                                group["trust_coefficient"] * w_norm / g_norm,
                                torch.ones_like(w_norm))
        scaled.mul_(group["lr"])
        if group["lars"]:
            scaled.mul_(trust.repeat_interleave(layout.counts(scaled.device),
                                                output_size=scaled.numel()))
        old = layout.flatten(bufs)
        new = old.mul(group["momentum"]).add_(scaled)
        if self.found_inf is None:
            pieces = layout.unflatten(new)
            torch._foreach_copy_(bufs, pieces)
            torch._foreach_sub_(params, pieces)
            return
        # a bad step changes nothing: a select (NaN-safe, unlike a multiply by 0)
        skip = self.found_inf.to(new.device).bool()
        torch._foreach_copy_(bufs, layout.unflatten(torch.where(skip, old, new)))
        torch._foreach_sub_(params, layout.unflatten(new.masked_fill_(skip, 0.0)))

    def _layout(self, params: list[torch.Tensor]) -> "Layout":
        """The parameters' layout, worked out once per list of parameters."""
        key = tuple(id(p) for p in params)
        if key not in self._layouts or not self._layouts[key].fits(params):
            self._layouts[key] = Layout(params)
        return self._layouts[key]


class Layout:
    """How tensors of given shapes and strides lie end to end in one 1-D tensor: each in its
    own memory order, so that laying out a channels-last tensor reorders nothing, and the
    pieces cut back from the 1-D tensor have the tensors' strides exactly (size-1 dims
    included). Tensors of the same shapes in other strides are first copied into these, so
    the 1-D tensors of parameters, gradients and buffers match element for element. A tensor
    with gaps or overlaps (a view) lies in index order instead, and its piece is contiguous."""

    def __init__(self, like: list[torch.Tensor]):
        self.shapes = [t.shape for t in like]
        self.strides = [t.stride() for t in like]
        self.sizes = [t.numel() for t in like]
        self.dense = [_dense(t.shape, t.stride()) for t in like]
        self._counts = None

    def fits(self, tensors: list[torch.Tensor]) -> bool:
        return all(t.shape == shape and t.stride() == stride
                   for t, shape, stride in zip(tensors, self.shapes, self.strides))

    def flatten(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The tensors' values end to end: one new 1-D tensor."""
        parts = []
        for t, stride, size, dense in zip(tensors, self.strides, self.sizes, self.dense):
            if not dense:
                parts.append(t.reshape(-1))
                continue
            if t.stride() != stride:
                t = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)
            parts.append(t.as_strided((size,), (1,)))  # its memory, as it lies
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """`flat` cut into views shaped and strided like the tensors; flatten's inverse."""
        return [piece.as_strided(shape, stride) if dense else piece.view(shape)
                for piece, shape, stride, dense in zip(flat.split(self.sizes), self.shapes,
                                                       self.strides, self.dense)]

    def counts(self, device: torch.device) -> torch.Tensor:
        """The element counts as a tensor on `device`, made once (not a copy every step)."""
        if self._counts is None or self._counts.device != device:
            self._counts = torch.tensor(self.sizes, device=device)
        return self._counts


def _dense(shape, stride) -> bool:
    """Whether a tensor of this shape and strides fills a block of memory exactly (no gaps,
    no overlaps), in some order of its dims: contiguous, channels-last and their kin."""
    expected = 1
    for step, size in sorted((st, sz) for sz, st in zip(shape, stride) if sz != 1):
        if step != expected:
            return False
        expected *= size
    return True


def lars(groups: list[dict], momentum: float, trust_coefficient: float) -> LARS:
    return LARS(groups, lr=0.0, momentum=momentum, trust_coefficient=trust_coefficient)


# fused implementations honour `found_inf` (a skipped step) on the device, like LARS
def sgd(groups: list[dict], momentum: float, trust_coefficient: float) -> torch.optim.SGD:
    return torch.optim.SGD(_plain(groups), lr=0.0, momentum=momentum, fused=True)


def adamw(groups: list[dict], momentum: float, trust_coefficient: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(_plain(groups), lr=0.0, fused=True)


def _plain(groups: list[dict]) -> list[dict]:
    """The groups without LARS's flag, for torch's optimisers."""
    return [{k: v for k, v in g.items() if k != "lars"} for g in groups]


def build_optimizer(name: str, model: nn.Module, weight_decay: float, momentum: float = 0.9,
                    trust_coefficient: float = 1e-3) -> torch.optim.Optimizer:
    """An optimiser by name (fastclr.registry.OPTIMIZERS: LARS, the paper's, or SGD/AdamW)
    over `param_groups(model)`; lr is set every step by the loop."""
    from fastclr.registry import OPTIMIZERS
    return OPTIMIZERS.get(name)(param_groups(model, weight_decay), momentum, trust_coefficient)
