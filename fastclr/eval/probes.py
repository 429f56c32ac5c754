"""Classifiers on frozen features: the linear probes and the kNN of SimCLR section 4 and
appendix B.

- Features are h from the frozen encoder in eval mode, on un-augmented images. Every protocol
  here runs inside `frozen(encoder)`, which proves afterwards that no weight and no BN statistic
  moved: a "linear evaluation" that quietly fine-tunes the backbone is the classic bug.
- The linear probe is multinomial logistic regression on those cached features, fitted with
  L-BFGS and an L2 penalty chosen on a held-out part of the training set: the paper's
  protocol for its transfer tasks (appendix B.8 of the arXiv version), not its ImageNet
  linear evaluation. `linear_probe_augmented` trains a linear layer by SGD on random
  crop + flip views instead: with `standardize=False` and the paper's batch, learning rate
  and epochs, that is the linear evaluation of appendix B.6 (protocols.py, linear-b6).
- The kNN classifier is the weighted vote of Wu et al. (2018): cosine similarity, the k nearest
  training features, each voting with exp(sim / T).
- `OnlineProbe` is the linear classifier the official SimCLR code trains during pretraining on
  stop-gradient h: a cheap learning-progress signal, not an evaluation.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.eval.features import autocast_for, extract_features, frozen


@torch.no_grad()
def nearest_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (M, k) of each query's k most similar bank rows."""
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)  # (N, D)
    sims, idxs = [], []
    for i in range(0, len(queries), chunk):  # chunks keep the (m, N) similarity block small
        q = F.normalize(queries[i: i + chunk].float().to(bank.device), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k), most similar first
        sims.append(sim)
        idxs.append(idx)
    return torch.cat(sims), torch.cat(idxs)


def _knn_votes(sim: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float,
               num_classes: int) -> torch.Tensor:
    """(M, k) similarities and labels of the neighbours -> (M, num_classes) weighted votes."""
    votes = torch.zeros(len(sim), num_classes, device=sim.device)
    return votes.scatter_add_(1, neighbour_labels, (sim / temperature).exp())


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, num_classes) of the weighted cosine kNN vote for each test feature."""
    num_classes = num_classes or int(train_y.max()) + 1
    sim, idx = nearest_neighbours(train_x, test_x, k, chunk)
    return _knn_votes(sim, train_y.to(sim.device)[idx], temperature, num_classes)


def knn_top1(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1) -> float:
    scores = knn_predict(train_x, train_y.to(train_x.device), test_x.to(train_x.device), k,
                         temperature)
    return (scores.argmax(1).cpu() == test_y.cpu()).float().mean().item()


@torch.no_grad()
def knn_table(train_x, train_y, test_x, test_y, ks=(1, 5, 20, 200),
              temperature: float = 0.1) -> dict[int, float]:
    """Weighted kNN top-1 for several k from one neighbour search (the largest k's)."""
    num_classes = int(train_y.max()) + 1
    sim, idx = nearest_neighbours(train_x, test_x, max(ks))  # (M, kmax), sorted
    labels = train_y.to(sim.device)[idx]
    test_y = test_y.to(sim.device)
    table = {}
    for k in ks:  # the k nearest are the first k columns of the sorted top-kmax
        votes = _knn_votes(sim[:, :k], labels[:, :k], temperature, num_classes)
        table[k] = (votes.argmax(1) == test_y).float().mean().item()
    return table


# the k of the kNN table; 200 is the headline of Wu et al. (2018) and of most SSL papers
KNN_KS = (1, 5, 20, 200)


def smallest_class(labels: torch.Tensor) -> int:
    """Images in the rarest class present in `labels` (N,)."""
    counts = torch.bincount(labels.cpu())
    return int(counts[counts > 0].min())


def k_that_fits(k: int, labels: torch.Tensor, candidates=KNN_KS) -> int:
    """`k` if every class of the bank `labels` has at least k images, else the largest of
    `candidates` that does (at least 1): a k above a class's size makes its images outvoted
    by the neighbours of other classes whatever the features."""
    fewest = smallest_class(labels)
    if k <= fewest:
        return k
    return max([c for c in candidates if c <= fewest], default=1)


@torch.no_grad()
def choose_knn_k(train_x: torch.Tensor, train_y: torch.Tensor, k: int, temperature: float,
                 candidates=KNN_KS, seed: int = 0) -> tuple[int, str | None]:
    """The headline k of the weighted kNN and, when it is not `k`, why.

    `k` (200 by default: comparable with the literature) when every class has at least k
    training images. Otherwise the candidate with the best top-1 on a held-out tenth of the
    training features, fitted on the other nine tenths: chosen without the test set, among
    the candidates that fit the smallest class.
    """
    fewest = smallest_class(train_y)
    if k <= fewest:
        return k, None
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train_x), generator=g).to(train_x.device)
    n_val = max(1, len(train_x) // 10)
    val, fit = perm[:n_val], perm[n_val:]
    fits = [c for c in sorted(set(candidates)) if c <= smallest_class(train_y[fit])] or [1]
    table = knn_table(train_x[fit], train_y[fit], train_x[val], train_y[val], fits, temperature)
    best = max(fits, key=lambda c: (table[c], c))  # ties: the larger k, the smoother vote
    return best, (f"k={k} exceeds the {fewest} training images of the smallest class; k={best} "
                  f"is the best of k={', '.join(map(str, fits))} on a held-out tenth of the "
                  "training images")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hit.float().mean().item()


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                  max_iter: int) -> nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay/2 * ||W||^2."""
    clf = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), y) + 0.5 * weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return clf


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, weight_decays=(1e-5, 1e-4, 1e-3), val_fraction=0.1,
                 max_iter: int = 300, seed: int = 0, select_iter: int = 100) -> dict:
    """Logistic regression on frozen features; L2 strength picked on a held-out split.

    Features are standardised with the training mean and std. The candidate fits run for
    `select_iter` L-BFGS iterations (enough to rank them, and a third of the cost), the final
    fit for `max_iter`. Returns top-1 and top-5 on the test features, and the chosen weight
    decay.
    """
    device = train_x.device
    train_y, test_y = train_y.to(device), test_y.to(device)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, ts = (train_x - mean) / std, (test_x.to(device) - mean) / std
    num_classes = int(train_y.max()) + 1
    best_wd = weight_decays[0]
    if len(weight_decays) > 1:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(xs), generator=g).to(device)
        n_val = max(1, int(len(xs) * val_fraction))
        val, fit = perm[:n_val], perm[n_val:]
        best_acc = -1.0
        for wd in weight_decays:
            clf = _fit_logistic(xs[fit], train_y[fit], num_classes, wd, select_iter)
            with torch.no_grad():
                acc = topk_accuracy(clf(xs[val]), train_y[val], 1)
            if acc > best_acc:
                best_acc, best_wd = acc, wd
    clf = _fit_logistic(xs, train_y, num_classes, best_wd, max_iter)
    with torch.no_grad():
        logits = clf(ts)
    return {"top1": topk_accuracy(logits, test_y, 1), "top5": topk_accuracy(logits, test_y, 5),
            "weight_decay": best_wd}


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Cosine decay from `peak` at step 0 to 0 at `total`, no warmup (appendix B.5 says no
    warmup; the cosine is the official code's learning_rate_schedule)."""
    return 0.5 * peak * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def linear_probe_augmented(encoder: nn.Module, train_images: torch.Tensor,
                           train_labels: torch.Tensor, test_images: torch.Tensor,
                           test_labels: torch.Tensor, augment, epochs: int = 5,
                           batch_size: int = 256, base_lr: float = 0.1, seed: int = 0,
                           device: torch.device | str = "cpu", eval_batch_size: int = 512,
                           standardize: bool = True) -> dict:
    """Linear evaluation with augmentation: a linear layer trained by SGD on random crop + flip
    views of the frozen encoder's h, scored on un-augmented test images (top-1, top-5).

    As the paper's ImageNet linear evaluation (appendix B.6, and the official code's
    fine_tune_after_block=4 run): Nesterov momentum 0.9, lr base_lr x B/256 with cosine decay
    and no warmup, no weight decay, logits layer initialised to zero, the encoder in eval mode
    (its BN statistics frozen). `standardize` adds one thing the paper does not have: a
    BatchNorm without affine parameters in front of the layer standardises h (as MAE's linear
    probing does); it is still a linear classifier of h, and it makes a few CPU epochs enough.
    Batches larger than `eval_batch_size` go through the encoder in chunks of that size.
    `augment(uint8 batch, generator)` gives the float views; build it with colour, grayscale
    and blur off.
    """
    device = torch.device(device)
    num_classes = int(train_labels.max()) + 1
    n = len(train_images)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped, as in pretraining
    total = epochs * steps_per_epoch
    peak = base_lr * batch_size / 256
    order_gen = torch.Generator().manual_seed(seed)
    view_gen = torch.Generator(device).manual_seed(seed)
    labels = train_labels.to(device)
    with frozen(encoder):
        feat_dim = extract_features(encoder, train_images[:2], 2, device).shape[1]
        layer = nn.Linear(feat_dim, num_classes)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        probe = (nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False), layer) if standardize
                 else nn.Sequential(layer)).to(device)
        opt = torch.optim.SGD(probe.parameters(), lr=peak, momentum=0.9, nesterov=True,
                              weight_decay=0.0)
        step = 0
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order_gen)
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size: (i + 1) * batch_size]
                with torch.no_grad(), autocast_for(device):
                    views = augment(train_images[idx].to(device), view_gen)  # (B, C, S, S)
                    if batch_size <= eval_batch_size:
                        h = encoder(views).float()  # (B, feat_dim); no graph into the encoder
                    else:
                        h = torch.cat([encoder(views[j: j + eval_batch_size]).float()
                                       for j in range(0, batch_size, eval_batch_size)])
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, total, peak)
                loss = F.cross_entropy(probe(h), labels[idx.to(device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        probe.eval()
        test_h = extract_features(encoder, test_images, eval_batch_size, device)
        with torch.no_grad():
            logits = probe(test_h)
    test_labels = test_labels.to(device)
    return {"top1": topk_accuracy(logits, test_labels, 1),
            "top5": topk_accuracy(logits, test_labels, 5), "epochs": epochs,
            "batch_size": batch_size, "lr": peak, "steps": total}


def evaluate_features(train_x, train_y, test_x, test_y, k: int = 200,
                      temperature: float = 0.1) -> dict:
    """Linear probe and kNN on one pair of feature sets."""
    start = time.perf_counter()
    probe = linear_probe(train_x, train_y, test_x, test_y)
    return {"linear_top1": probe["top1"], "linear_top5": probe["top5"],
            "linear_weight_decay": probe["weight_decay"],
            "knn_top1": knn_top1(train_x, train_y, test_x, test_y, k, temperature),
            "seconds": time.perf_counter() - start}


def evaluate_encoder(encoder: nn.Module, train, test, device, batch_size: int = 512,
                     k: int = 200, temperature: float = 0.1, size: int | None = None) -> dict:
    """Linear probe and kNN of a frozen encoder on labeled ImageSets (train fits, test scores)."""
    device = torch.device(device)
    with frozen(encoder):
        f_train = extract_features(encoder, train.images, batch_size, device, size)
        f_test = extract_features(encoder, test.images, batch_size, device, size)
    return evaluate_features(f_train, train.labels, f_test, test.labels, k, temperature)
