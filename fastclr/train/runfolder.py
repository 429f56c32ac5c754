"""The run folder: one training configuration, its weights and everything written beside them.

    runs/<name>/config.yaml        the resolved config: always the one the weights were made with
                run.json           the data set, and every start and resume of the run (command,
                                   revision, start, end, steps covered, outcome), appended
                train.log          the log lines
                metrics.jsonl      one JSON object per log line (and per kNN evaluation and
                                   tracking point: keys dynamics/*)
                tensorboard/       the same metrics for TensorBoard
                dynamics/          the tracking record: probe.json, step-<step>.npz
                                   (fastclr.eval.tracking)
                train_time.json    wall seconds of pretraining, over all sessions
                checkpoints/       see fastclr.checkpoint
                .lock              held by the one process that writes here

A folder belongs to the options that change what is learned (`config.identity_options`):
resuming with another value of one is refused, unless `--allow-change NAME` says it is meant,
and then run.json records it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastclr.checkpoint import atomic_write, latest_checkpoint
from fastclr.config import (Config, config_from_dict, identity_options, read_yaml, save_config,
                            with_absolute_paths)
from fastclr.data import get_spec
from fastclr.errors import CheckpointError, ConfigError, RunFolderError
from fastclr.spec import EncoderSpec, HeadSpec, option_names

log = logging.getLogger("fastclr")


def default_run_dir(cfg: Config) -> Path:
    """runs/<name>: the preset's name, plus the identity options a command line changed."""
    return Path("runs") / cfg.name


# ---- one writer -----------------------------------------------------------------------------


class RunLock:
    """An exclusive lock on a run folder, held while a process trains there.

    flock(2) on `.lock`: the kernel releases it when the holder exits, however it exits, so a
    kill -9 never leaves a stale lock behind. A second process is refused with one line that
    names the holder.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use by {holder}; wait for it to "
                                 "finish, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


# ---- identity -------------------------------------------------------------------------------


def saved_config(run_dir: Path, checkpoint: Path | None, state: dict | None) -> Config | None:
    """The config the run folder's weights were made with: config.yaml, else the checkpoint's."""
    path = Path(run_dir) / "config.yaml"
    try:  # a folder of an older fastclr may hold relative data paths: as the run reads them
        if path.is_file():
            return with_absolute_paths(config_from_dict(read_yaml(path)))
        if state is not None:
            return with_absolute_paths(config_from_dict(state["config"]))
    except ConfigError as e:
        where = path if path.is_file() else checkpoint
        raise CheckpointError(f"{where} holds a config this fastclr cannot read ({e})") from None
    return None


def check_identity(old: Config, new: Config, run_dir: Path) -> tuple[list[str], list[str]]:
    """Compare a run folder's config with the one asked for.

    A changed identity option is refused, unless named in `new.allow_change` (never one the
    model spec holds: a checkpoint of another model cannot be resumed). Returns the allowed
    identity changes and the other (harmless) changes, as "name old -> new" texts.
    """
    allowed = set(new.allowed_changes)
    model_options = set(option_names(EncoderSpec)) | set(option_names(HeadSpec))
    identity = [k for k in identity_options() if getattr(old, k) != getattr(new, k)]
    refused = [k for k in identity if k not in allowed]
    if refused:
        diffs = ", ".join(_change(old, new, k) for k in refused)
        hint = "" if set(refused) & model_options else (
            f", or --allow-change {','.join(refused)} to change it on purpose (recorded in "
            "run.json)")
        raise RunFolderError(f"{run_dir} holds a run made with other training options "
                             f"({diffs}); use another --run-dir{hint}")
    if set(identity) & model_options:
        clash = ", ".join(_change(old, new, k) for k in identity if k in model_options)
        raise RunFolderError(f"{run_dir}: {clash} changes the model, and a checkpoint of "
                             "another model cannot be resumed; use another --run-dir")
    others = [k for k in old.to_dict() if k not in identity_options()
              and k not in ("name", "resume", "allow_change") and getattr(old, k) != getattr(new, k)]
    return [_change(old, new, k) for k in identity], [_change(old, new, k) for k in others]


def _change(old: Config, new: Config, name: str) -> str:
    return f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}"


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


# ---- run.json: the data set and every session ------------------------------------------------


def git_revision() -> str:
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


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class RunRecord:
    """run.json: what the run pretrains on, and one entry per session (start or resume), kept.

    A session's entry is written when it starts, its `end_step` updated at every checkpoint,
    and `ended` and `outcome` set when it ends; a session killed by SIGKILL keeps `ended: null`
    and the step of its last checkpoint.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.json"
        self.data = self._read()

    def _read(self) -> dict:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"run": {}, "sessions": []}
        if "sessions" not in raw:  # fastclr 0.1 kept only the latest start
            return {"run": {"data": raw.get("data")}, "sessions": [raw]}
        return raw

    @property
    def sessions(self) -> list[dict]:
        return self.data["sessions"]

    def start(self, cfg: Config, world_size: int, device: str, pretrain, start_step: int,
              changed: list[str]) -> None:
        from fastclr import __version__
        self.data["run"] = {
            "name": cfg.name,
            "data": {"name": cfg.data, "source": pretrain.source, "images": len(pretrain),
                     "shape": list(pretrain.shape),
                     "held": "streamed" if pretrain.streamed else "in memory",
                     "sha256": pretrain.fingerprint,  # over sorted relative paths and sizes
                     "skipped": len(pretrain.skipped),
                     "skipped_files": [f"{p} ({why})" for p, why in pretrain.skipped[:1000]]}}
        self.sessions.append({
            "command": sys.argv, "git_revision": git_revision(), "fastclr": __version__,
            "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node(), "pid": os.getpid(), "world_size": world_size,
            "device": device, "started": _now(), "ended": None, "start_step": start_step,
            "end_step": start_step, "outcome": None, "changed": changed})
        self._write()

    def update(self, step: int, outcome: str | None = None) -> None:
        session = self.sessions[-1]
        session["end_step"] = step
        if outcome is not None:
            session["ended"], session["outcome"] = _now(), outcome
        self._write()

    def _write(self) -> None:
        blob = json.dumps(self.data, indent=2).encode()
        atomic_write(self.path, lambda f: f.write(blob))


def write_config(run_dir: Path, cfg: Config) -> None:
    save_config(cfg, Path(run_dir) / "config.yaml")


def log_skipped(pretrain, named: int = 50) -> None:
    """Name the files the data set index could not read, once, in the run log (all of them
    are listed in run.json)."""
    from fastclr.data.load import name_skipped

    split = ",".join(get_spec(pretrain.name).pretrain) if pretrain.name else "pretraining"
    name_skipped(pretrain.name, split, pretrain.source, pretrain.skipped, named)


# ---- metrics and logs -----------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl (one JSON object a line) and TensorBoard. On resume at step s, lines of
    steps after s (logged by the interrupted session, about to be redone) are dropped."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int = 0):
        self.path = run_dir / "metrics.jsonl"
        if self.path.is_file():
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

    def histograms(self, step: int, values: dict) -> None:
        """Distributions (tensors of values) to TensorBoard only; metrics.jsonl keeps scalars."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_histogram(k, v.float().cpu(), step)

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
