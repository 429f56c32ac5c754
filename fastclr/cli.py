"""The `fastclr` command: train, eval and friends. User mistakes end in one line, not a trace."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from fastclr.errors import FastclrError

EXIT_USAGE = 2

EVAL_HEAD = """\
Evaluate a trained encoder with the SimCLR protocols; report.json (and PNGs) go to the run
folder, or to eval-<name>/ beside a weights file. Entries of earlier runs of other protocols
on the same weights are kept. Protocols:"""

EVAL_TAIL = """\
'fast' (the default) is linear, knn, baselines, diagnostics, transforms, plots. Measured for
the fashion-mnist-cpu model on 2 CPU cores before transforms existed: 2.7 minutes, of which
baselines (L-BFGS on 784 raw pixels) take 1.4; they read no trained weight, so they are kept
in $FASTCLR_CACHE (~/.cache/fastclr) and computed once per data set, architecture and seed
(--no-baselines skips them); transforms adds about 25 s and the tracking record's pictures
about 20 s (one thread of a busy CPU); 'all' adds pca, linear-aug (1.4 minutes), finetune
(4.6 minutes) and linear-b6-cpu (10 epochs of 60k views, twice linear-aug's; 12 minutes at
--threads 1 on a busy 2-core machine). linear-b6, the paper's 90-epoch linear evaluation, runs
only when named. "linear" is the L-BFGS probe of the paper's transfer experiments (appendix
B.8); linear-b6 is its linear evaluation (B.6). Use --threads 1 on a busy CPU."""


def eval_help() -> str:
    """`fastclr eval --help`: each protocol of the registry with its line of help."""
    from fastclr.registry import PROTOCOLS
    rows = [f"  {name:12} {PROTOCOLS.help(name)}" for name in PROTOCOLS]
    return "\n".join([EVAL_HEAD, *rows, EVAL_TAIL])


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


def _int_in(low: int, high: int):
    """An argparse type: an integer in [low, high], else a one-line usage error."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value
    return integer


def _device(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (whether it exists is checked on use)."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _devices(text: str) -> str:
    for name in text.split(","):
        _device(name)
    return text


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_int_in(1, 4096), default=None, metavar="N",
                        help="CPU threads for torch, 1-4096; default: torch's choice (on a CPU "
                        "shared with other jobs, 1 can be several times faster)")


def _two_ints(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 60,30, got {text!r}")
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"epochs must be >= 1, got {text!r}")
    return a, b


# fastclr.eval.export.FORMATS, named here so that a wrong one is refused before torch loads
EXPORT_FORMATS = ("torchvision", "timm", "onnx", "torchscript")


def build_parser() -> Parser:
    from fastclr.commands import (cmd_data, cmd_embed, cmd_eval, cmd_export, cmd_inspect,
                                  cmd_presets, cmd_preview, cmd_study, cmd_train)

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

    p = sub.add_parser("eval", help="evaluate an encoder (linear, kNN, fine-tuning, ...)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=eval_help())
    p.add_argument("target", metavar="RUN_DIR_OR_WEIGHTS", help="a run folder written by "
                   "`fastclr train`, an exported encoder.safetensors, or a checkpoint .pt "
                   "(only folders and checkpoints hold the head, needed for z)")
    p.add_argument("--protocol", default="fast", metavar="LIST",
                   help="comma list of protocols, or fast (default) or all")
    p.add_argument("--data", default=None, help="data set to evaluate on; default: the one the "
                   "encoder was trained on (from its config or metadata)")
    p.add_argument("--data-dir", default=None, help="where the data set's files are, if not "
                   "where training found them")
    p.add_argument("--out", default=None, help="folder for report.json and PNGs; default: the "
                   "run folder, or eval-<name>/ beside a weights file")
    p.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0,
                   help="seed of label subsets, probes, views and t-SNE, 0-4294967295 "
                   "(default 0: reports of different runs compare like with like)")
    p.add_argument("--linear-aug-epochs", type=_int_in(1, 1000), default=None, metavar="N",
                   help="epochs of the linear-aug protocol, 1-1000 (paper: 90 on ImageNet; "
                   "default 5 for a CPU)")
    p.add_argument("--finetune-epochs", type=_two_ints, default=None, metavar="A,B",
                   help="fine-tuning epochs on 1%% and 10%% of the labels (default: the "
                   "paper's 60,30)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the random-init and raw-pixel baselines")
    p.add_argument("--map", default="tsne", choices=("tsne", "umap"),
                   help="the 2-D embedding map of the plots protocol: tsne (default) or umap "
                   "(pip install 'fastclr[umap]'; its first use compiles for ~30 s)")
    _add_threads_option(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="draw how a run's representation formed, from its "
                       "tracking record",
                       description="Draw the pictures of a run's tracking record (train with "
                       "--track-every; the presets do): dynamics.png (every tracked measure of "
                       "h and z against the step), spectrum.png (covariance eigenvalues of h "
                       "and z at several points), embedding_over_time.png (the same probe "
                       "images mapped at up to six points, aligned), similarities.png "
                       "(cosines of positive and negative pairs, first point and last), and "
                       "training_curves.png. Reads only the run folder: no weights, no data. "
                       "Works on a run still training.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by `fastclr train`")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the run folder)")
    _add_threads_option(p)
    p.set_defaults(func=cmd_inspect)

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
    p.add_argument("--images", type=_int_in(1, 256), default=16, metavar="N",
                   help="how many images to show, 1-256 (default 16; 4-64 reads well)")
    p.add_argument("--out", default="preview.png", help="picture to write: .png, .jpg, .webp "
                   "or .bmp, in the format its name says (default preview.png)")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("embed", help="write an encoder's features h of a data set to .npy",
                       description="Compute h = f(x) for every image of a data set and write "
                       "OUT.npy (float32, N x feat_dim) and OUT.index.jsonl (one line per row: "
                       "position, split, index, label, class, source).")
    p.add_argument("--weights", required=True, help="encoder.safetensors, checkpoint .pt, "
                   "run folder, or pretrained:NAME (pretrained:fashion-mnist ships with "
                   "fastclr)")
    p.add_argument("--data", default=None, help="data set name; default: the one the encoder "
                   "was trained on")
    p.add_argument("--data-dir", default=None, help="where the data set's files are")
    p.add_argument("--split", default="all", help="a split name (train, test) or all "
                   "(default: every split, in order)")
    p.add_argument("--out", default="embeddings.npy", help="output .npy path; the index goes "
                   "beside it as .index.jsonl (default: embeddings.npy)")
    p.add_argument("--batch-size", type=_int_in(1, 4096), default=512,
                   help="images per forward pass, 1-4096 (default 512; under 64 leaves a GPU "
                   "idle)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    _add_threads_option(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("study", help="run one of the paper's ablations as a grid of runs with "
                       "several seeds, and report which claims hold",
                       description="Run a study: a grid of pretraining runs that differ in one "
                       "factor (or two), several seeds each, everything else from a budget; "
                       "then evaluate every run and write report.md, report.json and PNGs. "
                       "Stopped and run again, it skips finished runs and resumes the rest. "
                       "`fastclr study --list` names the studies.")
    p.add_argument("name", nargs="?", help="a study (see --list), or all")
    p.add_argument("--list", action="store_true", help="list the studies and budgets")
    p.add_argument("--budget", default="quick", help="quick (2 CPU cores, ~30 min a study), "
                   "paper (one GPU, the CIFAR-10 recipe) or a YAML file (default quick)")
    p.add_argument("--out", default="studies", help="folder of the studies' run folders "
                   "(default studies/)")
    p.add_argument("--report-dir", default=None, help="write each report to DIR/<study>/ "
                   "instead of beside the runs (e.g. docs/studies)")
    p.add_argument("--jobs", type=_int_in(1, 64), default=1, help="runs at a time, each its "
                   "own process, 1-64 (default 1)")
    p.add_argument("--devices", type=_devices, default=None, help="comma list of devices the "
                   "jobs take in turn, e.g. cuda:0,cuda:1")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--only", default=None, metavar="CELL/seedK", help=argparse.SUPPRESS)
    _add_threads_option(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("export", help="write the encoder for torchvision, timm, ONNX or "
                       "TorchScript",
                       description="Export the encoder f to use outside fastclr. torchvision "
                       "and timm get a state dict for their own ResNet (width 1 only) and the "
                       "lines that load it; onnx and torchscript get a graph that takes [0, 1] "
                       "images of any batch size and normalises them itself. Each export is "
                       "run on real images of the encoder's data set before it is written; a "
                       "JSON beside it says what the model takes and gives.")
    p.add_argument("run", metavar="RUN", help="a run folder, an encoder.safetensors, a "
                   "checkpoint .pt, or pretrained:NAME (a shipped encoder)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="torchvision or timm: a state dict (.pt) for the library's ResNet; "
                   "onnx: an .onnx graph (pip install 'fastclr[onnx]'); torchscript: a .pt "
                   "module for torch.jit.load")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write; "
                   "PATH's name with .json goes beside it (resnet18.pt -> resnet18.json)")
    p.add_argument("--data", default=None, help="data set whose images the export is checked "
                   "on; default: the one the encoder was trained on")
    p.add_argument("--data-dir", default=None, help="where that data set's files are")
    _add_threads_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("presets", help="list the shipped config presets")
    p.set_defaults(func=cmd_presets)
    return parser


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (CUDA), or the CPU allocator's failure
    (a plain RuntimeError): options too large for this machine, which the user can lower."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        "can't allocate memory" in str(e)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from fastclr.train.signals import Stopped

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
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        asked = re.search(r"allocate (\d+) bytes", str(e))
        size = f" ({int(asked.group(1)) / 2**30:.1f} GiB asked for at once)" if asked else ""
        print(f"fastclr: error: out of memory{size}; try a smaller --batch-size, --image-size "
              "or --width", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full disk, a vanished folder: the environment, not a bug
        where = f"{e.filename}: " if e.filename else ""
        print(f"fastclr: error: {one_line(where)}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastclr: interrupted", file=sys.stderr)
        return 130
