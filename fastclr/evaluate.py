"""How good are the features: the frozen-encoder protocols of SimCLR section 4 and appendix B.

- Features are h from the frozen encoder in eval mode, on un-augmented images. Every protocol
  here runs inside `frozen(encoder)`, which proves afterwards that no weight and no BN statistic
  moved: a "linear evaluation" that quietly fine-tunes the backbone is the classic bug.
- The linear probe is multinomial logistic regression on those cached features, fitted with
  L-BFGS and an L2 penalty chosen on a held-out part of the training set (appendix B.5 does
  the same for its transfer tasks). `linear_probe_augmented` instead trains a linear layer by
  SGD on random crop + flip views, as the paper's ImageNet linear evaluation does.
- The kNN classifier is the weighted vote of Wu et al. (2018): cosine similarity, the k nearest
  training features, each voting with exp(sim / T).
- `OnlineProbe` is the linear classifier the official SimCLR code trains during pretraining on
  stop-gradient h: a cheap learning-progress signal, not an evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.images import center_view


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (features are cast back to fp32), nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- the frozen-encoder guarantee -----------------------------------------------------------


class EncoderChangedError(RuntimeError):
    """A frozen-encoder protocol changed the encoder's weights or BN statistics (a bug here)."""


def state_digest(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer of `module`, by state_dict name.

    Buffers matter as much as weights: a BN layer left in train mode changes no weight but
    moves running_mean/var on every forward, and the features with them.
    """
    digests = {}
    for name, t in module.state_dict().items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # bytes of any dtype
        digests[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    return digests


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Run a frozen-encoder protocol: eval mode, no gradients, and proof afterwards.

    Inside, `module` is in eval mode with requires_grad off. On leaving, modes and flags are
    restored and EncoderChangedError is raised if any parameter or buffer differs from before
    (SimCLR section 4: linear evaluation trains a classifier on a *frozen* base network).
    """
    before = state_digest(module)
    modes = [m.training for m in module.modules()]
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for m, mode in zip(module.modules(), modes):
            m.training = mode
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
    changed = [k for k, v in state_digest(module).items() if before.get(k) != v]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                          else "")
        raise EncoderChangedError(f"the frozen encoder changed during evaluation: {shown}")


# ---- features -------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str = "cpu", size: int | None = None) -> torch.Tensor:
    """h = f(x) for uint8 images (N, C, H, W): float32 (N, feat_dim) on `device`, eval mode.

    With `size` (the training resolution), images of another size are first resized (shorter
    side) and centre-cropped to size x size, so the encoder sees objects at the scale it was
    trained on; images already size x size pass unchanged.
    """
    from fastclr.models import channels_last_ok

    device = torch.device(device)
    channels_last = channels_last_ok(encoder, device)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i: i + batch_size].to(device, non_blocking=True).float().div_(255)
            if size is not None:
                x = center_view(x, size)  # (n, C, size, size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device):
                out.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def project(head: nn.Module, h: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """z = g(h) for cached features h (N, feat_dim) -> (N, proj_dim), head in eval mode.

    Linear evaluation on z is the paper's h-versus-z comparison (section 4.2, Figure 8).
    """
    was_training = head.training
    head.eval()  # BN in the head uses its running statistics, not the batch's
    try:
        return torch.cat([head(h[i: i + batch_size]).float()
                          for i in range(0, len(h), batch_size)])
    finally:
        head.train(was_training)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline: each image flattened to a vector in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255


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
    """Cosine decay from `peak` at step 0 to 0 at `total`, no warmup (appendix B.5)."""
    return 0.5 * peak * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def linear_probe_augmented(encoder: nn.Module, train_images: torch.Tensor,
                           train_labels: torch.Tensor, test_images: torch.Tensor,
                           test_labels: torch.Tensor, augment, epochs: int = 5,
                           batch_size: int = 256, base_lr: float = 0.1, seed: int = 0,
                           device: torch.device | str = "cpu", eval_batch_size: int = 512) -> dict:
    """Linear evaluation with augmentation: a linear layer trained by SGD on random crop + flip
    views of the frozen encoder's h, scored on un-augmented test images (top-1, top-5).

    As the paper's ImageNet linear evaluation (appendix B, official code): Nesterov momentum
    0.9, lr base_lr x B/256 with cosine decay and no warmup, no weight decay, logits layer
    initialised to zero. One addition: a BatchNorm without affine parameters in front of the
    layer standardises h (as MAE's linear probing does); it is still a linear classifier of h,
    and it makes a few CPU epochs enough. `augment(uint8 batch, generator)` gives the float
    views; build it with colour, grayscale and blur off.
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
        probe = nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False),
                              nn.Linear(feat_dim, num_classes)).to(device)
        nn.init.zeros_(probe[1].weight)
        nn.init.zeros_(probe[1].bias)
        opt = torch.optim.SGD(probe.parameters(), lr=peak, momentum=0.9, nesterov=True,
                              weight_decay=0.0)
        step = 0
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order_gen)
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size: (i + 1) * batch_size]
                with torch.no_grad(), autocast_for(device):
                    views = augment(train_images[idx].to(device), view_gen)  # (B, C, S, S)
                    h = encoder(views).float()  # (B, feat_dim); no graph into the encoder
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


# ---- during pretraining ---------------------------------------------------------------------


class OnlineProbe(nn.Module):
    """A linear classifier on stop-gradient h, trained alongside pretraining.

    The official SimCLR code trains such a head on h.detach() in the same step, so labels
    never shape the encoder; its accuracy on the (augmented, train-mode) batches is a cheap
    sign of learning between kNN evaluations, not a test metric. It has its own Adam
    optimiser (h changes scale as the encoder trains; Adam does not care). `step` reads
    nothing on the host; `read` does, once per log line.
    """

    def __init__(self, feat_dim: int, num_classes: int, lr: float = 1e-3):
        super().__init__()
        self.linear = nn.Linear(feat_dim, num_classes)
        self.lr = lr
        self.optimizer = None  # made on first use, after .to(device)
        self.register_buffer("correct", torch.zeros(()))
        self.register_buffer("seen", torch.zeros(()))

    def step(self, h: torch.Tensor, labels: torch.Tensor, skip: torch.Tensor | None = None):
        """One update on h (n, feat_dim) of one view and its labels (n,); `skip` is a bool
        tensor (the pretraining step was skipped: h may not be finite), read on the device."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=self.lr)
        h = h.detach().float()  # stop-gradient: the probe never trains the encoder
        keep = torch.ones((), dtype=torch.bool, device=h.device) if skip is None else ~skip
        h = torch.where(keep, h, 0.0)  # a NaN h would poison the gradient even with weight 0
        logits = self.linear(h)  # (n, num_classes)
        loss = F.cross_entropy(logits, labels) * keep.float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.correct += ((logits.argmax(1) == labels) & keep).sum()
            self.seen += keep.float() * len(labels)

    def read(self) -> float:
        """Top-1 on the batches seen since the last read (nan if none), then reset."""
        correct, seen = torch.stack([self.correct, self.seen]).tolist()
        self.correct.zero_()
        self.seen.zero_()
        return correct / seen if seen else float("nan")


