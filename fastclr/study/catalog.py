"""The studies: each a grid of runs that differ in one factor (or two), the paper's numbers for
its cells, and the claims the report judges. Plain data, importable without torch.

Paper numbers are ImageNet linear evaluation (ResNet-50, 100 epochs, batch 4096 unless the
study says otherwise); ours come from a budget (fastclr/study/budgets/), on Fashion-MNIST by
default. The numbers are not comparable one to one: the claims are, and the reports say for
each claim whether it holds at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastclr.study.verdicts import Alike, Best, Better, GapShrinks, Trend


# how reports name the metrics a study reads
NAMES = {"linear_top1": "linear top-1", "linear_z_top1": "linear on z", "knn_top1": "kNN top-1",
         "contrastive_top1_z": "contrastive top-1", "train_loss": "final loss"}


@dataclass(frozen=True)
class Cell:
    label: str  # its row in the tables and its folder name
    overrides: dict  # config options on top of the budget's
    factors: dict = field(default_factory=dict)  # the study's factors, for plots
    paper: float | None = None  # the paper's top-1 for this cell, where it gives one


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    source: str  # where in the paper
    question: str  # what the notes ask, or the paper claims
    cells: tuple[Cell, ...]
    claims: tuple = ()
    metrics: tuple[str, ...] = ("linear_top1", "knn_top1")
    protocols: tuple[str, ...] = ("linear", "knn")
    plot: dict = field(default_factory=dict)  # kind: bars | lines | heatmap, x, series
    note: str = ""

    def cell(self, label: str) -> Cell:
        return next(c for c in self.cells if c.label == label)


def _cells(labels_overrides, paper=None, **factors_of) -> tuple[Cell, ...]:
    paper = paper or {}
    return tuple(Cell(label, overrides, {k: f(overrides) for k, f in factors_of.items()},
                      paper.get(label)) for label, overrides in labels_overrides)


# ---- the projection head (Figure 8, section 4.2) -------------------------------------------

HEAD = Study(
    "head", "The projection head g: none, linear or nonlinear; h against z = g(h)",
    "section 4.2, Figure 8",
    "Why a nonlinear head, and why use h rather than z? (paper: nonlinear beats linear by "
    "about 3 points and no head by more than 10; h beats z by more than 10)",
    _cells([("none", {"head": "none"}), ("linear", {"head": "linear"}),
            ("nonlinear", {"head": "nonlinear"})]),
    claims=(
        Better("a nonlinear head beats a linear one", "nonlinear", "linear",
               paper="Figure 8: +3 points"),
        Better("a nonlinear head beats no head", "nonlinear", "none",
               paper="section 4.2: by more than 10 points"),
        Better("... by more than 10 points", "nonlinear", "none", by=10.0,
               paper="section 4.2: > 10 points"),
        Better("h is a better representation than z = g(h) (nonlinear head)",
               "nonlinear@linear_top1", "nonlinear@linear_z_top1",
               paper="section 4.2: by more than 10 points"),
        Better("... by more than 10 points", "nonlinear@linear_top1",
               "nonlinear@linear_z_top1", by=10.0, paper="section 4.2: > 10 points"),
    ),
    metrics=("linear_top1", "linear_z_top1", "knn_top1"),
    plot={"kind": "bars", "metrics": ("linear_top1", "linear_z_top1")},
)

# ---- the head's output size (Figure 8) -------------------------------------------------------

PROJ_DIM = Study(
    "proj-dim", "The head's output size (the space of the loss)", "Figure 8",
    "Does the size of z matter? (paper: with a nonlinear head, barely)",
    _cells([(f"z={d}", {"proj_dim": d}) for d in (8, 32, 128, 512, 2048)],
           z=lambda o: o["proj_dim"]),
    claims=(Alike("with a nonlinear head the output size barely matters (within 1 point)",
                  tuple(f"z={d}" for d in (8, 32, 128, 512, 2048)), within=1.0,
                  paper="Figure 8: flat from 32 to 2048"),),
    metrics=("linear_top1", "linear_z_top1", "knn_top1"),
    plot={"kind": "lines", "x": "z", "log_x": True, "metrics": ("linear_top1", "linear_z_top1")},
)

# ---- smaller embeddings (the notes' question) ------------------------------------------------

_SIZES = [(f"h={int(512 * w)}", {"width": w}) for w in (0.0625, 0.125, 0.25)]
_ZS = [(f"z={d}", {"proj_dim": d}) for d in (4, 16)]
EMBEDDING_SIZE = Study(
    "embedding-size", "Smaller embeddings: the size of h, of z, and of h compressed after "
    "training", "the notes (\"train on MNIST and reduce the embedding size while keeping "
    "performance\"); Figure 8 for z",
    "How small can the representation be while keeping accuracy?",
    _cells(_SIZES + _ZS, h=lambda o: int(512 * o.get("width", 0.125)),
           z=lambda o: o.get("proj_dim", 128)),
    metrics=("linear_top1", "linear_z_top1", "knn_top1"),
    protocols=("linear", "knn", "pca"),
    plot={"kind": "sizes"},
    note="Each size is read three ways: h of encoders of three widths; z of heads of two small "
         "output sizes (and 128); and h compressed after training by PCA to k dimensions "
         "(linear probe on the top-k components, fitted on the training features).",
)

# ---- temperature and l2 normalisation (Table 5) ----------------------------------------------

_TAU = [("tau=0.05", {"temperature": 0.05}), ("tau=0.1", {"temperature": 0.1}),
        ("tau=0.5", {"temperature": 0.5}), ("tau=1", {"temperature": 1.0}),
        ("no-l2 tau=10", {"temperature": 10.0, "l2_norm": False}),
        ("no-l2 tau=100", {"temperature": 100.0, "l2_norm": False})]
TEMPERATURE = Study(
    "temperature", "Temperature, with and without l2-normalised z", "section 5.1, Table 5",
    "What does the temperature do, and why normalise z? (paper: tau 0.1 best; without l2 "
    "normalisation the contrastive task is easier but the representation worse)",
    _cells(_TAU, paper={"tau=0.05": 59.7, "tau=0.1": 64.4, "tau=0.5": 60.7, "tau=1": 58.0,
                        "no-l2 tau=10": 57.2, "no-l2 tau=100": 57.0},
           tau=lambda o: o["temperature"], l2=lambda o: o.get("l2_norm", True)),
    claims=(
        Best("with l2 normalisation, tau = 0.1 is the best of 0.05 / 0.1 / 0.5 / 1", "tau=0.1",
             ("tau=0.05", "tau=0.1", "tau=0.5", "tau=1"), paper="Table 5: 64.4"),
        Better("l2-normalised z gives better features than raw z", "tau=0.1", "no-l2 tau=10",
               paper="Table 5: 64.4 against 57.2"),
        Better("without l2 normalisation the contrastive task accuracy is higher",
               "no-l2 tau=10@contrastive_top1_z", "tau=0.1@contrastive_top1_z",
               paper="section 5.1"),
    ),
    metrics=("linear_top1", "knn_top1", "contrastive_top1_z"),
    protocols=("linear", "knn", "diagnostics"),
    plot={"kind": "bars", "metrics": ("linear_top1", "contrastive_top1_z")},
)

# ---- the loss (Tables 2 and 4) ---------------------------------------------------------------

_LOSSES = [("nt-xent", {"loss": "nt-xent"}), ("nt-logistic", {"loss": "nt-logistic"}),
           ("margin-triplet", {"loss": "margin-triplet"}),
           ("nt-logistic sh", {"loss": "nt-logistic", "semi_hard": True}),
           ("margin-triplet sh", {"loss": "margin-triplet", "semi_hard": True})]
LOSS = Study(
    "loss", "NT-Xent against NT-Logistic and margin triplet, with and without semi-hard "
    "negatives", "section 5.1, Tables 2 and 4",
    "Why NT-Xent? (paper: 63.9 against 51.6 / 50.9, and 57.9 / 57.5 with semi-hard mining)",
    _cells(_LOSSES, paper={"nt-xent": 63.9, "nt-logistic": 51.6, "margin-triplet": 50.9,
                           "nt-logistic sh": 57.9, "margin-triplet sh": 57.5}),
    claims=(
        Best("NT-Xent is the best loss", "nt-xent", tuple(label for label, _ in _LOSSES),
             paper="Table 4: 63.9, next 57.9"),
        Better("semi-hard negatives help NT-Logistic", "nt-logistic sh", "nt-logistic",
               paper="Table 4: 51.6 -> 57.9"),
        Better("semi-hard negatives help margin triplet", "margin-triplet sh",
               "margin-triplet", paper="Table 4: 50.9 -> 57.5"),
    ),
)

# ---- composition of augmentations (Figure 5) -------------------------------------------------

# each op of the grid, always applied to the second view (one_branch), at the budget's strength
_OP_OPTIONS = {"crop": {}, "color": {"color_p": 1.0}, "cutout": {"cutout_p": 1.0},
               "sobel": {"sobel_p": 1.0}, "noise": {"noise_p": 1.0}, "blur": {"blur_p": 1.0},
               "rotate": {"rotate_p": 1.0}}


def _op_cells(ops: tuple[str, ...]) -> tuple[Cell, ...]:
    cells = []
    for i, a in enumerate(ops):
        for b in ops[i:]:
            names = (a,) if a == b else (a, b)
            options = {"one_branch": True, "augment": ",".join(names)}
            for name in names:
                options.update(_OP_OPTIONS[name])
            cells.append(Cell("+".join(names), options, {"first": a, "second": b}))
    return tuple(cells)


_QUICK_OPS = ("crop", "color", "cutout", "rotate")
_FULL_OPS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")


def _augment_study(name: str, ops: tuple[str, ...], title: str) -> Study:
    singles = tuple(ops)
    return Study(
        name, title, "section 3, Figure 5",
        "Why that particular combination, crop + colour? (paper: no single transformation "
        "suffices; crop + colour stands out)",
        _op_cells(ops),
        claims=(
            Best("crop + colour beats every single op (no single op suffices)", "crop+color",
                 ("crop+color",) + singles, paper="Figure 5"),
            Best("crop + colour is the best pair", "crop+color",
                 tuple(c.label for c in _op_cells(ops)), paper="Figure 5"),
        ),
        plot={"kind": "heatmap", "x": "second", "y": "first", "order": ops},
        note="Figure 5's protocol: both views share one random crop (and resize); the ops of a "
             "cell apply to the second view only, always (probability 1; colour: jitter, with "
             "grayscale at 0.2 on colour images; crop: a second random crop). fastclr runs the "
             "ops of a pair in one fixed order, so a pair is one cell, not two.",
    )


AUGMENT = _augment_study("augment", _QUICK_OPS, "Composition of augmentations, one branch "
                         "(quick grid of the main ops)")
AUGMENT_FULL = _augment_study("augment-full", _FULL_OPS, "Composition of augmentations, one "
                              "branch (Figure 5's seven ops)")

# ---- colour strength, SimCLR and supervised (Table 1) ----------------------------------------

_STRENGTHS = [("0", {"color_strength": 0.0}), ("1/8", {"color_strength": 0.125}),
              ("1/4", {"color_strength": 0.25}), ("1/2", {"color_strength": 0.5}),
              ("1", {"color_strength": 1.0}), ("1+blur", {"color_strength": 1.0, "blur_p": 0.5})]
_TABLE_1 = {"simclr": [None, 59.6, 61.0, 62.6, 63.2, 64.5],
            "supervised": [None, 77.0, 76.7, 76.5, 75.7, 75.4]}
COLOR_STRENGTH = Study(
    "color-strength", "Colour distortion strength, SimCLR against supervised training",
    "section 3, Table 1",
    "Does contrastive learning need stronger colour augmentation than supervised learning? "
    "(paper: SimCLR improves with strength, supervised does not)",
    tuple(Cell(f"{obj} s={s}", {"objective": obj, **o}, {"s": s, "objective": obj},
               _TABLE_1[obj][i])
          for obj in ("simclr", "supervised") for i, (s, o) in enumerate(_STRENGTHS)),
    claims=(
        Trend("SimCLR improves with colour strength (1/8 to 1)",
              tuple(f"simclr s={s}" for s in ("1/8", "1/4", "1/2", "1")),
              paper="Table 1: 59.6 -> 63.2"),
        Trend("supervised learning does not: it gets worse (1/8 to 1)",
              tuple(f"supervised s={s}" for s in ("1/8", "1/4", "1/2", "1")), direction=-1,
              paper="Table 1: 77.0 -> 75.7"),
        GapShrinks("stronger colour helps SimCLR more than supervised (their gap shrinks)",
                   (("supervised s=1/8", "simclr s=1/8"), ("supervised s=1", "simclr s=1")),
                   paper="Table 1: gap 17.4 -> 12.5"),
        Better("blur on top of strength 1 helps SimCLR", "simclr s=1+blur", "simclr s=1",
               paper="Table 1: 63.2 -> 64.5"),
    ),
    plot={"kind": "lines", "x": "s", "series": "objective"},
    note="Both objectives are evaluated the same way: a linear probe on frozen h. The paper's "
         "supervised numbers are the supervised network's own accuracy.",
)

# ---- batch size and training length (Figure 9) -----------------------------------------------

BATCH_SIZE = Study(
    "batch-size", "Batch size against training length", "section 5.2, Figure 9, Table B.1",
    "Does batch size matter? (paper: larger batches help, most when training is short)",
    tuple(Cell(f"batch={b} epochs={e}", {"batch_size": b, "epochs": e},
               {"batch": b, "epochs": e}) for e in (1, 3) for b in (64, 256, 1024)),
    claims=(
        Better("with short training a larger batch is better", "batch=1024 epochs=1",
               "batch=64 epochs=1", paper="Figure 9: at 100 epochs, 8192 > 256 by ~10"),
        GapShrinks("the advantage of a larger batch shrinks with longer training",
                   (("batch=1024 epochs=1", "batch=64 epochs=1"),
                    ("batch=1024 epochs=3", "batch=64 epochs=3")),
                   paper="Figure 9: the gap closes by 800 epochs"),
    ),
    plot={"kind": "lines", "x": "batch", "series": "epochs", "log_x": True},
    note="The epochs of this study's cells replace the budget's; the learning rate follows the "
         "square-root rule (appendix B.1), so each batch size gets its own.",
)

# ---- model size, SimCLR and supervised (Figure 7) --------------------------------------------

_MODELS = [("w=1/16", {"width": 0.0625}), ("w=1/8", {"width": 0.125}),
           ("w=1/4", {"width": 0.25}), ("r34 w=1/8", {"arch": "resnet34", "width": 0.125})]
MODEL_SIZE = Study(
    "model-size", "Model size (width and depth), SimCLR against supervised training",
    "section 4.1, Figure 7",
    "Does unsupervised learning benefit more from bigger models? (paper: the gap to "
    "supervised shrinks as models grow)",
    tuple(Cell(f"{obj} {label}", {"objective": obj, **o}, {"model": label, "objective": obj})
          for obj in ("simclr", "supervised") for label, o in _MODELS),
    claims=(
        Trend("SimCLR improves with width", ("simclr w=1/16", "simclr w=1/8", "simclr w=1/4"),
              paper="Figure 7"),
        GapShrinks("the gap between supervised and SimCLR shrinks as the width grows",
                   (("supervised w=1/16", "simclr w=1/16"), ("supervised w=1/4", "simclr w=1/4")),
                   paper="Figure 7"),
        Better("SimCLR gains from depth (ResNet-34 against ResNet-18 at width 1/8)",
               "simclr r34 w=1/8", "simclr w=1/8", paper="Figure 7: R101 and R152 above R50"),
    ),
    plot={"kind": "bars", "x": "model", "series": "objective"},
)

# ---- normalisation: global BN, per-device BN, layer and group norm (section 2.2) -------------

NORM = Study(
    "norm", "Batch norm statistics: global, per device, or no batch statistics at all",
    "section 2.2 (global BN); the notes (layer norm instead)",
    "Why global BN, and can layer norm replace it? (paper: per-device BN lets the model find "
    "a shortcut in the statistics; the notes: layer norm avoids aggregating BN statistics)",
    _cells([("global BN", {}), ("per-device BN (8)", {"bn_groups": 8}),
            ("layer norm", {"encoder_norm": "layer", "head_norm": "layer"}),
            ("group norm + WS", {"encoder_norm": "group", "head_norm": "group"})]),
    claims=(
        Better("global BN gives better features than per-device BN", "global BN",
               "per-device BN (8)", paper="section 2.2"),
        Better("per-device BN makes the contrastive task easier (a lower training loss: the "
               "shortcut)", "global BN@train_loss", "per-device BN (8)@train_loss",
               paper="section 2.2"),
        Better("layer norm is no more than 1 point worse than global BN", "layer norm",
               "global BN", by=-1.0, paper="the notes' suggestion; not in the paper"),
    ),
    metrics=("linear_top1", "knn_top1", "train_loss", "contrastive_top1_z"),
    protocols=("linear", "knn", "diagnostics"),
    plot={"kind": "bars", "metrics": ("linear_top1", "knn_top1")},
    note="Per-device BN is imitated in one process: batch norm statistics over 8 disjoint "
         "groups of the batch, each holding both views of its images (--bn-groups 8), as 8 "
         "devices without global BN would compute them.",
)

STUDIES_IN_ORDER = (HEAD, PROJ_DIM, EMBEDDING_SIZE, TEMPERATURE, LOSS, AUGMENT, AUGMENT_FULL,
                    COLOR_STRENGTH, BATCH_SIZE, MODEL_SIZE, NORM)
