"""The encoder f, the projection head g, and SimCLR = g(f(x)), built from a ModelSpec.

An `Encoder` normalises its [0, 1] input with the data set's statistics and runs a backbone
chosen by name (fastclr.registry.BACKBONES). The ResNets are built from torchvision's own
residual blocks; what this module adds is the small-image stem (a 3x3 stride-1 conv and no
max-pool, as the paper does for CIFAR-10, appendix B.9) and a width multiplier for every layer
(the paper's 2x and 4x ResNet-50).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fastclr.norms import norm_factory, standardize_convolutions
from fastclr.registry import BACKBONES, HEADS, NORMS
from fastclr.spec import EncoderSpec, HeadSpec, ModelSpec

STEMS = ("small", "small-s2", "imagenet")


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
