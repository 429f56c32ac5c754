"""`fastclr eval`: run the chosen protocols on one encoder, time each, write report.json.

A protocol is a function of a `Session` (the weights, the labeled train/test splits and
cached features) returning flat report entries. Top-1/top-5 values are fractions of the test
set in [0, 1]; report.json keeps them so, the printed table shows percent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from fastclr.augment import SimCLRAugment
from fastclr.checkpoint import atomic_write
from fastclr.data import ImageSet, get_spec, load_split
from fastclr.diagnostics import diagnose
from fastclr.errors import ConfigError, DataError
from fastclr.evaluate import (evaluate_encoder, evaluate_features, extract_features, frozen,
                              knn_table, knn_top1, linear_probe, linear_probe_augmented,
                              nearest_neighbours, pixel_features, project)
from fastclr.finetune import PAPER_EPOCHS, balanced_subset, finetune
from fastclr.models import build_encoder
from fastclr.weights import Weights, load_weights

# every protocol, in the order they run (`fastclr eval --help` describes each)
PROTOCOLS = ("linear", "knn", "baselines", "diagnostics", "plots", "linear-aug", "finetune")
FAST = ("linear", "knn", "baselines", "diagnostics", "plots")
KNN_KS = (1, 5, 20, 200)
LINEAR_AUG_EPOCHS = 5  # the paper trains 90 on ImageNet; 5 x 60k views fit a CPU budget
FINETUNE_BATCH = 128  # the paper's 4096 scaled down for a CPU; lr follows 0.05 x B/256
DIAGNOSTIC_IMAGES = 2048
MAP_IMAGES = 2000
GRID_NEIGHBOURS = 8


def parse_protocols(text: str | None) -> tuple[str, ...]:
    """'fast' (default), 'all', or a comma list of protocol names -> names in canonical order."""
    names: set[str] = set()
    for part in (text or "fast").split(","):
        part = part.strip()
        if part == "fast":
            names.update(FAST)
        elif part == "all":
            names.update(PROTOCOLS)
        elif part in PROTOCOLS:
            names.add(part)
        else:
            raise ConfigError(f"unknown protocol {part!r}; known: fast, all, "
                              f"{', '.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in names)


def random_init_like(encoder: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised encoder of the same architecture and input normalisation
    (drawn from `seed`, leaving the global random state as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_encoder(encoder.arch, encoder.width, encoder.stem_kind,
                              encoder.mean.shape[1], encoder.mean.flatten().tolist(),
                              encoder.std.flatten().tolist())
    return fresh.to(encoder.mean.device)


def crop_flip_augment(cfg) -> SimCLRAugment:
    """The light augmentation of linear evaluation and fine-tuning: the run's random resized
    crop and horizontal flip, no colour, grayscale or blur (appendix B.5)."""
    return SimCLRAugment(size=cfg.image_size, crop_scale=cfg.crop_scale,
                         crop_ratio=cfg.crop_ratio, flip_p=cfg.flip_p, color_p=0.0, gray_p=0.0,
                         blur_p=0.0)


class Session:
    """What the protocols share: weights, labeled splits, and features computed once."""

    def __init__(self, weights: Weights, train: ImageSet, test: ImageSet, device,
                 out_dir: Path, seed: int = 0, linear_aug_epochs: int = LINEAR_AUG_EPOCHS,
                 finetune_epochs: dict[float, int] | None = None):
        self.weights, self.cfg = weights, weights.cfg
        self.linear_aug_epochs = linear_aug_epochs
        self.finetune_epochs = finetune_epochs or PAPER_EPOCHS
        self.encoder, self.head = weights.encoder, weights.head
        self.train, self.test = train, test
        self.device, self.out_dir, self.seed = torch.device(device), out_dir, seed
        self._h: tuple[torch.Tensor, torch.Tensor] | None = None
        self._z: tuple[torch.Tensor, torch.Tensor] | None = None

    def h(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-encoder h of the train and test images: (N_train, D), (N_test, D)."""
        if self._h is None:
            bs = self.cfg.eval_batch_size
            size = self.cfg.image_size  # the training resolution (None: the stored size)
            with frozen(self.encoder):
                self._h = (extract_features(self.encoder, self.train.images, bs, self.device,
                                            size),
                           extract_features(self.encoder, self.test.images, bs, self.device,
                                            size))
        return self._h

    def z(self) -> tuple[torch.Tensor, torch.Tensor]:
        """z = g(h) of the train and test images, with the frozen head."""
        if self._z is None:
            h_train, h_test = self.h()
            with frozen(self.head):
                self._z = (project(self.head, h_train), project(self.head, h_test))
        return self._z


def _linear(s: Session) -> dict:
    h_train, h_test = s.h()
    probe = linear_probe(h_train, s.train.labels, h_test, s.test.labels, seed=s.seed)
    out = {"linear_top1": probe["top1"], "linear_top5": probe["top5"],
           "linear_weight_decay": probe["weight_decay"], "feature_dim": h_train.shape[1]}
    if s.head is not None:
        z_train, z_test = s.z()
        probe = linear_probe(z_train, s.train.labels, z_test, s.test.labels, seed=s.seed)
        out.update({"linear_z_top1": probe["top1"], "linear_z_top5": probe["top5"],
                    "linear_z_weight_decay": probe["weight_decay"],
                    "projection_dim": z_train.shape[1]})
    return out


def _knn(s: Session) -> dict:
    h_train, h_test = s.h()
    k, temp = s.cfg.knn_k, s.cfg.knn_temperature
    table = knn_table(h_train, s.train.labels, h_test, s.test.labels,
                      sorted(set(KNN_KS) | {k}), temp)
    out = {"knn_top1": table[k], "knn_k": k, "knn_temperature": temp,
           "knn_table": {str(kk): table[kk] for kk in KNN_KS}}
    if s.head is not None:
        z_train, z_test = s.z()
        out["knn_z_top1"] = knn_top1(z_train, s.train.labels, z_test, s.test.labels, k, temp)
    return out


def _baselines(s: Session) -> dict:
    cfg = s.cfg
    rand = evaluate_encoder(random_init_like(s.encoder, s.seed + 1), s.train, s.test,
                            s.device, cfg.eval_batch_size, cfg.knn_k, cfg.knn_temperature,
                            cfg.image_size)
    pix = evaluate_features(pixel_features(s.train.images).to(s.device), s.train.labels,
                            pixel_features(s.test.images).to(s.device), s.test.labels,
                            cfg.knn_k, cfg.knn_temperature)
    return {"random_init_linear_top1": rand["linear_top1"],
            "random_init_knn_top1": rand["knn_top1"],
            "pixels_linear_top1": pix["linear_top1"], "pixels_knn_top1": pix["knn_top1"]}


def _diagnostics(s: Session) -> dict:
    from fastclr.train import augment_from_config  # the views the encoder was trained on
    images = s.test.images[:DIAGNOSTIC_IMAGES]
    return diagnose(s.encoder, images, augment_from_config(s.cfg), s.head,
                    task_batch=s.cfg.batch_size, seed=s.seed,
                    batch_size=s.cfg.eval_batch_size, device=s.device)


def _plots(s: Session) -> dict:
    from fastclr import plots

    written = []
    metrics = s.weights.run_dir / "metrics.jsonl" if s.weights.run_dir else None
    if metrics is not None and metrics.is_file():
        plots.plot_training_curves(plots.read_metrics(metrics), s.out_dir / "training_curves.png")
        written.append("training_curves.png")
    h_train, h_test = s.h()
    g = torch.Generator().manual_seed(s.seed)
    pick = torch.randperm(len(h_test), generator=g)[:MAP_IMAGES]
    xy = plots.tsne_map(h_test[pick], s.seed)
    plots.plot_embedding_map(xy, s.test.labels[pick], s.test.classes,
                             s.out_dir / "embedding_map.png")
    written.append("embedding_map.png")
    # one query per class: the first test image of each class (a fixed, readable choice)
    labels = s.test.labels
    queries = torch.stack([(labels == c).nonzero()[0, 0] for c in torch.unique(labels)])
    sim, idx = nearest_neighbours(h_train, h_test[queries], GRID_NEIGHBOURS)  # (Q, K)
    idx = idx.cpu()
    plots.plot_neighbour_grid(s.test.images[queries], s.train.images[idx], labels[queries],
                              s.train.labels[idx], s.test.classes,
                              s.out_dir / "nearest_neighbours.png", sim.cpu())
    written.append("nearest_neighbours.png")
    return {"plots": written}


def _linear_aug(s: Session) -> dict:
    cfg = s.cfg
    res = linear_probe_augmented(s.encoder, s.train.images, s.train.labels, s.test.images,
                                 s.test.labels, crop_flip_augment(cfg),
                                 epochs=s.linear_aug_epochs, seed=s.seed, device=s.device,
                                 eval_batch_size=cfg.eval_batch_size)
    return {"linear_aug_top1": res["top1"], "linear_aug_top5": res["top5"],
            "linear_aug_epochs": res["epochs"], "linear_aug_lr": res["lr"]}


def _finetune(s: Session) -> dict:
    out = {}
    for fraction, epochs in s.finetune_epochs.items():
        name = f"finetune_{round(100 * fraction)}pct"
        idx = balanced_subset(s.train.labels, fraction, s.seed)
        res = finetune(s.encoder, s.train.images[idx], s.train.labels[idx], s.test.images,
                       s.test.labels, crop_flip_augment(s.cfg), epochs, FINETUNE_BATCH,
                       seed=s.seed, device=s.device, eval_batch_size=s.cfg.eval_batch_size)
        out.update({f"{name}_top1": res["top1"], f"{name}_top5": res["top5"],
                    f"{name}_images": res["images"], f"{name}_epochs": res["epochs"],
                    f"{name}_lr": res["lr"]})
    return out


RUNNERS = {"linear": _linear, "knn": _knn, "baselines": _baselines,
           "diagnostics": _diagnostics, "plots": _plots, "linear-aug": _linear_aug,
           "finetune": _finetune}


def require_labels(cfg) -> None:
    """Refuse, before any work or any file, a data set without labels."""
    if not get_spec(cfg.data).labeled:
        raise DataError(f"{cfg.data} has no labels, so it cannot be evaluated; use "
                        "`fastclr embed` to export its features")


def _labeled_splits(cfg) -> tuple[ImageSet, ImageSet]:
    require_labels(cfg)
    spec = get_spec(cfg.data)
    size = cfg.image_size  # folder sets decode at the training resolution
    train = load_split(cfg.data, spec.train, cfg.data_dir, cfg.download, size=size)
    test = load_split(cfg.data, spec.test, cfg.data_dir, cfg.download, size=size)
    if train.labels is None or test.labels is None:
        raise DataError(f"{cfg.data} has no labels, so it cannot be evaluated; use "
                        "`fastclr embed` to export its features")
    return train, test


def default_out_dir(weights: Weights) -> Path:
    """A run folder reports into itself; a weights file into eval-<name>/ beside it."""
    if weights.kind == "run":
        return weights.path
    return weights.path.parent / f"eval-{weights.path.stem}"


def evaluate_weights(weights: Weights, protocols=FAST, device="cpu", out_dir=None,
                     seed: int = 0, progress=None, linear_aug_epochs: int | None = None,
                     finetune_epochs: dict[float, int] | None = None) -> dict:
    """Run the evaluation `protocols` (SimCLR section 4, section 6, appendix B) on loaded
    weights; merge the results into out_dir/report.json and return them.

    `finetune_epochs` maps label fractions to epochs (default: the paper's 1% -> 60,
    10% -> 30); `progress(line)` is called after each protocol.

    Entries of an earlier report.json of the same encoder step are kept, so protocols can be
    run one at a time; a report of another step is replaced.
    """
    device = torch.device(device)
    cfg = weights.cfg
    train, test = _labeled_splits(cfg)
    out_dir = Path(out_dir) if out_dir else default_out_dir(weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    channels = weights.encoder.mean.shape[1]
    if train.images.shape[1] != channels:
        raise DataError(f"{cfg.data} has {train.images.shape[1]}-channel images; the encoder "
                        f"takes {channels}")
    report = _previous_report(out_dir, weights.step)
    report.update({"data": cfg.data, "arch": weights.encoder.arch,
                   "width": weights.encoder.width, "encoder_step": weights.step,
                   "weights": str(weights.path), "head_known": weights.head is not None,
                   "eval_train_images": len(train), "eval_test_images": len(test),
                   "seed": seed})
    if weights.kind == "run":
        report["epochs"] = cfg.epochs
    seconds = report.setdefault("seconds", {})
    session = Session(weights, train, test, device, out_dir, seed,
                      linear_aug_epochs or LINEAR_AUG_EPOCHS, finetune_epochs)
    start = time.perf_counter()
    for name in protocols:
        t0 = time.perf_counter()
        report.update(RUNNERS[name](session))
        seconds[name] = round(time.perf_counter() - t0, 2)
        if progress is not None:
            progress(f"  {name}: {seconds[name]:.1f} s")
    report["eval_seconds"] = round(time.perf_counter() - start, 2)
    train_time = (weights.run_dir / "train_time.json") if weights.run_dir else None
    if train_time is not None and train_time.is_file():
        try:
            report["train_seconds"] = json.loads(train_time.read_text())["train_seconds"]
        except (ValueError, KeyError):
            pass
    blob = json.dumps(report, indent=2).encode()
    atomic_write(out_dir / "report.json", lambda f: f.write(blob))
    return report


def _previous_report(out_dir: Path, step) -> dict:
    try:
        old = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("encoder_step") == step else {}


def evaluate_run(path, device="cpu", protocols=FAST, data=None, data_dir=None, out_dir=None,
                 seed: int = 0, progress=None) -> dict:
    """Load a run folder, encoder .safetensors or checkpoint .pt and evaluate it."""
    weights = load_weights(path, data, data_dir, device)
    return evaluate_weights(weights, protocols, device, out_dir, seed, progress)


# ---- the printed table ----------------------------------------------------------------------


def _pct(report: dict, key: str) -> str:
    return f"{100 * report[key]:.2f}%" if isinstance(report.get(key), (int, float)) else "-"


def format_report(report: dict) -> str:
    """A readable summary of report.json (whatever protocols it holds)."""
    lines = []
    rows = [("trained encoder, h", "linear_top1", "linear_top5", "knn_top1"),
            ("trained encoder, z = g(h)", "linear_z_top1", "linear_z_top5", "knn_z_top1"),
            ("linear on crop+flip views, h", "linear_aug_top1", "linear_aug_top5", None),
            ("random-init encoder, h", "random_init_linear_top1", None, "random_init_knn_top1"),
            ("raw pixels", "pixels_linear_top1", None, "pixels_knn_top1")]
    if any(r[1] in report for r in rows):
        lines.append(f"{'':30}{'linear top-1':>13}{'linear top-5':>13}{'kNN top-1':>11}")
        for label, top1, top5, knn in rows:
            if top1 in report or (knn and knn in report):
                lines.append(f"{label:30}{_pct(report, top1):>13}"
                             f"{_pct(report, top5) if top5 else '-':>13}"
                             f"{_pct(report, knn) if knn else '-':>11}")
        if "linear_z_top1" in report and "linear_top1" in report:
            gap = 100 * (report["linear_top1"] - report["linear_z_top1"])
            lines.append(f"h - z (linear): {gap:+.2f} points (paper, section 4.2: h beats z "
                         "by more than 10)")
    if "knn_table" in report:
        cells = "  ".join(f"k={k}: {100 * v:.2f}%" for k, v in report["knn_table"].items())
        lines.append(f"kNN on h (cosine, weighted, T={report.get('knn_temperature', 0.1):g}): "
                     f"{cells}")
    for pct in (1, 10):
        key = f"finetune_{pct}pct"
        if f"{key}_top1" in report:
            lines.append(f"fine-tuned on {pct}% of the labels ({report[f'{key}_images']} "
                         f"images, {report[f'{key}_epochs']} epochs): top-1 "
                         f"{_pct(report, key + '_top1')}, top-5 {_pct(report, key + '_top5')}")
    if "alignment_h" in report:
        spaces = [s for s in ("h", "z") if f"alignment_{s}" in report]
        lines.append(f"diagnostics on {report['diagnostics_images']} augmented test pairs"
                     + "".join(f"{s:>10}" for s in spaces))
        for label, key, fmt in (("  alignment (0 = views agree)", "alignment", "{:.3f}"),
                                ("  uniformity (lower = spread)", "uniformity", "{:.3f}"),
                                ("  effective rank", "effective_rank", "{:.1f}"),
                                ("  feature dimension", "dim", "{}"),
                                (f"  contrastive top-1 (batch {report['contrastive_batch']})",
                                 "contrastive_top1", "{:.2%}")):
            lines.append(f"{label:44}" + "".join(
                f"{fmt.format(report[f'{key}_{s}']):>10}" for s in spaces))
    if report.get("plots"):
        lines.append("pictures: " + ", ".join(report["plots"]))
    if report.get("seconds"):
        lines.append("seconds per protocol: " + ", ".join(
            f"{k} {v:.0f}" for k, v in report["seconds"].items()))
    return "\n".join(lines)
