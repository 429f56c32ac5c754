"""Normalisation layers by name (fastclr.registry.NORMS), and batch norm over groups of a batch.

SimCLR uses batch norm everywhere and makes it global across devices (section 2.2): with
per-device statistics the model can tell a positive pair by its device's statistics, a
shortcut that lowers the loss without improving the representation. The notes this project
started from ask about layer norm instead, which needs no batch statistics at all; group norm
with weight standardisation is the usual batch-free choice for ResNets (Qiao et al. 2019).
`GroupedBatchNorm` imitates G devices without global BN inside one process, so the leak can be
measured on a single CPU.

A norm factory takes (num_features, dims) -> module: dims 2 for (N, C, H, W) conv features,
1 for (N, C) vectors. A factory with `standardize_weights = True` asks the ResNet to use
weight-standardised convolutions with it.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F


def batch_norm(num_features: int, dims: int) -> nn.Module:
    return BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)


class _CountsBatches:
    """For batch norms that compute their training forward themselves."""

    def _count_batch(self) -> float:
        """Counts a training batch in num_batches_tracked, as nn.BatchNorm2d does, and returns
        the running statistics' update factor for it (momentum None: a cumulative average)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return factor


class BatchNorm2d(_CountsBatches, nn.BatchNorm2d):
    """nn.BatchNorm2d, computed its own way where PyTorch's CPU kernels are slow.

    A 1/8-width ResNet (the CPU preset) has 8-channel layers at the largest feature maps, and
    PyTorch's CPU kernels for channels-last features are slow on so few channels
    (benchmarks/batch_norm.py, 2 cores):
    - on an AVX-512 CPU its backward takes a slow path when the channel count is not a
      multiple of 16: a forward + backward of (512, 8, 14, 14) takes 6-7 ms, of (512, 16, 14,
      14), twice the size, 2.3 ms. There, training steps use the native forward and a
      backward of whole-tensor sums and products (_ChannelsLastBatchNorm);
    - on other CPUs (an AMD EPYC with AVX2 measured) the forward and the backward of 8
      channels are both slow: 1.8 and 5.2 ms for (512, 8, 14, 14), against 1.3 and 2.1 for
      (512, 16, 14, 14). There, training steps with fewer than 16 channels run PyTorch's own
      kernels on a wide view of the features (_WideBatchNorm): 0.8 and 1.2 ms.
    Both are the same arithmetic reordered (tests/test_norms.py); all else is nn.BatchNorm2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d.forward's logic, written out: TorchScript compiles no super() call
        self._check_input_dim(x)
        factor = self._count_batch()
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        if not torch.jit.is_scripting():  # alone in its test: TorchScript skips the body
            if self.training and torch.is_grad_enabled():
                own = _own_batch_norm(x)
                if own is not None:
                    return self._own(own, x, factor)
        return F.batch_norm(x, self.running_mean if track else None,
                            self.running_var if track else None, self.weight, self.bias,
                            batch_stats, factor, self.eps)

    @torch.jit.unused
    def _own(self, function, x: torch.Tensor, factor: float) -> torch.Tensor:
        stats = (self.running_mean, self.running_var) if self.track_running_stats \
            else (None, None)
        return function.apply(x, self.weight, self.bias, *stats, factor, self.eps)


# False: PyTorch's batch norm everywhere (benchmarks/batch_norm.py times a step both ways)
OWN_BACKWARD = True

# PyTorch's channels-last kernel works in vectors of 16 floats on an AVX-512 CPU, and channel
# counts that are not a multiple of 16 leave it a masked remainder in every row; there the own
# backward was measured faster. With AVX2 (8 floats a vector) the 8-channel layers fill whole
# vectors and that backward was measured slower (benchmarks/batch_norm.py: 0.87x), but
# PyTorch's kernels are slow on so few channels all the same (forward 1.8 ms, backward 5.2 for
# (512, 8, 14, 14) on a 2-core AMD EPYC, against 1.3 and 2.1 for twice the floats in 16
# channels): there the layer runs them on a wide view (_WideBatchNorm: 0.8 and 1.2 ms).
WIDE_VECTORS = torch.backends.cpu.get_cpu_capability().startswith("AVX512")

# the row width of _WideBatchNorm's view: 8 pixels of 8 channels
WIDE_ROW = 64


def _own_batch_norm(x: torch.Tensor) -> type | None:
    """The autograd function that computes a CPU training batch norm of x faster than PyTorch's
    (fp32, channels-last, eager), or None where PyTorch's is the faster one."""
    if not (OWN_BACKWARD and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.compiler.is_compiling()):  # inductor lowers batch norm itself
        return None
    channels = x.shape[1]
    if WIDE_VECTORS:
        return _ChannelsLastBatchNorm if channels % 16 else None
    return _WideBatchNorm if channels < 16 and WIDE_ROW % channels == 0 \
        and x.numel() % WIDE_ROW == 0 else None


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """A (N, C, H, W) tensor's channels-last memory as rows of `width` floats: a view where t
    is channels-last (else of a channels-last copy)."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, width)


def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """_rows undone: rows of channels-last memory as a (N, C, H, W) view shaped as `like`."""
    n, c, h, w = like.shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training batch norm of a channels-last (N, C, H, W) tensor: the native forward, and a
    backward over its (N*H*W, C) view (column sums, a matrix product, two fused passes)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                  True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        C = x.shape[1]
        x2, g2 = _rows(x, C), _rows(grad, C)  # (M, C), M = N*H*W
        M = x2.shape[0]
        centred = x2 - mean  # (M, C)
        sum_g = g2.sum(0)  # (C,) = grad of bias
        # (C,) = grad of weight: the diagonal of a (C, C) product, no (M, C) temporary
        sum_g_xhat = torch.diagonal(g2.t() @ centred) * invstd
        scale = invstd if weight is None else weight * invstd
        # dL/dx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = centred * invstd
        grad_x = torch.addcmul((-scale * sum_g / M).expand(M, C), g2, scale)
        grad_x.addcmul_(centred, -scale * sum_g_xhat * invstd / M)
        return (_unrows(grad_x, x), *_affine_grads(ctx, weight, sum_g_xhat, sum_g), None, None,
                None, None)


def _affine_grads(ctx, weight, sum_g_xhat, sum_g) -> tuple:
    """(dL/dweight, dL/dbias) where asked for."""
    grad_w = sum_g_xhat if weight is not None and ctx.needs_input_grad[1] else None
    return grad_w, sum_g if ctx.needs_input_grad[2] else None


class _WideBatchNorm(torch.autograd.Function):
    """Training batch norm of a channels-last (N, C, H, W) tensor with few channels (C divides
    WIDE_ROW), by PyTorch's own kernels on its (N*H*W*C / WIDE_ROW, WIDE_ROW) view, where
    column j holds channel j mod C: per-column statistics merged per channel (equal counts:
    the mean of the means, and the mean of the variances plus the variance of the means), then
    the normalisation with the merged statistics repeated along a row; the backward likewise
    (per-column sums, merged, and one affine map of grad and x per channel)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        C = x.shape[1]
        M = x.numel() // C  # values per channel
        repeat = WIDE_ROW // C
        rows = _rows(x, WIDE_ROW)
        col_mean, col_var = torch.batch_norm_update_stats(rows, None, None, 0.0)
        col_mean, col_var = col_mean.view(repeat, C), col_var.view(repeat, C)
        mean = col_mean.mean(0)
        var = col_var.mean(0) + (col_mean - mean).square().mean(0)  # biased, as PyTorch's
        invstd = torch.rsqrt(var + eps)
        y = torch.empty_like(x)  # channels-last, as x; written through its row view (a
        # Function's output may not be a view of another tensor: in-place ReLU follows)
        torch.ops.aten.native_batch_norm.out(
            rows, None if weight is None else weight.repeat(repeat),
            None if bias is None else bias.repeat(repeat), mean.repeat(repeat),
            var.repeat(repeat), False, 0.0, eps, out=_rows(y, WIDE_ROW),
            save_mean=mean.new_empty(0), save_invstd=mean.new_empty(0))
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(mean, momentum)
                running_var.lerp_(var * (M / max(M - 1, 1)), momentum)  # unbiased, as PyTorch
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        C = x.shape[1]
        M = x.numel() // C
        repeat = WIDE_ROW // C
        rows, grad_rows = _rows(x, WIDE_ROW), _rows(grad, WIDE_ROW)
        # per-column sum(grad * xhat) and sum(grad), merged per channel
        _, col_g_xhat, col_g = torch.ops.aten.native_batch_norm_backward(
            grad_rows, rows, None, None, None, mean.repeat(repeat), invstd.repeat(repeat), True,
            0.0, [False, True, True])
        sum_g_xhat, sum_g = col_g_xhat.view(repeat, C).sum(0), col_g.view(repeat, C).sum(0)
        scale = invstd if weight is None else weight * invstd
        # dL/dx = scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd,
        # = scale * g + slope * x + shift: two passes, no centred copy of x (the slope is
        # small, so shift's - slope * mean loses nothing to cancellation: a mean 25 standard
        # deviations from 0 left the gradient within 1.5e-7 of float64's, relative to its
        # largest entry)
        slope = -scale * invstd * sum_g_xhat / M
        shift = -scale * sum_g / M - slope * mean
        grad_x = torch.addcmul(shift.repeat(repeat).expand_as(grad_rows), grad_rows,
                               scale.repeat(repeat))
        grad_x.addcmul_(rows, slope.repeat(repeat))
        return (_unrows(grad_x, x), *_affine_grads(ctx, weight, sum_g_xhat, sum_g), None, None,
                None, None)


def layer_norm(num_features: int, dims: int) -> nn.Module:
    """Over channels and pixels of each image (one group of GroupNorm); over features for h."""
    return nn.GroupNorm(1, num_features) if dims == 2 else nn.LayerNorm(num_features)


def group_count(channels: int) -> int:
    """Wu & He's 32 groups, but at least 4 channels in each: narrow layers (a ResNet at 1/8
    width has 8 to 64 channels) get C // 4 groups, the largest divisor of C at most that.
    With one channel per group GN is instance norm, which their paper finds the worst choice
    and which left a 1/8-width ResNet-18 on Fashion-MNIST untrained (the norm study)."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def group_norm(num_features: int, dims: int) -> nn.Module:
    """group_count(C) groups (32 for wide layers, at least 4 channels per group)."""
    return nn.GroupNorm(group_count(num_features), num_features)


group_norm.standardize_weights = True


def no_norm(num_features: int, dims: int) -> nn.Module:
    return nn.Identity()


def norm_factory(name: str):
    """The factory registered as `name`, as a one-argument norm_layer for conv features."""
    from fastclr.registry import NORMS
    make = NORMS.get(name)
    return lambda num_features: make(num_features, 2)


class StandardizedConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al. 2019): each filter is shifted to zero
    mean and scaled to unit variance before use, which makes group norm train like batch norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self._conv_forward(x, (w - mean) / (std + 1e-5), self.bias)


def standardize_convolutions(module: nn.Module) -> nn.Module:
    """Replace every Conv2d in `module` by a StandardizedConv2d holding the same weights."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            new = StandardizedConv2d(child.in_channels, child.out_channels, child.kernel_size,
                                     child.stride, child.padding, child.dilation, child.groups,
                                     child.bias is not None, child.padding_mode)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            standardize_convolutions(child)
    return module


class GroupedBatchNorm(_CountsBatches, nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics come from G disjoint groups of the batch.

    The batch is the stacked views (2n, C, ...) of n images: rows i and n + i are the two views
    of image i. Group g holds images g*n/G ... (g+1)*n/G and both their views, what device g
    of G would see without global BN. Running statistics follow group 0, as DDP's buffer
    broadcast from rank 0 makes them. G = 1, or eval mode, is plain batch norm.
    """

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.groups = groups

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        G, n, C, rest = self.groups, x.shape[0], x.shape[1], x.shape[2:]
        if n % (2 * G):
            raise ValueError(f"a batch of {n} views does not split into {G} groups of "
                             "view pairs")
        m = n // (2 * G)  # images in a group
        # One fused batch norm over G * C channels: (view, group, image, C, ...) is laid out
        # as (view, image, group, C, ...), so channel g * C + c holds channel c of group g.
        xs = x.reshape(2, G, m, C, *rest).transpose(1, 2).reshape(2 * m, G * C, *rest)
        stats = (self.running_mean.repeat(G), self.running_var.repeat(G)) \
            if self.track_running_stats else (None, None)
        y = F.batch_norm(xs, *stats, self.weight.repeat(G) if self.affine else None,
                         self.bias.repeat(G) if self.affine else None, True,
                         self._count_batch(), self.eps)
        if self.track_running_stats:  # group 0's, as DDP's broadcast from rank 0 leaves them
            with torch.no_grad():
                self.running_mean.copy_(stats[0][:C])
                self.running_var.copy_(stats[1][:C])
        y = y.reshape(2, m, G, C, *rest).transpose(1, 2).reshape(x.shape)
        return y.contiguous(memory_format=_format_of(x))


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def convert_grouped_batchnorm(module: nn.Module, groups: int) -> nn.Module:
    """Every BatchNorm of `module` becomes a GroupedBatchNorm over `groups` (same weights)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = GroupedBatchNorm(module.num_features, groups, module.eps, module.momentum,
                               module.affine, module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, convert_grouped_batchnorm(child, groups))
    return out
