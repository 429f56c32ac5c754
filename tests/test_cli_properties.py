"""The command line under random misuse (issue 20): bad arguments and bad files, combined at
random for every command, end in exit 0, 2 or 130 and never a traceback; a failure is at most
one line on stderr.

Every command starts from cheap, valid arguments (a tiny model, one step, the shipped sample)
and gets one to three changes drawn from that command's misuses (out-of-range counts, unknown
names, weights files that are not weights, outputs in impossible places, image folders in the
wrong layout, flags that do not exist), plus harmless valid changes. A study never runs: its
runner is replaced, since a valid study is hours of training. The in-process test calls
`fastclr.cli.main` for speed; a few cases go through `python -m fastclr` as a user would.
"""

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fastclr.study.runner
from fixtures import HANG_SECONDS, SAMPLE
from fastclr.checkpoint import export_encoder
from fastclr.cli import main
from fastclr.config import Config
from fastclr.models import build_encoder
from fastclr.spec import EncoderSpec

ROOT = Path(__file__).resolve().parent.parent
# a fixed set of 150 cases (about 10 s); FASTCLR_TEST_CLI_RANDOM=1 draws new ones, and
# FASTCLR_TEST_CLI_EXAMPLES=N sets how many, to hunt for more
EXAMPLES = int(os.environ.get("FASTCLR_TEST_CLI_EXAMPLES", 150))
PROFILE = settings(max_examples=EXAMPLES, deadline=None,
                   derandomize=os.environ.get("FASTCLR_TEST_CLI_RANDOM") is None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow, HealthCheck.data_too_large])


def _images(folder, count=4, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new("RGB", size, (30 * k, 90, 160)).save(folder / f"{k}.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Named things a user might point fastclr at: good, bad and in the way."""
    base = tmp_path_factory.mktemp("misuse")
    rng = random.Random(0)
    f = {"base": base, "missing": base / "no" / "such", "sample": SAMPLE}
    f["file"] = base / "a-file"
    f["file"].write_text("in the way\n")
    for name in ("junk.safetensors", "junk.pt", "junk.yaml", "junk.png"):
        f[name] = base / name
        f[name].write_bytes(bytes(rng.randrange(256) for _ in range(3000)))
    f["empty.safetensors"] = base / "empty.safetensors"
    f["empty.safetensors"].write_bytes(b"")
    f["list.yaml"] = base / "list.yaml"
    f["list.yaml"].write_text("- 1\n- 2\n")
    f["badkey.yaml"] = base / "badkey.yaml"
    f["badkey.yaml"].write_text("batch_sise: 8\n")
    f["badvalue.yaml"] = base / "badvalue.yaml"
    f["badvalue.yaml"].write_text("width: -1\nepochs: many\n")
    f["emptydir"] = base / "emptydir"
    f["emptydir"].mkdir()
    f["badrun"] = base / "badrun"
    f["badrun"].mkdir()
    (f["badrun"] / "config.yaml").write_text("arch: [1, 2\n")
    f["halfrun"] = base / "halfrun"
    f["halfrun"].mkdir()
    (f["halfrun"] / "config.yaml").write_text("data: fashion-mnist\n")
    f["flat"] = base / "flat"
    _images(f["flat"], 6)
    f["noval"] = base / "noval"
    for c in ("cat", "dog"):
        _images(f["noval"] / "train" / c)
    f["extra"] = base / "extra"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            _images(f["extra"] / split / c)
    _images(f["extra"] / "val" / "zebra", 1)
    torch.manual_seed(0)
    for channels, name in ((1, "gray.safetensors"), (3, "rgb.safetensors")):
        encoder = build_encoder(EncoderSpec("resnet18", 0.125, "small-s2", channels,
                                            (0.3,) * channels, (0.3,) * channels))
        cfg = Config(data="fashion-mnist", data_dir=str(SAMPLE)).validate()
        f[name] = base / name
        export_encoder(encoder, f[name], {"data": cfg.data, "step": 1, "image_size": 28,
                                          "feat_dim": encoder.feat_dim,
                                          "config": cfg.to_dict()})
    return f


# ---- what each command is given ------------------------------------------------------------

# A misuse is (flag, candidate values); "{name}" is a file of the fixture, "{out}" a fresh
# output path of the example. Flags with no value are given as (flag, [None]).
DATA_MISUSES = [
    ("--data", ["nope", "folder:", "folder:{missing}", "imagefolder:{flat}",
                "imagefolder:{noval}", "imagefolder:{extra}", "folder:{file}",
                "imagefolder:{junk.png}", "folder:{emptydir}", "cifar10", "stl10",
                "fashion mnist", "folder:{flat}\n"]),
    ("--data-dir", ["{missing}", "{file}", "{emptydir}", ""]),
]
OPTION_MISUSES = [
    ("--batch-size", ["0", "-4", "x", "1.5", "", "1e99", "3"]),
    ("--num-workers", ["100", "-1", "17", "two"]),
    ("--config", ["{junk.yaml}", "{list.yaml}", "{badkey.yaml}", "{badvalue.yaml}",
                  "{missing}", "{emptydir}", "no-such-preset"]),
    ("--image-size", ["0", "7", "-1", "nan", "100000"]),
    ("--seed", ["-1", str(10**23), "1e3"]),
    ("--crop-scale", ["0.9,0.2", "0,1", "1", "a,b", "0.1,0.2,0.3"]),
    ("--width", ["0", "-1", "inf", "100"]),
    ("--arch", ["vgg", "", "resnet"]),
    ("--device", ["cuda:99", "tpu", "cuda:x", "cuda"]),
    ("--flip-p", ["1.5", "-0.1", "nan"]),
    ("--augment", ["bogus", "crop,bogus", ",", "gray"]),
    ("--max-steps", ["0", "-1"]),
    ("--bn-groups", ["3", "0"]),
    ("--bogus-option", ["1"]),
    ("-x", [None]),
]
TRAIN_MISUSES = DATA_MISUSES + OPTION_MISUSES + [
    ("--run-dir", ["{file}/run", "{file}", "/proc/fastclr-run"]),
    ("--resume", ["{junk.pt}", "{missing}", "{junk.safetensors}", "{emptydir}"]),
    ("--allow-change", ["bogus", "width"]),
    ("--epochs", ["0", "1e3"]),
]
WEIGHTS = ["{junk.safetensors}", "{junk.pt}", "{empty.safetensors}", "{file}", "{emptydir}",
           "{badrun}", "{halfrun}", "{missing}", "{junk.png}", "{gray.safetensors}",
           "{rgb.safetensors}"]
EVAL_MISUSES = DATA_MISUSES + [
    ("--protocol", ["bogus", "", ",", "knn,bogus", "linear-aug,nope"]),
    ("--out", ["{file}/report", "{file}", "/proc/fastclr-report"]),
    ("--seed", ["-1", "x", "99999999999"]),
    ("--linear-aug-epochs", ["0", "-1", "x"]),
    ("--finetune-epochs", ["0,1", "a", "1", "1,2,3"]),
    ("--device", ["cuda:99", "gpu", "cuda:x"]),
    ("--threads", ["0", "-2", "x"]),
    ("--bogus", [None]),
]
EMBED_MISUSES = DATA_MISUSES + [
    ("--split", ["bogus", "val", "unlabeled", ""]),
    ("--out", ["{file}/h.npy", "{emptydir}", "{file}/deeper/h", "/proc/fastclr-h.npy"]),
    ("--batch-size", ["0", "-1", "5000", "x"]),
    ("--device", ["cuda:99", "gpu"]),
    ("--threads", ["0", "x"]),
]
PREVIEW_MISUSES = DATA_MISUSES + OPTION_MISUSES + [
    ("--images", ["-3", "0", "257", "100000", "x"]),
    ("--out", ["{file}/p.png", "p.gif", "{emptydir}", "/proc/fastclr-p.png", "p", "{file}"]),
]
DATA_COMMAND_MISUSES = [("--data-dir", ["{missing}", "{file}", "{emptydir}", "{junk.png}"]),
                        ("--bogus", [None]), ("--data", ["x"])]
STUDY_MISUSES = [
    ("--budget", ["{junk.yaml}", "{list.yaml}", "{badkey.yaml}", "{missing}", "nope"]),
    ("--out", ["{file}", "{file}/studies", "/proc/fastclr-studies"]),
    ("--report-dir", ["{file}/r", "{file}"]),
    ("--jobs", ["0", "-1", "x", "65"]),
    ("--devices", ["cuda:x", "gpu,cpu", ""]),
    ("--device", ["gpu"]),
    ("--threads", ["0"]),
    ("--only", ["nope/seed9"]),
]

TINY = ["--data-dir", str(SAMPLE), "--width", "0.125", "--stem", "small-s2", "--batch-size",
        "16", "--epochs", "1", "--max-steps", "1", "--tensorboard", "false", "--no-progress",
        "--final-eval", "false", "--threads", "1", "--num-workers", "0"]
COMMANDS = {  # command -> (cheap valid start, misuses, harmless valid changes)
    "train": (["train", *TINY, "--run-dir", "{out}"], TRAIN_MISUSES,
              [("--seed", ["1"]), ("--log-every", ["1"])]),
    "eval": (["eval", "{gray.safetensors}", "--protocol", "knn", "--no-baselines", "--out",
              "{out}", "--threads", "1"], EVAL_MISUSES, [("--seed", ["3"])]),
    "embed": (["embed", "--weights", "{gray.safetensors}", "--split", "test", "--out",
               "{out}.npy", "--threads", "1"], EMBED_MISUSES, [("--batch-size", ["64"])]),
    "preview": (["preview", "--data-dir", str(SAMPLE), "--images", "2", "--out", "{out}.png"],
                PREVIEW_MISUSES, [("--color-strength", ["1.0"]), ("--images", ["3"])]),
    "data": (["data"], DATA_COMMAND_MISUSES, [("--data-dir", [str(SAMPLE)])]),
    "presets": (["presets"], [("--bogus", [None]), ("--config", ["x"]), ("extra", [None])],
                []),
    "study": (["study", "head", "--budget", "quick", "--out", "{out}"], STUDY_MISUSES,
              [("--jobs", ["1"]), ("--list", [None])]),
}


def _pairs(choices):
    return st.sampled_from(choices).flatmap(
        lambda fv: st.sampled_from(fv[1]).map(lambda v: (fv[0], v)))


@st.composite
def command_lines(draw):
    """One command with 1-3 misuses and 0-2 harmless changes, in a random order; a study
    name, and the weights given to eval and embed, are drawn too."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    start, misuses, harmless = COMMANDS[name]
    if name in ("train", "eval", "embed", "preview") and draw(st.booleans()):
        misuses = DATA_MISUSES  # found only once the command looks at its data: go that far
    changes = draw(st.lists(_pairs(misuses), min_size=1, max_size=3))
    if harmless:
        changes += draw(st.lists(_pairs(harmless), max_size=2))
    changes = draw(st.permutations(changes))
    argv = list(start)
    if name in ("eval", "embed"):  # half the time weights that load, so the rest is reached
        weights = draw(st.sampled_from(WEIGHTS) | st.just("{gray.safetensors}"))
        argv[argv.index("{gray.safetensors}")] = weights
    if name == "study":
        study = draw(st.sampled_from(["head", "bogus", "all", "", "augment-full", None]))
        argv[1:2] = [] if study is None else [study]
    for flag, value in changes:
        argv += [flag] if value is None else [flag, value]
    return argv


_fresh = itertools.count()


def _resolve(argv, files) -> list[str]:
    out = files["base"] / "out" / f"case{next(_fresh)}"
    names = {k: str(v) for k, v in files.items()} | {"out": str(out)}

    def fill(arg: str) -> str:
        for key, value in names.items():
            arg = arg.replace("{" + key + "}", value)
        return arg
    return [fill(a) for a in argv]


class _StudyWouldRun(Exception):
    """Raised in place of running a study: every check passed, and the hours it would take
    are not this test's."""


def _no_study(*args, **kwargs):
    raise _StudyWouldRun


def _check(rc, err: str, argv) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 2, 130), (argv, rc, err)
    if rc != 0:
        assert len(lines) <= 1, (argv, lines)
        assert lines and lines[0].startswith("fastclr"), (argv, lines)


@PROFILE
@given(command_lines())
def test_random_misuse_of_every_command_in_process(files, capsys, monkeypatch, argv):
    monkeypatch.setattr(fastclr.study.runner, "run_study", _no_study)
    monkeypatch.setattr(fastclr.study.runner, "run_only", _no_study)
    argv = _resolve(argv, files)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: a usage error (2) or --help (0)
        rc = e.code
    except _StudyWouldRun:
        rc = 0
    _check(rc, capsys.readouterr().err, argv)


@pytest.mark.slow
@settings(PROFILE, max_examples=6)
@given(command_lines())
def test_random_misuse_through_the_real_entry_point(files, argv):
    if argv[0] == "study" and argv[1] in ("head", "all", "augment-full"):
        argv[1] = "bogus"  # no runner to replace in another process: never start a study
    argv = _resolve(argv, files)
    out = subprocess.run([sys.executable, "-m", "fastclr", *argv], capture_output=True,
                         text=True, timeout=HANG_SECONDS, cwd=files["base"],
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    _check(out.returncode, out.stderr, argv)
