"""Normalisation variants (issue 14): each builds, trains a step, exports and loads; batch norm
over groups of the batch is plain batch norm for one group."""

import pytest
import torch

from fastclr.checkpoint import export_encoder, load_encoder
from fastclr.models import build_model
from fastclr.norms import GroupedBatchNorm, StandardizedConv2d, convert_grouped_batchnorm
from fastclr.spec import EncoderSpec, HeadSpec, ModelSpec


def spec(norm="batch", head_norm="batch"):
    return ModelSpec(EncoderSpec("resnet18", 0.125, "small-s2", 1, (0.3,), (0.3,), norm),
                     HeadSpec(out_dim=16, norm=head_norm))


@pytest.mark.parametrize("norm", ["layer", "group", "none"])
def test_each_norm_trains_exports_and_loads(tmp_path, norm):
    torch.manual_seed(0)
    model = build_model(spec(norm, norm))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds and "BatchNorm1d" not in kinds
    assert ("StandardizedConv2d" in kinds) == (norm == "group")
    h, z = model(torch.rand(8, 1, 28, 28))
    z.pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    export_encoder(model.encoder, tmp_path / "e.safetensors", {"step": 1})
    loaded = load_encoder(tmp_path / "e.safetensors")
    model.encoder.eval()
    x = torch.rand(4, 1, 28, 28)
    assert loaded.spec.norm == norm
    torch.testing.assert_close(loaded(x), model.encoder(x), rtol=0, atol=0)


def test_weight_standardisation():
    conv = StandardizedConv2d(2, 3, 3, bias=False)
    x = torch.rand(1, 2, 5, 5)
    w = conv.weight
    ws = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True,
                                                        unbiased=False) + 1e-5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, ws))


def test_one_group_is_plain_batch_norm_bit_for_bit():
    torch.manual_seed(0)
    plain = build_model(spec())
    grouped = convert_grouped_batchnorm(build_model(spec()), 1)
    grouped.load_state_dict(plain.state_dict())
    assert any(isinstance(m, GroupedBatchNorm) for m in grouped.modules())
    x = torch.rand(16, 1, 28, 28)
    for a, b in zip(plain(x), grouped(x)):
        assert torch.equal(a, b)
    for (k, a), b in zip(plain.state_dict().items(), grouped.state_dict().values()):
        assert torch.equal(a, b), k


def test_groups_hold_both_views_of_their_images():
    bn = GroupedBatchNorm(1, 2, affine=False)
    # 4 images; rows i and n + i are the two views of image i
    x = torch.tensor([0.0, 0.0, 10.0, 10.0, 2.0, 2.0, 12.0, 12.0]).view(8, 1)
    y = bn(x).flatten()
    # group 0: images 0, 1 (values 0, 0, 2, 2, mean 1); group 1: images 2, 3 (mean 11)
    assert torch.allclose(y, torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
                          atol=1e-4)
    assert bn.running_mean.item() == pytest.approx(0.1 * 1.0)  # group 0's mean, momentum 0.1


@pytest.mark.parametrize("shape, memory_format", [((48, 5, 6, 6), torch.channels_last),
                                                   ((48, 7), torch.contiguous_format)])
def test_grouped_batch_norm_is_plain_batch_norm_on_each_group(shape, memory_format):
    """Output, input gradient and running statistics against plain batch norm run on each
    group's views (both views of its images) separately, as G devices would."""
    torch.manual_seed(0)
    G, C = 4, shape[1]
    x = (torch.randn(shape) * 3 + 1).contiguous(memory_format=memory_format)
    bn = GroupedBatchNorm(C, G)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    plain = [torch.nn.BatchNorm1d(C) if len(shape) == 2 else torch.nn.BatchNorm2d(C)
             for _ in range(G)]
    for p in plain:
        p.load_state_dict(bn.state_dict())
    xg, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = bn(xg)
    n, m = shape[0] // 2, shape[0] // (2 * G)
    rows = [torch.cat([torch.arange(g * m, (g + 1) * m), n + torch.arange(g * m, (g + 1) * m)])
            for g in range(G)]
    ref = torch.empty_like(y)
    for g, p in enumerate(plain):
        ref[rows[g]] = p(xp[rows[g]])
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(xg.grad, xp.grad)
    assert y.is_contiguous(memory_format=memory_format)
    for k, v in bn.state_dict().items():  # group 0's statistics
        torch.testing.assert_close(v, plain[0].state_dict()[k], msg=k)


def test_group_count_keeps_four_channels_per_group_and_wu_and_he_32_where_wide():
    from fastclr.norms import group_count
    assert [group_count(c) for c in (1, 3, 8, 16, 24, 32, 64, 128, 256, 2048)] == \
        [1, 1, 2, 4, 6, 8, 16, 32, 32, 32]
    assert all(c % group_count(c) == 0 and c // group_count(c) >= min(c, 4)
               for c in range(1, 300))
