import pytest
import torch

from fastclr.models import ProjectionHead, build_encoder, build_model, channels_last_ok
from fastclr.spec import EncoderSpec, HeadSpec, ModelSpec


def encoder(arch="resnet18", width=0.125, stem="small", channels=1, **kw):
    return build_encoder(EncoderSpec(arch, width, stem, channels, (0.0,) * channels,
                                     (1.0,) * channels, **kw))


@pytest.mark.parametrize("arch,width,stem,feat", [
    ("resnet18", 0.25, "small", 128), ("resnet18", 0.25, "small-s2", 128),
    ("resnet34", 0.125, "small", 64), ("resnet50", 0.125, "imagenet", 256),
])
def test_encoder_shapes(arch, width, stem, feat):
    enc = encoder(arch, width, stem, channels=3)
    h = enc(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, feat) and enc.feat_dim == feat


def test_small_stem_keeps_resolution():
    enc = encoder(stem="small").backbone
    enc.eval()
    x = torch.rand(1, 1, 28, 28)
    stem = enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))
    assert stem.shape[-1] == 28  # 3x3 stride 1, no max-pool (paper appendix B.9)
    big = encoder(stem="imagenet").backbone
    assert big.maxpool(big.relu(big.bn1(big.conv1(x)))).shape[-1] == 7


def test_heads():
    assert isinstance(ProjectionHead(HeadSpec("none"), 64).net, torch.nn.Identity)
    assert ProjectionHead(HeadSpec("none"), 64).out_dim == 64
    lin = ProjectionHead(HeadSpec("linear", out_dim=16), 64)
    assert lin(torch.randn(4, 64)).shape == (4, 16)
    mlp = ProjectionHead(HeadSpec("nonlinear", layers=3, hidden=32, out_dim=16), 64)  # v2-style
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "BatchNorm1d", "ReLU", "Linear",
                                                  "BatchNorm1d", "ReLU", "Linear"]
    assert mlp(torch.randn(4, 64)).shape == (4, 16)


def test_simclr_returns_h_and_z():
    spec = ModelSpec(EncoderSpec("resnet18", 0.125, "small", 1, (0.0,), (1.0,)),
                     HeadSpec(out_dim=32))
    model = build_model(spec)
    h, z = model(torch.rand(4, 1, 28, 28))
    assert h.shape == (4, 64) and z.shape == (4, 32)
    assert model.spec == spec


def test_input_normalisation_is_inside_the_encoder():
    enc = build_encoder(EncoderSpec("resnet18", 0.125, "small", 1, (0.5,), (0.25,)))
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.5]))
    assert "mean" in enc.state_dict() and "std" in enc.state_dict()
    x = torch.rand(2, 1, 28, 28)
    enc.eval()
    assert torch.equal(enc(x), enc.backbone((x - 0.5) / 0.25))


def test_narrow_models_stay_contiguous_on_cpu():
    # torch 2.14's CPU backward of a 1x1 stride-2 conv with 2-7 input channels in
    # channels_last corrupts memory; such models must not use it there
    cpu = torch.device("cpu")
    assert not channels_last_ok(encoder(width=0.0625), cpu)
    assert channels_last_ok(encoder(width=0.125), cpu)
    assert channels_last_ok(encoder(width=0.0625), torch.device("cuda"))
    enc = encoder(width=0.0625, stem="small-s2")  # trains without crashing at width 1/16
    enc(torch.rand(8, 1, 28, 28)).sum().backward()
