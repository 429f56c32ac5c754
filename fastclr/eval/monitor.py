"""Signals of learning during pretraining: the kNN monitor (which picks best.pt) and the
online linear probe of the official SimCLR code. Neither ever sees the test split."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.config import Config
from fastclr.data import get_spec, load_split
from fastclr.eval.features import extract_features
from fastclr.eval.probes import knn_top1


class Monitor:
    """kNN top-1 on labeled training images: a bank and disjoint queries, both from the train
    split, so the best checkpoint it picks was never chosen by the test set."""

    def __init__(self, cfg: Config, device: torch.device, bank_size=10_000, query_size=2_000):
        spec = get_spec(cfg.data)
        size = cfg.image_size  # features at the training resolution (folder sets decode at it)
        images = load_split(cfg.data, spec.train, cfg.data_dir, size=size,
                            sample=bank_size + query_size)
        cut = len(images) * bank_size // (bank_size + query_size)
        self.bank = images.subset(torch.arange(cut))
        self.query = images.subset(torch.arange(cut, len(images)))
        self.cfg, self.device = cfg, device

    def __call__(self, encoder: nn.Module) -> float:
        bs, size = self.cfg.eval_batch_size, self.cfg.image_size
        fb = extract_features(encoder, self.bank.images, bs, self.device, size=size)
        fq = extract_features(encoder, self.query.images, bs, self.device, size=size)
        return knn_top1(fb, self.bank.labels, fq, self.query.labels, self.cfg.knn_k,
                        self.cfg.knn_temperature)


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
