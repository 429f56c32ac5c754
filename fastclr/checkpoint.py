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

from fastclr.errors import CheckpointError

SCHEMA_VERSION = 1
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
    if not isinstance(state, dict) or state.get("schema") != SCHEMA_VERSION:
        found = state.get("schema") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} has checkpoint schema {found}; this fastclr reads "
                              f"schema {SCHEMA_VERSION}")
    return state


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
    """Save encoder f (no head) as safetensors, with what rebuilding it needs as metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    blob = save(tensors, metadata={"fastclr": json.dumps(meta)})
    atomic_write(Path(path), lambda f: f.write(blob))


def load_encoder(path: str | Path, device="cpu") -> torch.nn.Module:
    """Rebuild an exported encoder: `fastclr.load_encoder("runs/x/encoder.safetensors")`.

    It takes float images in [0, 1], shape (N, C, H, W), and returns h (N, feat_dim).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastclr.models import build_encoder

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["fastclr"])
        tensors = load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"encoder file {path} does not exist") from None
    except (KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a fastclr encoder export ({e})") from None
    encoder = build_encoder(meta["arch"], meta["width"], meta["stem"], meta["in_channels"],
                            meta["mean"], meta["std"])
    encoder.load_state_dict(tensors)
    return encoder.to(device).eval()
