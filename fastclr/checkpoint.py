"""Checkpoints that survive crashes, and the exported encoder.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed over
its final name, so a kill at any moment leaves either the old file or the new one, never half
of one. It holds everything an exact resume needs (model, optimiser, step, RNG states, config)
as plain tensors and containers, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch

from fastclr.errors import CheckpointError, error_text

SCHEMA_VERSION = 2  # 2: the model spec inside, encoder weights under encoder.backbone.*
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, fsync, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically save `state` (plain containers of tensors/numbers/strings) with a schema tag."""
    path = Path(path)
    state = {"schema": SCHEMA_VERSION, **state}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        previous = latest_checkpoint(path.parent.parent) if path.parent.name == "checkpoints" \
            else None
        kept = f"; the previous checkpoint {previous} is intact" if previous else ""
        raise CheckpointError(f"could not write checkpoint {path}: "
                              f"{e.strerror or e}{kept}") from None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (weights_only=True); a wrong or damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and unsafe-type errors all mean "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable fastclr checkpoint "
                              f"({type(e).__name__})") from None
    found = state.get("schema") if isinstance(state, dict) else None
    if found == 1:
        return _upgrade_schema_1(state, path)
    if found != SCHEMA_VERSION:
        raise CheckpointError(f"{path} has checkpoint schema {found}; this fastclr reads "
                              f"schemas 1 and {SCHEMA_VERSION}")
    return state


def _upgrade_schema_1(state: dict, path: Path) -> dict:
    """fastclr 0.1's checkpoints: no spec (it follows from the config and the input statistics)
    and the encoder's layers at encoder.* instead of encoder.backbone.*."""
    from fastclr.config import config_from_dict
    from fastclr.spec import ModelSpec
    try:
        cfg = config_from_dict(state["config"])
        model = state["model"]
        mean, std = model["encoder.mean"].flatten().tolist(), model["encoder.std"].flatten().tolist()
        spec = ModelSpec.from_config(cfg, len(mean), mean, std)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is a damaged fastclr 0.1 checkpoint ({e})") from None
    # the optimiser's state is by parameter position, which did not change
    return dict(state, schema=SCHEMA_VERSION, model=legacy_encoder_keys(model, "encoder."),
                spec=spec.to_dict())


def legacy_encoder_keys(tensors: dict, prefix: str = "") -> dict:
    """Move a fastclr 0.1 encoder's layers under `backbone.` (mean and std stay)."""
    out = {}
    for key, value in tensors.items():
        if key.startswith(prefix) and key[len(prefix):] not in ("mean", "std"):
            key = f"{prefix}backbone.{key[len(prefix):]}"
        out[key] = value
    return out


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run folder, oldest step first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_stale_temp(folder: Path) -> None:
    """Delete temp files that a killed writer left behind (never a finished checkpoint)."""
    if Path(folder).is_dir():
        for path in Path(folder).glob(".*.tmp"):
            path.unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep` checkpoints, never `protect` (the best one)."""
    found = list_checkpoints(run_dir)
    for path in found[:-keep] if keep > 0 else found:
        if protect is None or path.resolve() != Path(protect).resolve():
            path.unlink(missing_ok=True)


# ---- exported encoder ------------------------------------------------------------------------


def export_encoder(encoder: torch.nn.Module, path: Path, meta: dict) -> None:
    """Save encoder f (no head) as safetensors; its spec and `meta` (the training config, the
    step) go into the metadata, from which `load_encoder` rebuilds it."""
    from safetensors.torch import save

    from fastclr.spec import encoder_spec_dict

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    info = {"format": 2, "spec": encoder_spec_dict(encoder.spec), **meta}
    blob = save(tensors, metadata={"fastclr": json.dumps(info)})
    atomic_write(Path(path), lambda f: f.write(blob))


def _export_path(path: str | Path) -> Path:
    """An exported encoder's file: `path`, or a run folder's encoder.safetensors."""
    path = Path(path)
    if path.is_dir():
        if not (path / "encoder.safetensors").is_file():
            raise CheckpointError(f"{path} is a folder without encoder.safetensors (give an "
                                  "exported encoder, or a run folder that has finished)")
        return path / "encoder.safetensors"
    if not path.exists():
        raise CheckpointError(f"encoder file {path} does not exist")
    return path


def encoder_metadata(path: str | Path) -> dict:
    """The fastclr metadata of an exported encoder (spec, step, training config); `path` may
    also be a run folder."""
    from safetensors import safe_open

    path = _export_path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["fastclr"])
    except Exception as e:  # safetensors' own error, a missing key, bad JSON: not an export
        raise CheckpointError(f"{path} is not a fastclr encoder export ({error_text(e)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a fastclr encoder export (its metadata is not "
                              "a mapping)")
    return meta


def load_encoder(path: str | Path, device="cpu") -> torch.nn.Module:
    """Rebuild an exported encoder: `fastclr.load_encoder("runs/x/encoder.safetensors")` (or
    the run folder). A file that is not one is a CheckpointError.

    It takes float images in [0, 1], shape (N, C, H, W), and returns h (N, feat_dim).
    """
    from safetensors.torch import load_file

    from fastclr.models import build_encoder
    from fastclr.spec import EncoderSpec, encoder_spec_from_dict

    path = _export_path(path)
    meta = encoder_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
        if "spec" in meta:
            spec = encoder_spec_from_dict(meta["spec"])
        else:  # fastclr 0.1: the spec's fields at the top level, layers without `backbone.`
            spec = EncoderSpec(meta["arch"], meta["width"], meta["stem"], meta["in_channels"],
                               tuple(meta["mean"]), tuple(meta["std"]))
            tensors = legacy_encoder_keys(tensors)
        encoder = build_encoder(spec)
        encoder.load_state_dict(tensors)
    except Exception as e:  # a damaged file or a spec its tensors do not fit
        raise CheckpointError(f"{path} does not hold a fastclr encoder ({error_text(e)})") from None
    return encoder.to(device).eval()
