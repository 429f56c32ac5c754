"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (section 2.1, eq. 1).

For a batch of N images seen as 2N views, each view's positive is the other view of its image
and its negatives are the other 2(N-1) views; the loss is the mean over all 2N anchors, so both
directions of every pair count. With several processes the candidates are the views of every
process (gathered with gradient), so the result and its gradient equal one process holding the
whole global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process along dim 0, keeping the autograd graph.

    torch.distributed.nn's all_gather sums the incoming gradients across processes in its
    backward (a reduce-scatter), which is what makes each process's loss reach the views that
    other processes computed. A plain dist.all_gather would cut those gradients. (Public API
    since torch 1.8, on NCCL and gloo alike; the private functional collectives differ between
    releases.)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x.contiguous()))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            distributed: bool = False) -> torch.Tensor:
    """Mean NT-Xent over the 2N anchors of two views z1, z2 of shape (N, d).

    Logits are computed in fp32 whatever the autocast state. With `distributed`, the anchors are
    this process's 2N views and the candidates the 2N*G views of all G processes.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, d); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, d) unit vectors
        candidates = gather_with_grad(z) if distributed else z  # (2N*G, d), process-major
        rank = dist.get_rank() if candidates is not z else 0
        logits = z @ candidates.T / temperature  # (2N, 2N*G) cosine similarities / tau
        local = torch.arange(2 * n, device=z.device)
        own = rank * 2 * n + local  # each anchor's own column (similarity 1/tau: excluded)
        positive = rank * 2 * n + (local + n) % (2 * n)  # the other view of the same image
        # (2N, 2N*G) True at each anchor's own column. Not F.one_hot: on the CPU it reads the
        # indices' min and max back to the host to check them, a sync the step must not have
        columns = torch.arange(logits.shape[1], device=z.device)
        logits = logits.masked_fill(own[:, None] == columns, float("-inf"))
        return F.cross_entropy(logits, positive)
