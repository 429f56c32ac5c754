"""Process-group set-up from torchrun's environment; one process is just the simplest case.

Launched by torchrun, each process finds RANK, LOCAL_RANK and WORLD_SIZE in its environment and
joins the group (NCCL on CUDA, gloo on CPU); launched plainly, nothing is initialised and the
same code runs with rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from fastclr.errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local rank> when CUDA is there, else cpu; cuda without CUDA is an error."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {pref} asked for, but no CUDA device is available; "
                              "use --device cpu")
        if pref == "cuda":
            pref = f"cuda:{local_rank}"
        device = torch.device(pref)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {pref} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return device
    return torch.device("cpu")


def setup(device_pref: str = "auto") -> Context:
    """Join torchrun's process group if launched by it; return this process's rank and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(0, 0, 1, resolve_device(device_pref))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return Context(rank, local_rank, world_size, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device_pref: str = "auto") -> Iterator[Context]:
    """setup() for the block's length, then leave the group.

    After a clean end every process waits for the others before it closes its connections,
    so none leaves while a peer may still have a collective in flight with it (the scatters
    of the loss's all-gather backward on gloo are sends that may not have drained). After an
    error nobody waits: the peer may be gone, and a barrier would hang until the timeout.
    """
    ctx = setup(device_pref)
    try:
        yield ctx
    except BaseException:
        teardown()
        raise
    barrier()
    teardown()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Global batch norm for CPU process groups (gloo), where nn.SyncBatchNorm cannot run.

    PyTorch's SyncBatchNorm needs CUDA kernels (aten::batch_norm_stats has none for CPU) and
    DDP refuses it on CPU modules. This computes the same statistics over the global batch with
    torch.distributed.nn's differentiable all_reduce (two passes: mean, then centred squares),
    so gradients flow through the statistics of every process, as SimCLR's global BN needs
    (section 2.2). In eval mode, or with one process, it is plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if not self.training or world == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # backward: all-reduces grads

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        count = all_reduce(count)  # images x pixels over all processes
        mean = all_reduce(x.sum(dims)) / count  # (C,)
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / count  # biased, as BN
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1), m)
                self.num_batches_tracked += 1
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm becomes global: nn.SyncBatchNorm on CUDA, CPUSyncBatchNorm on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
