"""report.json: merging a new evaluation into an earlier one, and the printed table."""

from __future__ import annotations

import json
from pathlib import Path


def previous_report(out_dir: Path, step) -> dict:
    try:
        old = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("encoder_step") == step else {}


def _pct(report: dict, key: str) -> str:
    return f"{100 * report[key]:.2f}%" if isinstance(report.get(key), (int, float)) else "-"


def _epochs(report: dict, key: str, default) -> str:
    return str(report.get(f"{key}_epochs", default))


def format_report(report: dict) -> str:
    """A readable summary of report.json (whatever protocols it holds). Every number is named
    by its protocol: "linear" is the L-BFGS probe on un-augmented features (the paper's
    transfer protocol, appendix B.8), linear-b6 the paper's linear evaluation (B.6)."""
    lines = []
    rows = [("h: L-BFGS probe (linear, B.8)", "linear_top1", "linear_top5", "knn_top1"),
            ("z = g(h): L-BFGS probe (linear)", "linear_z_top1", "linear_z_top5", "knn_z_top1"),
            (f"h: B.6, {_epochs(report, 'linear_b6', 90)} epochs (linear-b6)",
             "linear_b6_top1", "linear_b6_top5", None),
            (f"h: B.6 recipe, {_epochs(report, 'linear_b6_cpu', 10)} epochs "
             "(linear-b6-cpu)", "linear_b6_cpu_top1", "linear_b6_cpu_top5", None),
            (f"h: SGD+BN, {_epochs(report, 'linear_aug', 5)} epochs (linear-aug)",
             "linear_aug_top1", "linear_aug_top5", None),
            ("random-init encoder h: L-BFGS", "random_init_linear_top1", None,
             "random_init_knn_top1"),
            ("raw pixels: L-BFGS", "pixels_linear_top1", None, "pixels_knn_top1")]
    if any(r[1] in report for r in rows):
        knn = f"kNN k={report['knn_k']}" if "knn_k" in report else "kNN top-1"
        lines.append(f"{'':40}{'top-1':>9}{'top-5':>9}{knn:>11}")
        for label, top1, top5, knn in rows:
            if top1 in report or (knn and knn in report):
                lines.append(f"{label:40}{_pct(report, top1):>9}"
                             f"{_pct(report, top5) if top5 else '-':>9}"
                             f"{_pct(report, knn) if knn else '-':>11}")
        if "linear_z_top1" in report and "linear_top1" in report:
            gap = 100 * (report["linear_top1"] - report["linear_z_top1"])
            lines.append(f"h - z (L-BFGS probe): {gap:+.2f} points (paper, section 4.2: h beats "
                         "z by more than 10)")
    if "knn_table" in report:
        cells = "  ".join(f"k={k}: {100 * v:.2f}%" for k, v in report["knn_table"].items())
        lines.append(f"kNN on h (cosine, weighted, T={report.get('knn_temperature', 0.1):g}): "
                     f"{cells}")
        if report.get("knn_k_why"):
            lines.append(f"  headline kNN: {report['knn_k_why']}")
    for pct in (1, 10):
        key = f"finetune_{pct}pct"
        if f"{key}_top1" in report:
            top5 = f", top-5 {_pct(report, key + '_top5')}" if f"{key}_top5" in report else ""
            lines.append(f"fine-tuned on {pct}% of the labels ({report[f'{key}_images']} "
                         f"images, {report[f'{key}_epochs']} epochs): top-1 "
                         f"{_pct(report, key + '_top1')}{top5}")
    if "alignment_h" in report:
        spaces = [s for s in ("h", "z") if f"alignment_{s}" in report]
        lines.append(f"diagnostics on {report['diagnostics_images']} augmented test pairs"
                     + "".join(f"{s:>10}" for s in spaces))
        for label, key, fmt in (("  alignment (0 = views agree)", "alignment", "{:.3f}"),
                                ("  uniformity (lower = spread)", "uniformity", "{:.3f}"),
                                ("  effective rank", "effective_rank", "{:.1f}"),
                                ("  feature dimension", "dim", "{}"),
                                (f"  contrastive top-1 (batch {report['contrastive_batch']})",
                                 "contrastive_top1", "{:.2%}")):
            lines.append(f"{label:44}" + "".join(
                f"{fmt.format(report[f'{key}_{s}']):>10}" for s in spaces))
    if report.get("transforms"):
        lines += _transforms_table(report)
    if report.get("seconds"):
        cached = {"baselines": " (cached)"} if report.get("baselines_cached") else {}
        lines.append("seconds per protocol: " + ", ".join(
            f"{k} {v:.0f}{cached.get(k, '')}" for k, v in report["seconds"].items()))
    return "\n".join(lines)


def _transforms_table(report: dict) -> list[str]:
    """Table 3 of the paper beside this encoder's figures."""
    fit, score = report.get("transforms_images", ["?", "?"])
    lines = [f"Table 3, what h keeps that z = g(h) drops: an MLP names the transformation "
             f"({fit} / {score} images)",
             f"{'':30}{'h':>9}{'z':>9}{'paper h':>10}{'paper z':>10}{'chance':>9}"]
    notes = []
    for row in report["transforms"].values():
        cells = [_pct1(row.get("h")), _pct1(row.get("z")), _pct1(row["paper_h"]),
                 _pct1(row["paper_z"]), _pct1(row["chance"])]
        line = f"  {row['label']:28}" + "".join(
            f"{c:>{w}}" for c, w in zip(cells, (9, 9, 10, 10, 9)))
        if row.get("why"):
            notes.append(f"  {'*' * (len(notes) + 1)} {row['why']}")
            line += " " + "*" * len(notes)
        lines.append(line)
    lines += notes
    extra = report.get("transforms_pretrained_with") or []
    lines.append("  the paper adds rotation, noise and Sobel to its pretraining augmentation for "
                 "the last 3 rows;")
    lines.append(f"  this run's augmentation had {', '.join(extra)}" if extra else
                 "  this run's had none of them: its rows say what h and z keep of "
                 "transformations never to be ignored")
    return lines


def _pct1(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
