"""The contrastive losses of SimCLR's Table 2: NT-Xent (the paper's, section 2.1, eq. 1),
NT-Logistic and margin triplet, by name (fastclr.registry.LOSSES).

For a batch of N images seen as 2N views, each view is an anchor; its positive is the other
view of its image. The loss is the mean over all 2N anchors, so both directions of every pair
count. With several processes the candidates are the views of every process (gathered with
gradient), so the result and its gradient equal one process holding the whole global batch.
Similarities are computed in fp32 whatever the autocast state; z is l2-normalised (cosine
similarity) unless `normalize` is off (Table 5).

`build_loss(reduction="sum-directions")` gives the official code's scale instead: its
add_contrastive_loss (objective.py) adds the mean over the first views' anchors to the mean
over the second views', exactly twice the mean over all 2N. The paper's Algorithm 1 writes the
mean. Only the scale differs, but LARS does not undo it everywhere: a weight's step is
normalised by its trust ratio (the scale changes only how much weight decay counts against
the gradient), while biases and BN parameters, which get no trust ratio, take twice the step.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process along dim 0, keeping the autograd graph.

    torch.distributed.nn's all_gather sums the incoming gradients across processes in its
    backward (a reduce-scatter), which is what makes each process's loss reach the views that
    other processes computed. A plain dist.all_gather would cut those gradients. (Public API
    since torch 1.8, on NCCL and gloo alike; the private functional collectives differ between
    releases.)

    The group is passed at each call, and the module is imported with this one, before any
    group exists: its functions' default `group=group.WORLD` is evaluated at import, so an
    import after init_process_group pins that process group in the defaults for good;
    destroy_process_group cannot free it, it is destroyed during interpreter shutdown
    instead, and gloo then sometimes aborts the finished process (SIGABRT, "terminate called
    without an active exception": about 2 in 100 two-process runs here).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather(x.contiguous(), group=dist.group.WORLD))


def _similarities(z1: torch.Tensor, z2: torch.Tensor, normalize: bool, distributed: bool):
    """(2n, 2n*G) fp32 similarities of this process's anchors with every candidate, and the
    column of each anchor's own view, its positive, and whether a column is the other view.

    Candidates are process-major: process q's views are columns q*2n ... q*2n + 2n - 1, its
    first views before its second ones (rows i and n + i are the two views of image i).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, d); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z = torch.cat([z1, z2]).float()  # (2n, d)
    if normalize:
        z = F.normalize(z, dim=1)  # unit vectors: similarities are cosines
    candidates = gather_with_grad(z) if distributed else z  # (2n*G, d)
    rank = dist.get_rank() if candidates is not z else 0
    sim = z @ candidates.T  # (2n, 2n*G)
    local = torch.arange(2 * n, device=z.device)
    own = rank * 2 * n + local
    positive = rank * 2 * n + (local + n) % (2 * n)
    column = torch.arange(sim.shape[1], device=z.device)
    other_view = (column[None, :] % (2 * n) >= n) != (local[:, None] >= n)  # (2n, 2n*G)
    return sim, own, positive, other_view


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            normalize: bool = True, distributed: bool = False) -> torch.Tensor:
    """NT-Xent: the cross-entropy of picking each anchor's positive among the other 2N - 1
    views (eq. 1): -log exp(s_ip / t) / sum_{k != i} exp(s_ik / t), averaged over anchors."""
    with torch.autocast(z1.device.type, enabled=False):
        sim, own, positive, _ = _similarities(z1, z2, normalize, distributed)
        logits = sim / temperature  # (2n, 2n*G)
        # True at each anchor's own column. Not F.one_hot: on the CPU it reads the indices'
        # min and max back to the host to check them, a sync the step must not have
        columns = torch.arange(logits.shape[1], device=logits.device)
        logits = logits.masked_fill(own[:, None] == columns, float("-inf"))
        return F.cross_entropy(logits, positive)


def _negatives(sim, own, positive, other_view):
    """Mask (2n, 2n*G) of each anchor's negatives for NT-Logistic and margin triplet: the
    other view of every other image (the paper, footnote of section 5.1: "for simplicity, we
    only consider the negatives from one augmentation view")."""
    columns = torch.arange(sim.shape[1], device=sim.device)
    return other_view & (columns != positive[:, None])  # (no index_put: it checks on the host)


def semi_hard(sim: torch.Tensor, pos: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Column (2n,) of each anchor's semi-hard negative (Schroff et al. 2015): the most similar
    negative that is still less similar than the positive; where there is none, the least
    similar negative (as TensorFlow's triplet_semihard_loss). The choice carries no gradient."""
    with torch.no_grad():
        inf = torch.tensor(float("inf"), device=sim.device)
        below = negatives & (sim < pos[:, None])
        closest = torch.where(below, sim, -inf).argmax(dim=1)
        farthest = torch.where(negatives, sim, inf).argmin(dim=1)
        return torch.where(below.any(dim=1), closest, farthest)


def nt_logistic(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
                normalize: bool = True, semi_hard_negatives: bool = False,
                distributed: bool = False) -> torch.Tensor:
    """NT-Logistic (Table 2): -log sigmoid(s_ip / t) - log sigmoid(-s_in / t). The paper writes
    it for one negative; here the negative term is averaged over an anchor's negatives (the
    other view of every other image), or taken at its semi-hard negative (Table 4)."""
    with torch.autocast(z1.device.type, enabled=False):
        sim, own, positive, other_view = _similarities(z1, z2, normalize, distributed)
        rows = torch.arange(len(sim), device=sim.device)
        pos = sim[rows, positive]  # (2n,)
        negatives = _negatives(sim, own, positive, other_view)
        attract = -F.logsigmoid(pos / temperature)
        repel = -F.logsigmoid(-sim / temperature)  # (2n, 2n*G)
        if semi_hard_negatives:
            repel = repel[rows, semi_hard(sim, pos, negatives)]
        else:
            repel = (repel * negatives).sum(1) / negatives.sum(1)
        return (attract + repel).mean()


def margin_triplet(z1: torch.Tensor, z2: torch.Tensor, margin: float = 0.5,
                   normalize: bool = True, semi_hard_negatives: bool = False,
                   distributed: bool = False) -> torch.Tensor:
    """Margin triplet (Table 2): max(s_in - s_ip + m, 0), averaged over an anchor's negatives
    (the other view of every other image), or taken at its semi-hard negative (Table 4)."""
    with torch.autocast(z1.device.type, enabled=False):
        sim, own, positive, other_view = _similarities(z1, z2, normalize, distributed)
        rows = torch.arange(len(sim), device=sim.device)
        pos = sim[rows, positive]
        negatives = _negatives(sim, own, positive, other_view)
        hinge = F.relu(sim - pos[:, None] + margin)  # (2n, 2n*G)
        if semi_hard_negatives:
            return hinge[rows, semi_hard(sim, pos, negatives)].mean()
        return ((hinge * negatives).sum(1) / negatives.sum(1)).mean()


REDUCTIONS = {"mean": 1.0, "sum-directions": 2.0}


def _scaled(fn, scale: float, z1: torch.Tensor, z2: torch.Tensor, **kwargs) -> torch.Tensor:
    return scale * fn(z1, z2, **kwargs)


def build_loss(name: str, temperature: float, normalize: bool = True, margin: float = 0.5,
               semi_hard_negatives: bool = False, reduction: str = "mean"):
    """The loss `name` (fastclr.registry.LOSSES) with its options bound:
    loss(z1, z2, distributed=False) -> scalar. Options a loss does not take are not passed.

    `reduction`: "mean" over the 2N anchors (the paper's Algorithm 1), or "sum-directions",
    the mean over each view's N anchors summed over the two views (the official code's
    objective.py add_contrastive_loss: twice the mean; see the module docstring)."""
    import inspect

    from fastclr.registry import LOSSES

    fn = LOSSES.get(name)
    given = {"temperature": temperature, "normalize": normalize, "margin": margin,
             "semi_hard_negatives": semi_hard_negatives}
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in given.items() if k in accepted}
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    if reduction == "mean":
        return functools.partial(fn, **bound)
    return functools.partial(_scaled, fn, REDUCTIONS[reduction], **bound)
