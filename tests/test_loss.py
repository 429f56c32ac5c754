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
