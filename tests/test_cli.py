"""User mistakes end in one clear line and a non-zero exit, not a traceback."""

import subprocess
import sys

import pytest

from fixtures import HANG_SECONDS
from fastclr.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastclr", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=HANG_SECONDS)


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
