"""What h keeps that z = g(h) throws away: the paper's Table 3 (section 4.2).

Small MLPs on frozen features predict which transformation was applied to an image. SimCLR
finds that h keeps what the contrastive loss taught g to ignore ("g can remove information
that may be useful for the downstream task, such as the color or orientation of objects"):

    task                     chance   h (paper)   z = g(h) (paper)
    colour vs grayscale        80       99.3         97.4
    rotation 0/90/180/270      25       67.6         25.6
    original vs noisy          50       99.5         59.6
    original vs Sobel          50       96.6         56.3

Here each image gets the light augmentation of linear evaluation (random resized crop and
flip), then the task's transformation with its label: grayscale with p = 0.2 (the paper's
grayscale probability, hence chance 80%), a uniform quarter turn, gaussian noise of std
NOISE_STD with p = 0.5, Sobel filtering with p = 0.5 (the ops of fastclr.augment). An MLP is
fitted on the features of training images and scored on those of test images.

One difference to keep in mind when reading the numbers side by side: for the last three rows
the paper pretrains with rotation, noise and Sobel added to its augmentation, so z was taught
to ignore them; an ordinary run's z never saw them, and this probe measures what it keeps
anyway. One-channel images have no colour to remove: that row is n/a there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.augment.colour import random_grayscale
from fastclr.augment.extra import add_noise, rotate_quarters, sobel
from fastclr.eval.features import extract_features, frozen, project


@dataclass(frozen=True)
class Task:
    label: str
    classes: int
    chance: float  # top-1 of always guessing the most frequent transformation
    paper_h: float  # Table 3, top-1 in [0, 1]
    paper_z: float


TASKS = {
    "colour": Task("colour vs grayscale", 2, 0.80, 0.993, 0.974),
    "rotation": Task("rotation 0/90/180/270", 4, 0.25, 0.676, 0.256),
    "noise": Task("original vs noisy", 2, 0.50, 0.995, 0.596),
    "sobel": Task("original vs Sobel-filtered", 2, 0.50, 0.966, 0.563),
}
GRAY_P = 0.2  # the paper's probability of grayscale (appendix A)
NOISE_STD = 0.1  # the top of fastclr's noise_std range: plain to see, objects still clear
FIT_IMAGES, SCORE_IMAGES = 5000, 2000


def transform(task: str, views: torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `task`'s transformation to some of the float views (n, C, S, S); returns the
    views and the label of each (n,) int64: 1 (or the quarter turns) where it was applied."""
    n, device = len(views), views.device
    if task == "rotation":
        turns = torch.randint(0, 4, (n,), generator=generator, device=device)
        return rotate_quarters(views, turns), turns
    p = GRAY_P if task == "colour" else 0.5
    applied = torch.rand(n, generator=generator, device=device) < p
    if task == "colour":
        out = random_grayscale(views, applied)
    elif task == "noise":
        noise = torch.randn(views.shape, generator=generator, device=device)
        out = add_noise(views, NOISE_STD * applied.float(), noise)
    elif task == "sobel":
        out = sobel(views, applied)
    else:
        raise ValueError(f"unknown transformation task {task!r}; known: {', '.join(TASKS)}")
    return out, applied.long()


def mlp_top1(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
             test_y: torch.Tensor, classes: int, seed: int = 0, hidden: int = 512,
             epochs: int = 30, batch_size: int = 256, lr: float = 1e-3) -> float:
    """Top-1 of a one-hidden-layer MLP (Adam, cross-entropy) fitted on standardised
    train_x (N, D) and scored on test_x. Its initialisation and batch order come from
    `seed`; the global random state is left as it was."""
    device = train_x.device
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, ts = (train_x - mean) / std, (test_x - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(xs.shape[1], hidden), nn.ReLU(),
                            nn.Linear(hidden, classes))
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    order = torch.Generator().manual_seed(seed)
    y = train_y.to(device)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(xs), generator=order).to(device)
            for i in range(0, len(xs), batch_size):
                idx = perm[i: i + batch_size]
                loss = F.cross_entropy(net(xs[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        return (net(ts).argmax(1) == test_y.to(device)).float().mean().item()


@torch.no_grad()
def _features(encoder, head, images, task, base_augment, generator, batch_size, device):
    """h, z (or None) and labels of the transformed views of uint8 images."""
    hs, ys = [], []
    for i in range(0, len(images), batch_size):
        views = base_augment(images[i: i + batch_size].to(device), generator)  # crop + flip
        views, labels = transform(task, views, generator)
        hs.append(extract_features(encoder, views, batch_size, device))
        ys.append(labels)
    h = torch.cat(hs)
    return h, None if head is None else project(head, h), torch.cat(ys)


def transformation_probe(encoder: nn.Module, head: nn.Module | None,
                         train_images: torch.Tensor, test_images: torch.Tensor, base_augment,
                         seed: int = 0, device="cpu", batch_size: int = 512,
                         tasks=tuple(TASKS)) -> dict:
    """Table 3 on a frozen encoder (and head): for each task, top-1 of an MLP on h and on z
    predicting the transformation, fitted on views of train_images and scored on views of
    test_images (uint8 (N, C, H, W)). Returns {task: {"h", "z", "chance", "paper_h",
    "paper_z", "label"}}, with h and z None and a "why" where a task cannot exist."""
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    out = {}
    with frozen(encoder), (frozen(head) if head is not None else contextlib.nullcontext()):
        for task in tasks:
            spec = TASKS[task]
            row = {"label": spec.label, "chance": spec.chance, "paper_h": spec.paper_h,
                   "paper_z": spec.paper_z, "h": None, "z": None}
            if task == "colour" and train_images.shape[1] != 3:
                row["why"] = "one-channel images: no colour to remove"
                out[task] = row
                continue
            h_fit, z_fit, y_fit = _features(encoder, head, train_images, task, base_augment,
                                            generator, batch_size, device)
            h_test, z_test, y_test = _features(encoder, head, test_images, task, base_augment,
                                               generator, batch_size, device)
            row["h"] = mlp_top1(h_fit, y_fit, h_test, y_test, spec.classes, seed)
            if head is not None:
                row["z"] = mlp_top1(z_fit, y_fit, z_test, y_test, spec.classes, seed)
            out[task] = row
    return out


def pretrained_with(cfg) -> list[str]:
    """Which of the probe's transformations the run's own augmentation applied."""
    ops = cfg.augment_ops
    on = lambda op, p: p > 0 and (ops is None or op in ops)  # noqa: E731
    return [name for name, op, p in (("rotation", "rotate", cfg.rotate_p),
                                      ("noise", "noise", cfg.noise_p),
                                      ("sobel", "sobel", cfg.sobel_p)) if on(op, p)]
