"""Encoders shipped inside the package, and how the file, its hash and its model card are made.

`fastclr.pretrained("fashion-mnist")` is the encoder f of the fashion-mnist-cpu preset, loaded
from fastclr/pretrained/ with no download; `--weights pretrained:fashion-mnist` names it on the
command line. fastclr/pretrained/index.json holds each file's sha256, checked at every load,
and the figures of its run's report.json, which its model card (NAME.md) shows. All three are
written from a finished run folder by

    python -m fastclr.zoo make runs/fashion-mnist-cpu --name fashion-mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from fastclr.checkpoint import atomic_write, encoder_metadata
from fastclr.errors import CheckpointError, FastclrError

FOLDER = Path(__file__).parent / "pretrained"
INDEX = FOLDER / "index.json"
PREFIX = "pretrained:"
# the report.json figures a model card shows, with what they measure
FIGURES = (
    ("linear_top1", "linear probe on h, top-1 (L-BFGS logistic regression, frozen encoder)"),
    ("linear_top5", "linear probe on h, top-5"),
    ("linear_z_top1", "linear probe on z = g(h), top-1 (the head is not shipped)"),
    ("knn_top1", "weighted kNN on h, top-1"),
    ("random_init_linear_top1", "baseline: linear probe on a random-init encoder, top-1"),
    ("pixels_linear_top1", "baseline: linear probe on raw pixels, top-1"),
)


def _index() -> dict:
    try:
        return json.loads(INDEX.read_text())
    except FileNotFoundError:
        return {}


def names() -> list[str]:
    """The names of the shipped encoders."""
    return sorted(_index())


def entry(name: str) -> dict:
    """index.json's record of one shipped encoder: file, sha256, bytes, figures."""
    index = _index()
    if name not in index:
        known = ", ".join(sorted(index)) or "none"
        raise CheckpointError(f"no shipped encoder {name!r}; shipped: {known}")
    return index[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(name: str) -> Path:
    """The path of a shipped encoder, after checking it is the file its sha256 names."""
    record = entry(name)
    path = FOLDER / record["file"]
    if not path.is_file():
        raise CheckpointError(f"the shipped encoder {name!r} is missing ({path}); reinstall "
                              "fastclr")
    found = sha256_of(path)
    if found != record["sha256"]:
        raise CheckpointError(f"the shipped encoder {path} has sha256 {found[:16]}..., not "
                              f"the {record['sha256'][:16]}... of index.json: the file is "
                              "damaged or was replaced without `python -m fastclr.zoo make`; "
                              "reinstall fastclr")
    return path


def resolve(path: str | Path) -> Path | None:
    """'pretrained:NAME' -> the checked file; anything else -> None."""
    text = str(path)
    return weights_file(text[len(PREFIX):]) if text.startswith(PREFIX) else None


def load_pretrained(name: str = "fashion-mnist", device="cpu"):
    """A shipped encoder f in eval mode: [0, 1] images (N, C, H, W) -> h (N, feat_dim)."""
    from fastclr.checkpoint import load_encoder
    return load_encoder(weights_file(name), device)


# ---- making the file, its hash and its model card from a run folder -------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: ship only a finished, evaluated run "
                              "(fastclr train writes it after the final evaluation)") from None


def model_card(name: str, record: dict, meta: dict, run: dict, report: dict) -> str:
    """The model card (markdown) of a shipped encoder: what it is, how it was made, how good."""
    spec, cfg = meta["spec"], meta.get("config", {})
    session = run["sessions"][-1] if run.get("sessions") else {}
    data = run.get("run", {}).get("data", {})
    command = " ".join(session.get("command", ["?"]))
    command = command.replace(".venv/bin/fastclr", "fastclr")
    figures = [f"| {label} | {100 * report[key]:.2f}% |" for key, label in FIGURES
               if isinstance(report.get(key), (int, float))]
    minutes = f"{report['train_seconds'] / 60:.1f} minutes" if "train_seconds" in report \
        else "not recorded"
    return "\n".join([
        f"# {name}: a SimCLR encoder shipped with fastclr",
        "",
        f"The encoder f (no projection head) of the `{cfg.get('name') or '?'}` preset: "
        f"{spec['arch']} at width {spec['width']:g} with the {spec['stem']} stem, "
        f"{spec['in_channels']}-channel input, h of {report.get('feature_dim', '?')} "
        f"dimensions, pretrained with SimCLR (Chen et al., ICML 2020) on the "
        f"{record['data']} train split for {cfg.get('epochs', '?')} epochs "
        f"({meta.get('step', '?')} steps of batch {cfg.get('batch_size', '?')}, "
        f"temperature {cfg.get('temperature', '?')}).",
        "",
        "    import fastclr",
        f"    encoder = fastclr.pretrained(\"{name}\")  # [0, 1] images -> h; it normalises "
        "itself",
        "",
        f"or `fastclr embed --weights pretrained:{name}`, `fastclr eval pretrained:{name}`, "
        f"`fastclr export pretrained:{name} --format onnx --out {name}.onnx`.",
        "",
        "## How it was made",
        "",
        f"- command: `{command}`",
        f"- fastclr git revision: `{session.get('git_revision') or 'unknown'}` (fastclr "
        f"{session.get('fastclr', '?')}, torch {session.get('torch', '?')}, "
        f"device {session.get('device', '?')})",
        f"- pretraining time: {minutes} (wall clock, on a machine that may have been shared)",
        f"- pretraining data: {data.get('images', '?')} images, sha256 of the files "
        f"`{data.get('sha256', '?')}`",
        f"- file: `{record['file']}`, {record['bytes']:,} bytes, sha256 `{record['sha256']}` "
        "(checked at every load)",
        "",
        f"## Evaluation ({record['data']} test split, {report.get('eval_test_images', '?')} "
        f"images; probes fit on the {report.get('eval_train_images', '?')} train images, "
        f"seed {report.get('seed', '?')})",
        "",
        "| protocol | result |",
        "| --- | --- |",
        *figures,
        "",
        "From the run's report.json (`fastclr eval`, protocols linear, knn, baselines); "
        "tests/test_zoo.py reproduces the linear probe from the shipped file.",
        "",
        "Regenerate this card, the file and index.json from a finished run folder with",
        "",
        f"    python -m fastclr.zoo make RUN_DIR --name {name}",
        "",
    ])


def make(run_dir: str | Path, name: str) -> Path:
    """Ship the encoder of a finished run folder as NAME: copy its encoder.safetensors into
    fastclr/pretrained/, record its sha256 and figures in index.json, write NAME.md."""
    run_dir = Path(run_dir)
    source = run_dir / "encoder.safetensors"
    if not source.is_file():
        raise CheckpointError(f"{run_dir} has no encoder.safetensors; is it a finished run?")
    meta = encoder_metadata(source)
    report = _read_json(run_dir / "report.json")
    run = _read_json(run_dir / "run.json")
    if report.get("encoder_step") != meta.get("step"):
        raise CheckpointError(f"{run_dir}/report.json evaluates step "
                              f"{report.get('encoder_step')}, the encoder is step "
                              f"{meta.get('step')}: run `fastclr eval {run_dir}` first")
    FOLDER.mkdir(exist_ok=True)
    target = FOLDER / f"{name}.safetensors"
    blob = source.read_bytes()
    atomic_write(target, lambda f: f.write(blob))
    record = {"file": target.name, "sha256": sha256_of(target), "bytes": len(blob),
              "data": report.get("data") or meta.get("config", {}).get("data"),
              "card": f"{name}.md", "figures": {k: report[k] for k, _ in FIGURES if k in report}}
    card = model_card(name, record, meta, run, report).encode()
    atomic_write(FOLDER / record["card"], lambda f: f.write(card))
    index = dict(_index(), **{name: record})
    text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(INDEX, lambda f: f.write(text))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastclr.zoo",
                                     description="Ship a finished run's encoder inside the "
                                     "package (file, sha256 and model card).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="copy RUN_DIR's encoder into fastclr/pretrained/ and write "
                       "its model card from the run's report.json and run.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished, evaluated run folder")
    p.add_argument("--name", default="fashion-mnist", help="the name users load it by "
                   "(default fashion-mnist)")
    args = parser.parse_args(argv)
    try:
        target = make(args.run_dir, args.name)
    except FastclrError as e:
        print(f"fastclr.zoo: error: {e}", file=sys.stderr)
        return 2
    record = entry(args.name)
    print(f"wrote {target} ({record['bytes']:,} bytes, sha256 {record['sha256']}), "
          f"{FOLDER / record['card']} and {INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
