"""What `fastclr eval` and `fastclr embed` can be pointed at, turned into modules.

Three kinds of path: a run folder (written by `fastclr train`), an exported encoder
(`encoder.safetensors`, f only), or a training checkpoint (`.pt`, f and g); and
`pretrained:NAME`, an exported encoder shipped inside the package (fastclr.zoo). Each gives the
encoder f in eval mode, the projection head g when the path holds it (needed for the paper's
h-versus-z comparison, section 4.2), and a config saying which data set and augmentation the
encoder was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from fastclr.checkpoint import encoder_metadata, latest_checkpoint, load_checkpoint, load_encoder
from fastclr.config import Config, config_from_dict, read_yaml
from fastclr.data import get_spec
from fastclr.errors import CheckpointError, ConfigError, DataError, error_text
from fastclr.models import build_model
from fastclr.spec import ModelSpec
from fastclr.zoo import resolve as resolve_pretrained


@dataclass
class Weights:
    """A loaded encoder f, its head g if known, and the config it goes with."""

    encoder: nn.Module
    head: nn.Module | None
    cfg: Config
    step: int | None  # the pretraining step the weights are from, if known
    kind: str  # "run", "encoder", "pretrained" (shipped) or "checkpoint"
    path: Path

    @property
    def run_dir(self) -> Path | None:
        """The run folder the weights came from (for its metrics.jsonl), if there is one."""
        if self.kind == "run":
            return self.path
        for folder in (self.path.parent, self.path.parent.parent):  # encoder / checkpoint
            if (folder / "config.yaml").is_file():
                return folder
        return None


def _from_checkpoint(path: Path, device) -> tuple[nn.Module, nn.Module, Config, int]:
    state = load_checkpoint(path, map_location="cpu")
    try:
        cfg = config_from_dict(state["config"])
        model = build_model(ModelSpec.from_dict(state["spec"]))
        model.load_state_dict(state["model"])
    except Exception as e:  # a key missing, a spec its tensors do not fit, a foreign config
        raise CheckpointError(f"{path} does not hold a fastclr SimCLR model "
                              f"({error_text(e)})") from None
    model = model.to(device).eval()
    return model.encoder, model.head, cfg, int(state.get("step", -1))


def load_weights(path: str | Path, data: str | None = None, data_dir: str | None = None,
                 device="cpu") -> Weights:
    """Load a run folder, an encoder .safetensors, a checkpoint .pt or pretrained:NAME.

    `data` (a data set name) and `data_dir` override what the weights were trained on; an
    exported encoder records its data set in its metadata, so `data` is needed only for other
    data (for example a transfer evaluation) or exports that lack it.
    """
    shipped = resolve_pretrained(path)  # its sha256 checked
    path = shipped or Path(path)
    if path.is_dir():
        weights = _load_run(path, device)
    elif not path.exists():
        raise CheckpointError(f"{path} does not exist (give a run folder, an encoder "
                              ".safetensors or a checkpoint .pt)")
    elif path.suffix == ".safetensors":
        encoder = load_encoder(path, device)
        meta = encoder_metadata(path)
        if "config" in meta:  # the training config: data set, image size, kNN settings ...
            cfg = _saved_config(meta["config"], path)
        elif data is None and "data" not in meta:
            raise ConfigError(f"{path} does not say which data set it was trained on; "
                              "give --data NAME")
        else:
            cfg = Config(data=meta.get("data", data)).validate()
        if shipped:  # where the training machine found its data means nothing here
            cfg = dataclasses.replace(cfg, data_dir=None, download=False)
        weights = Weights(encoder, None, cfg, meta.get("step"),
                          "pretrained" if shipped else "encoder", path)
    elif path.suffix == ".pt":
        encoder, head, cfg, step = _from_checkpoint(path, device)
        weights = Weights(encoder, head, cfg, step, "checkpoint", path)
    else:
        raise CheckpointError(f"{path}: expected a run folder, an encoder .safetensors or a "
                              "checkpoint .pt")
    trained = _trained_size(weights)
    changes = {k: v for k, v in (("data", data), ("data_dir", data_dir)) if v is not None}
    if changes:
        weights.cfg = dataclasses.replace(weights.cfg, **changes).validate()
    if weights.cfg.image_size is None and trained and get_spec(weights.cfg.data).streamed:
        # a folder has no size of its own: decode it at the size the encoder learned from
        weights.cfg = dataclasses.replace(weights.cfg, image_size=trained)
    return weights


def _trained_size(weights: Weights) -> int | None:
    """The side of the views the encoder was trained on, where known: recorded in the export
    (its metadata's image_size), else what a folder set is streamed at (the config's
    image_size, or the set's default)."""
    export = weights.path / "encoder.safetensors" if weights.kind == "run" else weights.path
    if export.suffix == ".safetensors" and export.is_file():
        size = encoder_metadata(export).get("image_size")
        if isinstance(size, int) and size > 0:
            return size
    try:
        spec = get_spec(weights.cfg.data)
    except DataError:  # a set this fastclr does not know (evaluated with --data NAME)
        return weights.cfg.image_size
    return (weights.cfg.image_size or spec.size) if spec.streamed else weights.cfg.image_size


def _saved_config(raw, where: Path) -> Config:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} holds a damaged training config (not a mapping)")
    return config_from_dict(raw)


def _load_run(run_dir: Path, device) -> Weights:
    """A run folder: the exported encoder, with the head of the checkpoint of the same step;
    a run that has not finished yet is read from its latest checkpoint."""
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a fastclr run folder (no config.yaml)")
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"))
    last = latest_checkpoint(run_dir)
    exported = run_dir / "encoder.safetensors"
    if not exported.is_file():
        if last is None:
            raise CheckpointError(f"{run_dir} has neither encoder.safetensors nor a checkpoint")
        encoder, head, _, step = _from_checkpoint(last, device)
        return Weights(encoder, head, cfg, step, "run", run_dir)
    encoder = load_encoder(exported, device)
    step = encoder_metadata(exported).get("step")
    head = None
    if last is not None:
        _, ck_head, _, ck_step = _from_checkpoint(last, device)
        if ck_step == step:  # the head must belong to this encoder, not an older one
            head = ck_head
    return Weights(encoder, head, cfg, step, "run", run_dir)
