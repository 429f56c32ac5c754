"""Training that survives kills, signals, bad steps and full disks (issue 7)."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SAMPLE, tiny_config
from fastclr.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fastclr.errors import CheckpointError
from fastclr.train import build_run, checkpoint_state, train

STEPS = 200


def command(run_dir, max_steps=STEPS):
    return [sys.executable, "-m", "fastclr", "train", "--data-dir", str(SAMPLE), "--width",
            "0.125", "--stem", "small-s2", "--batch-size", "32", "--epochs", "4",
            "--warmup-epochs", "0.5", "--run-dir", str(run_dir), "--log-every", "1",
            "--checkpoint-every", "3", "--deterministic", "true", "--threads", "1",
            "--tensorboard", "false", "--final-eval", "false", "--no-progress",
            "--max-steps", str(max_steps)]


def final_weights(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])["model"]


def metric_lines(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def wait_for_progress(proc, run_dir, lines, timeout=120):
    start = time.time()
    while metric_lines(run_dir) < lines and proc.poll() is None:
        if time.time() - start > timeout:
            raise TimeoutError("no training progress")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, as a subprocess like the interrupted ones."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(command(run_dir), check=True, capture_output=True, timeout=600)
    return run_dir


@pytest.mark.slow
def test_sigkill_ten_times_then_identical_weights(reference, tmp_path):
    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(command(run_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # kill at a random moment after this session has trained a little: mid-step,
        # mid-checkpoint, mid-log line, wherever it happens to be
        wait_for_progress(proc, run_dir, metric_lines(run_dir) + 1)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for path in list_checkpoints(run_dir):  # every checkpoint left behind is whole
            load_checkpoint(path)
    done = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills == 10
    a, b = final_weights(reference), final_weights(run_dir)
    assert list_checkpoints(run_dir)[-1].name == f"ckpt-{STEPS:08d}.pt"
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # resumes trimmed the redone lines
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes(reference, tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(command(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_progress(proc, run_dir, 5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM at step" in err and "run the same command again" in err
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 0 < stopped_at < STEPS
    assert list_checkpoints(run_dir)[-1].name == f"ckpt-{stopped_at:08d}.pt"
    again = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"at step {stopped_at}" in again.stdout
    a, b = final_weights(reference), final_weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


class PoisonOn:
    """Wraps the model: the forward of chosen steps returns NaN projections."""

    def __init__(self, model, bad_calls):
        self.model, self.bad_calls, self.calls = model, set(bad_calls), 0

    def __call__(self, x):
        h, z = self.model(x)
        self.calls += 1
        return (h, z * float("nan")) if self.calls in self.bad_calls else (h, z)

    def train(self):
        self.model.train()


def _run(tmp_path, **kw):
    from fastclr import distributed
    from fastclr.data import load_pretrain

    cfg = tiny_config(tmp_path, **kw)
    return build_run(cfg, distributed.Context(0, 0, 1, torch.device("cpu")),
                     load_pretrain("fashion-mnist", SAMPLE))


def test_non_finite_step_is_skipped_entirely(tmp_path):
    run = _run(tmp_path)
    images = next(run.batches.epoch(0))
    run.train_step(images, 0)  # a normal step first, so momentum and stats exist
    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    momentum = [run.optimizer.state[p]["momentum_buffer"].clone()
                for p in run.model.parameters()]
    run.forward = PoisonOn(run.model, {1})
    loss, bad = run.train_step(images, 1)
    assert bad.item() and not torch.isfinite(loss)
    for k, v in run.model.state_dict().items():  # weights and BN statistics untouched
        assert torch.equal(v, state[k]), k
    for p, m in zip(run.model.parameters(), momentum):
        assert torch.equal(run.optimizer.state[p]["momentum_buffer"], m)
    loss, bad = run.train_step(images, 2)  # and training goes on
    assert not bad.item() and torch.isfinite(loss)


def test_too_many_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
    import fastclr.train as train_module

    original = train_module.build_run

    def poisoned(cfg, ctx, pretrain):
        run = original(cfg, ctx, pretrain)
        run.forward = PoisonOn(run.model, range(4, 100))
        return run

    monkeypatch.setattr(train_module, "build_run", poisoned)
    cfg = tiny_config(tmp_path, max_nonfinite=5, checkpoint_every=2, max_steps=30)
    with pytest.raises(FloatingPointError, match="5 non-finite losses in a row"):
        train(cfg, progress=False)
    for path in list_checkpoints(tmp_path):  # whatever was saved holds only finite numbers
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["skipped_steps"] >= 5


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = _run(tmp_path)
    first = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    save_checkpoint(first, checkpoint_state(run, 1, {}))
    before = first.read_bytes()

    def no_space(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device.*ckpt-00000001.pt is "
                                              "intact"):
        save_checkpoint(tmp_path / "checkpoints" / "ckpt-00000002.pt",
                        checkpoint_state(run, 2, {}))
    assert first.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]


def test_unwritable_run_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = subprocess.run(command(blocker / "run", max_steps=1), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "cannot write to the run folder" in lines[0], out.stderr


def test_incompatible_checkpoint_is_refused(tmp_path):
    train(tiny_config(tmp_path, max_steps=1), progress=False)
    with pytest.raises(CheckpointError, match=r"other options \(width: 0.125 -> 0.25\)"):
        train(tiny_config(tmp_path, max_steps=2, width=0.25), progress=False)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoints" / "ckpt-00000005.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="not a readable fastclr checkpoint"):
        train(tiny_config(tmp_path, max_steps=6), progress=False)


def test_checkpoint_refuses_code_execution(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"schema": 1, "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(path)
