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

from fastclr.checkpoint import atomic_write
from fastclr.data import ImageSet, get_spec, load_split
from fastclr.data.load import name_skipped
from fastclr.errors import ConfigError, DataError
from fastclr.eval.features import require_channels
from fastclr.eval.protocols import LINEAR_AUG_EPOCHS, Session
from fastclr.eval.report import previous_report
from fastclr.eval.weights import Weights, load_weights
from fastclr.registry import PROTOCOLS

# the protocols run by default; PROTOCOLS holds every one, in the order they run
FAST = ("linear", "knn", "baselines", "diagnostics", "transforms", "plots")
# left out of 'all' (they run when named): the paper's full 90-epoch linear evaluation
ONLY_BY_NAME = ("linear-b6",)


def parse_protocols(text: str | None) -> tuple[str, ...]:
    """'fast' (default), 'all' (every protocol but ONLY_BY_NAME's), or a comma list of protocol
    names -> names in canonical order."""
    names: set[str] = set()
    for part in (text or "fast").split(","):
        part = part.strip()
        if part == "fast":
            names.update(FAST)
        elif part == "all":
            names.update(p for p in PROTOCOLS if p not in ONLY_BY_NAME)
        elif part in PROTOCOLS:
            names.add(part)
        else:
            raise ConfigError(f"unknown protocol {part!r}; known: fast, all, "
                              f"{', '.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in names)


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
    for split, images in ((spec.train, train), (spec.test, test)):
        name_skipped(cfg.data, split, images.source, images.skipped)
    if train.labels is None or test.labels is None:
        raise DataError(f"{cfg.data} has no labels, so it cannot be evaluated; use "
                        "`fastclr embed` to export its features")
    return train, test


def _class_count(train: ImageSet, test: ImageSet) -> int:
    if train.classes:
        return len(train.classes)
    return int(max(train.labels.max(), test.labels.max())) + 1


def default_out_dir(weights: Weights) -> Path:
    """A run folder reports into itself; a weights file into eval-<name>/ beside it; a
    shipped encoder (inside the package) into eval-<name>/ in the current folder."""
    if weights.kind == "run":
        return weights.path
    if weights.kind == "pretrained":
        return Path(f"eval-{weights.path.stem}")
    return weights.path.parent / f"eval-{weights.path.stem}"


def evaluate_weights(weights: Weights, protocols=FAST, device="cpu", out_dir=None,
                     seed: int = 0, progress=None, linear_aug_epochs: int | None = None,
                     finetune_epochs: dict[float, int] | None = None,
                     map_method: str = "tsne") -> dict:
    """Run the evaluation `protocols` (SimCLR section 4, section 6, appendix B) on loaded
    weights; merge the results into out_dir/report.json and return them.

    `finetune_epochs` maps label fractions to epochs (default: the paper's 1% -> 60,
    10% -> 30); `map_method` is the embedding map of `plots` (tsne, or umap where umap-learn
    is installed); `progress(line)` is called after each protocol.

    Entries of an earlier report.json of the same encoder step are kept, so protocols can be
    run one at a time; a report of another step is replaced.
    """
    device = torch.device(device)
    cfg = weights.cfg
    if "plots" in protocols:
        from fastclr.eval.plots import require_map
        require_map(map_method)  # before the data is read
    train, test = _labeled_splits(cfg)
    require_channels(weights.encoder, train.images, cfg.data)
    out_dir = Path(out_dir) if out_dir else default_out_dir(weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = previous_report(out_dir, weights.step)
    report.update({"data": cfg.data, "arch": weights.encoder.spec.arch,
                   "width": weights.encoder.spec.width, "encoder_step": weights.step,
                   "weights": str(weights.path), "head_known": weights.head is not None,
                   "eval_train_images": len(train), "eval_test_images": len(test),
                   "eval_skipped_files": {"train": len(train.skipped),
                                          "test": len(test.skipped)},
                   "seed": seed})
    if weights.kind == "run":
        report["epochs"] = cfg.epochs
    seconds = report.setdefault("seconds", {})
    session = Session(weights, train, test, device, out_dir, seed,
                      linear_aug_epochs or LINEAR_AUG_EPOCHS, finetune_epochs, map_method)
    start = time.perf_counter()
    for name in protocols:
        t0 = time.perf_counter()
        report.update(PROTOCOLS.get(name)(session))
        seconds[name] = round(time.perf_counter() - t0, 2)
        if progress is not None:
            progress(f"  {name}: {seconds[name]:.1f} s")
    report["eval_seconds"] = round(time.perf_counter() - start, 2)
    if _class_count(train, test) <= 5:  # top-5 among 5 classes or fewer is 100% by definition
        for key in [k for k in report if k.endswith("_top5")]:
            del report[key]
    train_time = (weights.run_dir / "train_time.json") if weights.run_dir else None
    if train_time is not None and train_time.is_file():
        try:
            report["train_seconds"] = json.loads(train_time.read_text())["train_seconds"]
        except (ValueError, KeyError):
            pass
    blob = json.dumps(report, indent=2).encode()
    atomic_write(out_dir / "report.json", lambda f: f.write(blob))
    return report


def evaluate_run(path, device="cpu", protocols=FAST, data=None, data_dir=None, out_dir=None,
                 seed: int = 0, progress=None) -> dict:
    """Load a run folder, encoder .safetensors or checkpoint .pt and evaluate it."""
    weights = load_weights(path, data, data_dir, device)
    return evaluate_weights(weights, protocols, device, out_dir, seed, progress)
