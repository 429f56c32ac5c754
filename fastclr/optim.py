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
        """One group's step with multi-tensor (foreach) ops: a few calls for the whole group
        instead of ten per parameter, the same arithmetic in the same order."""
        grads = [p.grad for p in params]
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        scaled = torch._foreach_mul(grads, group["lr"])
        if group["lars"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0),
                                group["trust_coefficient"] * w_norm / g_norm,
                                torch.ones_like(w_norm))
            torch._foreach_mul_(scaled, list(trust.unbind()))
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        new_bufs = torch._foreach_mul(bufs, group["momentum"])
        torch._foreach_add_(new_bufs, scaled)
        if self.found_inf is None:
            torch._foreach_copy_(bufs, new_bufs)
            torch._foreach_sub_(params, new_bufs)
            return
        # a bad step changes nothing: one select over the group's buffers laid end to end
        # (NaN-safe, unlike a multiply by 0), not three ops per parameter
        skip = self.found_inf.to(params[0].device).bool()
        flat_new = flatten(new_bufs)
        torch._foreach_copy_(bufs, unflatten(torch.where(skip, flatten(bufs), flat_new), bufs))
        torch._foreach_sub_(params, unflatten(flat_new.masked_fill(skip, 0.0), params))


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' values end to end, one 1-D tensor (a copy): one op can then do all."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """`flat` cut into pieces of the shapes of `like` (views of it); flatten's inverse."""
    pieces = flat.split([t.numel() for t in like])
    return [piece.view(t.shape) for piece, t in zip(pieces, like)]


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
