"""Is the embedding healthy? Label-free measures on pairs of augmented views.

- alignment and uniformity (Wang and Isola, ICML 2020): positives close, everything spread
  out on the sphere. NT-Xent optimises both at once (its numerator and its denominator).
- effective rank (Roy and Vetterli, 2007): how many directions h really uses. Dimensional
  collapse shows up here before any accuracy drops.
- contrastive top-1: how often the positive is the most similar of the 2N - 1 candidates,
  the pretext task SimCLR trains on (section 2.1), scored at the training batch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.eval.features import autocast_for, frozen, project


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E ||f(x) - f(y)||^alpha over positive pairs (rows of x and y), on L2-normalised rows.

    0 when the two views map to the same point; 4 (alpha = 2) when they are antipodal.
    """
    x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)  # (N, D) each
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||f(a) - f(b)||^2) over all pairs a != b of rows, on L2-normalised rows.

    Lower is more uniform; it is 0 when every row is the same point.
    """
    x = F.normalize(x.float(), dim=1)
    sq = torch.pdist(x).pow(2)  # (N (N - 1) / 2,) distinct pairs
    # log-mean-exp, stable even when every pair is far apart
    return torch.logsumexp(-t * sq, dim=0) - math.log(len(sq))


def effective_rank(h: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the singular values of h normalised to sum 1), Roy and Vetterli (2007).

    Between 1 (rank one: collapse) and min(N, D) (all singular values equal). Features are not
    centred, as in the definition (and RankMe, Garrido et al. 2023).
    """
    s = torch.linalg.svdvals(h.double())  # (min(N, D),)
    p = s / s.sum()
    p = p[p > 0]  # 0 log 0 = 0
    return torch.exp(-(p * p.log()).sum()).float()


def contrastive_top1(z1: torch.Tensor, z2: torch.Tensor, batch_size: int | None = None
                     ) -> torch.Tensor:
    """Fraction of the 2N views whose positive is the most similar of the other 2N - 1.

    Rows i of z1 and z2 are the two views of image i. Scored in batches of `batch_size` images
    (the pretraining batch: the task gets harder with more negatives), then averaged.
    """
    n_all = len(z1)
    batch_size = batch_size or n_all
    hits = torch.zeros((), device=z1.device)
    for i in range(0, n_all, batch_size):
        z = F.normalize(torch.cat([z1[i: i + batch_size], z2[i: i + batch_size]]).float(),
                        dim=1)  # (2n, D)
        n = len(z) // 2
        sim = z @ z.T  # (2n, 2n) cosine similarities; the diagonal is each view with itself
        sim.fill_diagonal_(float("-inf"))
        positive = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + n
        hits += (sim.argmax(1) == positive).sum()
    return hits / (2 * n_all)


@torch.no_grad()
def view_pair_features(encoder: nn.Module, images: torch.Tensor, augment, seed: int = 0,
                       batch_size: int = 512, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """h of two random views of each uint8 image: two (N, feat_dim) tensors, encoder frozen."""
    device = torch.device(device)
    gen = torch.Generator(device).manual_seed(seed)
    h1, h2 = [], []
    with frozen(encoder):
        for i in range(0, len(images), batch_size):
            x = images[i: i + batch_size].to(device)
            with autocast_for(device):
                v1, v2 = augment.two_views(x, gen)  # 2 x (n, C, S, S) floats in [0, 1]
                h = encoder(torch.cat([v1, v2])).float()  # (2n, feat_dim): one forward
            h1.append(h[: len(x)])
            h2.append(h[len(x):])
    return torch.cat(h1), torch.cat(h2)


def diagnose(encoder: nn.Module, images: torch.Tensor, augment, head: nn.Module | None = None,
             task_batch: int = 256, seed: int = 0, batch_size: int = 512,
             device: torch.device | str = "cpu") -> dict:
    """All the measures above on augmented view pairs of `images` (uint8, N images), for h and,
    when the projection head is given, for z = g(h) too. Values are plain floats."""
    h1, h2 = view_pair_features(encoder, images, augment, seed, batch_size, device)
    spaces = {"h": (h1, h2)}
    if head is not None:
        with frozen(head):
            spaces["z"] = (project(head, h1), project(head, h2))
    out = {"diagnostics_images": len(images), "contrastive_batch": min(task_batch, len(images))}
    for name, (a, b) in spaces.items():
        out[f"alignment_{name}"] = alignment(a, b).item()
        out[f"uniformity_{name}"] = (0.5 * (uniformity(a) + uniformity(b))).item()
        out[f"effective_rank_{name}"] = effective_rank(torch.cat([a, b])).item()
        out[f"contrastive_top1_{name}"] = contrastive_top1(a, b, task_batch).item()
        out[f"dim_{name}"] = a.shape[1]
    return out
