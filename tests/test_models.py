import pytest
import torch

from fastclr.models import ProjectionHead, ResNet, build_model


@pytest.mark.parametrize("arch,width,stem,feat", [
    ("resnet18", 0.25, "small", 128), ("resnet18", 0.25, "small-s2", 128),
    ("resnet34", 0.125, "small", 64), ("resnet50", 0.125, "imagenet", 256),
])
def test_encoder_shapes(arch, width, stem, feat):
    enc = ResNet(arch, width, stem, in_channels=3)
    h = enc(torch.rand(2, 3, 32, 32))
    assert h.shape == (2, feat) and enc.feat_dim == feat


def test_small_stem_keeps_resolution():
    enc = ResNet("resnet18", 0.125, "small", in_channels=1)
    enc.eval()
    x = torch.rand(1, 1, 28, 28)
    stem = enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))
    assert stem.shape[-1] == 28  # 3x3 stride 1, no max-pool (paper appendix B.9)
    big = ResNet("resnet18", 0.125, "imagenet", in_channels=1)
    assert big.maxpool(big.relu(big.bn1(big.conv1(x)))).shape[-1] == 7


def test_heads():
    assert isinstance(ProjectionHead(64, kind="none").net, torch.nn.Identity)
    lin = ProjectionHead(64, out_dim=16, kind="linear")
    assert lin(torch.randn(4, 64)).shape == (4, 16)
    mlp = ProjectionHead(64, 32, 16, "nonlinear", num_layers=3)  # SimCLRv2-style
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "BatchNorm1d", "ReLU", "Linear",
                                                  "BatchNorm1d", "ReLU", "Linear"]
    assert mlp(torch.randn(4, 64)).shape == (4, 16)


def test_simclr_returns_h_and_z():
    model = build_model("resnet18", 0.125, "small", 1, "nonlinear", 2, None, 32)
    h, z = model(torch.rand(4, 1, 28, 28))
    assert h.shape == (4, 64) and z.shape == (4, 32)


def test_input_normalisation_is_inside_the_encoder():
    enc = ResNet("resnet18", 0.125, "small", 1, mean=[0.5], std=[0.25])
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.5]))
    assert "mean" in enc.state_dict() and "std" in enc.state_dict()


def test_narrow_models_stay_contiguous_on_cpu():
    # torch 2.14's CPU backward of a 1x1 stride-2 conv with 2-7 input channels in
    # channels_last corrupts memory; such models must not use it there
    from fastclr.models import channels_last_ok

    cpu = torch.device("cpu")
    assert not channels_last_ok(ResNet("resnet18", 0.0625, "small", 1), cpu)
    assert channels_last_ok(ResNet("resnet18", 0.125, "small", 1), cpu)
    assert channels_last_ok(ResNet("resnet18", 0.0625, "small", 1), torch.device("cuda"))
    enc = ResNet("resnet18", 0.0625, "small-s2", 1)  # trains without crashing at width 1/16
    enc(torch.rand(8, 1, 28, 28)).sum().backward()
