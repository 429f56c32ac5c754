"""The run folder: what a run writes beside its checkpoints, and how a run finds them again.

    runs/<name>/config.yaml        the resolved config
                run.json           git revision, versions, command, data set (count, hash)
                train.log          the log lines
                metrics.jsonl      one JSON object per log line (and per kNN evaluation)
                tensorboard/       the same metrics for TensorBoard
                train_time.json    wall seconds of pretraining, over all resumed sessions
                checkpoints/       see checkpoint.py
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastclr import distributed
from fastclr.checkpoint import atomic_write, latest_checkpoint
from fastclr.config import Config, config_from_dict, save_config
from fastclr.data import Pretrain
from fastclr.errors import CheckpointError, ConfigError

log = logging.getLogger("fastclr")

# options that shape the model or the data: a checkpoint made with others cannot be resumed
STRUCTURAL = ("data", "image_size", "arch", "width", "stem", "head", "head_layers",
              "head_hidden", "proj_dim", "optimizer")


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / cfg.name


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        rev = out.stdout.strip()
        if out.returncode or not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_info(run_dir: Path, cfg: Config, ctx: distributed.Context, pretrain: Pretrain):
    from fastclr import __version__
    save_config(cfg, run_dir / "config.yaml")
    info = {"fastclr": __version__, "git_revision": _git_revision(), "torch": torch.__version__,
            "python": platform.python_version(), "host": platform.node(),
            "command": sys.argv, "world_size": ctx.world_size, "device": str(ctx.device),
            "data": {"name": cfg.data, "source": pretrain.source, "images": len(pretrain),
                     "shape": list(pretrain.shape),
                     "held": "streamed" if pretrain.streamed else "in memory",
                     "sha256": pretrain.fingerprint,  # over sorted relative paths and sizes
                     "skipped": len(pretrain.skipped),
                     "skipped_files": [f"{p} ({why})" for p, why in pretrain.skipped[:1000]]},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))


def log_skipped(pretrain: Pretrain, named: int = 50) -> None:
    """Name the files the data set index could not read, once, in the run log."""
    if not pretrain.skipped:
        return
    log.warning("%s: skipped %d unreadable files in %s (listed in run.json):", pretrain.name,
                len(pretrain.skipped), pretrain.source)
    for path, why in pretrain.skipped[:named]:
        log.warning("  skipped %s (%s)", path, why)
    if len(pretrain.skipped) > named:
        log.warning("  ... and %d more", len(pretrain.skipped) - named)


def find_resume(cfg: Config, run_dir: Path) -> Path | None:
    if cfg.resume == "never":
        found = latest_checkpoint(run_dir)
        if found is not None:
            raise CheckpointError(f"{run_dir} already holds checkpoint {found}; choose another "
                                  "--run-dir or --resume auto")
        return None
    if cfg.resume == "auto":
        return latest_checkpoint(run_dir)
    return Path(cfg.resume)


def check_compatible(saved: dict, cfg: Config, path: Path) -> list[str]:
    """Refuse a checkpoint whose model or data differ; return the other changed options, as
    "name old -> new" lines."""
    try:
        old = config_from_dict(saved)
    except ConfigError as e:
        raise CheckpointError(f"{path} holds a config this fastclr cannot read ({e})") from None
    clash = [k for k in STRUCTURAL if getattr(old, k) != getattr(cfg, k)]
    if clash:
        diffs = ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in clash)
        raise CheckpointError(f"cannot resume {path}: it was made with other options ({diffs}); "
                              "use another --run-dir or the original options")
    changed = [k for k in old.to_dict() if k not in STRUCTURAL and k not in ("name", "resume")
               and getattr(old, k) != getattr(cfg, k)]
    return [f"{k} {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in changed]


class MetricsLog:
    """metrics.jsonl (one JSON object a line) and TensorBoard. On resume at step s, lines of
    steps after s (logged by the interrupted session, about to be redone) are dropped."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        if resume_step and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines(keepends=True)
                    if _line_step(line) <= resume_step]
            blob = "".join(kept).encode()
            atomic_write(self.path, lambda f: f.write(blob))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"),
                                        purge_step=resume_step or None)
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, step: int, values: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line from a killed process: drop it


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if run_dir is not None and is_main:
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(file)


def record_train_time(run_dir: Path, seconds: float) -> None:
    """Wall seconds of pretraining over all sessions (a resumed run counts from its checkpoint)."""
    blob = json.dumps({"train_seconds": seconds}).encode()
    atomic_write(run_dir / "train_time.json", lambda f: f.write(blob))


def read_train_time(run_dir: Path) -> float:
    try:
        return float(json.loads((run_dir / "train_time.json").read_text())["train_seconds"])
    except (OSError, ValueError, KeyError):
        return 0.0
