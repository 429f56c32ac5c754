"""A run folder belongs to one training configuration, one writer at a time, and keeps a
record of every session (issue 13: run identity; issue 20: one writer)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from fixtures import HANG_SECONDS, SAMPLE, tiny_config
from fastclr.cli import main
from fastclr.config import load_config
from fastclr.errors import RunFolderError
from fastclr.train import train
from fastclr.train.runfolder import RunLock, default_run_dir


def command(run_dir, *extra):
    return ["train", "--data-dir", str(SAMPLE), "--width", "0.125", "--stem", "small-s2",
            "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0.5", "--run-dir",
            str(run_dir), "--log-every", "1", "--checkpoint-every", "2", "--threads", "1",
            "--tensorboard", "false", "--final-eval", "false", "--no-progress", *extra]


def sessions(run_dir):
    return json.loads((run_dir / "run.json").read_text())["sessions"]


def test_a_changed_training_option_never_reuses_a_finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(command(run_dir, "--max-steps", "3")) == 0
    config = (run_dir / "config.yaml").read_bytes()
    encoder = (run_dir / "encoder.safetensors").read_bytes()
    capsys.readouterr()
    assert main(command(run_dir, "--max-steps", "3", "--temperature", "0.2")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "temperature 0.5 -> 0.2" in err[0] and "--run-dir" in err[0]
    assert "--allow-change temperature" in err[0]
    # nothing in the folder claims that these weights were trained at tau 0.2
    assert (run_dir / "config.yaml").read_bytes() == config
    assert (run_dir / "encoder.safetensors").read_bytes() == encoder
    assert len(sessions(run_dir)) == 1


def test_a_variant_of_a_preset_gets_its_own_default_folder():
    base = load_config("fashion-mnist-cpu")
    variant = load_config("fashion-mnist-cpu", text_overrides={"temperature": "0.5"})
    logging = load_config("fashion-mnist-cpu", text_overrides={"log_every": "1"})
    assert default_run_dir(base) != default_run_dir(variant)
    assert default_run_dir(logging) == default_run_dir(base)


def test_a_changed_logging_option_resumes(tmp_path):
    train(tiny_config(tmp_path, max_steps=2, checkpoint_every=2), progress=False)
    train(tiny_config(tmp_path, max_steps=4, checkpoint_every=2, log_every=2), progress=False)
    runs = sessions(tmp_path)
    assert [(s["start_step"], s["end_step"]) for s in runs] == [(0, 2), (2, 4)]
    assert "log_every: 2" in (tmp_path / "config.yaml").read_text()


def test_training_longer_is_allowed_on_purpose_and_recorded(tmp_path, caplog):
    cfg = tiny_config(tmp_path, epochs=1)
    train(cfg, progress=False)
    finished = sessions(tmp_path)[0]["end_step"]
    with pytest.raises(RunFolderError, match="--allow-change epochs"):
        train(tiny_config(tmp_path, epochs=2, max_steps=finished + 2), progress=False)
    train(tiny_config(tmp_path, epochs=2, max_steps=finished + 2, allow_change="epochs"),
          progress=False)
    last = sessions(tmp_path)[-1]
    assert last["changed"] == ["epochs 1 -> 2"] and last["start_step"] == finished
    assert last["end_step"] == finished + 2
    log = (tmp_path / "train.log").read_text()
    assert "the cosine schedule now spans" in log and "epochs: 2" in \
        (tmp_path / "config.yaml").read_text()


@pytest.mark.slow
def test_run_json_keeps_every_start_and_resume_after_a_kill(tmp_path):
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "fastclr"] + command(run_dir)
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-run, whatever this machine's speed
    # a second writer is refused while the first one holds the folder, with one line naming it
    second = subprocess.run(cli, capture_output=True, text=True, timeout=HANG_SECONDS)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"is in use by pid {proc.pid}" in lines[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kernel dropped the dead process's lock: resuming is allowed, twice
    first = subprocess.run(cli + ["--max-steps", "30"], capture_output=True, text=True,
                           timeout=HANG_SECONDS)
    assert first.returncode == 0, first.stderr[-2000:]
    last = subprocess.run(cli, capture_output=True, text=True, timeout=HANG_SECONDS)
    assert last.returncode == 0, last.stderr[-2000:]
    runs = sessions(run_dir)
    assert len(runs) == 3
    killed, resumed, finished = runs
    assert killed["ended"] is None and killed["outcome"] is None and killed["end_step"] >= 2
    assert resumed["start_step"] == killed["end_step"] and resumed["end_step"] == 30
    assert resumed["outcome"] == "stopped at --max-steps 30"
    assert finished["start_step"] == 30 and finished["outcome"] == "finished"
    assert finished["end_step"] == 62 and all(s["command"] and s["git_revision"] for s in runs)


def _wait_for_checkpoint(proc, run_dir):
    """Until run.json records a checkpoint's step for the running session (it does so just
    after the checkpoint file appears: waiting for the file alone, a stop in between on a loaded
    machine left end_step at 0)."""
    deadline = time.monotonic() + HANG_SECONDS
    while _recorded_step(run_dir) == 0:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)


def _recorded_step(run_dir) -> int:
    try:  # run.json is replaced whole (renamed), never half-written
        return sessions(run_dir)[-1]["end_step"]
    except (FileNotFoundError, IndexError):
        return 0


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match="in use by pid"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released on exit
        pass


def test_a_registered_backbone_trains(tmp_path):
    """docs/extending.md's recipe: register a backbone by name, then train with it."""
    import torch.nn as nn

    from fastclr.registry import BACKBONES

    class Tiny(nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(spec.in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8),
                                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.feat_dim = 8

        def forward(self, x):
            return self.net(x)

    BACKBONES.register("tiny-test", Tiny, "a one-conv backbone for this test")
    try:
        run = train(tiny_config(tmp_path, arch="tiny-test", max_steps=2), progress=False)
        from fastclr.checkpoint import load_encoder
        encoder = load_encoder(run / "encoder.safetensors")
        assert encoder(torch.rand(2, 1, 28, 28)).shape == (2, 8)
        assert sessions(run)[0]["end_step"] == 2
    finally:
        BACKBONES.unregister("tiny-test")
