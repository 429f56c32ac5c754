"""User mistakes end in one clear line and a non-zero exit, not a traceback."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import HANG_SECONDS, SAMPLE
from fastclr.cli import main

ROOT = Path(__file__).resolve().parent.parent  # the checkout under test, for subprocesses


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastclr", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=HANG_SECONDS,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_unknown_flag_is_one_line():
    out = run_cli("train", "--batch-sise", "64")
    assert out.returncode == 2
    assert "unrecognized arguments: --batch-sise" in one_line(out.stderr)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args,expected", [
    (["--batch-size", "zero"], "batch_size must be an integer"),
    (["--batch-size", "0"], "batch_size must be >= 2"),
    (["--flip-p", "1.5"], "flip_p is a probability"),
    (["--compile", "maybe"], "compile must be true or false"),
    (["--arch", "vgg"], "arch must be one of"),
    (["--crop-scale", "0.9,0.2"], "crop_scale is a range"),
])
def test_bad_values_are_one_line(capsys, args, expected):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert expected in one_line(err)


def test_missing_data_set_is_one_line(tmp_path):
    out = run_cli("train", "--data-dir", str(tmp_path / "nowhere"), "--run-dir",
                  str(tmp_path / "run"), "--epochs", "1")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert "fashion-mnist (train split) not found" in line and "apt-get install" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing half-written


def test_unknown_preset_is_one_line(capsys):
    assert main(["train", "--config", "no-such-preset"]) == 2
    assert "neither a file nor a preset" in one_line(capsys.readouterr().err)


def test_bool_flags_parse_false():
    # the classic `type=type(default)` bug turns "False" into True; ours must not
    from fastclr.config import load_config
    cfg = load_config(None, text_overrides={"compile": "False", "tensorboard": "false"})
    assert cfg.compile is False and cfg.tensorboard is False


def test_eval_of_a_non_run_folder(capsys, tmp_path):
    assert main(["eval", str(tmp_path)]) == 2
    assert "is not a fastclr run folder" in one_line(capsys.readouterr().err)


def test_help_explains_every_option():
    from fastclr.cli import build_parser
    from fastclr.config import options

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in options():
        assert "--" + f.name.replace("_", "-") in text


def test_preview_writes_a_png(tmp_path, sample_dir):
    out = tmp_path / "grid.png"
    assert main(["preview", "--data-dir", str(sample_dir), "--images", "6", "--out",
                 str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- Ctrl-C: one line and exit 130, wherever it lands (issue 20) ------------------------------


def _interrupt(args, moment, cwd=None, env_extra=None):
    """Start `python -m fastclr ARGS` in its own process group, wait for `moment(proc)` (False:
    the process ended first), then press Ctrl-C as a terminal does: SIGINT to the whole group,
    DataLoader workers included. Returns (exit status, stderr lines, whether it landed)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, "-m", "fastclr", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    landed = moment(proc)
    if landed:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_SECONDS)
    return proc.returncode, [l for l in err.splitlines() if l.strip()], landed


def _after(seconds):
    def moment(proc):
        time.sleep(seconds)
        return proc.poll() is None
    return moment


def _torch_loading(proc):
    """Mid `import torch`: its library is mapped, the import has not finished (the first
    second of a command, where a KeyboardInterrupt used to leave a traceback)."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + HANG_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                return True
        except OSError:
            pass
        time.sleep(0.002)
    return False


def _logged(path):
    """Once the run has logged a step to `path` (its metrics.jsonl): DataLoader workers run."""
    def moment(proc):
        deadline = time.monotonic() + HANG_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return True
            time.sleep(0.02)
        return False
    return moment


def _interpreter_start(err):
    """Python's own start-up (site), before any fastclr code runs: outside fastclr's reach."""
    return any("init_import_site" in l for l in err)


TINY = ["--data-dir", str(SAMPLE), "--width", "0.125", "--stem", "small-s2", "--batch-size",
        "32", "--epochs", "50", "--threads", "1", "--tensorboard", "false", "--no-progress",
        "--final-eval", "false", "--log-every", "1"]


FINISH_AT_ONCE = {"data", "presets", "study"}  # the quick commands below: done in under a second


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("command,moment", [
    ("train", "early"), ("train", "torch"), ("preview", "torch"), ("eval", "torch"),
    ("embed", "torch"), ("data", "early"), ("presets", "early"), ("study", "early")])
def test_ctrl_c_at_start_up_is_one_line_and_130(tmp_path, command, moment):
    args = {"train": ["train", *TINY, "--run-dir", str(tmp_path / "run")],
            "preview": ["preview", "--data-dir", str(SAMPLE), "--out", str(tmp_path / "p.png")],
            "eval": ["eval", str(tmp_path / "nothing.pt")],
            "embed": ["embed", "--weights", str(tmp_path / "nothing.pt")],
            "data": ["data"], "presets": ["presets"], "study": ["study", "--list"]}[command]
    rng = random.Random(f"{command}-{moment}")
    for attempt in range(3 if moment == "early" else 1):
        when = _after(rng.uniform(0.03, 0.4)) if moment == "early" else _torch_loading
        rc, err, landed = _interrupt(args, when)
        if not landed or _interpreter_start(err):
            continue  # the command finished (or had not started) before the Ctrl-C
        if rc == -signal.SIGINT and not err:
            continue  # after the command's end, in Python's teardown (handlers reset): silent
        if rc == 0 and not err and command in FINISH_AT_ONCE:
            continue  # it ended between the check that it runs and the signal (a train never)
        assert "Traceback" not in "\n".join(err) and rc == 130, (rc, err)
        assert err == ["fastclr: interrupted"], err


@pytest.mark.slow
def test_ctrl_c_during_training_on_a_streamed_set_is_reported_once(tmp_path):
    """DataLoader workers get the terminal's SIGINT too: only the main process speaks."""
    from PIL import Image
    for k in range(16):
        Image.new("RGB", (12, 12), (16 * k, 0, 0)).save(tmp_path / f"{k}.png")
    rc, err, landed = _interrupt(
        ["train", "--data", f"folder:{tmp_path}", "--image-size", "8", "--num-workers", "2",
         "--run-dir", str(tmp_path / "run"), *TINY[2:], "--batch-size", "4"],
        _logged(tmp_path / "run" / "metrics.jsonl"))
    assert landed, "test set-up: the run ended before the Ctrl-C"
    assert rc == 130 and "Traceback" not in "\n".join(err), err
    assert [l for l in err if "SIGINT received" in l] == [
        "fastclr: SIGINT received: finishing this step, then saving a checkpoint (Ctrl-C "
        "again to quit at once)"], err
    assert err[-1].startswith("fastclr: stopped by SIGINT at step ") and len(err) == 2
