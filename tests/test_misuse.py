"""Misuse and bad input, tried as a new user would (issue 20): weights files that are not
weights, outputs that cannot be written, counts out of range, and what the help promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fixtures import HANG_SECONDS, SAMPLE
import fastclr.eval.embed  # noqa: F401  imported before any test patches what they import
import fastclr.eval.plots  # noqa: F401
import fastclr.eval.runner  # noqa: F401
import fastclr.study.runner  # noqa: F401
import fastclr.train.loop  # noqa: F401
from fastclr.checkpoint import export_encoder, load_encoder
from fastclr.cli import main
from fastclr.config import Config
from fastclr.errors import CheckpointError
from fastclr.models import build_encoder
from fastclr.spec import EncoderSpec

ROOT = Path(__file__).resolve().parent.parent


def _error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def _export(path, channels=1, data="fashion-mnist", **cfg):
    """A tiny encoder export, as `fastclr train` writes one."""
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec("resnet18", 0.125, "small-s2", channels,
                                        (0.3,) * channels, (0.3,) * channels))
    config = Config(data=data, **cfg).validate()
    export_encoder(encoder, path, {"data": data, "step": 1, "feat_dim": encoder.feat_dim,
                                   "image_size": 28, "config": config.to_dict()})
    return path


def _rgb_folder(root, classes=("cat", "dog"), splits=("train", "val"), count=4):
    for split in splits:
        for i, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (10, 10), (60 * i, 20 * k, 90)).save(root / split / c / f"{k}.png")
    return root


# ---- 5: weights files that are not weights -------------------------------------------------


@pytest.fixture
def junk(tmp_path):
    rng = __import__("random").Random(0)
    paths = {}
    for name in ("encoder.safetensors", "ckpt.pt"):
        paths[name] = tmp_path / name
        paths[name].write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
    paths["empty.safetensors"] = tmp_path / "empty.safetensors"
    paths["empty.safetensors"].write_bytes(b"")
    return paths


@pytest.mark.parametrize("name", ["encoder.safetensors", "ckpt.pt", "empty.safetensors"])
def test_random_bytes_as_weights_are_one_line_for_eval_embed_and_load_encoder(
        junk, capsys, tmp_path, name):
    path = junk[name]
    assert main(["eval", str(path)]) == 2
    assert str(path) in _error_line(capsys)
    assert main(["embed", "--weights", str(path), "--out", str(tmp_path / "h.npy")]) == 2
    assert str(path) in _error_line(capsys)
    if name.endswith(".safetensors"):
        with pytest.raises(CheckpointError, match="is not a fastclr encoder export"):
            load_encoder(path)


def test_random_bytes_as_weights_through_the_real_entry_point(junk):
    out = subprocess.run([sys.executable, "-m", "fastclr", "eval",
                          str(junk["encoder.safetensors"])], capture_output=True, text=True,
                         timeout=HANG_SECONDS, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "not a fastclr encoder export" in out.stderr


def test_load_encoder_takes_a_run_folder_and_refuses_other_folders(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _export(run / "encoder.safetensors")
    assert load_encoder(run).spec.in_channels == 1  # the folder's export
    with pytest.raises(CheckpointError, match="folder without encoder.safetensors"):
        load_encoder(tmp_path / "run" / ".." / "run" / "..")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nothing.safetensors")


def test_embed_refuses_rgb_images_for_a_grayscale_encoder_before_computing(
        tmp_path, capsys, monkeypatch):
    export = _export(tmp_path / "encoder.safetensors", channels=1)
    folder = _rgb_folder(tmp_path / "photos", splits=("train",))
    monkeypatch.setattr("fastclr.eval.embed.extract_features", _never)
    assert main(["embed", "--weights", str(export), "--data", f"folder:{folder}", "--out",
                 str(tmp_path / "h.npy")]) == 2
    line = _error_line(capsys)
    assert "3-channel images; the encoder takes 1 (it was trained on grayscale images)" in line
    assert not (tmp_path / "h.npy").exists()


@pytest.mark.parametrize("count", ["-3", "0", "257", "100000", "many"])
def test_preview_image_count_is_bounded(capsys, count):
    with pytest.raises(SystemExit) as e:
        main(["preview", "--images", count])
    assert e.value.code == 2 and "argument --images" in _error_line(capsys)


# ---- 6: output paths are the user's to fix: exit 2, checked before any work ----------------


def _never(*args, **kwargs):
    raise AssertionError("work started before the output path was checked")


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("in the way")
    return path


def test_embed_checks_its_out_before_computing_a_feature(tmp_path, a_file, capsys,
                                                         monkeypatch):
    export = _export(tmp_path / "encoder.safetensors")
    monkeypatch.setattr("fastclr.eval.embed.extract_features", _never)
    monkeypatch.setattr("fastclr.eval.embed.load_split", _never)
    for out in (a_file / "h.npy", a_file / "deeper" / "h", tmp_path):
        assert main(["embed", "--weights", str(export), "--data-dir", str(SAMPLE), "--out",
                     str(out)]) == 2
        line = _error_line(capsys)
        assert line.startswith("fastclr: error: --out ") and ("is a file, not a folder" in line
                                                             or "is a folder" in line), line


@pytest.mark.parametrize("argv", [
    ["preview", "--out", "{file}/grid.png"],
    ["preview", "--out", "/proc/fastclr-preview.png"],  # nothing can be created there
    ["preview", "--out", "{tmp}"],
    ["eval", "{export}", "--out", "{file}/report"],
    ["eval", "{export}", "--out", "{file}"],
    ["study", "head", "--out", "{file}"],
    ["study", "head", "--report-dir", "{file}/x"],
    ["train", "--run-dir", "{file}/run"],
])
def test_unwritable_outputs_are_exit_2_before_any_work(tmp_path, a_file, capsys, monkeypatch,
                                                       argv):
    export = _export(tmp_path / "encoder.safetensors")
    for target in ("fastclr.eval.plots.save_augmentation_grid",
                   "fastclr.eval.weights.load_weights", "fastclr.train.loop.train",
                   "fastclr.study.runner.run_study"):
        monkeypatch.setattr(target, _never)  # the commands import these when they run
    argv = [a.format(file=a_file, tmp=tmp_path, export=export) for a in argv]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("fastclr: error: --"), line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere permission bits say no")
def test_an_unwritable_folder_is_exit_2(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["preview", "--out", str(locked / "grid.png")]) == 2
    assert "cannot write in" in _error_line(capsys)


# ---- 7: what the help says is what is enforced ---------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["train", "--num-workers", "100"], "num_workers must be <= 16"),
    (["train", "--num-workers", "-1"], "num_workers must be >= 0"),
    (["embed", "--weights", "x.pt", "--batch-size", "0"], "argument --batch-size: must be"),
    (["embed", "--weights", "x.pt", "--batch-size", "5000"], "argument --batch-size: must be"),
    (["eval", "x.pt", "--threads", "0"], "argument --threads: must be"),
    (["eval", "x.pt", "--linear-aug-epochs", "0"], "argument --linear-aug-epochs: must be"),
    (["study", "head", "--jobs", "0"], "argument --jobs: must be"),
    (["train", "--seed", str(10**23)], "seed must be <= 4294967295"),  # torch: an overflow
    (["train", "--batch-size", "100000"], "batch_size must be <= 65536"),
    (["train", "--image-size", "100000"], "image_size must be <= 4096"),
])
def test_ranges_in_the_help_are_enforced(capsys, argv, expected):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    assert rc == 2 and expected in _error_line(capsys)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8\xff"),
                                          (".JPEG", b"\xff\xd8\xff"), (".webp", b"RIFF"),
                                          (".bmp", b"BM")])
def test_preview_writes_the_format_its_name_says(tmp_path, sample_dir, suffix, magic):
    out = tmp_path / f"grid{suffix}"
    assert main(["preview", "--data-dir", str(sample_dir), "--images", "2", "--out",
                 str(out)]) == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["grid.gif", "grid", "grid.png.txt"])
def test_preview_refuses_a_format_it_does_not_write(tmp_path, capsys, name):
    assert main(["preview", "--out", str(tmp_path / name)]) == 2
    assert "must end in .png, .jpg, .jpeg, .webp, .bmp" in _error_line(capsys)


def test_top5_is_reported_only_with_more_than_5_classes(tmp_path, capsys):
    folder = _rgb_folder(tmp_path / "two")
    export = _export(tmp_path / "two.safetensors", channels=3, data=f"imagefolder:{folder}",
                     image_size=8)
    assert main(["eval", str(export), "--protocol", "linear", "--threads", "1"]) == 0
    report = json.loads((tmp_path / "eval-two" / "report.json").read_text())
    assert "linear_top1" in report and "linear_top5" not in report
    row = next(l for l in capsys.readouterr().out.splitlines()
               if l.startswith("h: L-BFGS probe"))
    assert row.split()[-2:] == ["-", "-"]  # no top-5, no kNN
    ten = _export(tmp_path / "ten.safetensors", data_dir=str(SAMPLE))
    assert main(["eval", str(ten), "--protocol", "linear", "--threads", "1"]) == 0
    assert "linear_top5" in json.loads((tmp_path / "eval-ten" / "report.json").read_text())


def test_the_online_probe_says_why_a_streamed_set_gets_none(tmp_path, capsys):
    folder = _rgb_folder(tmp_path / "pics")
    assert main(["train", "--data", f"imagefolder:{folder}", "--online-probe", "true",
                 "--knn-every", "1", "--width", "0.125", "--stem", "small-s2", "--image-size",
                 "8", "--batch-size", "4", "--epochs", "1", "--max-steps", "1",
                 "--num-workers", "0", "--tensorboard", "false", "--final-eval", "false",
                 "--no-progress", "--run-dir", str(tmp_path / "run"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "has no labels" not in out
    assert (f"online_probe: imagefolder:{folder} is streamed from files, and the probe reads "
            "labels of sets held in memory (the kNN monitor, --knn-every N, does use this "
            "set's labels); no probe") in out


def test_options_too_large_for_the_machine_are_one_line(capsys, monkeypatch):
    """What no range can catch (a batch that fits one machine and not another) ends as the
    allocator's failure: one line naming the options to lower, not torch's traceback."""
    def allocate(args):
        torch.empty(2**60, dtype=torch.uint8)
    monkeypatch.setattr("fastclr.commands.cmd_presets", allocate)
    assert main(["presets"]) == 2
    line = _error_line(capsys)
    assert line.startswith("fastclr: error: out of memory (") and "--batch-size" in line

    def bug(args):
        raise RuntimeError("a bug, not a memory limit")
    monkeypatch.setattr("fastclr.commands.cmd_presets", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # other errors still show where they are
        main(["presets"])
