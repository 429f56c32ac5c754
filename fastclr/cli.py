"""The `fastclr` command: train, eval and friends. User mistakes end in one line, not a trace."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fastclr.errors import FastclrError

EXIT_USAGE = 2


def one_line(text: str) -> str:
    """User text (paths, values) may hold line breaks; an error message must stay one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to --help."""

    def error(self, message: str):
        self.exit(EXIT_USAGE,
                  f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    from fastclr.config import GROUPS, options

    parser.add_argument("--config", metavar="PRESET_OR_YAML",
                        help="a preset name (see `fastclr presets`) or a YAML file of options; "
                             "flags below override it")
    groups = {g: parser.add_argument_group(f"{g} options") for g in GROUPS}
    for f in options():
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        if meta.get("choices"):
            help_text += f" [{'|'.join(meta['choices'])}]"
        flag = "--" + f.name.replace("_", "-")
        names = [flag] if "_" not in f.name else [flag, "--" + f.name]
        groups[meta["group"]].add_argument(*names, dest=f.name, metavar="V", default=None,
                                           help=help_text)


def _config_from_args(args) -> "Config":  # noqa: F821
    from fastclr.config import load_config, options

    text = {f.name: getattr(args, f.name) for f in options()
            if getattr(args, f.name, None) is not None}
    return load_config(args.config, text_overrides=text)


def cmd_train(args) -> int:
    from fastclr.distributed import resolve_device
    from fastclr.evaluate import evaluate_run
    from fastclr.train import train

    cfg = _config_from_args(args)
    run_dir = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0 or not cfg.final_eval:
        return 0
    from fastclr.data import is_labeled
    if not is_labeled(cfg.data):
        print(f"{cfg.data} has no labels: skipping the linear-probe and kNN evaluation; the "
              f"encoder is {run_dir / 'encoder.safetensors'}", flush=True)
        return 0
    print(f"evaluating the frozen encoder on {cfg.data} (linear probe and kNN)...", flush=True)
    report = evaluate_run(run_dir, cfg, resolve_device(cfg.device), cfg.baselines)
    _print_report(report, run_dir)
    return 0


def _print_report(report: dict, run_dir) -> None:
    from fastclr.evaluate import format_report

    print()
    print(format_report(report))
    extra = f"; pretraining took {report['train_seconds']:.0f} s" \
        if "train_seconds" in report else ""
    print(f"run folder: {run_dir} (report.json, metrics.jsonl, encoder.safetensors){extra}")


def cmd_eval(args) -> int:
    from pathlib import Path

    from fastclr.config import config_from_dict, read_yaml
    from fastclr.distributed import resolve_device
    from fastclr.evaluate import evaluate_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "encoder.safetensors").is_file():
        raise FastclrError(f"{run_dir} is not a finished fastclr run folder (it needs "
                           "config.yaml and encoder.safetensors)")
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"))
    if args.data_dir is not None:
        cfg.data_dir = args.data_dir
    report = evaluate_run(run_dir, cfg, resolve_device(args.device), not args.no_baselines)
    _print_report(report, run_dir)
    return 0


def cmd_data(args) -> int:
    from fastclr.data import describe

    for row in describe(args.data_dir):
        labels = "labeled" if row["labeled"] else "unlabeled"
        if row["found"]:
            roots = set(row["found"].values())
            where = roots.pop() if len(roots) == 1 else \
                ", ".join(f"{split}: {root}" for split, root in row["found"].items())
            missing = f" (missing: {', '.join(row['missing'])})" if row["missing"] else ""
            print(f"{row['name']:16} {labels:9}  {row['held']:9}  found  {where}{missing}")
        else:
            print(f"{row['name']:16} {labels:9}  {row['held']:9}  not found")
            print(f"{'':16} looked in {', '.join(row['looked_in'])}")
            print(f"{'':16} {row['how_to_get']}")
    print(f"{'folder:PATH':16} {'unlabeled':9}  {'streamed':9}  your own folder of images "
          "(jpg, jpeg, png, webp, bmp; subfolders too)")
    print(f"{'imagefolder:PATH':16} {'labeled':9}  {'streamed':9}  PATH/train/<class>/* and "
          "PATH/val/<class>/*")
    return 0


def cmd_preview(args) -> int:
    import torch

    from fastclr.data import get_spec, load_split
    from fastclr.plots import save_augmentation_grid
    from fastclr.train import augment_from_config

    cfg = _config_from_args(args)
    spec = get_spec(cfg.data)
    images = load_split(cfg.data, spec.pretrain[0], cfg.data_dir, cfg.download,
                        size=cfg.image_size, sample=args.images).images
    generator = torch.Generator().manual_seed(cfg.seed)
    view1, view2 = augment_from_config(cfg).two_views(images, generator)
    path = save_augmentation_grid(images, view1, view2, args.out)
    print(f"wrote {path}: {len(images)} {cfg.data} images, each with the two views the model "
          f"sees ({view1.shape[-1]} px)")
    return 0


def cmd_presets(args) -> int:
    from fastclr.config import list_presets, resolve_preset

    for name in list_presets():
        print(f"{name:28} {resolve_preset(name)}")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="fastclr", description="SimCLR pretraining and evaluation "
                    "(Chen et al., ICML 2020). Start with `fastclr train --config "
                    "fashion-mnist-cpu`.")
    from fastclr import __version__
    parser.add_argument("--version", action="version", version=f"fastclr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("train", help="pretrain an encoder, then evaluate it",
                       description="Pretrain a SimCLR encoder. Options come from defaults, then "
                       "--config, then flags. Re-running on the same run folder resumes. Under "
                       "torchrun, every process runs this same command.")
    _add_config_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's encoder (linear probe, kNN)",
                       description="Evaluate the frozen encoder of a finished run: linear probe "
                       "and weighted kNN on its data set, with random-init and pixel baselines.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `fastclr train`")
    p.add_argument("--data-dir", default=None, help="where the data set's files are, if not "
                   "where training found them")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the random-init and raw-pixel baselines")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="list the data sets, where they are looked for, and "
                       "whether they are found",
                       description="List the data sets fastclr reads, how each is held "
                       "(in memory or streamed from files), and where it was found or how to "
                       "get it.")
    p.add_argument("--data-dir", default=None, help="also look in this directory (as "
                   "`fastclr train --data-dir` would)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("preview", help="write a PNG of images and their two augmented views",
                       description="See what the model sees: N images of the configured data "
                       "set, each next to its two random views, as a PNG grid. Takes the same "
                       "options as train (--config, --crop-scale, --color-strength ...).")
    _add_config_options(p)
    p.add_argument("--images", type=int, default=16, metavar="N",
                   help="how many images to show (default 16; 4-64 reads well)")
    p.add_argument("--out", default="preview.png", help="PNG to write (default preview.png)")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("presets", help="list the shipped config presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from fastclr.train import Stopped

    try:
        return args.func(args)
    except Stopped as e:
        print(f"fastclr: {e}", file=sys.stderr)
        return 130 if e.signal_name == "SIGINT" else 0
    except FastclrError as e:
        print(f"fastclr: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as e:
        print(f"fastclr: training stopped: {one_line(e)}", file=sys.stderr)
        return 3
    except OSError as e:  # a full disk, a vanished folder: the environment, not a bug
        where = f"{e.filename}: " if e.filename else ""
        print(f"fastclr: error: {one_line(where)}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastclr: interrupted", file=sys.stderr)
        return 130
