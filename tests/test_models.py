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


# ---- convolutions on small maps: bf16 backward on CPU as matrix products --------------------

CL = torch.channels_last
OWN_CONV = "_SmallMapConvBackward"


@pytest.fixture(autouse=True)
def native_bf16_cpu(monkeypatch):
    """SmallMapConv2d's own backward is taken only on CPUs with native bf16; these tests check
    it on any CPU, as if this one had it (test_small_map_conv_needs_native_bf16 checks the
    other case)."""
    from fastclr import models
    monkeypatch.setattr(models, "NATIVE_BF16_CPU", True)


def _conv_pair(cin, cout, stride, kernel=1):
    """A SmallMapConv2d and a plain nn.Conv2d holding the same weight, channels-last."""
    from fastclr.models import SmallMapConv2d
    geometry = (cin, cout, kernel, stride, (kernel - 1) // 2)
    ref = torch.nn.Conv2d(*geometry, bias=False).to(memory_format=CL)
    ours = SmallMapConv2d(*geometry, bias=False).to(memory_format=CL)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("cin,cout,side,stride,kernel", [
    (64, 16, 4, 1, 1),  # 16 pixels, 64 channels in
    (16, 64, 2, 1, 1),  # 4 pixels: the matrix products whatever the channels
    (32, 8, 7, 1, 1),  # 49 pixels and narrowing
    (16, 32, 8, 2, 1),  # the stride-2 shortcut: 4x4 of the 8x8 pixels read, the rest get 0
    (16, 32, 7, 2, 1),  # odd side: rows and columns 0, 2, 4, 6 read
    (64, 32, 4, 1, 3),  # 3x3, 16 pixels, 64 channels in: the weight gradient as a product
    (64, 64, 4, 2, 3),  # 3x3 stride 2: 4x4 -> 2x2, windows overlapping the padding
    (64, 16, 5, 2, 3),  # odd side: 5x5 -> 3x3, the last row and column read by one window
])
def test_small_map_conv_bf16_backward_is_the_native_one(cin, cout, side, stride, kernel):
    """Under CPU bf16 autocast the layer's backward is matrix products over the channels-last
    views; its output is the native convolution's, bit for bit, and its gradients are as close
    to the exact ones (float64 sums of the same bf16 values) as bf16 rounding allows, or as the
    native ones are, in the same layouts as the native backward gives. (How close the native
    weight gradient comes depends on the CPU: oneDNN without native bf16, on AVX2, is off by up
    to 2^-6.5 of the largest entry here.)"""
    torch.manual_seed(0)
    ours, ref = _conv_pair(cin, cout, stride, kernel)
    x = torch.randn(16, cin, side, side).contiguous(memory_format=CL)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yo, yr = ours(xo), ref(xr)
    assert type(yo.grad_fn).__name__ == OWN_CONV
    assert yo.dtype == yr.dtype == torch.bfloat16
    assert torch.equal(yo, yr)
    grad = torch.randn_like(yr)
    yo.backward(grad)
    yr.backward(grad)
    xe = x.to(torch.bfloat16).double().requires_grad_()
    we = ref.weight.detach().to(torch.bfloat16).double().requires_grad_()
    torch.nn.functional.conv2d(xe, we, stride=stride, padding=(kernel - 1) // 2).backward(
        grad.double())
    for a, b, exact in ((xo.grad, xr.grad, xe.grad), (ours.weight.grad, ref.weight.grad, we.grad)):
        scale = exact.abs().max().item()
        ours_off = (a.double() - exact).abs().max().item()
        native_off = (b.double() - exact).abs().max().item()
        # bf16 results (8 significant bits) of fp32 sums: relative 2^-8 of the largest entry
        assert ours_off <= max(scale * 2 ** -8, native_off), (ours_off / scale, native_off / scale)
        assert a.stride() == b.stride() and a.dtype == b.dtype
    if stride > 1 and kernel == 1:  # pixels the convolution never reads get no gradient
        unread = torch.ones(side, side, dtype=torch.bool)
        unread[::stride, ::stride] = False
        assert torch.equal(xo.grad[:, :, unread], torch.zeros_like(xo.grad[:, :, unread]))


def test_small_map_conv_weight_gradient_is_exact_in_fp32_sums():
    """The 3x3 weight gradient, as one product over the unfolded input, is the fp32 sum of
    the bf16 products rounded once: against an fp32 convolution of the same bf16 values it is
    off by at most half a bf16 unit of each entry."""
    torch.manual_seed(0)
    ours, _ = _conv_pair(64, 32, 2, 3)
    x = torch.randn(8, 64, 5, 5).to(torch.bfloat16).float().contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x.requires_grad_())
    grad = torch.randn_like(y)
    y.backward(grad)
    weight = ours.weight.detach().to(torch.bfloat16).float().requires_grad_()
    torch.nn.functional.conv2d(x.detach(), weight, stride=2, padding=1).backward(grad.float())
    exact = weight.grad
    assert ours.weight.grad.shape == exact.shape
    # bf16 keeps 8 significant bits: half a unit is 2^-9 of the entry's magnitude
    assert torch.all((ours.weight.grad - exact).abs() <= exact.abs() * 2 ** -8 + 1e-6)


def test_small_map_conv_is_native_elsewhere(monkeypatch):
    """fp32, 14x14 maps, 49-pixel maps that widen, 16-pixel ones that widen from fewer than 64
    channels, 3x3 layers with fewer than 64 channels in or on maps over 16 pixels, the (N, C, H,
    W) layout, a weight laid out otherwise, a bias, groups, dilation or non-square geometry, no
    grad and OWN_CONV_BACKWARD off all keep PyTorch's backward, not the bf16 one of matrix
    products (fp32 on small maps: test_tiny_map_conv_is_native_elsewhere)."""
    from fastclr import models
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    fp32 = torch.autocast("cpu", enabled=False)
    cases = [((64, 16, 4, 1, 1), fp32, CL), ((32, 8, 14, 1, 1), bf16, CL),
             ((8, 32, 7, 1, 1), bf16, CL), ((64, 16, 4, 1, 1), bf16, torch.contiguous_format),
             ((32, 128, 4, 1, 1), bf16, CL), ((32, 32, 2, 1, 3), bf16, CL),
             ((64, 64, 7, 1, 3), bf16, CL), ((64, 64, 4, 1, 3), fp32, CL)]
    for (cin, cout, side, stride, kernel), amp, fmt in cases:
        ours, _ = _conv_pair(cin, cout, stride, kernel)
        x = torch.randn(4, cin, side, side).contiguous(memory_format=fmt).requires_grad_()
        with amp:
            assert type(ours(x).grad_fn).__name__ != OWN_CONV, (cin, cout, side, kernel, fmt)
    ours, ref = _conv_pair(64, 16, 1)
    x = torch.randn(4, 64, 4, 4).contiguous(memory_format=CL).requires_grad_()
    odd, _ = _conv_pair(64, 16, 1)  # a weight stored in another order than (Co, Ci)
    odd.weight = torch.nn.Parameter(torch.randn(64, 16, 1, 1).transpose(0, 1))
    wide, _ = _conv_pair(64, 64, 1, 3)  # a 3x3 weight in (Co, Ci, k, k) order, not (Co, k, k, Ci)
    wide.weight = torch.nn.Parameter(wide.weight.detach().contiguous())
    # what the matrix products do not compute: a bias, groups, dilation, non-square geometry
    others = [models.SmallMapConv2d(64, 16, 1, bias=True),
              models.SmallMapConv2d(64, 16, 1, groups=2, bias=False),
              models.SmallMapConv2d(64, 16, 3, padding=2, dilation=2, bias=False),
              models.SmallMapConv2d(64, 16, 3, stride=(1, 2), padding=1, bias=False)]
    with bf16:
        assert type(odd(x).grad_fn).__name__ != OWN_CONV
        assert type(wide(x).grad_fn).__name__ != OWN_CONV
        for layer in others:
            layer = layer.to(memory_format=CL)
            assert type(layer(x).grad_fn).__name__ != OWN_CONV, layer
        with torch.no_grad():
            assert ours(x).grad_fn is None
        assert type(ours(x).grad_fn).__name__ == OWN_CONV
        monkeypatch.setattr(models, "OWN_CONV_BACKWARD", False)
        assert type(ours(x).grad_fn).__name__ != OWN_CONV


def test_small_map_conv_needs_native_bf16(monkeypatch):
    """On a CPU without native bf16 (AVX2: bf16 emulated, where the matrix products were
    measured slower) the layer keeps PyTorch's convolution."""
    from fastclr import models
    ours, _ = _conv_pair(64, 16, 1)
    x = torch.randn(4, 64, 4, 4).contiguous(memory_format=CL).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(ours(x).grad_fn).__name__ == OWN_CONV
        monkeypatch.setattr(models, "NATIVE_BF16_CPU", False)
        assert type(ours(x).grad_fn).__name__ != OWN_CONV
    assert models._native_bf16_cpu() == (torch.cpu._is_amx_tile_supported()
                                         or torch.cpu._is_avx512_bf16_supported())


def test_resnets_use_small_map_convolutions_with_the_same_initial_weights():
    """Every convolution of a ResNet is a SmallMapConv2d (its 1x1 and 3x3 ones, the stem's
    too); the change of class draws nothing from the RNG, so the initial weights are what
    plain convolutions would get."""
    from fastclr import models
    from fastclr.models import SmallMapConv2d
    torch.manual_seed(0)
    enc = encoder("resnet50")
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    ones = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(ones) == 36 and len(convs) == 53
    assert all(type(m) is SmallMapConv2d for m in convs)
    state = enc.state_dict()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "small_map_convolutions", lambda module: module)
        torch.manual_seed(0)
        plain = encoder("resnet50")
    assert not any(type(m) is SmallMapConv2d for m in plain.modules())
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("kernel", [1, 3])
def test_small_map_conv_compiled_calls_its_own_backward(kernel):
    """torch.compile keeps the backward an opaque op (fastclr::small_map_conv_backward, run
    as it is) and its gradients agree with eager ones."""
    torch.manual_seed(0)
    ours, _ = _conv_pair(64, 8, 1, kernel)
    x = torch.randn(8, 64, 4, 4).contiguous(memory_format=CL)
    grads = []
    for fn in (ours, torch.compile(ours)):
        xi = x.clone().requires_grad_()
        ours.weight.grad = None
        with torch.profiler.profile() as prof:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = fn(xi)
            y.float().square().sum().backward()
        assert "fastclr::small_map_conv_backward" in {e.name for e in prof.events()}
        grads.append((xi.grad, ours.weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=2 ** -7, atol=1e-3)


# ---- fp32 on tiny maps: the whole convolution as matrix products --------------------------


@pytest.fixture
def without_avx512(monkeypatch):
    """The tiny-map products are taken on CPUs without AVX-512; these tests run them on any."""
    from fastclr import norms
    monkeypatch.setattr(norms, "WIDE_VECTORS", False)


@pytest.mark.parametrize("cin,cout,size,stride,kernel", [
    (64, 32, (2, 2), 1, 1),  # 1x1 on the last stage's 2x2 maps
    (16, 32, (7, 7), 2, 1),  # the stride-2 shortcut, 7x7 -> 4x4
    (32, 64, (4, 4), 2, 1),  # the stride-2 shortcut, 4x4 -> 2x2: the unread pixels get 0
    (16, 8, (3, 3), 2, 1),  # odd side, 3x3 -> 2x2: rows and columns 0 and 2 read
    (64, 64, (2, 2), 1, 3),  # 3x3 on 2x2: each output pixel reads all four, through 4 taps
    (8, 16, (1, 1), 1, 3),  # 3x3 on one pixel: the centre tap alone
    (16, 8, (2, 1), 1, 3),  # a map that is not square
])
def test_tiny_map_conv_fp32_is_the_native_one(without_avx512, cin, cout, size, stride, kernel):
    """In fp32 training on small outputs (4 pixels or fewer, a strided 1x1 16 or fewer) the
    layer is matrix products; its
    output and gradients are within twice the native ones' distance of float64's (or 1e-6 of
    the largest entry), in the native layouts (channels-last: the next layer's backward reads
    them so)."""
    torch.manual_seed(0)
    ours, ref = _conv_pair(cin, cout, stride, kernel)
    x = torch.randn(16, cin, *size).contiguous(memory_format=CL)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = ours(xo), ref(xr)
    assert type(yr.grad_fn).__name__ == "ConvolutionBackward0"
    assert type(yo.grad_fn).__name__ != "ConvolutionBackward0"
    assert yo.shape == yr.shape and yo.stride() == yr.stride()
    grad = torch.randn_like(yr)
    yo.backward(grad)
    yr.backward(grad)
    xe = x.double().requires_grad_()
    we = ref.weight.detach().double().requires_grad_()
    ye = torch.nn.functional.conv2d(xe, we, stride=stride, padding=(kernel - 1) // 2)
    ye.backward(grad.double())
    for a, b, exact in ((yo, yr, ye), (xo.grad, xr.grad, xe.grad),
                        (ours.weight.grad, ref.weight.grad, we.grad)):
        scale = exact.abs().max().item()
        ours_off = (a.detach().double() - exact).abs().max().item()
        native_off = (b.detach().double() - exact).abs().max().item()
        assert ours_off <= max(2 * native_off, 1e-6 * scale), (ours_off / scale, native_off)
        # the same layout (a stride along a dimension of size 1 says nothing)
        assert [st for st, n in zip(a.stride(), a.shape) if n > 1] == \
            [st for st, n in zip(b.stride(), b.shape) if n > 1]
    if stride > 1:  # pixels the convolution never reads get no gradient
        assert torch.equal(xo.grad[:, :, 1::2], torch.zeros_like(xo.grad[:, :, 1::2]))


def test_tiny_map_conv_of_a_padded_1x1_counts_its_padding(without_avx512):
    """A 1x1 convolution with padding (stride 1 on one pixel: a 3x3 output of 9 pixels, native;
    stride 2 on 2x2: 2x2) gives the native convolution's output, padding included."""
    from fastclr.models import SmallMapConv2d
    torch.manual_seed(0)
    for side, stride in ((1, 1), (2, 2), (1, 2)):
        layer = SmallMapConv2d(8, 16, 1, stride=stride, padding=1, bias=False)
        layer = layer.to(memory_format=CL)
        x = torch.randn(4, 8, side, side).contiguous(memory_format=CL).requires_grad_()
        y = layer(x)
        ref = torch.nn.functional.conv2d(x, layer.weight, stride=stride, padding=1)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref)


def test_tiny_map_conv_is_native_elsewhere(without_avx512, monkeypatch):
    """Outputs over 4 pixels (a strided 1x1: over 16), a strided 3x3 convolution (4x4 -> 2x2:
    its dense weight mostly zeros), bf16 autocast, no grad, the (N, C, H, W) layout,
    OWN_CONV_BACKWARD off and a CPU with AVX-512 all keep PyTorch's convolution."""
    from fastclr import models, norms

    def native(cin, cout, side, stride, kernel, fmt=CL, amp=False):
        ours, _ = _conv_pair(cin, cout, stride, kernel)
        x = torch.randn(4, cin, side, side).contiguous(memory_format=fmt).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = ours(x)
        return type(y.grad_fn).__name__ == "ConvolutionBackward0"

    monkeypatch.setattr(models, "NATIVE_BF16_CPU", False)  # bf16: the native convolution
    assert not native(64, 16, 2, 1, 1) and not native(64, 64, 2, 1, 3)
    assert native(64, 16, 3, 1, 1) and native(16, 16, 3, 1, 3)  # 9 pixels
    assert not native(64, 16, 7, 2, 1) and native(64, 16, 9, 2, 1)  # strided: 16, 25 pixels
    assert native(64, 64, 4, 2, 3)
    assert native(64, 16, 2, 1, 1, amp=True)
    assert native(64, 16, 2, 1, 1, fmt=torch.contiguous_format)
    ours, _ = _conv_pair(64, 16, 1)
    with torch.no_grad():
        assert ours(torch.randn(4, 64, 2, 2).contiguous(memory_format=CL)).grad_fn is None
    monkeypatch.setattr(models, "OWN_CONV_BACKWARD", False)
    assert native(64, 16, 2, 1, 1)
    monkeypatch.setattr(models, "OWN_CONV_BACKWARD", True)
    monkeypatch.setattr(norms, "WIDE_VECTORS", True)
    assert native(64, 16, 2, 1, 1) and native(64, 64, 2, 1, 3)


@pytest.mark.parametrize("stride,kernel", [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_small_map_conv_counts_the_flops_of_the_native_backward(stride, kernel):
    """torch.utils.flop_counter sees the matrix products (MFU figures stay right)."""
    from torch.utils.flop_counter import FlopCounterMode
    flops = []
    for layer in _conv_pair(64, 16, stride, kernel):
        side = 7 if kernel == 1 else 4
        x = torch.randn(8, 64, side, side).contiguous(memory_format=CL).requires_grad_()
        with FlopCounterMode(display=False) as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x)
            y.float().sum().backward()
        flops.append((type(y.grad_fn).__name__ == OWN_CONV, counter.get_total_flops()))
    assert flops[0][0] and not flops[1][0]
    assert flops[0][1] == flops[1][1] > 0
