"""The parts a user picks by name: backbones, projection heads, optimisers, evaluation protocols.

Each registry maps a name to an object and one line of help. The built-in entries are declared
here as "module:attribute" and imported on first use, so that the command line can list, check
and explain every name (its choices and help text come from these registries) without importing
torch. A user's own part is registered with the object itself:

    from fastclr.registry import BACKBONES
    BACKBONES.register("tiny", build_tiny, "a 2-layer CNN for tests")

docs/extending.md says, for each registry, what the object must be.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from fastclr.errors import ConfigError


@dataclass
class Entry:
    name: str
    help: str
    target: str | None = None  # "module:attribute", imported on first `get`
    obj: Any = None


class Registry:
    """Names -> objects, in declaration order; `in`, iteration and `names()` never import."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def declare(self, name: str, target: str, help: str) -> None:
        """A built-in entry, imported from `target` ("module:attribute") when first used."""
        self._add(Entry(name, help, target=target))

    def register(self, name: str, obj: Any = None, help: str = "") -> Any:
        """Register `obj` under `name`; without `obj`, a decorator that registers its target."""
        if obj is None:
            def decorate(target: Any) -> Any:
                self._add(Entry(name, help or _first_line(target), obj=target))
                return target
            return decorate
        self._add(Entry(name, help or _first_line(obj), obj=obj))
        return obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def help(self, name: str) -> str:
        return self._entry(name).help

    def get(self, name: str) -> Any:
        """The object registered as `name`; an unknown name is a ConfigError listing the known."""
        entry = self._entry(name)
        if entry.obj is None:
            module, _, attribute = entry.target.partition(":")
            entry.obj = getattr(importlib.import_module(module), attribute)
        return entry.obj

    def _entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self)}")
        return self._entries[name]


def _first_line(obj: Callable) -> str:
    return ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]


BACKBONES = Registry("backbone")
BACKBONES.declare("resnet18", "fastclr.models:resnet18",
                  "ResNet-18 (He et al. 2016): basic blocks 2-2-2-2, 512-d h at width 1")
BACKBONES.declare("resnet34", "fastclr.models:resnet34",
                  "ResNet-34: basic blocks 3-4-6-3, 512-d h at width 1")
BACKBONES.declare("resnet50", "fastclr.models:resnet50",
                  "ResNet-50, the paper's encoder: bottlenecks 3-4-6-3, 2048-d h at width 1")

NORMS = Registry("normalisation")
NORMS.declare("batch", "fastclr.norms:batch_norm",
              "batch norm (Ioffe & Szegedy 2015), the paper's; global across processes")
NORMS.declare("layer", "fastclr.norms:layer_norm",
              "layer norm (Ba et al. 2016): over channels and pixels of each image")
NORMS.declare("group", "fastclr.norms:group_norm",
              "group norm (Wu & He 2018), 32 groups of at least 4 channels, with weight "
              "standardisation of the convolutions (Qiao et al. 2019)")
NORMS.declare("none", "fastclr.norms:no_norm", "no normalisation layers")

HEADS = Registry("projection head")
HEADS.declare("nonlinear", "fastclr.models:nonlinear_head",
              "the paper's MLP g: (Linear-BN-ReLU) x (layers - 1), then Linear (section 4.2)")
HEADS.declare("linear", "fastclr.models:linear_head", "one Linear layer (Figure 8's 'linear')")
HEADS.declare("none", "fastclr.models:identity_head",
              "no head: the loss is applied to h itself (Figure 8's 'none')")

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.declare("lars", "fastclr.optim:lars",
                   "LARS (You et al. 2017), the paper's: trust ratio 0.001, momentum 0.9")
OPTIMIZERS.declare("sgd", "fastclr.optim:sgd", "SGD with momentum (fused)")
OPTIMIZERS.declare("adamw", "fastclr.optim:adamw", "AdamW (fused)")

LOSSES = Registry("loss")
LOSSES.declare("nt-xent", "fastclr.loss:nt_xent",
               "NT-Xent, the paper's (section 2.1, eq. 1): softmax over the 2N - 1 other views")
LOSSES.declare("nt-logistic", "fastclr.loss:nt_logistic",
               "NT-Logistic (Table 2): sigmoid on the positive and on each negative")
LOSSES.declare("margin-triplet", "fastclr.loss:margin_triplet",
               "margin triplet (Table 2): max(s_neg - s_pos + margin, 0)")

PROTOCOLS = Registry("evaluation protocol")
PROTOCOLS.declare("linear", "fastclr.eval.protocols:run_linear",
                  "logistic regression (L-BFGS, L2 tuned) on frozen un-augmented h, and on "
                  "z = g(h): the paper's transfer protocol (appendix B.8), not its ImageNet "
                  "linear evaluation")
PROTOCOLS.declare("knn", "fastclr.eval.protocols:run_knn",
                  "weighted cosine kNN on frozen h (Wu et al. 2018), k = 1, 5, 20, 200 "
                  "(headline: knn_k if it fits)")
PROTOCOLS.declare("baselines", "fastclr.eval.protocols:run_baselines",
                  "linear and kNN of a random-init encoder and of raw pixels")
PROTOCOLS.declare("diagnostics", "fastclr.eval.protocols:run_diagnostics",
                  "alignment, uniformity, effective rank, contrastive top-1")
PROTOCOLS.declare("transforms", "fastclr.eval.protocols:run_transforms",
                  "Table 3: MLPs on h and on z name the transformation applied (what g drops)")
PROTOCOLS.declare("plots", "fastclr.eval.protocols:run_plots",
                  "training curves, the tracking record's pictures, t-SNE (or UMAP) map, neighbour grid")
PROTOCOLS.declare("pca", "fastclr.eval.protocols:run_pca",
                  "linear probes on h compressed by PCA to 2, 4, 8, ... dimensions")
PROTOCOLS.declare("linear-aug", "fastclr.eval.protocols:run_linear_aug",
                  "slow: a linear layer by SGD on crop + flip views of the frozen encoder, h "
                  "standardised by a BN, 5 epochs (fastclr's quick variant of B.6)")
PROTOCOLS.declare("linear-b6-cpu", "fastclr.eval.protocols:run_linear_b6_cpu",
                  "slow: the paper's linear evaluation recipe (appendix B.6) cut to 10 epochs, "
                  "a CPU budget")
PROTOCOLS.declare("linear-b6", "fastclr.eval.protocols:run_linear_b6",
                  "slowest, only when named: the paper's linear evaluation (appendix B.6): a "
                  "linear layer on h, SGD with Nesterov momentum, batch 4096, lr 0.1 x B/256, "
                  "cosine, no weight decay, crop + flip views, 90 epochs")
PROTOCOLS.declare("finetune", "fastclr.eval.protocols:run_finetune",
                  "slow: fine-tuning on class-balanced 1% and 10% of the labels (section 6)")

STUDIES = Registry("study")
for _name, _target, _help in (
        ("head", "HEAD", "Figure 8, section 4.2: no / linear / nonlinear head; h against z"),
        ("proj-dim", "PROJ_DIM", "Figure 8: the head's output size, 8 to 2048"),
        ("embedding-size", "EMBEDDING_SIZE", "the notes: the size of h, of z, and of h "
         "compressed by PCA"),
        ("temperature", "TEMPERATURE", "Table 5: tau 0.05 to 1 with l2-normalised z, 10 and "
         "100 without"),
        ("loss", "LOSS", "Tables 2 and 4: NT-Xent, NT-Logistic, margin triplet, semi-hard "
         "negatives"),
        ("augment", "AUGMENT", "Figure 5: single ops and pairs on one branch (crop, colour, "
         "cutout, rotate)"),
        ("augment-full", "AUGMENT_FULL", "Figure 5: single ops and pairs of all seven ops"),
        ("color-strength", "COLOR_STRENGTH", "Table 1: colour strength 0 to 1 (+ blur), SimCLR "
         "against supervised"),
        ("batch-size", "BATCH_SIZE", "Figure 9: batch 64 to 1024 at two training lengths"),
        ("model-size", "MODEL_SIZE", "Figure 7: width and depth, SimCLR against supervised"),
        ("norm", "NORM", "section 2.2 and the notes: global BN, per-device BN, layer and group "
         "norm")):
    STUDIES.declare(_name, f"fastclr.study.catalog:{_target}", _help)
