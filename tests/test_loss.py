import math

import pytest
import torch
import torch.nn.functional as F

from fastclr.loss import nt_xent


def paper_loss(z1, z2, tau):
    """SimCLR eq. (1), term by term: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t),
    averaged over all 2N ordered positive pairs (both directions)."""
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sim = [F.cosine_similarity(z[i], z[k], dim=0).item() for k in range(n2)]
        denom = sum(math.exp(sim[k] / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim[j] / tau) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (3, 128, 0.07)])
def test_matches_the_papers_formula(n, d, tau):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(paper_loss(z1, z2, tau), rel=1e-5)


@pytest.mark.parametrize("n,tau", [(2, 0.5), (4, 0.1), (16, 0.5)])
def test_closed_form_identical_orthogonal_views(n, tau):
    # both views equal, images orthogonal: positive similarity 1, the 2N-2 negatives 0
    z = torch.eye(32)[:n] * 3.0  # scale is irrelevant after normalisation
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    # fp32 log-sum-exp: absolute error ~1e-8 even when the loss itself is ~1e-4
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_logits_are_fp32_under_autocast():
    z1, z2 = torch.randn(6, 16), torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z1.bfloat16().float(), z2.bfloat16().float(),
                                                0.5).item(), rel=1e-6)


def test_gradient_flows_to_both_views():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    nt_xent(z1, z2, 0.5).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))


# ---- the other losses of Table 2 / Table 4 / Table 5, each against a plain loop -----------


def _views(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def _plain_similarities(z1, z2, normalize):
    z = torch.cat([z1, z2]).double()
    if normalize:
        z = z / z.norm(dim=1, keepdim=True)
    return z @ z.T


def _negatives_of(i, n):
    """The other view of every other image (the paper's one-view negatives)."""
    other = range(n, 2 * n) if i < n else range(n)
    return [k for k in other if k != (i + n) % (2 * n)]


def _semi_hard(sim, i, p, negs):
    below = [k for k in negs if sim[i][k] < sim[i][p]]
    if below:
        return max(below, key=lambda k: sim[i][k])
    return min(negs, key=lambda k: sim[i][k])


def plain_logistic(z1, z2, tau, normalize=True, mining=False):
    sim, n = _plain_similarities(z1, z2, normalize).tolist(), len(z1)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        negs = _negatives_of(i, n)
        log_sig = lambda x: -math.log1p(math.exp(-x)) if x > -30 else x  # noqa: E731
        attract = -log_sig(sim[i][p] / tau)
        if mining:
            repel = -log_sig(-sim[i][_semi_hard(sim, i, p, negs)] / tau)
        else:
            repel = sum(-log_sig(-sim[i][k] / tau) for k in negs) / len(negs)
        total += attract + repel
    return total / (2 * n)


def plain_triplet(z1, z2, margin, normalize=True, mining=False):
    sim, n = _plain_similarities(z1, z2, normalize).tolist(), len(z1)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        negs = _negatives_of(i, n)
        hinge = lambda k: max(sim[i][k] - sim[i][p] + margin, 0.0)  # noqa: E731
        total += hinge(_semi_hard(sim, i, p, negs)) if mining else \
            sum(hinge(k) for k in negs) / len(negs)
    return total / (2 * n)


CASES = [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (6, 32, 0.2)]


@pytest.mark.parametrize("n,d,tau", CASES)
@pytest.mark.parametrize("mining", [False, True])
def test_nt_logistic_matches_its_formula(n, d, tau, mining):
    from fastclr.loss import nt_logistic
    z1, z2 = _views(n, d, n + d)
    ours = nt_logistic(z1, z2, tau, semi_hard_negatives=mining).item()
    assert ours == pytest.approx(plain_logistic(z1, z2, tau, mining=mining), rel=1e-5)


@pytest.mark.parametrize("n,d,margin", [(2, 3, 0.5), (5, 8, 0.2), (8, 16, 1.0), (6, 32, 0.4)])
@pytest.mark.parametrize("mining", [False, True])
def test_margin_triplet_matches_its_formula(n, d, margin, mining):
    from fastclr.loss import margin_triplet
    z1, z2 = _views(n, d, n * d)
    ours = margin_triplet(z1, z2, margin, semi_hard_negatives=mining).item()
    assert ours == pytest.approx(plain_triplet(z1, z2, margin, mining=mining), rel=1e-5,
                                 abs=1e-7)


@pytest.mark.parametrize("n,d,tau", CASES)
def test_nt_xent_without_l2_normalisation_matches_its_formula(n, d, tau):
    z1, z2 = _views(n, d, 7 * n + d)
    z = torch.cat([z1, z2]).double()
    total = 0.0
    for i in range(2 * n):
        s = [(z[i] @ z[k]).item() / tau for k in range(2 * n)]
        others = [s[k] for k in range(2 * n) if k != i]
        top = max(others)
        total += -(s[(i + n) % (2 * n)] - top - math.log(sum(math.exp(x - top) for x in others)))
    ours = nt_xent(z1, z2, tau, normalize=False).item()
    assert ours == pytest.approx(total / (2 * n), rel=1e-5)


def test_semi_hard_falls_back_to_the_easiest_negative():
    from fastclr.loss import semi_hard
    sim = torch.tensor([[1.0, 0.2, 0.9, 0.5]])  # positive in column 3 (0.5)
    negatives = torch.tensor([[False, True, True, False]])
    pos = torch.tensor([0.5])
    assert semi_hard(sim, pos, negatives).tolist() == [1]  # 0.2 < 0.5: the closest below
    sim_all_harder = torch.tensor([[1.0, 0.7, 0.9, 0.5]])
    assert semi_hard(sim_all_harder, pos, negatives).tolist() == [1]  # none below: easiest


def test_build_loss_binds_only_what_a_loss_takes():
    from fastclr.loss import build_loss
    z1, z2 = _views(4, 8, 0)
    triplet = build_loss("margin-triplet", temperature=0.1, margin=0.3)
    from fastclr.loss import margin_triplet
    assert triplet(z1, z2).item() == margin_triplet(z1, z2, 0.3).item()
    assert build_loss("nt-xent", 0.2)(z1, z2).item() == nt_xent(z1, z2, 0.2).item()
