"""How good are the features: the frozen-encoder protocols of SimCLR section 4 and appendix B.

- Features are h from the frozen encoder in eval mode, on un-augmented images.
- The linear probe is multinomial logistic regression on those cached features, fitted with
  L-BFGS and an L2 penalty chosen on a held-out part of the training set (appendix B.5 does
  the same for its transfer tasks). The encoder gets no gradient.
- The kNN classifier is the weighted vote of Wu et al. (2018): cosine similarity, the k nearest
  training features, each voting with exp(sim / T).
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.images import center_view


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
            with _autocast(device):
                out.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline: each image flattened to a vector in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, num_classes) of the weighted cosine kNN vote for each test feature."""
    num_classes = num_classes or int(train_y.max()) + 1
    k = min(k, len(train_x))
    bank = F.normalize(train_x.float(), dim=1)  # (N, D)
    scores = []
    for i in range(0, len(test_x), chunk):
        q = F.normalize(test_x[i: i + chunk].float(), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, train_y[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1) -> float:
    scores = knn_predict(train_x, train_y.to(train_x.device), test_x.to(train_x.device), k,
                         temperature)
    return (scores.argmax(1).cpu() == test_y.cpu()).float().mean().item()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hit.float().mean().item()


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                  max_iter: int, init: nn.Linear | None = None) -> nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay/2 * ||W||^2."""
    clf = nn.Linear(x.shape[1], num_classes).to(x.device)
    if init is not None:
        clf.load_state_dict(init.state_dict())
    else:
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
                 max_iter: int = 300, seed: int = 0) -> dict:
    """Logistic regression on frozen features; L2 strength picked on a held-out split.

    Features are standardised with the training mean and std. Returns top-1 and top-5 on the
    test features, and the chosen weight decay.
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
            clf = _fit_logistic(xs[fit], train_y[fit], num_classes, wd, max_iter)
            with torch.no_grad():
                acc = topk_accuracy(clf(xs[val]), train_y[val], 1)
            if acc > best_acc:
                best_acc, best_wd = acc, wd
    clf = _fit_logistic(xs, train_y, num_classes, best_wd, max_iter)
    with torch.no_grad():
        logits = clf(ts)
    return {"top1": topk_accuracy(logits, test_y, 1), "top5": topk_accuracy(logits, test_y, 5),
            "weight_decay": best_wd}


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
    f_train = extract_features(encoder, train.images, batch_size, device, size)
    f_test = extract_features(encoder, test.images, batch_size, device, size)
    return evaluate_features(f_train, train.labels, f_test, test.labels, k, temperature)


def random_init_like(encoder: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised encoder of the same architecture and input normalisation."""
    from fastclr.models import build_encoder
    torch.manual_seed(seed)
    fresh = build_encoder(encoder.arch, encoder.width, encoder.stem_kind, encoder.mean.shape[1],
                          encoder.mean.flatten().tolist(), encoder.std.flatten().tolist())
    return fresh.to(encoder.mean.device)


def standard_report(encoder: nn.Module, train, test, device, baselines: bool = True,
                    batch_size: int = 512, k: int = 200, temperature: float = 0.1,
                    seed: int = 0, size: int | None = None) -> dict:
    """The main job's table: trained encoder, random-init encoder and raw pixels.

    Top-1 values are fractions in [0, 1] of the test set; `size` is the training resolution
    the encoders see (see extract_features).
    """
    start = time.perf_counter()
    trained = evaluate_encoder(encoder, train, test, device, batch_size, k, temperature, size)
    report = {"linear_top1": trained["linear_top1"], "linear_top5": trained["linear_top5"],
              "knn_top1": trained["knn_top1"], "feature_dim": int(encoder.feat_dim),
              "eval_train_images": len(train), "eval_test_images": len(test)}
    if baselines:
        rand = evaluate_encoder(random_init_like(encoder, seed + 1), train, test, device,
                                batch_size, k, temperature, size)
        dev = torch.device(device)
        pix = evaluate_features(pixel_features(train.images).to(dev), train.labels,
                                pixel_features(test.images).to(dev), test.labels, k,
                                temperature)
        report.update({"random_init_linear_top1": rand["linear_top1"],
                       "random_init_knn_top1": rand["knn_top1"],
                       "pixels_linear_top1": pix["linear_top1"],
                       "pixels_knn_top1": pix["knn_top1"]})
    report["eval_seconds"] = time.perf_counter() - start
    return report


def format_report(report: dict) -> str:
    """The short table the main job ends with."""
    rows = [("trained encoder (h)", "linear_top1", "knn_top1"),
            ("random-init encoder", "random_init_linear_top1", "random_init_knn_top1"),
            ("raw pixels", "pixels_linear_top1", "pixels_knn_top1")]
    lines = [f"{'':24}{'linear top-1':>14}{'kNN top-1':>12}"]
    for label, lin, knn in rows:
        if lin in report:
            lines.append(f"{label:24}{100 * report[lin]:>13.2f}%{100 * report[knn]:>11.2f}%")
    return "\n".join(lines)


def evaluate_run(run_dir, cfg, device, baselines: bool = True) -> dict:
    """Evaluate a run folder's exported encoder on its data set; writes report.json there."""
    import json
    from pathlib import Path

    from fastclr.checkpoint import atomic_write, load_encoder
    from fastclr.data import get_spec, load_split
    from fastclr.errors import DataError

    run_dir = Path(run_dir)
    device = torch.device(device)
    spec = get_spec(cfg.data)
    if not spec.labeled:
        raise DataError(f"{cfg.data} has no labels, so there is no linear probe or kNN score to "
                        f"compute; the encoder is {run_dir / 'encoder.safetensors'}")
    encoder = load_encoder(run_dir / "encoder.safetensors", device)
    size = cfg.image_size  # None: the stored size, which training used too
    train = load_split(cfg.data, spec.train, cfg.data_dir, cfg.download, size=size)
    test = load_split(cfg.data, spec.test, cfg.data_dir, cfg.download, size=size)
    report = {"data": cfg.data, "arch": cfg.arch, "width": cfg.width, "epochs": cfg.epochs,
              **standard_report(encoder, train, test, device, baselines, cfg.eval_batch_size,
                                cfg.knn_k, cfg.knn_temperature, cfg.seed, size)}
    try:
        times = json.loads((run_dir / "train_time.json").read_text())
        report["train_seconds"] = times["train_seconds"]
    except (OSError, ValueError, KeyError):
        pass
    blob = json.dumps(report, indent=2).encode()
    atomic_write(run_dir / "report.json", lambda f: f.write(blob))
    return report
