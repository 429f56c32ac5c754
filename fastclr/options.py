"""Every option of a run: its type, default, range, group, help, and whether it is part of the
run's identity (changes what is learned). fastclr.config reads them from presets, YAML files
and flags; parts never read a Config: the training loop passes plain arguments to them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field

from fastclr.augment.ops import OPS, check_ops
from fastclr.errors import ConfigError
from fastclr.registry import BACKBONES, HEADS, LOSSES, NORMS, OPTIMIZERS

GROUPS = ("data", "augment", "model", "loss", "optim", "train", "eval")
DATA_PATH_PREFIXES = ("folder:", "imagefolder:")  # --data KIND:PATH (see fastclr.data.catalog)
# groups whose every option changes what a run learns (its identity); elsewhere, options say so
IDENTITY_GROUPS = ("augment", "model", "loss", "optim")


def _opt(default, help: str, group: str, choices=None, identity: bool | None = None, **kw):
    """An option. `identity`: whether it changes what is learned (default: by its group), so
    that a run folder made with one value cannot be resumed with another; `choices` a tuple or
    a fastclr.registry.Registry; `absent`: a function of a saved config (dict) that predates
    the option, giving the value that was in effect for it where that is not the default
    (fastclr.config.config_from_dict)."""
    identity = group in IDENTITY_GROUPS if identity is None else identity
    meta = {"help": help, "group": group, "choices": choices, "identity": identity, **kw}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # ---- data ------------------------------------------------------------------------------
    data: str = _opt("fashion-mnist", "data set to pretrain on: a registered name (see "
                     "`fastclr data`), folder:PATH for your own images (unlabeled) or "
                     "imagefolder:PATH for PATH/train/<class>/*, PATH/val/<class>/*", "data",
                     identity=True)
    data_dir: str | None = _opt(None, "directory holding the data set's files in their official "
                                "format; default: the known system and cache locations", "data")
    download: bool = _opt(False, "download the data set through torchvision if it is missing "
                          "(needs a network)", "data")
    image_size: int | None = _opt(None, "side of the square training views in pixels; default: "
                                  "the data set's own (28 for Fashion-MNIST)", "data", low=8,
                                  high=4096, identity=True)
    num_workers: int = _opt(2, "DataLoader workers for streamed (folder) data sets; 0-16", "data",
                            low=0, high=16)
    stream_crop: str = _opt("full", "streamed (folder) sets: full (workers take each view's "
                            "random resized crop from the full-resolution file, decoded at "
                            "reduced JPEG scale where the crop allows, as the paper's "
                            "pipeline does) or square (fastclr's earlier mode: a random largest "
                            "square at the training size, the crops then taken from it, so "
                            "small crops are upsampled from at most image_size pixels); the "
                            "one-branch protocol and --augment without crop need square",
                            "data", choices=("full", "square"), identity=True,
                            absent=lambda saved: "square" if _streamed(saved.get("data"))
                            else "full")

    # ---- augmentation (the paper's Section 3 and appendix A) -------------------------------
    crop_scale: tuple[float, float] = _opt((0.2, 1.0), "random resized crop: range of the crop's "
                                           "area as a fraction of the image (paper: 0.08,1, on "
                                           "CIFAR-10 too, appendix B.9; 0.2,1 is later work's "
                                           "usual choice for small images)", "augment",
                                           unit=True)
    crop_ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), "random resized crop: aspect ratio "
                                           "range", "augment")
    crop_sampler: str = _opt("torchvision", "how crop boxes are drawn: torchvision "
                             "(RandomResizedCrop: area uniform in crop_scale, aspect "
                             "log-uniform, 10 tries, then a centre crop) or official (the "
                             "official code's data_util.py crop_and_resize: "
                             "tf.image.sample_distorted_bounding_box, aspect uniform, height "
                             "uniform, at least 10% of the image, 100 tries, then the whole "
                             "image; smaller crops on average, mean area 0.42 against 0.48 of a "
                             "224-px image at 0.08,1)", "augment",
                             choices=("torchvision", "official"))
    crop_interpolation: str = _opt("bilinear", "resize of the crop: bilinear (torchvision's, "
                                   "antialiased when shrinking) or bicubic (the official "
                                   "code's tf.image.resize: Keys' cubic, no antialiasing; "
                                   "streamed sets' loader resizes with torch's antialiased "
                                   "bicubic)",
                                   "augment", choices=("bilinear", "bicubic"))
    flip_p: float = _opt(0.5, "probability of a horizontal flip", "augment", prob=True)
    color_strength: float = _opt(0.5, "colour distortion strength s: jitter brightness, contrast "
                                 "and saturation 0.8s, hue 0.2s (paper: 1.0 on ImageNet, 0.5 on "
                                 "CIFAR); 0-2", "augment", low=0.0, high=2.0)
    color_p: float = _opt(0.8, "probability of colour jitter", "augment", prob=True)
    color_impl: str = _opt("torchvision", "colour jitter's formulas: torchvision (brightness "
                           "and contrast as factors, contrast around the mean luma, saturation "
                           "a blend with the luma image); official-v2 (the official code's, "
                           "data_util.py color_jitter: tf.image's contrast around each "
                           "channel's mean and saturation scaled in HSV); official-v1 (its "
                           "first release: brightness a shift of up to +-0.8 s, a much harsher "
                           "distortion). official-* need colour strength <= 1.25 and run as "
                           "tensor ops. One-channel data has brightness and contrast only: "
                           "official-v2 equals torchvision there, official-v1 differs in "
                           "brightness (docs/fidelity.md)", "augment",
                           choices=("torchvision", "official-v2", "official-v1"))
    color_order: str = _opt("fixed", "order of the four jitter ops: fixed (brightness, "
                            "contrast, saturation, hue; fastclr's, in the C kernel) or random "
                            "per view (the official code's default, color_jitter_rand, and "
                            "torchvision's ColorJitter; tensor ops, about four times the "
                            "colour work)", "augment", choices=("fixed", "random"))
    gray_p: float = _opt(0.2, "probability of random grayscale (RGB data only)", "augment",
                         prob=True)
    blur_p: float = _opt(0.0, "probability of gaussian blur, kernel ~10% of the side (paper: 0.5 "
                         "on ImageNet, off on small images)", "augment", prob=True)
    blur_sigma: tuple[float, float] = _opt((0.1, 2.0), "gaussian blur sigma range", "augment")
    solarize_p: float = _opt(0.0, "probability of solarization (not in SimCLR v1; BYOL uses "
                             "0.2 on one view)", "augment", prob=True)
    sobel_p: float = _opt(0.0, "probability of Sobel filtering (Figure 4: edges of the luma)",
                          "augment", prob=True)
    noise_p: float = _opt(0.0, "probability of additive gaussian noise (Figure 4)", "augment",
                          prob=True)
    noise_std: tuple[float, float] = _opt((0.0, 0.1), "range of the noise's standard deviation "
                                          "(pixels in [0, 1])", "augment", low=0.0, high=1.0)
    cutout_p: float = _opt(0.0, "probability of cutout (Figure 4; DeVries and Taylor 2017): a "
                           "zeroed square", "augment", prob=True)
    cutout_scale: tuple[float, float] = _opt((0.1, 0.5), "range of the cutout square's side as "
                                             "a fraction of the image side", "augment",
                                             unit=True)
    rotate_p: float = _opt(0.0, "probability of a rotation by 90, 180 or 270 degrees "
                           "(Figure 4)", "augment", prob=True)
    augment: str | None = _opt(None, "comma list of the augmentation ops to use, in any "
                               "order; they run in this one: "
                               f"{', '.join(OPS)} (color: the paper's colour distortion, "
                               "jitter and gray); each still applies with its probability; "
                               "default: all", "augment")
    one_branch: bool = _opt(False, "Figure 5's protocol: both views share one random crop, "
                            "and the ops of --augment apply to the second view only (crop "
                            "there is a second crop)", "augment")

    # ---- model -----------------------------------------------------------------------------
    arch: str = _opt("resnet18", "encoder f, a backbone by name", "model", choices=BACKBONES)
    width: float = _opt(1.0, "width multiplier of every ResNet layer (paper: 1, 2, 4; 0.25 "
                        "for a fast CPU run)", "model", low=0.0625, high=8.0)
    stem: str = _opt("small", "first layers: small (3x3 conv stride 1, no max-pool; images "
                     "<= 64 px), small-s2 (3x3 conv stride 2: 4x cheaper, for CPUs) or imagenet "
                     "(7x7 stride 2 + max-pool)", "model",
                     choices=("small", "small-s2", "imagenet"))
    head: str = _opt("nonlinear", "projection head g (nonlinear: the paper's best, section "
                     "4.2)", "model", choices=HEADS)
    head_layers: int = _opt(2, "linear layers in the nonlinear head (SimCLR: 2, SimCLRv2: 3)",
                            "model", low=2, high=8)
    head_hidden: int | None = _opt(None, "hidden width of the head; default: the encoder's "
                                   "feature size", "model", low=1, high=65536)
    proj_dim: int = _opt(128, "output size of the head, the space of the loss", "model", low=1,
                         high=65536)
    encoder_norm: str = _opt("batch", "normalisation layers of the encoder (batch: the paper's; "
                             "layer and group (with weight standardisation) need no batch "
                             "statistics, the notes' alternative to global BN)", "model",
                             choices=NORMS)
    head_norm: str = _opt("batch", "normalisation layers of the nonlinear head", "model",
                          choices=NORMS)
    head_out_norm: str = _opt("none", "the head's output layer: none (a Linear with a bias: "
                              "the paper's g = W2 relu(W1 h), section 2.1) or batch (the "
                              "official code's, model_util.py linear_layer: a Linear without "
                              "bias, then batch norm with a scale and no shift on z); also "
                              "for --head linear", "model", choices=("none", "batch"))

    # ---- loss (section 2.1, section 5.1, Tables 2, 4 and 5) ---------------------------------
    objective: str = _opt("simclr", "simclr (the contrastive loss on z) or supervised "
                          "(cross-entropy on the labels with a linear classifier on h, the "
                          "paper's 'supervised' rows of Table 1 and Figure 7; labeled data "
                          "sets only)", "loss", choices=("simclr", "supervised"))
    loss: str = _opt("nt-xent", "contrastive loss (Table 2; the paper's: nt-xent)", "loss",
                     choices=LOSSES)
    temperature: float = _opt(0.5, "temperature tau of nt-xent and nt-logistic (Table 5; "
                              "paper: 0.1 at batch 4096, 0.5 on CIFAR)", "loss", low=1e-3,
                              high=1000.0)
    l2_norm: bool = _opt(True, "l2-normalise z before the loss, i.e. cosine similarity "
                         "(Table 5: without it the contrastive task is easier but the "
                         "representation worse)", "loss")
    margin: float = _opt(0.5, "margin m of the margin-triplet loss, in cosine similarity "
                         "(Table 2; the paper tunes it and does not give its value)", "loss",
                         low=0.0, high=2.0)
    semi_hard: bool = _opt(False, "semi-hard negative mining for nt-logistic and "
                           "margin-triplet (Table 4; Schroff et al. 2015)", "loss")
    loss_reduction: str = _opt("mean", "mean: the loss averaged over all 2N anchors (the "
                               "paper's Algorithm 1); sum-directions: the official code's "
                               "(objective.py add_contrastive_loss), the mean over each "
                               "view's anchors summed over the two views, twice the mean: "
                               "under LARS, biases and BN parameters then take twice the "
                               "step and weight decay counts half as much against the "
                               "gradient (docs/fidelity.md)", "loss",
                               choices=("mean", "sum-directions"))

    # ---- optimisation ----------------------------------------------------------------------
    optimizer: str = _opt("lars", "optimiser (lars: the paper's)", "optim", choices=OPTIMIZERS)
    lr_rule: str = _opt("sqrt", "peak lr from the global batch B: sqrt (base_lr*sqrt(B), "
                        "base 0.075; better for small B), linear (base_lr*B/256, base 0.3) or "
                        "constant (base_lr)", "optim", choices=("sqrt", "linear", "constant"))
    base_lr: float | None = _opt(None, "base learning rate for lr_rule; default 0.075 (sqrt), "
                                 "0.3 (linear), 0.001 (constant)", "optim", low=0.0)
    weight_decay: float = _opt(1e-6, "weight decay, not applied to biases and BN parameters "
                               "(paper: 1e-6 with LARS; try 1e-4 with sgd, 0.05 with adamw)",
                               "optim", low=0.0)
    momentum: float = _opt(0.9, "momentum (lars, sgd)", "optim", low=0.0, high=1.0)
    trust_coefficient: float = _opt(1e-3, "LARS trust coefficient eta", "optim", low=0.0)
    warmup_epochs: float = _opt(10.0, "epochs of linear lr warmup before the cosine decay "
                                "(paper: 10)", "optim", low=0.0)

    # ---- training --------------------------------------------------------------------------
    epochs: int = _opt(100, "pretraining epochs (paper: 100-1000; more helps)", "train", low=1,
                       identity=True)
    batch_size: int = _opt(256, "global batch of images (each gives 2 views); split over "
                           "processes (paper: 4096; 256-1024 on one GPU)", "train", low=2,
                           high=65536, identity=True)
    seed: int = _opt(0, "random seed of initialisation, data order and augmentations", "train",
                     low=0, high=2**32 - 1, identity=True)
    device: str = _opt("auto", "auto (cuda when present), cpu, cuda or cuda:N", "train")
    precision: str = _opt("auto", "auto (bf16 autocast on cuda, fp32 on cpu), fp32 or bf16; "
                          "the loss's logits are always fp32", "train",
                          choices=("auto", "fp32", "bf16"), identity=True)
    compile: bool = _opt(False, "torch.compile the model (pays on GPU for long runs; slower "
                         "on CPU)", "train")
    sync_bn: bool = _opt(True, "global batch norm (SyncBatchNorm) when more than one process",
                         "train", identity=True)
    bn_groups: int = _opt(1, "batch norm statistics over G disjoint groups of the batch, each "
                          "holding both views of its images, as G devices without global BN "
                          "would (section 2.2: the leak that global BN prevents); one process "
                          "only", "train", low=1, identity=True)
    deterministic: bool = _opt(False, "deterministic kernels: a resumed run repeats the "
                               "uninterrupted one exactly (slower on GPU)", "train")
    threads: int | None = _opt(None, "CPU threads for torch; default: torch's choice", "train",
                               low=1)
    run_dir: str | None = _opt(None, "run folder for checkpoints, logs and results; default "
                               "runs/<preset name>", "train")
    resume: str = _opt("auto", "auto (continue from the run folder's last checkpoint if any), "
                       "never (refuse a folder that has one) or a checkpoint path", "train")
    allow_change: str | None = _opt(None, "comma list of training options that may differ from "
                                    "the run folder's on resume (refused otherwise), e.g. "
                                    "epochs to train a finished run longer; recorded in "
                                    "run.json", "train")
    log_every: int = _opt(20, "steps between progress updates and metrics.jsonl lines", "train",
                          low=1)
    checkpoint_every: int = _opt(500, "steps between checkpoints (one is always written at the "
                                 "end)", "train", low=1)
    keep_checkpoints: int = _opt(2, "how many of the latest checkpoints to keep (the best by "
                                 "the kNN monitor is kept too)", "train", low=1)
    knn_every: int = _opt(0, "epochs between kNN monitor evaluations on a labeled subset; 0: "
                          "off", "train", low=0)
    track_every: float = _opt(0.0, "epochs between tracking points (fractions too: 0.5 is "
                              "twice an epoch), and one before the first step and after the "
                              "last: alignment, uniformity, spectrum and effective rank, kNN "
                              "and contrastive top-1, cosines of positives and negatives of h "
                              "and z on fixed held-out training images, and their embeddings, "
                              "to metrics.jsonl, TensorBoard and dynamics/ (`fastclr inspect` "
                              "draws them); the presets keep it under 5% of training; 0: off",
                              "train", low=0.0)
    track_images: int = _opt(512, "images in the tracking probe set (4x as many more form its "
                             "kNN bank), a fixed sample of the training split; 64-2048",
                             "train", low=16, high=4096)
    max_nonfinite: int = _opt(20, "stop after this many non-finite losses in a row (each such "
                              "step is skipped, never trained on)", "train", low=1)
    max_steps: int | None = _opt(None, "stop after this many steps (the lr schedule still spans "
                                 "all epochs); for smoke tests", "train", low=1)
    tensorboard: bool = _opt(True, "also write TensorBoard logs to the run folder", "train")

    # ---- evaluation ------------------------------------------------------------------------
    final_eval: bool = _opt(True, "evaluate at the end of training (linear probe and kNN)",
                            "eval")
    baselines: bool = _opt(True, "in the final evaluation, also evaluate a random-init encoder "
                           "and raw pixels", "eval")
    knn_k: int = _opt(200, "neighbours of the weighted kNN classifier (the headline k; where "
                      "a class has fewer training images, the best smaller k on held-out "
                      "training images)", "eval", low=1)
    knn_temperature: float = _opt(0.1, "temperature of the kNN vote weights exp(sim/T)", "eval",
                                  low=1e-3)
    eval_batch_size: int = _opt(512, "batch size for feature extraction", "eval", low=1,
                                high=65536)
    online_probe: bool = _opt(False, "during pretraining, train a linear classifier on "
                              "stop-gradient h of one view with its own optimiser and log its "
                              "top-1 on the training batches as probe_top1 in metrics.jsonl "
                              "(labeled data sets only; a progress signal, not an evaluation)",
                              "eval")

    # where the config came from (informational; not an option)
    name: str = field(default="custom", metadata={"internal": True})

    def validate(self) -> "Config":
        """Check ranges and cross-field rules; raises ConfigError naming the first bad option."""
        for f in options():
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None:
                continue
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {', '.join(meta['choices'])}; "
                                  f"got {value!r}")
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{f.name} must be a finite number, got {v}")
                if meta.get("prob") and not 0.0 <= v <= 1.0:
                    raise ConfigError(f"{f.name} is a probability: it must lie in [0, 1], got {v}")
                if meta.get("unit") and not 0.0 < v <= 1.0:
                    raise ConfigError(f"{f.name} values must lie in (0, 1], got {v}")
                if "low" in meta and v < meta["low"]:
                    raise ConfigError(f"{f.name} must be >= {meta['low']}, got {v}")
                if "high" in meta and v > meta["high"]:
                    raise ConfigError(f"{f.name} must be <= {meta['high']}, got {v}")
            if isinstance(value, tuple) and value[0] > value[1]:
                raise ConfigError(f"{f.name} is a range (low, high) with low <= high, got "
                                  f"{value[0]}, {value[1]}")
        if self.crop_ratio[0] <= 0:
            raise ConfigError(f"crop_ratio values must be > 0, got {self.crop_ratio[0]}")
        if self.blur_sigma[0] <= 0:
            raise ConfigError(f"blur_sigma values must be > 0, got {self.blur_sigma[0]}")
        if not (self.device in ("auto", "cpu", "cuda")
                or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        try:
            check_ops(self.augment_ops)
        except ValueError as e:
            raise ConfigError(f"augment: {e}") from None
        if self.semi_hard and self.loss == "nt-xent":
            raise ConfigError("semi_hard mines negatives for nt-logistic and margin-triplet "
                              "(Table 4); nt-xent weighs every negative by itself")
        if self.color_impl != "torchvision" and self.color_strength > 1.25:
            raise ConfigError(f"color_impl {self.color_impl} draws contrast and saturation "
                              "factors in [1 - 0.8 s, 1 + 0.8 s], which tf.image refuses below "
                              f"0: color_strength must be <= 1.25, got {self.color_strength}")
        if self.head_out_norm != "none" and self.head == "none":
            raise ConfigError("head_out_norm is the last layer of the nonlinear or linear "
                              "head; with head none there is none")
        if self.bn_groups > 1:
            if "batch" not in (self.encoder_norm, self.head_norm):
                raise ConfigError("bn_groups splits batch norm statistics, but neither "
                                  "encoder_norm nor head_norm is batch")
            if self.batch_size % self.bn_groups:
                raise ConfigError(f"batch_size {self.batch_size} is not divisible into "
                                  f"bn_groups {self.bn_groups}")
        for name in self.allowed_changes:
            if name not in _HINTS or name == "name":
                raise _unknown(name)
        if not (self.data.startswith(DATA_PATH_PREFIXES)
                or self.data.replace("-", "").isalnum()):
            raise ConfigError(f"data must be a data set name, folder:PATH or imagefolder:PATH; "
                              f"got {self.data!r}")
        return self

    @property
    def augment_ops(self) -> tuple[str, ...] | None:
        """The op names of `augment` (None: all)."""
        if self.augment is None:
            return None
        names = [n.strip() for n in self.augment.split(",") if n.strip()]
        return tuple(op for n in names for op in (("jitter", "gray") if n == "color" else (n,)))

    @property
    def allowed_changes(self) -> tuple[str, ...]:
        """The option names of `allow_change`."""
        return tuple(n.strip() for n in (self.allow_change or "").split(",") if n.strip())

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _streamed(data) -> bool:
    """Whether a data option names a streamed set (textually: config code imports no torch, so
    no data registry): a folder, an image folder, or the built-in ImageNet."""
    return isinstance(data, str) and (data.startswith(("folder:", "imagefolder:"))
                                      or data == "imagenet")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def options() -> list[dataclasses.Field]:
    """The user-settable options, in declaration order."""
    return [f for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


def identity_options() -> list[str]:
    """The options that change what a run learns: a run folder is made with one value of each
    (data, augmentation, model, loss, optimiser, schedule, batch, seed, precision)."""
    return [f.name for f in options() if f.metadata["identity"]]


_HINTS = typing.get_type_hints(Config)


def _unknown(name: str) -> ConfigError:
    names = [f.name for f in options()]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; `fastclr train --help` lists them"
    return ConfigError(f"unknown option {name!r}{hint}")
