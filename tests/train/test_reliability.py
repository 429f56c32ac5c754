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

from fixtures import HANG_SECONDS, SAMPLE, tiny_config
from fastclr.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fastclr.errors import CheckpointError, RunFolderError
from fastclr.train import train
from fastclr.train.step import build_run, checkpoint_state

STEPS = int(os.environ.get("FASTCLR_TEST_KILL_STEPS", 200))  # steps of the killed run
KILLS = 10
# How often the test looks at the run's progress. A larger value makes the run look faster to
# the test (more steps pass between two looks): FASTCLR_TEST_POLL=0.5 imitates a fast machine.
POLL = float(os.environ.get("FASTCLR_TEST_POLL", 0.02))


def command(run_dir, max_steps=STEPS):
    return [sys.executable, "-m", "fastclr", "train", "--data-dir", str(SAMPLE), "--width",
            "0.125", "--stem", "small-s2", "--batch-size", "32",
            "--epochs", str(-(-max(max_steps, STEPS) // 62)),  # 62 steps per epoch
            "--warmup-epochs", "0.5", "--run-dir", str(run_dir), "--log-every", "1",
            "--checkpoint-every", "3", "--deterministic", "true", "--threads", "1",
            "--tensorboard", "false", "--final-eval", "false", "--no-progress",
            "--max-steps", str(max_steps)]


def final_weights(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])["model"]


def logged_step(run_dir) -> int:
    """The last step in metrics.jsonl (0 before the first); a half-written last line is
    skipped (a kill can land mid-write)."""
    path = run_dir / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.is_file() else []):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return 0


def wait_for_step(proc, run_dir, step) -> bool:
    """Wait until the run has logged `step`: True, or False if its process ended first.
    Progress is what is waited for; HANG_SECONDS only catches a run that stopped moving."""
    deadline = time.monotonic() + HANG_SECONDS
    while logged_step(run_dir) < step:
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"no training progress to step {step} in {HANG_SECONDS:.0f} s")
        time.sleep(POLL)
    return True


def kill_points(rng, steps=STEPS, kills=KILLS) -> list[int]:
    """One kill step inside each of `kills` equal windows of the first 90% of the run."""
    window = 0.9 * steps / kills
    return [max(1, int((i + rng.uniform(0.2, 0.8)) * window)) for i in range(kills)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, as a subprocess like the interrupted ones."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(command(run_dir), check=True, capture_output=True, timeout=HANG_SECONDS)
    return run_dir


@pytest.mark.slow
def test_sigkill_ten_times_then_identical_weights(reference, tmp_path):
    """Ten SIGKILLs at points that follow the run's progress, whatever the machine's speed:
    session i is killed once it has trained past its kill point, after a random part of the
    time of three steps (one checkpoint period), so kills land mid-step, mid-checkpoint and
    mid-log line. The resumed run must end with the uninterrupted run's weights, bit for bit."""
    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    for i, point in enumerate(kill_points(rng)):
        # lines past the last checkpoint are redone (and trimmed) by the resume: only a step
        # beyond `seen` is this session's progress
        seen = logged_step(run_dir)
        target = max(point, seen + 2)  # this session trains at least two steps
        proc = subprocess.Popen(command(run_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        reached = wait_for_step(proc, run_dir, seen + 1)
        started = time.monotonic()
        reached = reached and wait_for_step(proc, run_dir, target)
        step_seconds = (time.monotonic() - started) / max(1, target - seen - 1)
        if reached:
            time.sleep(rng.uniform(0.0, 3 * step_seconds))
        if proc.poll() is not None:
            pytest.fail(f"test set-up: kill {i + 1} of {KILLS} (at step {target}) did not "
                        f"land: the run ended first (exit code {proc.returncode}, last logged "
                        f"step {logged_step(run_dir)} of {STEPS})")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in list_checkpoints(run_dir):  # every checkpoint left behind is whole
            load_checkpoint(path)
    assert logged_step(run_dir) < STEPS, "test set-up: the last kill came after the last step"
    done = subprocess.run(command(run_dir), capture_output=True, text=True,
                          timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = final_weights(reference), final_weights(run_dir)
    assert list_checkpoints(run_dir)[-1].name == f"ckpt-{STEPS:08d}.pt"
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # resumes trimmed the redone lines
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_kill_points_spread_over_the_run():
    points = kill_points(random.Random(0), steps=200, kills=10)
    assert len(points) == 10 and points == sorted(points)
    assert all(18 * i < p < 18 * (i + 1) for i, p in enumerate(points))  # one per window
    assert points[-1] < 180  # room left after the last kill: the run cannot end first


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes(reference, tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen(command(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait_for_step(proc, run_dir, 5):
        pytest.fail(f"test set-up: the run ended before step 5 (exit code {proc.returncode})")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_SECONDS)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by SIGTERM at step" in err, (
        "the run ended before the signal landed (test set-up)" if logged_step(run_dir) == STEPS
        else err[-2000:])
    stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert 0 < stopped_at < STEPS
    assert list_checkpoints(run_dir)[-1].name == f"ckpt-{stopped_at:08d}.pt"
    again = subprocess.run(command(run_dir), capture_output=True, text=True,
                           timeout=HANG_SECONDS)
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
    import fastclr.train.loop as train_module

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
                         timeout=HANG_SECONDS)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and f"--run-dir {blocker / 'run'}: {blocker} is a file" in lines[0], \
        out.stderr  # refused before anything is imported or written (issue 20)


def test_incompatible_checkpoint_is_refused(tmp_path):
    train(tiny_config(tmp_path, max_steps=1), progress=False)
    with pytest.raises(RunFolderError, match=r"other training options \(width 0.125 -> 0.25\)"):
        train(tiny_config(tmp_path, max_steps=2, width=0.25), progress=False)
    # a model option cannot be changed on purpose either: the checkpoint holds another model
    with pytest.raises(RunFolderError, match="changes the model"):
        train(tiny_config(tmp_path, max_steps=2, width=0.25, allow_change="width"),
              progress=False)


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
