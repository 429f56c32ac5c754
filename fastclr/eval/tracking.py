"""How the representation forms: h and z measured on a fixed probe set during pretraining.

Every `track_every` epochs, and before the first step and after the last, the Tracker runs the
encoder f and the head g, in eval mode and without gradients, on a fixed sample of training
images (never the test split) and records:

- alignment and uniformity of h and z (Wang and Isola, ICML 2020), on two augmented views of
  each probe image: the two halves of what NT-Xent optimises;
- the spectrum of h and of z: eigenvalues of the covariance of the probe embeddings (rows
  L2-normalised: the cosine geometry the loss and kNN see), sorted (Jing et al., ICLR 2022:
  dimensional collapse shows as a tail of vanishing eigenvalues); and the effective rank
  (Roy and Vetterli 2007, on the raw embeddings, as `fastclr eval`'s diagnostics compute it);
- kNN top-1 of h and z, the probe images against a bank of other training images;
- the contrastive task's own top-1 (SimCLR section 2.1), at the pretraining batch size;
- the mean cosine of positive pairs (two views of one image) and of negatives (views of
  different images), and their distributions.

It draws views from its own generator, seeded the same at every point (the measures change
only because the model did), never touches the global random state, and leaves every module
in the mode it found it: training with or without tracking gives the same weights, bit for
bit. The record, in the run folder:

    dynamics/probe.json         the probe set (split, fixed sample, labels, hash), kNN k, bank
    dynamics/step-<step>.npz    h and z of the probe images (L2-normalised rows as float16,
                                norms as float32), the spectra, histograms of the cosines
    metrics.jsonl, tensorboard  the scalars of each point, keys dynamics/*; histograms in TB

`fastclr inspect RUN` draws the pictures (fastclr/eval/inspect.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.checkpoint import atomic_write
from fastclr.data import get_spec, load_split
from fastclr.data.load import name_skipped
from fastclr.errors import DataError
from fastclr.eval.diagnostics import alignment, contrastive_top1, effective_rank, uniformity
from fastclr.eval.features import extract_features, project
from fastclr.eval.probes import k_that_fits, knn_top1

log = logging.getLogger("fastclr")

BANK_PER_PROBE = 4  # the kNN bank holds this many training images per probe image
VIEW_SEED = 0  # the probe's augmented views: the same at every point of every run
COSINE_BINS = np.linspace(-1.0, 1.0, 201)  # histogram edges of the cosine distributions
SPACES = ("h", "z")
MEASURES = ("alignment", "uniformity", "effective_rank", "knn_top1", "contrastive_top1",
            "cos_pos", "cos_neg")


# ---- the measures, on tensors ---------------------------------------------------------------


def pair_cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines of the positive pairs (n,) and of every negative pair (2n (2n - 2),).

    Rows i of a and b (n, d) are two views of image i; a negative is any two views of
    different images, counted in both orders, as the 2n anchors of NT-Xent see them.
    """
    n = len(a)
    x = F.normalize(torch.cat([a, b]).float(), dim=1)  # (2n, d)
    sim = x @ x.T  # (2n, 2n) cosine similarities; the diagonal is each view with itself
    positive = sim.diagonal(n)  # sim[i, n + i]
    negative = torch.ones_like(sim, dtype=torch.bool)
    negative.fill_diagonal_(False)
    idx = torch.arange(n, device=sim.device)
    negative[idx, idx + n] = negative[idx + n, idx] = False
    return positive, sim[negative]


def covariance_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the covariance of the rows of x (N, D), largest first: min(N - 1, D)
    values (Jing et al. 2022 plot their logarithm to show dimensional collapse)."""
    centred = x.double() - x.double().mean(0)
    s = torch.linalg.svdvals(centred)  # (min(N, D),); the covariance is centred^T centred / (N-1)
    return (s.pow(2) / max(len(x) - 1, 1))[: min(len(x) - 1, x.shape[1])]


def histogram(values: torch.Tensor) -> np.ndarray:
    """Counts of `values` in COSINE_BINS (values outside [-1, 1] by rounding go to the ends)."""
    v = values.float().clamp(-1, 1).cpu().numpy()
    return np.histogram(v, bins=COSINE_BINS)[0].astype(np.int64)


def measure(clean: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor, labels=None,
            bank: torch.Tensor | None = None, bank_labels=None, k: int = 20,
            temperature: float = 0.1, task_batch: int = 256) -> tuple[dict, dict]:
    """Every tracked measure of one space (h or z).

    clean (P, d): features of the probe images; view1, view2 (P, d): of their two views;
    bank (B, d) with bank_labels, and labels (P,): for kNN top-1 (skipped without labels).
    Returns (scalars, arrays): floats by measure name; the spectrum and the cosine
    histograms.
    """
    positive, negative = pair_cosines(view1, view2)
    scalars = {
        "alignment": alignment(view1, view2).item(),
        "uniformity": (0.5 * (uniformity(view1) + uniformity(view2))).item(),
        "effective_rank": effective_rank(clean).item(),
        "contrastive_top1": contrastive_top1(view1, view2, min(task_batch, len(view1))).item(),
        "cos_pos": positive.mean().item(),
        "cos_neg": negative.mean().item(),
    }
    if labels is not None and bank is not None:
        scalars["knn_top1"] = knn_top1(bank, bank_labels, clean, labels, k, temperature)
    spectrum = covariance_spectrum(F.normalize(clean.float(), dim=1))
    arrays = {"spectrum": spectrum.float().cpu().numpy(),
              "cos_pos_hist": histogram(positive), "cos_neg_hist": histogram(negative)}
    return scalars, arrays


# ---- the tracker ----------------------------------------------------------------------------


def point_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.npz"


def point_step(path: Path) -> int | None:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return None


class Tracker:
    """The probe set of a run and the measures of h and z on it, every `every` steps.

    The probe is a fixed sample of the training split (the same for every run of a data set,
    and across resumes: its hash is kept in probe.json and checked): track_images probe
    images and, where there are labels, BANK_PER_PROBE times as many bank images for kNN.
    """

    def __init__(self, cfg, device: torch.device, run_dir: Path, every: int, augment,
                 resume_step: int = 0):
        spec = get_spec(cfg.data)
        share = 1 + BANK_PER_PROBE if spec.labeled else 1  # no labels: no kNN, no bank
        images = load_split(cfg.data, spec.train, cfg.data_dir, size=cfg.image_size,
                            sample=cfg.track_images * share)
        name_skipped(cfg.data, spec.train, images.source, images.skipped)
        n = min(cfg.track_images, len(images) // share)
        if n < 8:
            raise DataError(f"{cfg.data}: {len(images)} training images are too few for a "
                            "tracking probe set; use --track-every 0")
        # a whole split comes in file order (often sorted by class): shuffle, always the same
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        self.probe = images.subset(order[:n])
        self.bank = images.subset(order[n: n * share])
        self.labeled = images.labels is not None and len(self.bank) > 0
        self.k = k_that_fits(cfg.knn_k, self.bank.labels) if self.labeled else None
        self.cfg, self.device, self.every, self.augment = cfg, device, every, augment
        self.folder = Path(run_dir) / "dynamics"
        self.seconds, self.points = 0.0, 0
        self._probe_on_device = self.probe.images.to(device)
        self._prepare_folder(spec.train, images, resume_step)

    def _prepare_folder(self, split: str, images, resume_step: int) -> None:
        """probe.json (checked against an earlier session's), and no point after the step
        the run resumes from (those are redone, as metrics.jsonl's lines are)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.glob("step-*.npz"):
            step = point_step(path)
            if step is not None and step > resume_step:
                path.unlink()
        digest = hashlib.sha256()
        digest.update(self.probe.images.contiguous().numpy().tobytes())
        digest.update(self.bank.images.contiguous().numpy().tobytes())
        info = {"data": self.cfg.data, "split": split, "source": images.source,
                "data_fingerprint": images.fingerprint, "images": len(self.probe),
                "bank_images": len(self.bank), "sha256": digest.hexdigest(),
                "sample": "a fixed random sample (seed 0) of the split, the same for every run",
                "view_seed": VIEW_SEED, "every_steps": self.every, "knn_k": self.k,
                "knn_temperature": self.cfg.knn_temperature,
                "contrastive_batch": min(self.cfg.batch_size, len(self.probe)),
                "classes": images.classes,
                "labels": None if not self.labeled else self.probe.labels.tolist(),
                "paths": self.probe.paths}
        path = self.folder / "probe.json"
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        info["changed_at_step"] = [] if old is None else old.get("changed_at_step", [])
        if old is not None and old.get("sha256") != info["sha256"]:
            log.warning("tracking: the probe images differ from those this run's earlier "
                        "sessions measured (the data set's files changed?); the measures "
                        "before and after step %d are not comparable", resume_step)
            info["changed_at_step"].append(resume_step)
        blob = json.dumps(info, indent=1).encode()
        atomic_write(path, lambda f: f.write(blob))

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def recorded(self, step: int) -> bool:
        return point_path(self.folder, step).is_file()

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> tuple[dict, dict]:
        """Measure the model at `step` and write its point; returns the scalars (keys
        dynamics/<measure>_<space>) and the cosines for TensorBoard's histograms."""
        start = time.perf_counter()
        cfg, device = self.cfg, self.device
        bs, size = cfg.eval_batch_size, cfg.image_size
        encoder, head = model.encoder, model.head
        generator = torch.Generator(device).manual_seed(VIEW_SEED)
        v1, v2 = self.augment.two_views(self._probe_on_device, generator)  # (P, C, S, S) each
        h_clean = extract_features(encoder, self.probe.images, bs, device, size)
        h_views = extract_features(encoder, torch.cat([v1, v2]), bs, device, size)
        h_bank = extract_features(encoder, self.bank.images, bs, device, size) \
            if self.labeled else None
        n = len(v1)
        spaces = {"h": (h_clean, h_views, h_bank)}
        spaces["z"] = tuple(None if t is None else project(head, t) for t in spaces["h"])
        labels = self.probe.labels.to(device) if self.labeled else None
        bank_labels = self.bank.labels.to(device) if self.labeled else None
        scalars, arrays, cosines = {}, {}, {}
        for name, (clean, views, bank) in spaces.items():
            values, extra = measure(clean, views[:n], views[n:], labels, bank, bank_labels,
                                    self.k or 1, cfg.knn_temperature, cfg.batch_size)
            scalars.update({f"dynamics/{m}_{name}": v for m, v in values.items()})
            arrays.update({f"{a}_{name}": v for a, v in extra.items()})
            norms = clean.norm(dim=1)
            arrays[name] = (clean / norms.clamp_min(1e-12)[:, None]).half().cpu().numpy()
            arrays[f"{name}_norm"] = norms.float().cpu().numpy()
            cosines[f"dynamics/cos_pos_{name}"], cosines[f"dynamics/cos_neg_{name}"] = \
                pair_cosines(views[:n], views[n:])
        buffer = io.BytesIO()
        np.savez(buffer, step=np.int64(step), **arrays)
        atomic_write(point_path(self.folder, step), lambda f: f.write(buffer.getvalue()))
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.points += 1
        scalars["dynamics/seconds"] = seconds
        return scalars, cosines


# ---- reading the record ---------------------------------------------------------------------


def read_points(run_dir: Path) -> list[tuple[int, dict]]:
    """(step, arrays) of every recorded point of a run, in step order (arrays loaded lazily:
    an NpzFile)."""
    folder = Path(run_dir) / "dynamics"
    found = []
    for path in folder.glob("step-*.npz"):
        step = point_step(path)
        if step is not None:
            found.append((step, path))
    return [(step, np.load(path)) for step, path in sorted(found)]


def read_probe(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "dynamics" / "probe.json").read_text())
    except (OSError, ValueError):
        return None


def tracking_steps(cfg, steps_per_epoch: int) -> int:
    """Steps between points: track_every epochs, at least one step."""
    return max(1, math.floor(cfg.track_every * steps_per_epoch + 0.5))
