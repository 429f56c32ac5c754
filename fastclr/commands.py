"""What each `fastclr` subcommand does (cli.py parses the command line and calls these).

Each takes the parsed arguments and returns an exit code; torch is imported only after the
arguments have been checked, so a mistake is refused at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastclr.errors import ConfigError
from fastclr.paths import (PICTURE_FORMATS, check_embedding_out, check_output_file,
                           check_output_folder, check_weights)


def _config_from_args(args):
    """The run's Config: defaults, then --config, then flags."""
    from fastclr.config import load_config, options

    text = {f.name: getattr(args, f.name) for f in options()
            if getattr(args, f.name, None) is not None}
    return load_config(args.config, text_overrides=text)


def cmd_train(args) -> int:
    cfg = _config_from_args(args)  # a bad option is refused before torch is imported
    if cfg.run_dir:
        check_output_folder(cfg.run_dir, "--run-dir")
    from fastclr.distributed import resolve_device
    from fastclr.eval.runner import evaluate_run
    from fastclr.train import train

    run_dir = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0 or not cfg.final_eval:
        return 0
    from fastclr.data import is_labeled
    if not is_labeled(cfg.data):
        print(f"{cfg.data} has no labels: skipping the linear-probe and kNN evaluation; the "
              f"encoder is {run_dir / 'encoder.safetensors'}", flush=True)
        return 0
    print(f"evaluating the frozen encoder on {cfg.data} (linear probe, kNN, what h and z "
          "keep, pictures)...", flush=True)
    protocols = ("linear", "knn") + (("baselines",) if cfg.baselines else ()) + \
        ("transforms", "plots")
    report = evaluate_run(run_dir, resolve_device(cfg.device), protocols)
    _print_report(report, run_dir)
    return 0


def _print_report(report: dict, out_dir) -> None:
    from fastclr.eval.report import format_report

    print()
    print(format_report(report))
    extra = f"; pretraining took {report['train_seconds']:.0f} s" \
        if "train_seconds" in report else ""
    print(f"results in {out_dir}/report.json{extra}")
    _print_pictures([Path(out_dir) / name for name in report.get("plots", [])])


def _print_pictures(paths) -> None:
    if paths:
        print("pictures:")
        for path in paths:
            print(f"  {path}")


def cmd_inspect(args) -> int:
    from fastclr.errors import RunFolderError

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir} is not a fastclr run folder (no config.yaml)")
    _set_threads(args.threads)
    from fastclr.eval.dynamics import draw, has_record

    if not has_record(run_dir):
        print(f"{run_dir} has no tracking record (dynamics/): train with --track-every N to "
              "record one; drawing its training curves only")
    paths = draw(run_dir, args.out)
    _print_pictures(paths)
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def cmd_eval(args) -> int:
    check_weights(args.target)
    if args.out:
        check_output_folder(args.out, "--out")
    from fastclr.distributed import resolve_device
    from fastclr.eval.runner import (default_out_dir, evaluate_weights, parse_protocols,
                                     require_labels)
    from fastclr.eval.weights import load_weights

    from fastclr.train.runfolder import setup_logging

    setup_logging(None, True)  # unreadable files of the splits are named in the log
    _set_threads(args.threads)
    protocols = parse_protocols(args.protocol)
    if args.no_baselines:
        protocols = tuple(p for p in protocols if p != "baselines")
    device = resolve_device(args.device)
    weights = load_weights(args.target, args.data, args.data_dir, device)
    require_labels(weights.cfg)
    out_dir = args.out or check_output_folder(default_out_dir(weights), "--out (default)")
    print(f"evaluating {args.target} on {weights.cfg.data}: {', '.join(protocols)}", flush=True)
    finetune_epochs = None if args.finetune_epochs is None else dict(
        zip((0.01, 0.1), args.finetune_epochs))
    report = evaluate_weights(weights, protocols, device, out_dir, args.seed, print,
                              args.linear_aug_epochs, finetune_epochs, args.map)
    _print_report(report, out_dir)
    return 0


def cmd_embed(args) -> int:
    check_weights(args.weights)
    check_embedding_out(args.out)  # before a feature is computed
    from fastclr.distributed import resolve_device
    from fastclr.eval.embed import embed, embedding_parts, write_embedding
    from fastclr.eval.weights import load_weights
    from fastclr.train.runfolder import setup_logging

    setup_logging(None, True)  # unreadable files, which get no row, are named in the log
    _set_threads(args.threads)
    device = resolve_device(args.device)
    weights = load_weights(args.weights, args.data, args.data_dir, device)
    size = weights.cfg.image_size
    parts = embedding_parts(weights.cfg.data, args.split, weights.cfg.data_dir, size)
    features, rows = embed(weights.encoder, parts, args.batch_size, device, size)
    npy, index = write_embedding(args.out, features, rows)
    print(f"wrote {tuple(features.shape)} features h of {weights.cfg.data} "
          f"({', '.join(s for s, _ in parts)}) to {npy}, index in {index}")
    return 0


def cmd_export(args) -> int:
    from fastclr.eval.export import check_out, export, summary
    from fastclr.eval.weights import load_weights

    _set_threads(args.threads)
    check_out(args.out)  # an unwritable --out is refused before the weights are read
    weights = load_weights(args.run, args.data, args.data_dir, "cpu")
    done = export(weights, args.format, args.out, source=args.run)
    print("\n".join(summary(done)))
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
    cfg = _config_from_args(args)
    check_output_file(args.out, "--out", tuple(PICTURE_FORMATS))
    import torch

    from fastclr.augment.pipeline import augment_from_config
    from fastclr.data import get_spec, load_split
    from fastclr.eval.plots import save_augmentation_grid

    spec = get_spec(cfg.data)
    images = load_split(cfg.data, spec.pretrain[0], cfg.data_dir, cfg.download,
                        size=cfg.image_size, sample=args.images).images
    generator = torch.Generator().manual_seed(cfg.seed)
    view1, view2 = augment_from_config(cfg).two_views(images, generator)
    path = save_augmentation_grid(images, view1, view2, args.out)
    print(f"wrote {path}: {len(images)} {cfg.data} images, each with the two views the model "
          f"sees ({view1.shape[-1]} px)")
    return 0


def cmd_study(args) -> int:
    from fastclr.registry import STUDIES
    from fastclr.study.budget import list_budgets, load_budget
    from fastclr.study.runner import plan

    if args.list or args.name is None:
        for name in STUDIES:
            print(f"{name:16} {STUDIES.help(name)}")
        print(f"budgets: {', '.join(list_budgets())} (or a YAML file of your own)")
        if not args.list:
            raise ConfigError("name a study (listed above) or all, as in `fastclr study head`")
        return 0
    budget = load_budget(args.budget)
    check_output_folder(args.out, "--out")
    if args.report_dir:
        check_output_folder(args.report_dir, "--report-dir")
    names = [n for n in STUDIES if n != "augment-full"] if args.name == "all" else [args.name]
    for name in names:
        plan(STUDIES.get(name), budget, Path(args.out))  # every config checked before a run
    _set_threads(args.threads)
    from fastclr.study.runner import run_only, run_study
    if args.only:
        run_only(names[0], budget, Path(args.out), args.only, args.device)
        return 0
    reports, seconds = {}, {}
    for name in names:
        report_dir = Path(args.report_dir) / name if args.report_dir else None
        reports[name] = run_study(name, budget, Path(args.out), args.jobs,
                                  args.devices.split(",") if args.devices else [args.device],
                                  report_dir)
        where = report_dir or Path(args.out) / name
        print(f"study {name}: report in {where / 'report.md'}")
        for claim in reports[name]["claims"]:
            print(f"  {claim['verdict']:>13}: {claim['claim']} ({claim['detail']})")
        seconds[name] = _study_seconds(where)
    if args.name == "all":
        from fastclr.study.report import write_overview
        page = write_overview(reports, Path(args.report_dir or args.out), seconds)
        print(f"overview: {page}")
    return 0


def _study_seconds(folder) -> float:
    try:
        return sum(t["seconds"] for t in json.loads((folder / "timing.json").read_text()))
    except (OSError, ValueError, KeyError):
        return 0.0


def cmd_presets(args) -> int:
    from fastclr.config import list_presets, resolve_preset

    for name in list_presets():
        print(f"{name:28} {resolve_preset(name)}")
    return 0
