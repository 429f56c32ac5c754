import copy
import math

import pytest
import torch
import torch.nn as nn

from fastclr.optim import LARS, build_optimizer, lr_at, param_groups, peak_lr


def test_peak_lr_rules():
    assert peak_lr("linear", 4096) == pytest.approx(4.8)  # the paper's 0.3 x 4096/256
    assert peak_lr("sqrt", 256) == pytest.approx(0.075 * 16)
    assert peak_lr("linear", 512, base_lr=1.0) == pytest.approx(2.0)
    assert peak_lr("constant", 999, base_lr=0.01) == 0.01


def test_lr_schedule_warmup_and_cosine():
    total, warmup, peak = 1000, 100, 2.0
    assert lr_at(0, total, warmup, peak) == 0.0
    assert lr_at(50, total, warmup, peak) == pytest.approx(1.0)
    assert lr_at(warmup, total, warmup, peak) == pytest.approx(peak)  # end of warmup
    assert lr_at(550, total, warmup, peak) == pytest.approx(1.0)  # halfway down the cosine
    assert lr_at(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    last = lr_at(total - 1, total, warmup, peak)  # the last step taken
    assert 0 < last < peak * 1e-4
    lrs = [lr_at(s, total, warmup, peak) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warmup


def test_no_warmup():
    assert lr_at(0, 10, 0, 1.0) == pytest.approx(1.0)


def test_param_groups_exclude_bias_and_bn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, plain = param_groups(model, 1e-6)
    assert decay["lars"] and not plain["lars"]
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-6
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(model[0].weight), id(model[3].weight)}
    assert ids(plain["params"]) == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                    id(model[3].bias)}


def test_lars_trust_ratio_and_exclusions():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    w.grad = torch.tensor([[0.6, 0.8]])
    b.grad = torch.tensor([0.5, 0.5])
    lr, eta, wd = 0.1, 0.001, 0.01
    opt = LARS([{"params": [w], "weight_decay": wd, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=lr, momentum=0.9, trust_coefficient=eta)
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt.step()
    g = torch.tensor([[0.6, 0.8]]) + wd * w0  # weight decay joins the gradient first
    trust = eta * 5.0 / g.norm()
    assert torch.allclose(w.detach(), w0 - lr * trust * g, rtol=1e-6)
    assert torch.allclose(b.detach(), b0 - lr * torch.tensor([0.5, 0.5]))  # plain SGD step
    # second step: momentum carries the first update
    opt.step()
    g2 = torch.tensor([[0.6, 0.8]]) + wd * w.detach()
    v1 = lr * trust * g
    before = w0 - v1
    trust2 = eta * before.norm() / g2.norm()
    assert torch.allclose(w.detach(), before - (0.9 * v1 + lr * trust2 * g2), rtol=1e-5)


def test_lars_zero_norms_use_trust_one():
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars": True}], lr=0.5, momentum=0.0)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.5))


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_skipped_step_changes_nothing(name):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = build_optimizer(name, model, 1e-4)
    for group in opt.param_groups:
        group["lr"] = 0.1
    model(torch.randn(8, 3)).pow(2).sum().backward()
    opt.found_inf = torch.tensor(0.0)
    opt.step()  # a good step creates optimiser state
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
             for p in model.parameters()]
    model(torch.randn(8, 3)).pow(2).sum().backward()
    for p in model.parameters():
        p.grad.fill_(math.nan)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p.detach(), before)
    for p, before in zip(model.parameters(), state):
        for k, v in before.items():
            assert torch.equal(opt.state[p][k], v), (name, k)


def test_a_good_step_under_found_inf_is_the_plain_step_bit_for_bit():
    """The skip-aware path (found_inf set, as every training step sets it) selects over all
    buffers at once; when nothing is skipped it must equal the plain step exactly, for
    channels-last conv weights too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    model = model.to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    plain, guarded = (LARS(param_groups(m, 1e-4), lr=0.1, momentum=0.9) for m in (model, twin))
    for _ in range(3):
        x = torch.randn(8, 3, 6, 6)
        for m, opt in ((model, plain), (twin, guarded)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
        guarded.found_inf = torch.tensor(0.0)
        plain.step()
        guarded.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b)
            assert torch.equal(plain.state[a]["momentum_buffer"],
                               guarded.state[b]["momentum_buffer"])
            assert guarded.state[b]["momentum_buffer"].stride() == b.stride()


class _ForeachLists(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, for every foreach op given two or more tensor lists, whether the lists agree
    index by index in shape and strides: what a GPU's foreach kernels need for their one-launch
    path (otherwise they launch once per tensor)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        lists = [a for a in args if isinstance(a, (list, tuple)) and a
                 and all(isinstance(t, torch.Tensor) for t in a)]
        if func.__name__.startswith("_foreach") and len(lists) >= 2:
            self.calls.append((func.__name__, all(
                len({(t.shape, t.stride()) for t in ts}) == 1 for ts in zip(*lists))))
        return func(*args, **(kwargs or {}))


def _conv_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 16, 2))
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("found_inf", [None, 0.0])
def test_lars_foreach_lists_match_in_layout_for_channels_last_weights(found_inf):
    """Parameters, gradients, momentum buffers and the pieces cut from the flat update all
    keep the parameters' strides (channels-last conv weights included), and no list of 0-d
    trust ratios multiplies a list of weights."""
    torch.manual_seed(0)
    model = _conv_model()
    opt = build_optimizer("lars", model, 1e-4)
    for group in opt.param_groups:
        group["lr"] = 0.1
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6).to(memory_format=torch.channels_last)).pow(2).sum().backward()
        opt.found_inf = None if found_inf is None else torch.tensor(found_inf)
        with _ForeachLists() as seen:
            opt.step()
    assert seen.calls and all(ok for _, ok in seen.calls), seen.calls
    for p in model.parameters():
        assert opt.state[p]["momentum_buffer"].stride() == p.stride()


def test_lars_step_is_the_per_parameter_formula_bit_for_bit():
    """The flat update against the docstring's formula, parameter by parameter, for
    channels-last weights, over a plain step, a skipped one (found_inf set) and a good one."""
    torch.manual_seed(0)
    model = _conv_model()
    groups = param_groups(model, 1e-4)
    opt = LARS(groups, lr=0.3, momentum=0.9, trust_coefficient=1e-3)
    ref = {p: torch.zeros_like(p) for p in model.parameters()}
    for step, found_inf in enumerate([None, 1.0, 0.0]):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6).to(memory_format=torch.channels_last)).pow(2).sum().backward()
        expected = {}
        for group in groups:
            for p in group["params"]:
                g = p.grad + group["weight_decay"] * p.detach()
                scaled = g * 0.3
                if group["lars"]:
                    w_norm, g_norm = p.detach().norm(), g.norm()
                    if w_norm > 0 and g_norm > 0:
                        scaled = scaled * (1e-3 * w_norm / g_norm)
                v = ref[p] * 0.9 + scaled
                expected[p] = (p.detach() - v, v) if found_inf != 1.0 else (p.detach().clone(),
                                                                            ref[p])
        opt.found_inf = None if found_inf is None else torch.tensor(found_inf)
        opt.step()
        for p, (w, v) in expected.items():
            assert torch.equal(p.detach(), w), step
            assert torch.equal(opt.state[p]["momentum_buffer"], v), step
            ref[p] = v.clone()
