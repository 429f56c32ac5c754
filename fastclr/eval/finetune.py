"""Semi-supervised learning by fine-tuning on a few labels (SimCLR section 6, appendix B.5).

The paper fine-tunes the whole pretrained network plus a new linear head on class-balanced
1% and 10% subsets of the ImageNet labels: Nesterov momentum 0.9, lr 0.05 x B/256 without
warmup, no weight decay or other regularisation, random crop + flip only, 60 epochs (1%) or
30 epochs (10%). We keep all of that and only shrink the batch for a CPU (4096 -> 128; the
linear rule keeps lr per image the same). The learning rate decays by a cosine to zero, as
in the official code.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastclr.eval.features import autocast_for, extract_features, frozen
from fastclr.eval.probes import cosine_lr, topk_accuracy

# the paper's fine-tuning lengths (appendix B.5), by fraction of labels
PAPER_EPOCHS = {0.01: 60, 0.1: 30}


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of a class-balanced subset: floor(fraction x n_c) images of each class c
    (at least 1), drawn with a fixed seed.

    The per-class draw does not depend on `fraction`, so for one seed the subsets are nested
    (the 1% subset lies inside the 10% one), as a label budget that grows should be.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():  # sorted classes: the draw order is fixed
        members = (labels == c).nonzero().flatten()  # (n_c,)
        order = torch.randperm(len(members), generator=gen)
        # the tiny margin keeps e.g. 0.29 x 100 = 28.999999999999996 at 29
        count = max(1, int(fraction * len(members) + 1e-9))
        chosen.append(members[order[:count]])
    return torch.cat(chosen).sort().values


def finetune(encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
             test_images: torch.Tensor, test_labels: torch.Tensor, augment, epochs: int,
             batch_size: int = 128, base_lr: float = 0.05, seed: int = 0,
             device: torch.device | str = "cpu", eval_batch_size: int = 512) -> dict:
    """Fine-tune a copy of `encoder` plus a zero-initialised linear head on the labeled uint8
    images; return test top-1 and top-5. The caller's encoder is left exactly as it was.

    Every layer trains, BN in train mode, as in appendix B.5; `augment(uint8 batch, generator)`
    gives crop + flip views (build it with colour, grayscale and blur off). Test images are
    used whole, un-augmented.
    """
    device = torch.device(device)
    start = time.perf_counter()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    n = len(train_images)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # drop the last partial batch: BN dislikes tiny ones
    total = epochs * steps_per_epoch
    peak = base_lr * batch_size / 256
    images, labels = train_images.to(device), train_labels.to(device)
    order_gen = torch.Generator().manual_seed(seed)
    view_gen = torch.Generator(device).manual_seed(seed)
    with frozen(encoder):  # proves the original is untouched: only the copy trains
        model = copy.deepcopy(encoder).to(device)
    model.requires_grad_(True)
    feat_dim = extract_features(model, images[:2], 2, device).shape[1]  # (keeps BN stats)
    model.train()
    head = nn.Linear(feat_dim, num_classes).to(device)
    nn.init.zeros_(head.weight)  # zero logits layer at the start, as the official code does
    nn.init.zeros_(head.bias)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=peak, momentum=0.9, nesterov=True, weight_decay=0.0)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order_gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size: (i + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, peak)
            with autocast_for(device):
                x = augment(images[idx], view_gen)  # (B, C, S, S) in [0, 1]
                logits = head(model(x).float())  # (B, num_classes)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    test_h = extract_features(model, test_images, eval_batch_size, device)  # eval mode
    with torch.no_grad():
        logits = head(test_h)
    test_labels = test_labels.to(device)
    return {"top1": topk_accuracy(logits, test_labels, 1),
            "top5": topk_accuracy(logits, test_labels, 5), "images": n, "epochs": epochs,
            "batch_size": batch_size, "lr": peak, "steps": total,
            "seconds": time.perf_counter() - start}
