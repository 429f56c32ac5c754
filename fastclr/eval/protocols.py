"""The evaluation protocols by name. A protocol is a function of a `Session` (the weights,
the labeled train/test splits and cached features) returning flat report entries; top-1/top-5
values are fractions of the test set in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from fastclr.augment import SimCLRAugment
from fastclr.augment.pipeline import augment_from_config
from fastclr.data import ImageSet
from fastclr.eval.diagnostics import diagnose
from fastclr.eval.features import extract_features, frozen, pixel_features, project
from fastclr.eval.finetune import PAPER_EPOCHS, balanced_subset, finetune
from fastclr.eval.cache import baselines_key, cached
from fastclr.eval.probes import (KNN_KS, choose_knn_k, evaluate_encoder, evaluate_features,
                                 knn_table, knn_top1, linear_probe, linear_probe_augmented,
                                 nearest_neighbours)
from fastclr.eval.weights import Weights
from fastclr.models import build_encoder
from fastclr.spec import encoder_spec_dict

LINEAR_AUG_EPOCHS = 5  # the paper trains 90 on ImageNet; 5 x 60k views fit a CPU budget
# The paper's linear evaluation (appendix B.6): as its fine-tuning (B.5: Nesterov momentum,
# batch 4096, crop + flip, no regularisation, no warmup) with lr 0.1 x B/256 for 90 epochs;
# linear-b6-cpu is the same recipe cut to 10 epochs, what a CPU affords
B6_EPOCHS, B6_CPU_EPOCHS = 90, 10
B6_BATCH, B6_BASE_LR = 4096, 0.1
FINETUNE_BATCH = 128  # the paper's 4096 scaled down for a CPU; lr follows 0.05 x B/256
DIAGNOSTIC_IMAGES = 2048
MAP_IMAGES = 2000
GRID_NEIGHBOURS = 8


def random_init_like(encoder: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised encoder of the same architecture and input normalisation
    (drawn from `seed`, leaving the global random state as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_encoder(encoder.spec)
    return fresh.to(encoder.mean.device)


def crop_flip_augment(cfg) -> SimCLRAugment:
    """The light augmentation of linear evaluation and fine-tuning: the run's random resized
    crop (its sampler and resize too) and horizontal flip, no colour, grayscale or blur
    (appendix B.5)."""
    return SimCLRAugment(size=cfg.image_size, crop_scale=cfg.crop_scale,
                         crop_ratio=cfg.crop_ratio, flip_p=cfg.flip_p, color_p=0.0, gray_p=0.0,
                         blur_p=0.0, crop_sampler=cfg.crop_sampler,
                         crop_interpolation=cfg.crop_interpolation)


class Session:
    """What the protocols share: weights, labeled splits, and features computed once."""

    def __init__(self, weights: Weights, train: ImageSet, test: ImageSet, device,
                 out_dir: Path, seed: int = 0, linear_aug_epochs: int = LINEAR_AUG_EPOCHS,
                 finetune_epochs: dict[float, int] | None = None, map_method: str = "tsne"):
        self.weights, self.cfg = weights, weights.cfg
        self.map_method = map_method  # the embedding map of `plots`: tsne or umap
        self.linear_aug_epochs = linear_aug_epochs
        self.finetune_epochs = finetune_epochs or PAPER_EPOCHS
        self.encoder, self.head = weights.encoder, weights.head
        self.train, self.test = train, test
        self.device, self.out_dir, self.seed = torch.device(device), out_dir, seed
        self._h: tuple[torch.Tensor, torch.Tensor] | None = None
        self._z: tuple[torch.Tensor, torch.Tensor] | None = None
        self._knn_k: tuple[int, str | None] | None = None

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

    def knn_k(self) -> tuple[int, str | None]:
        """The headline k of kNN, and why when it is not the config's (a class has fewer
        training images than k): see probes.choose_knn_k. Every kNN row uses it."""
        if self._knn_k is None:
            h_train, _ = self.h()
            self._knn_k = choose_knn_k(h_train, self.train.labels, self.cfg.knn_k,
                                       self.cfg.knn_temperature, seed=self.seed)
        return self._knn_k

    def z(self) -> tuple[torch.Tensor, torch.Tensor]:
        """z = g(h) of the train and test images, with the frozen head."""
        if self._z is None:
            h_train, h_test = self.h()
            with frozen(self.head):
                self._z = (project(self.head, h_train), project(self.head, h_test))
        return self._z


def run_linear(s: Session) -> dict:
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


PCA_DIMS = (2, 4, 8, 16, 32, 64, 128, 256)


def run_pca(s: Session) -> dict:
    """h compressed after training: a linear probe on the top-k principal components of the
    training features, for each k below h's size (the notes' "smaller embeddings")."""
    h_train, h_test = s.h()
    mean = h_train.mean(0)
    _, _, components = torch.linalg.svd(h_train - mean, full_matrices=False)  # (D, D) rows
    out = {}
    for k in (k for k in PCA_DIMS if k < h_train.shape[1]):
        basis = components[:k].T  # (D, k)
        probe = linear_probe((h_train - mean) @ basis, s.train.labels, (h_test - mean) @ basis,
                             s.test.labels, seed=s.seed)
        out[str(k)] = probe["top1"]
    return {"pca_top1": out}


def run_knn(s: Session) -> dict:
    h_train, h_test = s.h()
    (k, why), temp = s.knn_k(), s.cfg.knn_temperature
    table = knn_table(h_train, s.train.labels, h_test, s.test.labels,
                      sorted(set(KNN_KS) | {k}), temp)
    out = {"knn_top1": table[k], "knn_k": k, "knn_k_why": why, "knn_temperature": temp,
           "knn_table": {str(kk): table[kk] for kk in KNN_KS}}
    if s.head is not None:
        z_train, z_test = s.z()
        out["knn_z_top1"] = knn_top1(z_train, s.train.labels, z_test, s.test.labels, k, temp)
    return out


def run_baselines(s: Session) -> dict:
    """A random-init encoder and raw pixels. They read no trained weight, so they are kept
    under $FASTCLR_CACHE, keyed by what they depend on (fastclr/eval/cache.py)."""
    cfg, (k, _) = s.cfg, s.knn_k()

    def compute() -> dict:
        rand = evaluate_encoder(random_init_like(s.encoder, s.seed + 1), s.train, s.test,
                                s.device, cfg.eval_batch_size, k, cfg.knn_temperature,
                                cfg.image_size)
        pix = evaluate_features(pixel_features(s.train.images).to(s.device), s.train.labels,
                                pixel_features(s.test.images).to(s.device), s.test.labels,
                                k, cfg.knn_temperature)
        return {"random_init_linear_top1": rand["linear_top1"],
                "random_init_knn_top1": rand["knn_top1"],
                "pixels_linear_top1": pix["linear_top1"], "pixels_knn_top1": pix["knn_top1"]}

    key = baselines_key(s.train, s.test, encoder_spec_dict(s.encoder.spec), s.seed + 1, k,
                        cfg.knn_temperature, cfg.image_size, s.device.type)
    result, hit = cached("baselines", key, compute)
    return {**result, "baselines_cached": hit}


def run_transforms(s: Session) -> dict:
    """The paper's Table 3: what h keeps that z = g(h) throws away (fastclr/eval/transforms.py)."""
    from fastclr.eval.transforms import (FIT_IMAGES, SCORE_IMAGES, pretrained_with,
                                         transformation_probe)

    g = torch.Generator().manual_seed(s.seed)
    fit = s.train.images[torch.randperm(len(s.train), generator=g)[:FIT_IMAGES]]
    score = s.test.images[torch.randperm(len(s.test), generator=g)[:SCORE_IMAGES]]
    rows = transformation_probe(s.encoder, s.head, fit, score, crop_flip_augment(s.cfg),
                                seed=s.seed, device=s.device, batch_size=s.cfg.eval_batch_size)
    return {"transforms": rows, "transforms_images": [len(fit), len(score)],
            "transforms_pretrained_with": pretrained_with(s.cfg)}


def run_diagnostics(s: Session) -> dict:
    images = s.test.images[:DIAGNOSTIC_IMAGES]
    return diagnose(s.encoder, images, augment_from_config(s.cfg), s.head,
                    task_batch=s.cfg.batch_size, seed=s.seed,
                    batch_size=s.cfg.eval_batch_size, device=s.device)


def run_plots(s: Session) -> dict:
    from fastclr.eval import dynamics, plots

    written = []
    if s.weights.run_dir is not None:  # training curves, and the tracking record's pictures
        written += [p.name for p in dynamics.draw(s.weights.run_dir, s.out_dir, s.seed)]
    h_train, h_test = s.h()
    g = torch.Generator().manual_seed(s.seed)
    pick = torch.randperm(len(h_test), generator=g)[:MAP_IMAGES]
    make_map, method = plots.MAPS[s.map_method]
    xy = make_map(h_test[pick], s.seed)
    plots.plot_embedding_map(xy, s.test.labels[pick], s.test.classes,
                             s.out_dir / "embedding_map.png", f"test features ({method} of h)")
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
    return {"plots": written, "embedding_map_method": method}


def run_linear_aug(s: Session) -> dict:
    cfg = s.cfg
    res = linear_probe_augmented(s.encoder, s.train.images, s.train.labels, s.test.images,
                                 s.test.labels, crop_flip_augment(cfg),
                                 epochs=s.linear_aug_epochs, seed=s.seed, device=s.device,
                                 eval_batch_size=cfg.eval_batch_size)
    return {"linear_aug_top1": res["top1"], "linear_aug_top5": res["top5"],
            "linear_aug_epochs": res["epochs"], "linear_aug_lr": res["lr"]}


def _linear_b6(s: Session, epochs: int, key: str) -> dict:
    """The paper's linear evaluation (appendix B.6) for `epochs`: a plain linear layer on h,
    zero-initialised, SGD with Nesterov momentum at 0.1 x B/256 (B = 4096, or the whole
    training set if smaller) decayed by a cosine, no weight decay, crop + flip views, the
    frozen encoder in eval mode; scored on the un-augmented test images."""
    cfg = s.cfg
    res = linear_probe_augmented(s.encoder, s.train.images, s.train.labels, s.test.images,
                                 s.test.labels, crop_flip_augment(cfg), epochs=epochs,
                                 batch_size=B6_BATCH, base_lr=B6_BASE_LR, seed=s.seed,
                                 device=s.device, eval_batch_size=cfg.eval_batch_size,
                                 standardize=False)
    return {f"{key}_top1": res["top1"], f"{key}_top5": res["top5"],
            f"{key}_epochs": res["epochs"], f"{key}_batch_size": res["batch_size"],
            f"{key}_lr": res["lr"]}


def run_linear_b6(s: Session) -> dict:
    return _linear_b6(s, B6_EPOCHS, "linear_b6")


def run_linear_b6_cpu(s: Session) -> dict:
    return _linear_b6(s, B6_CPU_EPOCHS, "linear_b6_cpu")


def run_finetune(s: Session) -> dict:
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
