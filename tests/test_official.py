"""fastclr's options for the official code's choices (docs/fidelity.md), model and loss side:
each against a transcription of the official formula, and against TensorFlow's own ops where
TensorFlow is installed (the `tf` fixture skips those tests otherwise)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastclr.loss import build_loss, nt_xent
from fastclr.optim import LARS, param_groups

LARGE = 1e9  # the official loss masks self-similarities by subtracting a large number


def _views(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def official_loss(z1, z2, tau):
    """objective.py add_contrastive_loss on one replica, transcribed: the first views against
    [second views, first views], the second against [first, second], each a mean over its N
    anchors of a softmax cross-entropy, and the two added."""
    h1 = torch.nn.functional.normalize(z1.double(), dim=1)
    h2 = torch.nn.functional.normalize(z2.double(), dim=1)
    n = len(h1)
    mask = torch.eye(n, dtype=torch.float64) * LARGE
    aa, bb = h1 @ h1.T / tau - mask, h2 @ h2.T / tau - mask
    ab, ba = h1 @ h2.T / tau, h2 @ h1.T / tau
    target = torch.arange(n)  # column i of [ab, aa]: the positive
    ce = torch.nn.functional.cross_entropy
    return ce(torch.cat([ab, aa], 1), target) + ce(torch.cat([ba, bb], 1), target)


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (6, 16, 0.1), (16, 128, 1.0)])
def test_sum_directions_is_the_official_loss_and_twice_the_mean(n, d, tau):
    z1, z2 = _views(n, d, n + d)
    mean = build_loss("nt-xent", tau)(z1, z2)
    summed = build_loss("nt-xent", tau, reduction="sum-directions")(z1, z2)
    assert summed.item() == pytest.approx(official_loss(z1, z2, tau).item(), rel=1e-5)
    assert summed.item() == pytest.approx(2 * mean.item(), rel=1e-6)
    assert mean.item() == nt_xent(z1, z2, tau).item()


@pytest.mark.slow
def test_sum_directions_matches_tensorflow(tf):
    z1, z2 = _views(8, 32, 3)
    h = tf.math.l2_normalize(tf.constant(torch.cat([z1, z2]).numpy()), -1)
    h1, h2 = tf.split(h, 2, 0)
    labels = tf.one_hot(tf.range(8), 16)
    mask = tf.one_hot(tf.range(8), 8)
    tau = 0.2
    aa = tf.matmul(h1, h1, transpose_b=True) / tau - mask * LARGE
    bb = tf.matmul(h2, h2, transpose_b=True) / tau - mask * LARGE
    ab = tf.matmul(h1, h2, transpose_b=True) / tau
    ba = tf.matmul(h2, h1, transpose_b=True) / tau
    ce = tf.compat.v1.losses.softmax_cross_entropy   # the official code's loss, mean over N
    theirs = ce(labels, tf.concat([ab, aa], 1)) + ce(labels, tf.concat([ba, bb], 1))
    ours = build_loss("nt-xent", tau, reduction="sum-directions")(z1, z2)
    assert ours.item() == pytest.approx(float(theirs), rel=1e-5)


def test_every_loss_takes_the_reduction():
    z1, z2 = _views(5, 8, 1)
    for name, options in (("nt-logistic", {}), ("margin-triplet", {"margin": 0.3})):
        mean = build_loss(name, 0.5, **options)(z1, z2)
        summed = build_loss(name, 0.5, reduction="sum-directions", **options)(z1, z2)
        assert summed.item() == pytest.approx(2 * mean.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        build_loss("nt-xent", 0.5, reduction="sum")


def test_under_lars_the_scale_moves_only_the_unadapted_parameters():
    # docs/fidelity.md: twice the loss leaves a weight's step (normalised by its trust ratio)
    # as it was without weight decay, and doubles the step of biases and BN parameters
    def one_step(scale, weight_decay=0.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
        before = [p.detach().clone() for p in model.parameters()]
        opt = LARS(param_groups(model, weight_decay), lr=0.5, momentum=0.9)
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        (scale * model(x).square().mean()).backward()
        opt.step()
        return [(p.ndim, p.detach() - b) for p, b in zip(model.parameters(), before)]

    for (ndim, once), (_, twice) in zip(one_step(1.0), one_step(2.0)):
        if ndim > 1:     # LARS-adapted weights: the same step
            torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-7)
        else:            # biases and BN scale/shift: twice the step
            torch.testing.assert_close(twice, 2 * once, rtol=1e-5, atol=1e-7)
    # with weight decay, the weights' steps keep their size but turn: decay weighs half as
    # much against twice the gradient
    (_, w_once), (_, w_twice) = one_step(1.0, 0.5)[0], one_step(2.0, 0.5)[0]
    assert not torch.allclose(w_once, w_twice, rtol=1e-3)
    assert np.isclose(float(w_once.norm()), float(w_twice.norm()), rtol=1e-5)


# ---- the projection head's output layer --------------------------------------------------------

def test_official_head_has_the_official_layers():
    from fastclr.models import ProjectionHead
    from fastclr.spec import HeadSpec
    head = ProjectionHead(HeadSpec("nonlinear", out_dim=16, out_norm="batch"), 32)
    # model_util.py projection_head: nl_0 = dense (no bias) + BN (scale, shift) + relu,
    # nl_1 = dense (no bias) + BN (scale, no shift)
    assert [type(m).__name__ for m in head.net] == ["Linear", "BatchNorm1d", "ReLU", "Linear",
                                                   "BatchNorm1d", "Scale"]
    shapes = sorted(tuple(p.shape) for p in head.parameters())
    assert shapes == sorted([(32, 32), (32,), (32,), (16, 32), (16,)])
    assert head.net[3].bias is None and not head.net[4].affine
    linear = ProjectionHead(HeadSpec("linear", out_dim=16, out_norm="batch"), 32)
    assert [type(m).__name__ for m in linear.net] == ["Linear", "BatchNorm1d", "Scale"]
    # the default keeps the plain Linear, and its parameter names
    plain = ProjectionHead(HeadSpec("linear", out_dim=16), 32)
    assert isinstance(plain.net, nn.Linear) and set(plain.state_dict()) == {"net.weight",
                                                                            "net.bias"}


def test_official_head_output_is_batch_normalised_and_scaled():
    from fastclr.models import ProjectionHead
    from fastclr.spec import HeadSpec
    head = ProjectionHead(HeadSpec("nonlinear", out_dim=8, out_norm="batch"), 12)
    with torch.no_grad():
        head.net[5].weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(0))
    z = head(x)
    pre = head.net[:4](x)                                            # (16, 8) before the BN
    expected = (pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(z, expected * torch.linspace(0.5, 2.0, 8), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_official_head_matches_keras_layers(tf):
    # the official tf2/model.py LinearLayer is Dense(use_bias=False) + BatchNormalization
    # (center=False on the last layer); the same weights give the same z in training mode
    from fastclr.models import ProjectionHead
    from fastclr.spec import HeadSpec
    head = ProjectionHead(HeadSpec("nonlinear", out_dim=8, out_norm="batch"), 12)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(2))
    k = tf.keras.layers
    net = tf.keras.Sequential([
        k.Dense(12, use_bias=False), k.BatchNormalization(epsilon=1e-5), k.ReLU(),
        k.Dense(8, use_bias=False), k.BatchNormalization(epsilon=1e-5, center=False)])
    net.build((None, 12))
    lin0, bn0, _, lin1, _, scale = head.net
    net.layers[0].set_weights([lin0.weight.detach().numpy().T])
    net.layers[1].set_weights([bn0.weight.detach().numpy(), bn0.bias.detach().numpy(),
                               np.zeros(12), np.ones(12)])
    net.layers[3].set_weights([lin1.weight.detach().numpy().T])
    net.layers[4].set_weights([scale.weight.detach().numpy(), np.zeros(8), np.ones(8)])
    theirs = net(tf.constant(x.numpy()), training=True).numpy()
    np.testing.assert_allclose(head(x).detach().numpy(), theirs, rtol=1e-4, atol=1e-4)


def test_specs_saved_before_out_norm_load_with_the_old_head():
    from fastclr.spec import ModelSpec
    old = {"encoder": {"arch": "resnet18", "width": 0.125, "stem": "small", "in_channels": 1,
                       "mean": [0.0], "std": [1.0], "norm": "batch"},
           "head": {"kind": "nonlinear", "layers": 2, "hidden": None, "out_dim": 128,
                    "norm": "batch"}}
    spec = ModelSpec.from_dict(old)
    assert spec.head.out_norm == "none"
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_official_head_trains_exports_and_reloads(tmp_path):
    from fixtures import tiny_config

    from fastclr.eval.weights import load_weights
    from fastclr.train import train
    cfg = tiny_config(tmp_path / "run", head_out_norm="batch", max_steps=2, bn_groups=2)
    train(cfg)
    weights = load_weights(tmp_path / "run", device="cpu")
    assert weights.head is not None and weights.head.spec.out_norm == "batch"
    assert type(weights.head.net[-1]).__name__ == "Scale"


# ---- the preset ---------------------------------------------------------------------------------

OFFICIAL = {"head_out_norm": "batch", "color_impl": "official-v1", "color_order": "random",
            "loss_reduction": "sum-directions", "crop_sampler": "official",
            "crop_interpolation": "bicubic"}


def test_paper_official_is_the_imagenet_preset_with_the_official_choices():
    from fastclr.config import Config, load_config
    paper, official = load_config("imagenet-resnet50"), load_config("paper-official")
    differ = {k for k, v in official.to_dict().items() if v != paper.to_dict()[k]} - {"name"}
    assert differ == set(OFFICIAL)
    assert {k: getattr(official, k) for k in OFFICIAL} == OFFICIAL
    # each is an option whose default is the paper's text (or torchvision's), not the code's
    assert all(getattr(Config(), k) != v for k, v in OFFICIAL.items())
