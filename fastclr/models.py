"""The encoder f, the projection head g, and SimCLR = g(f(x)), built from a ModelSpec.

An `Encoder` normalises its [0, 1] input with the data set's statistics and runs a backbone
chosen by name (fastclr.registry.BACKBONES). The ResNets are built from torchvision's own
residual blocks; what this module adds is the small-image stem (a 3x3 stride-1 conv and no
max-pool, as the paper does for CIFAR-10, appendix B.9) and a width multiplier for every layer
(the paper's 2x and 4x ResNet-50).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula
from torchvision.models.resnet import BasicBlock, Bottleneck

from fastclr import norms
from fastclr.norms import norm_factory, standardize_convolutions
from fastclr.registry import BACKBONES, HEADS, NORMS
from fastclr.spec import EncoderSpec, HeadSpec, ModelSpec

STEMS = ("small", "small-s2", "imagenet")

# False: PyTorch's convolution backward everywhere (benchmarks/conv_backward.py times a step
# both ways)
OWN_CONV_BACKWARD = True


def _native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 products in hardware (AMX or AVX-512 BF16), where oneDNN's
    bf16 convolution backward is the slow part that SmallMapConv2d replaces. Elsewhere (AVX2)
    bf16 is emulated and the matrix products were measured slower (0.68-0.83x)."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # an older torch without these probes
        return False


NATIVE_BF16_CPU = _native_bf16_cpu()


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d whose training step on CPU, on small feature maps, is matrix products:
    in bf16 its backward, in fp32 on tiny maps the whole of it.

    oneDNN's bf16 backward of a convolution on CPU is slow on small feature maps, most of all
    its weight gradient. On 2 cores (benchmarks/conv_backward.py): a 1x1 convolution
    (512, 256, 2, 2) -> 64 channels takes 2.0 ms against 0.31 ms for two matrix products over
    the channels-last (N*H*W, C) views, (512, 64, 7, 7) -> 16 2.0 against 0.54, the stride-2
    shortcut (512, 128, 4, 4) -> 256 3.8 against 0.68; the weight gradient of a 3x3
    convolution (512, 64, 2, 2) -> 64 1.8 ms against 0.49 for one matrix product over the
    unfolded input (N*Ho*Wo, 3*3*C), (512, 128, 4, 4) -> 128 7.8 against 3.3. On larger maps
    and fewer channels oneDNN wins. There, bf16 training steps on CPU keep the native forward
    and take the matrix products backward (for a 1x1 convolution the input gradient too; for a
    larger kernel oneDNN's input gradient, which is fast): the same sums in another order.
    GPUs, bf16 on CPUs without native bf16 (NATIVE_BF16_CPU) and everything not named here are
    nn.Conv2d's own.

    In fp32 on CPUs without AVX-512 (an AMD EPYC with AVX2 measured), oneDNN is slow on the
    smallest maps of the CPU preset: a 3x3 convolution (512, 64, 2, 2) -> 64 takes 5.7-6.3 ms
    forward + backward (its weight gradient falls back to oneDNN's im2col + GEMM), as one
    dense matrix product each way 2.5-2.6 ms; a 1x1 (512, 256, 2, 2) -> 64 4.1-4.2 ms, as
    products over the (N*H*W, C) rows 1.9-2.2. There fp32 training calls with outputs of 4
    pixels or fewer (of a 1x1 convolution or a stride-1 larger one) or of 16 or fewer (a
    strided 1x1 one) are matrix products (tiny_map_conv, differentiated by autograd).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript skips the body (as in norms.BatchNorm2d)
            if _plain_square(self):
                if _own_backward_pays(x, self.weight, self.stride[0], self.padding[0]):
                    return self._own_backward(x)
                if _products_pay(x, self.weight, self.stride[0], self.padding[0]):
                    return self._as_products(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _as_products(self, x: torch.Tensor) -> torch.Tensor:
        return tiny_map_conv(x, self.weight, self.stride[0], self.padding[0])

    @torch.jit.unused
    def _own_backward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # cast here, as autocast would
            bf16 = torch.bfloat16
            return _SmallMapConv.apply(x.to(bf16), self.weight.to(bf16), self.stride[0],
                                       self.padding[0])


def _out_side(side: int, size: int, stride: int, padding: int) -> int:
    """The output side of a convolution over `side` pixels (kernel `size`, no dilation)."""
    return (side + 2 * padding - size) // stride + 1


def _own_backward_pays(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
                       ) -> bool:
    """Whether this is a bf16 training call on CPU where the matrix products beat oneDNN's
    backward (measured on 2 cores of a CPU with AMX-BF16; CPUs without native bf16 keep
    oneDNN's): output maps of 16 pixels or fewer with 64 input channels or more; for a 1x1
    convolution also maps of 4 pixels or fewer, and of 49 or fewer where the layer narrows the
    channels or strides."""
    if not (OWN_CONV_BACKWARD and NATIVE_BF16_CPU and x.device.type == "cpu" and x.dim() == 4
            and torch.is_grad_enabled() and x.requires_grad and weight.requires_grad):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype != torch.bfloat16:
        return False
    size = weight.shape[2]
    pixels = _out_side(x.shape[2], size, stride, padding) * \
        _out_side(x.shape[3], size, stride, padding)
    pays = pixels <= 16 and weight.shape[1] >= 64
    if size == 1:
        narrows = weight.shape[1] > weight.shape[0]
        pays = pays or pixels <= 4 or (pixels <= 49 and (narrows or stride > 1))
    # both in the (N, H, W, C) order the matrix products read and write
    return pays and x.is_contiguous(memory_format=torch.channels_last) and \
        weight.permute(0, 2, 3, 1).is_contiguous()


# fp32 training on CPUs without AVX-512: convolutions whose output has at most this many
# pixels are matrix products (tiny_map_conv), a 1x1 one over its pixels' rows (strided: 16),
# a larger kernel of stride 1 against a dense weight over whole images
PRODUCT_MAX_PIXELS = 4
STRIDED_ROWS_MAX_PIXELS = 16


def _products_pay(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    """Whether this is an fp32 training call on a CPU without AVX-512 where tiny_map_conv beats
    oneDNN (measured on 2 cores of an AMD EPYC with AVX2, benchmarks/conv_backward.py
    --precision fp32, and by A/B of whole training steps): outputs of PRODUCT_MAX_PIXELS or
    fewer from a 1x1 convolution or a stride-1 larger one, and of STRIDED_ROWS_MAX_PIXELS or
    fewer from a strided 1x1 one. Slower as products: 1x1 ones of stride 1 on 4x4 maps (in
    the step), on 7x7 maps, a 3x3 one on 4x4 maps (twice as long), a strided one 4x4 -> 2x2
    (most of their dense weights are zeros). Under torch.compile inductor lowers the
    convolution itself."""
    if not (OWN_CONV_BACKWARD and not norms.WIDE_VECTORS and x.device.type == "cpu"
            and x.dim() == 4 and x.dtype == torch.float32 and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return False
    size = weight.shape[2]
    pixels = _out_side(x.shape[2], size, stride, padding) * \
        _out_side(x.shape[3], size, stride, padding)
    rows = _over_rows(size, padding)
    most = STRIDED_ROWS_MAX_PIXELS if rows and stride > 1 else \
        PRODUCT_MAX_PIXELS if rows or stride == 1 else 0
    return 0 < pixels <= most and x.is_contiguous(memory_format=torch.channels_last)


def _over_rows(size: int, padding: int) -> bool:
    """Whether tiny_map_conv computes this convolution over pixel rows (a 1x1 one without
    padding) rather than against a dense weight."""
    return size == 1 and padding == 0


@functools.lru_cache(maxsize=None)
def _tap_of_pixel_pair(height: int, width: int, size: int, stride: int, padding: int
                       ) -> torch.Tensor:
    """(H*W, Ho*Wo) int64: which of the size*size taps links input pixel (a, b) to output
    pixel (i, j) of a convolution, or size*size where none does (the padding's zeros)."""
    ho, wo = _out_side(height, size, stride, padding), _out_side(width, size, stride, padding)
    ky = torch.arange(height).view(-1, 1, 1, 1) - stride * torch.arange(ho).view(1, 1, -1, 1) \
        + padding
    kx = torch.arange(width).view(1, -1, 1, 1) - stride * torch.arange(wo).view(1, 1, 1, -1) \
        + padding
    inside = (ky >= 0) & (ky < size) & (kx >= 0) & (kx < size)
    return torch.where(inside, ky * size + kx, size * size).reshape(height * width, ho * wo)


def tiny_map_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
                  ) -> torch.Tensor:
    """conv2d(x, weight, stride=stride, padding=padding) of a channels-last x (N, Ci, H, W) as
    one matrix product, differentiated by autograd (its backward: two more products): for a
    1x1 convolution without padding over the (N*Ho*Wo, Ci) rows of the pixels it reads;
    otherwise over whole
    images, (N, H*W*Ci) against a dense (H*W*Ci, Ho*Wo*Co) weight whose block for each pair of
    input and output pixels is the tap that links them (zero where none does), which is small
    only for tiny maps. The output is channels-last, as the native one; the same sums in
    another order."""
    n, ci, h, w = x.shape
    co, _, size, _ = weight.shape
    if _over_rows(size, padding):
        seen = x[:, :, ::stride, ::stride] if stride > 1 else x
        ho, wo = seen.shape[2], seen.shape[3]
        y = seen.permute(0, 2, 3, 1).reshape(-1, ci) @ weight.reshape(co, ci).t()
    else:
        tap = _tap_of_pixel_pair(h, w, size, stride, padding)
        ho, wo = _out_side(h, size, stride, padding), _out_side(w, size, stride, padding)
        taps = torch.cat([weight.permute(2, 3, 1, 0).reshape(size * size, ci, co),
                          weight.new_zeros(1, ci, co)])
        dense = taps[tap].permute(0, 2, 1, 3).reshape(h * w * ci, ho * wo * co)
        y = x.permute(0, 2, 3, 1).reshape(n, h * w * ci) @ dense
    return y.view(n, ho, wo, co).permute(0, 3, 1, 2)


@torch.library.custom_op("fastclr::small_map_conv_backward", mutates_args=())
def _small_map_conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                             stride: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dweight) of y = conv2d(x, weight, stride, padding): grad (N, Co, Ho, Wo), x
    (N, Ci, H, W), both channels-last, weight laid out (Co, k, k, Ci). An op of its own, so that
    torch.compile calls it as it is rather than lowering the matrix products itself (inductor's
    CPU lowering of them is slower than its convolution)."""
    n, ci, h, w = x.shape
    co, _, k, _ = weight.shape
    ho, wo = grad.shape[2], grad.shape[3]
    g2 = grad.permute(0, 2, 3, 1).reshape(-1, co)  # (N*Ho*Wo, Co), a view when channels-last
    padded = F.pad(x, (padding,) * 4) if padding else x
    # (N, H + 2p, W + 2p, Ci), a view (pad keeps the channels-last layout: no copy here)
    pixels = padded.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    sn, sh, sw, _ = pixels.stride()
    # (N*Ho*Wo, k*k*Ci): the k x k window each output pixel reads (a view for 1x1, stride 1)
    windows = pixels.as_strided((n, ho, wo, k, k, ci), (sn, stride * sh, stride * sw, sh, sw, 1)
                                ).reshape(-1, k * k * ci)
    grad_w = (g2.t() @ windows).as_strided(weight.shape, weight.stride())
    if k > 1:  # oneDNN's input gradient is fast; its weight gradient is the slow part
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [stride, stride], [padding, padding], [1, 1], False, [0, 0],
            1, [True, False, False])[0]
        return grad_x.contiguous(memory_format=torch.channels_last), grad_w
    flat_weight = weight.permute(0, 2, 3, 1).reshape(co, ci)  # a view, see the gate
    grad_seen = (g2 @ flat_weight).view(n, ho, wo, ci)  # (N, Ho, Wo, Ci)
    if stride > 1:
        grad_x = x.new_zeros(n, h, w, ci)  # unread pixels: no gradient
        grad_x[:, ::stride, ::stride] = grad_seen
        grad_seen = grad_x
    return grad_seen.permute(0, 3, 1, 2), grad_w


@_small_map_conv_backward.register_fake
def _(grad, x, weight, stride, padding):
    n, ci, h, w = x.shape
    grad_x = grad.new_empty((n, h, w, ci)).permute(0, 3, 1, 2)
    return grad_x, grad.new_empty_strided(weight.shape, weight.stride())


@register_flop_formula(torch.ops.fastclr.small_map_conv_backward)
def _small_map_conv_backward_flops(grad_shape, x_shape, weight_shape, stride, padding,
                                   out_shape=None, **kwargs) -> int:
    """Two (N*Ho*Wo) x Co x (k*k*Ci) products, what torch.utils.flop_counter counts for the
    native backward (MFU figures)."""
    n, co, ho, wo = grad_shape
    _, ci, kh, kw = weight_shape
    return 2 * 2 * n * ho * wo * co * ci * kh * kw


class _SmallMapConv(torch.autograd.Function):
    """conv2d(x, weight, stride, padding) with the native forward and _small_map_conv_backward."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, stride=stride, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return *_small_map_conv_backward(grad, x, weight, ctx.stride, ctx.padding), None, None


def small_map_convolutions(module: nn.Module) -> nn.Module:
    """Make every plain square nn.Conv2d in `module` with "same" padding ((k - 1) / 2: the
    ResNets' 1x1 and 3x3 ones) a SmallMapConv2d, in place: the class changes, the parameters
    are the same objects (no new draws from the RNG)."""
    for m in module.modules():
        if type(m) is nn.Conv2d and _plain_square(m) and m.kernel_size[0] % 2 \
                and m.padding[0] == (m.kernel_size[0] - 1) // 2:
            m.__class__ = SmallMapConv2d
    return module


def _plain_square(m: nn.Conv2d) -> bool:
    """A convolution the matrix-product backward computes: square kernel, stride and zero
    padding, no dilation, groups or bias."""
    return (m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1]
            and m.padding_mode == "zeros" and m.dilation == (1, 1) and m.groups == 1
            and m.bias is None)


class ResNet(nn.Module):
    """ResNet backbone: normalised images (N, C, H, W) -> pooled features (N, feat_dim).

    He et al. (2016) with torchvision's blocks; `width` multiplies every layer's channels
    (SimCLR section 4: "unsupervised learning benefits more from bigger models").
    """

    def __init__(self, block: type, layers: tuple[int, int, int, int], width: float = 1.0,
                 stem: str = "small", in_channels: int = 3, norm: str = "batch",
                 zero_init_residual: bool = True):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
        planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
        self._norm = norm_factory(norm)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            stride = 2 if stem == "small-s2" else 1
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = self._norm(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = planes[0]
        self.layer1 = self._make_layer(block, planes[0], layers[0], 1)
        self.layer2 = self._make_layer(block, planes[1], layers[1], 2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], 2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = planes[3] * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as identity, as in SimCLR's official ResNet
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else \
                    m.bn2 if isinstance(m, BasicBlock) else None
                if getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)
        if getattr(NORMS.get(norm), "standardize_weights", False):
            standardize_convolutions(self)
        small_map_convolutions(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                self._norm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=self._norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=self._norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # (N, feat_dim)


def resnet18(spec: EncoderSpec) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), spec.width, spec.stem, spec.in_channels, spec.norm)


def resnet34(spec: EncoderSpec) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), spec.width, spec.stem, spec.in_channels, spec.norm)


def resnet50(spec: EncoderSpec) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), spec.width, spec.stem, spec.in_channels, spec.norm)


class Encoder(nn.Module):
    """f: images (N, C, H, W) in [0, 1] -> h (N, feat_dim): normalisation, then the backbone.

    `spec` rebuilds it (`build_encoder(encoder.spec)` is a fresh one of the same shape).
    """

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.backbone = BACKBONES.get(spec.arch)(spec)
        self.feat_dim = self.backbone.feat_dim
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


class Scale(nn.Module):
    """A learned per-feature scale (the gamma of a batch norm that has no beta)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def _output_layer(spec: HeadSpec, in_dim: int) -> list[nn.Module]:
    """The head's last layer, to z. out_norm "none": Linear with a bias (fastclr's default);
    "batch": the official code's (model_util.py linear_layer with use_bias=False,
    use_bn=True): Linear without a bias, then batch norm with a learned scale and no shift
    (TF's center=False). The scale is a separate module so that the BN conversions (global,
    grouped) see a plain affine-free BatchNorm1d."""
    if spec.out_norm == "none":
        return [nn.Linear(in_dim, spec.out_dim)]
    if spec.out_norm == "batch":
        return [nn.Linear(in_dim, spec.out_dim, bias=False),
                nn.BatchNorm1d(spec.out_dim, affine=False), Scale(spec.out_dim)]
    raise ValueError(f"unknown head output norm {spec.out_norm!r}; known: none, batch")


def nonlinear_head(spec: HeadSpec, in_dim: int) -> nn.Module:
    """The paper's MLP: (Linear-BN-ReLU) x (layers - 1), then Linear (SimCLRv2: layers = 3);
    with out_norm "batch" the last Linear loses its bias and gains a BN, as in the official
    code."""
    hidden = spec.hidden or in_dim
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(spec.layers - 1):
        # a bias is redundant before a norm layer that shifts
        layers += [nn.Linear(dim, hidden, bias=spec.norm == "none"),
                   NORMS.get(spec.norm)(hidden, 1), nn.ReLU(inplace=True)]
        dim = hidden
    layers += _output_layer(spec, dim)
    return nn.Sequential(*layers)


def linear_head(spec: HeadSpec, in_dim: int) -> nn.Module:
    """Figure 8's linear head; with out_norm "batch", Linear without bias then BN, as the
    official code's 'linear' head."""
    layers = _output_layer(spec, in_dim)
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def identity_head(spec: HeadSpec, in_dim: int) -> nn.Module:
    return nn.Identity()


class ProjectionHead(nn.Module):
    """g: h -> z, where the contrastive loss is applied (SimCLR section 4.2).

    The paper finds nonlinear > linear (+3%) > none (>10%), and h better than z downstream.
    """

    def __init__(self, spec: HeadSpec, in_dim: int):
        super().__init__()
        self.spec = spec
        self.net = HEADS.get(spec.kind)(spec, in_dim)
        self.out_dim = in_dim if spec.kind == "none" else spec.out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    """f and g together: images -> (h, z). After pretraining, g is thrown away."""

    def __init__(self, encoder: Encoder, head: ProjectionHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.encoder.spec, self.head.spec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


def build_encoder(spec: EncoderSpec) -> Encoder:
    return Encoder(spec)


def build_model(spec: ModelSpec) -> SimCLR:
    encoder = build_encoder(spec.encoder)
    return SimCLR(encoder, ProjectionHead(spec.head, encoder.feat_dim))


def channels_last_ok(model: nn.Module, device: torch.device) -> bool:
    """Whether to run `model` in channels_last memory format on `device`.

    It is faster on GPUs and, measured here, ~1.4x faster on an AVX2 CPU too. But torch 2.14's
    CPU backward of a 1x1 stride-2 convolution with 2 to 7 input channels in channels_last
    corrupts memory (segfaults at one thread, reproduced in isolation), so models that narrow
    (width < 0.125) stay contiguous on CPU.
    """
    if torch.device(device).type != "cpu":
        return True
    return all(m.in_channels >= 8 for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
