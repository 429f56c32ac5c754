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


@pytest.fixture
def wide_vectors(monkeypatch):
    """The own backward over (N*H*W, C) rows is taken on AVX-512 CPUs only, the wide view
    elsewhere; the tests that use this check the first on any CPU."""
    from fastclr import norms
    monkeypatch.setattr(norms, "WIDE_VECTORS", True)


ROWS, WIDE = "_ChannelsLastBatchNormBackward", "_WideBatchNormBackward"


@pytest.mark.parametrize("avx512, channels, affine, momentum, own", [
    (True, 8, True, 0.1, ROWS), (True, 24, True, None, ROWS), (True, 12, False, 0.1, ROWS),
    (False, 8, True, 0.1, WIDE), (False, 4, True, None, WIDE), (False, 2, False, 0.1, WIDE)])
def test_own_channels_last_batch_norm_matches_native_batch_norm(monkeypatch, avx512, channels,
                                                                affine, momentum, own):
    """fastclr's BatchNorm2d computes channels-last training batch norm its own way where
    PyTorch's CPU kernels are slow (AVX-512: channel counts not a multiple of 16; elsewhere:
    fewer than 16 channels, on a wide view): output, every gradient and the running statistics
    agree with nn.BatchNorm2d over 3 training steps, an in-place ReLU after it as in a ResNet,
    then in eval."""
    from fastclr import norms
    from fastclr.norms import BatchNorm2d
    monkeypatch.setattr(norms, "WIDE_VECTORS", avx512)
    torch.manual_seed(0)
    ours = BatchNorm2d(channels, affine=affine, momentum=momentum)
    ref = torch.nn.BatchNorm2d(channels, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    exact = torch.nn.BatchNorm2d(channels, affine=affine, momentum=momentum).double()
    exact.load_state_dict(ref.state_dict())
    for step in range(3):
        # a mean far from 0 (4 standard deviations): the backward centres before it sums
        x = (torch.randn(32, channels, 7, 7) * 2 + 8).contiguous(memory_format=torch.channels_last)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        xe = x.double().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        assert type(yo.grad_fn).__name__ == own
        torch.testing.assert_close(yo, yr)
        assert yo.is_contiguous(memory_format=torch.channels_last)
        keep = yr.detach() > 0  # the ReLU's mask (float64 might cut elsewhere near 0)
        yo, yr, ye = torch.relu_(yo), torch.relu_(yr), exact(xe) * keep
        grad = torch.randn_like(yr) + yr  # correlated with the output, as a loss's would be
        yo.backward(grad)
        yr.backward(grad)
        ye.backward(grad.double())
        # sums in another order than PyTorch's, so both compared with float64: fastclr's
        # gradient off by no more than twice PyTorch's error or 2e-6 of the largest entry
        # (measured: both up to 4e-6 for the rows, the wide view's under 1e-6)
        ours_off, native_off = ((g.double() - xe.grad).abs().max() for g in (xo.grad, xr.grad))
        assert ours_off <= 2 * max(native_off, 1e-6 * xe.grad.abs().max()), (ours_off,
                                                                              native_off)
        assert xo.grad.is_contiguous(memory_format=torch.channels_last)
        if affine:
            # sums of 1,568 products in another order: fp32 rounding, relative 1e-5
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
            ours.zero_grad()
            ref.zero_grad()
            exact.zero_grad()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k], v, msg=k)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_native_batch_norm_where_its_backward_is_fast(monkeypatch, wide_vectors):
    """Multiples of 16 channels, the (N, C, H, W) layout, eval mode, bf16 and no-grad all keep
    PyTorch's own batch norm, as does everything with OWN_BACKWARD off, and CPUs without
    AVX-512."""
    from fastclr import norms
    from fastclr.norms import BatchNorm2d
    cl = torch.channels_last
    cases = [(BatchNorm2d(16), torch.randn(4, 16, 5, 5).contiguous(memory_format=cl)),
             (BatchNorm2d(8), torch.randn(4, 8, 5, 5)),
             (BatchNorm2d(8).eval(), torch.randn(4, 8, 5, 5).contiguous(memory_format=cl)),
             (BatchNorm2d(8), torch.randn(4, 8, 5, 5).contiguous(memory_format=cl).bfloat16())]
    for bn, x in cases:
        name = type(bn.to(x.dtype)(x.requires_grad_()).grad_fn).__name__
        assert name != "_ChannelsLastBatchNormBackward", (tuple(x.shape), x.dtype, bn.training)
    with torch.no_grad():
        assert BatchNorm2d(8)(torch.randn(4, 8, 5, 5).contiguous(memory_format=cl)).grad_fn \
            is None
    x = torch.randn(4, 8, 5, 5).contiguous(memory_format=cl).requires_grad_()
    assert type(BatchNorm2d(8)(x).grad_fn).__name__ == "_ChannelsLastBatchNormBackward"
    monkeypatch.setattr(norms, "WIDE_VECTORS", False)
    assert type(BatchNorm2d(8)(x).grad_fn).__name__ != "_ChannelsLastBatchNormBackward"
    monkeypatch.setattr(norms, "WIDE_VECTORS", True)
    monkeypatch.setattr(norms, "OWN_BACKWARD", False)
    assert type(BatchNorm2d(8)(x).grad_fn).__name__ != "_ChannelsLastBatchNormBackward"


def test_wide_view_only_for_few_channels_that_fill_its_rows(monkeypatch):
    """Without AVX-512 the wide view is taken for fewer than 16 channels whose count divides
    its row and whose features fill whole rows; 12 or 16 channels, features that leave a
    partial row, the (N, C, H, W) layout, eval mode and OWN_BACKWARD off keep PyTorch's."""
    from fastclr import norms
    from fastclr.norms import BatchNorm2d
    monkeypatch.setattr(norms, "WIDE_VECTORS", False)
    cl = torch.channels_last

    def name(channels, shape, fmt=cl, train=True):
        bn = BatchNorm2d(channels).train(train)
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
        return type(bn(x).grad_fn).__name__

    assert name(8, (8, 8, 5, 5)) == WIDE
    assert name(4, (16, 4, 3, 3)) == WIDE
    others = [name(12, (8, 12, 4, 4)), name(16, (8, 16, 5, 5)), name(8, (3, 8, 5, 5)),
              name(8, (8, 8, 5, 5), torch.contiguous_format), name(8, (8, 8, 5, 5), cl, False)]
    assert WIDE not in others and ROWS not in others, others
    monkeypatch.setattr(norms, "OWN_BACKWARD", False)
    assert name(8, (8, 8, 5, 5)) not in (WIDE, ROWS)
