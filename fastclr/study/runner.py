"""`fastclr study NAME`: every cell of a study, several seeds each, then the report.

Each (cell, seed) is an ordinary run folder, ROOT/NAME/cells/<cell>/seed<k>: trained by
fastclr.train, evaluated by fastclr.eval, then marked done with `study.json` (the metrics the
report reads). A study stopped at any moment and run again skips what is done and resumes what
is not (a killed training resumes from its last checkpoint). All runs are planned, and every
config checked, before the first one starts.

With `jobs` > 1 the runs are spread over that many processes (`fastclr study NAME --only
CELL/SEED` each), on the given devices in turn; that is all the scheduling there is.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fastclr.config import Config, load_config
from fastclr.errors import ConfigError, StudyError
from fastclr.registry import STUDIES
from fastclr.study.budget import Budget
from fastclr.study.catalog import Cell, Study

# ---- planning -------------------------------------------------------------------------------


@dataclass
class Job:
    study: Study
    cell: Cell
    seed: int
    cfg: Config

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def key(self) -> str:
        return f"{self.cell.label}/seed{self.seed}"


def folder_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "=.,+-" else "_" for c in label)


def plan(study: Study, budget: Budget, root: Path) -> list[Job]:
    """Every (cell, seed) of the study with its checked config; a bad cell is one error line
    before anything runs."""
    jobs = []
    for cell in study.cells:
        for seed in budget.seeds_for(study.name):
            run_dir = root / study.name / "cells" / folder_name(cell.label) / f"seed{seed}"
            options = {**budget.options_for(study.name), **cell.overrides, "seed": seed,
                       "run_dir": str(run_dir), "final_eval": False}
            try:
                cfg = load_config(budget.base, overrides=options)
            except ConfigError as e:
                raise ConfigError(f"study {study.name}, cell {cell.label!r}: {e}") from None
            jobs.append(Job(study, cell, seed, cfg))
    return jobs


# ---- running --------------------------------------------------------------------------------


def done(job: Job) -> dict | None:
    """The metrics of a finished (cell, seed), or None."""
    try:
        record = json.loads((job.run_dir / "study.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("protocols") == list(job.study.protocols) else None


def run_job(job: Job, device: str = "auto") -> dict:
    """Train (or resume) and evaluate one (cell, seed); write and return its study.json."""
    from fastclr.checkpoint import atomic_write
    from fastclr.distributed import resolve_device
    from fastclr.eval.runner import evaluate_weights
    from fastclr.eval.weights import load_weights
    from fastclr.train import train

    finished = done(job)
    if finished is not None:
        return finished
    run_dir = train(job.cfg, progress=False)
    dev = resolve_device(device)
    report = evaluate_weights(load_weights(run_dir, device=dev), job.study.protocols, dev,
                              seed=job.seed)
    record = {"cell": job.cell.label, "seed": job.seed, "protocols": list(job.study.protocols),
              "metrics": {**report, "train_loss": final_loss(run_dir)}}
    blob = json.dumps(record, indent=2).encode()
    atomic_write(run_dir / "study.json", lambda f: f.write(blob))
    return record


def final_loss(run_dir: Path) -> float:
    """The training loss of the run's last log line (mean over that log window)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return math.nan
    for line in reversed(lines):
        row = json.loads(line)
        if "loss" in row:
            return float(row["loss"])
    return math.nan


def run_study(name: str, budget: Budget, root: Path = Path("studies"), jobs: int = 1,
              devices: list[str] | None = None, report_dir: Path | None = None,
              say=print) -> dict:
    """Run (or finish) every cell and seed of study `name`, then write its report."""
    from fastclr.study.report import write_report

    study = STUDIES.get(name)
    todo = plan(study, budget, root)
    devices = devices or ["auto"]
    started = time.perf_counter()
    left = [job for job in todo if done(job) is None]
    say(f"study {name}: {len(study.cells)} cells x {len(budget.seeds_for(name))} seeds = "
        f"{len(todo)} runs, {len(todo) - len(left)} already done; budget {budget.name}")
    if jobs <= 1:
        for i, job in enumerate(left):
            t0 = time.perf_counter()
            run_job(job, devices[i % len(devices)])
            say(f"  {job.key}: done in {time.perf_counter() - t0:.0f} s")
    else:
        _run_in_processes(left, budget, root, jobs, devices, say)
    results = {job.key: done(job) for job in todo}
    missing = [k for k, v in results.items() if v is None]
    report_dir = report_dir or root / name
    _record_time(report_dir, time.perf_counter() - started, len(left) - len(missing))
    if missing:
        raise StudyError(f"study {name}: {len(missing)} of {len(todo)} runs did not finish "
                         f"({', '.join(missing)}; their errors are above); the same command "
                         "runs them again and keeps the finished ones")
    return write_report(study, budget, todo, results, report_dir)


def _run_in_processes(jobs_left: list[Job], budget: Budget, root: Path, jobs: int,
                      devices: list[str], say) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)

    def one(i_job):
        i, job = i_job
        command = [sys.executable, "-m", "fastclr", "study", job.study.name, "--budget",
                   budget.source, "--out", str(root), "--only", job.key, "--device",
                   devices[i % len(devices)], "--threads", str(threads)]
        out = subprocess.run(command, capture_output=True, text=True)
        say(f"  {job.key}: {'done' if out.returncode == 0 else 'FAILED: ' + out.stderr[-300:]}")

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, enumerate(jobs_left)))


def run_only(name: str, budget: Budget, root: Path, key: str, device: str) -> dict:
    """One (cell, seed) of a study, `key` as "CELL/seedK" (what --jobs hands each process)."""
    study = STUDIES.get(name)
    for job in plan(study, budget, root):
        if job.key == key:
            return run_job(job, device)
    raise ConfigError(f"study {name} has no run {key!r}")


def _record_time(folder: Path, seconds: float, runs: int) -> None:
    """Wall time of this invocation, kept apart from the report (which must not depend on it);
    one that ran nothing (it only wrote the report again) adds nothing."""
    if runs == 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "timing.json"
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):
        history = []
    history.append({"seconds": round(seconds, 1), "runs": runs,
                    "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(history, indent=2))
