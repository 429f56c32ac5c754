"""A study's report: report.md (tables, the paper beside ours, a verdict per claim),
report.json (every seed's numbers) and its pictures; and the overview of several studies.

Top-1 values are in percent; `train_loss` is the training loss of the run's last log window.
Nothing here depends on when or in how many sittings the runs were made.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from fastclr.checkpoint import atomic_write
from fastclr.study.catalog import NAMES, Study
from fastclr.study.verdicts import RULE



def metric_value(metrics: dict, name: str) -> float:
    value = metrics.get(name, math.nan)
    if not isinstance(value, (int, float)):
        return math.nan
    return 100 * value if "top1" in name else float(value)  # accuracies in points


def aggregate(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    sd = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), sd, len(finite)


def table_of(study: Study, jobs, results: dict) -> dict:
    """{cell: {metric: (mean, sd, n)}} over the seeds."""
    table = {}
    for cell in study.cells:
        runs = [results[j.key]["metrics"] for j in jobs if j.cell.label == cell.label]
        table[cell.label] = {m: aggregate([metric_value(r, m) for r in runs])
                             for m in (*study.metrics, "train_loss")}
    return table


def _cell_text(stat: tuple[float, float, int]) -> str:
    mean, sd, n = stat
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.2f} ± {sd:.2f}" if math.isfinite(sd) else f"{mean:.2f}"


def write_report(study: Study, budget, jobs, results: dict, out: Path) -> dict:
    """report.md, report.json and the PNGs of a finished study in `out`; returns report.json."""
    from fastclr.study import plots

    out.mkdir(parents=True, exist_ok=True)
    table = table_of(study, jobs, results)
    verdicts = [(claim, claim.judge(table)) for claim in study.claims]
    extra = sizes_summary(study, jobs, results) if study.plot.get("kind") == "sizes" else {}
    pictures = plots.draw(study, table, out, extra)
    seeds = budget.seeds_for(study.name)
    code = revisions(jobs)
    report = {
        "study": study.name, "title": study.title, "source": study.source,
        "budget": {"name": budget.name, "base": budget.base, "seeds": seeds,
                   "options": budget.options_for(study.name)},
        "protocols": list(study.protocols),
        "cells": {c.label: {"overrides": c.overrides, "paper": c.paper,
                            "metrics": {m: list(v) for m, v in table[c.label].items()},
                            "seeds": {str(j.seed): _measures(study, results[j.key]["metrics"])
                                      for j in jobs if j.cell.label == c.label}}
                  for c in study.cells},
        "claims": [{"claim": c.text, "paper": c.paper, "verdict": v.verdict,
                    "detail": v.detail} for c, v in verdicts],
        "rule": RULE, "findings": extra.get("findings", []), "pictures": pictures,
        "sizes": [list(p) for p in extra.get("points", [])], "revisions": code,
    }
    blob = json.dumps(report, indent=2, default=_plain).encode()
    atomic_write(out / "report.json", lambda f: f.write(blob))
    text = markdown(study, budget, table, verdicts, extra, pictures, code)
    atomic_write(out / "report.md", lambda f: f.write(text.encode()))
    return report


def _measures(study: Study, metrics: dict) -> dict:
    """A run's measured values the study reads (no timings: a report must not depend on when
    or how fast its runs were made)."""
    keys = (*study.metrics, "train_loss", "linear_top5", "knn_table", "pca_top1")
    return {k: metrics[k] for k in keys if k in metrics}


def revisions(jobs) -> dict[str, int]:
    """{git revision (12 digits, or 'unknown'): how many of the study's runs had a session
    (training, resuming or finding it finished) with that code}: a study run in several
    sittings may span code changes, and its report says so."""
    counts: dict[str, int] = {}
    for job in jobs:
        try:
            sessions = json.loads((job.run_dir / "run.json").read_text()).get("sessions", [])
        except (OSError, ValueError):
            sessions = []
        for rev in sorted({(s.get("git_revision") or "unknown")[:12] for s in sessions}
                          or {"unknown"}):
            counts[rev] = counts.get(rev, 0) + 1
    return dict(sorted(counts.items()))


def _plain(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def markdown(study: Study, budget, table, verdicts, extra, pictures, code) -> str:
    seeds = budget.seeds_for(study.name)
    options = ", ".join(f"{k}={v}" for k, v in budget.options_for(study.name).items())
    lines = [f"# Study `{study.name}`: {study.title}", "",
             f"**Question.** {study.question}", "",
             f"**In the paper:** {study.source}; its numbers are ImageNet linear evaluation "
             "(ResNet-50), shown for reference only.", "",
             f"**Here:** budget `{budget.name}`: preset `{budget.base}` with {options}; "
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) per cell; evaluation "
             f"{', '.join(study.protocols)} on the data set's test split. Values are mean ± "
             "standard deviation over the seeds.", ""]
    if study.note:
        lines += [study.note, ""]
    metrics = [m for m in study.metrics]
    header = ["cell", *(NAMES.get(m, m) for m in metrics)]
    if study.metrics and any(c.paper is not None for c in study.cells):
        header.append("paper (ImageNet)")
    lines += ["## Results", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for cell in study.cells:
        row = [cell.label, *(_cell_text(table[cell.label][m]) for m in metrics)]
        if len(header) > len(metrics) + 1:
            row.append("-" if cell.paper is None else f"{cell.paper:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Claims", ""]
    if verdicts:
        lines += ["| claim | paper | here | verdict |", "|---|---|---|---|"]
        for claim, verdict in verdicts:
            lines.append(f"| {claim.text} | {claim.paper or '-'} | {verdict.detail} | "
                         f"**{verdict.verdict}** |")
        lines += ["", f"Verdict rule: {RULE}", ""]
    else:
        lines += ["The paper states no claim this study could test; what it measures is in "
                  "the findings below.", ""]
    if extra.get("findings"):
        lines += ["## Findings", "", *(f"- {f}" for f in extra["findings"]), ""]
    if extra.get("points"):
        lines += ["Every size measured (linear top-1 on the test split, mean ± standard "
                  "deviation over the seeds):", "", "| read as | size | linear top-1 |",
                  "|---|---|---|"]
        lines += [f"| {kind} | {size} | {_cell_text((mean, sd, 0))} |"
                  for kind, size, mean, sd in extra["points"]]
        lines += [""]
    if pictures:
        lines += ["## Pictures", "", *(f"![{p}]({p})" for p in pictures), ""]
    lines += ["## Reproduce", "", "```bash",
              f"fastclr study {study.name} --budget {budget.argument}", "```", "",
              f"Run folders: `OUT/{study.name}/cells/<cell>/seed<k>`, OUT being the study's "
              "`--out` (default `studies`); each is an ordinary fastclr run folder with its "
              "own config.yaml, run.json (the command, the code's git revision, the "
              "machine) and report.json.", "",
              "Code: " + ", ".join(f"git revision `{rev}` ({n} run{'s' * (n != 1)})"
                                   for rev, n in code.items()) + ".", ""]
    return "\n".join(lines)


def sizes_summary(study: Study, jobs, results: dict) -> dict:
    """The embedding-size study's points (kind, size, mean, sd) and the smallest size within
    one point of the best."""
    rows: dict[str, list] = {"h": [], "z": [], "PCA": []}  # read in this order
    for cell in study.cells:
        runs = [results[j.key]["metrics"] for j in jobs if j.cell.label == cell.label]
        h = cell.factors["h"]
        if "width" in cell.overrides:
            rows["h"].append((h, "h", h, [metric_value(r, "linear_top1") for r in runs]))
            for k in sorted({int(k) for r in runs for k in r.get("pca_top1", {})}):
                rows["PCA"].append((h, f"PCA of h={h}", k, [100 * r["pca_top1"][str(k)]
                                                          for r in runs
                                                          if str(k) in r.get("pca_top1", {})]))
        rows["z"].append((h, f"z of h={h}", cell.factors["z"],
                          [metric_value(r, "linear_z_top1") for r in runs]))
    by_h_then_size = lambda row: (row[0], row[2])  # noqa: E731
    points = [(kind, size, *aggregate(values)[:2]) for group in rows.values()
              for _, kind, size, values in sorted(group, key=by_h_then_size)]
    points = [p for p in points if math.isfinite(p[2])]
    best = max(points, key=lambda p: p[2])
    within = [p for p in points if p[2] >= best[2] - 1.0]
    smallest = min(within, key=lambda p: (p[1], -p[2]))
    findings = [f"best: {best[0]} of size {best[1]}, {best[2]:.2f}% linear top-1",
                f"smallest size within 1 point of the best: {smallest[0]} of size "
                f"{smallest[1]} ({smallest[2]:.2f}%)"]
    return {"points": points, "findings": findings}


def write_overview(reports: dict[str, dict], out: Path, seconds: dict[str, float]) -> Path:
    """One page linking each study's report, with its claims' verdicts."""
    lines = ["# Studies: the paper's claims at this scale", "",
             "Each study is a grid of runs (several seeds per cell); each report gives the "
             "table, the paper's numbers beside, and a verdict per claim by the rule stated "
             "in it.", "", "| study | in the paper | claims: holds / does not hold / "
             "inconclusive | wall time |", "|---|---|---|---|"]
    for name, report in reports.items():
        counts = {v: sum(c["verdict"] == v for c in report["claims"])
                  for v in ("holds", "does not hold", "inconclusive")}
        minutes = f"{seconds[name] / 60:.0f} min" if name in seconds else "-"
        lines.append(f"| [{name}]({name}/report.md) | {report['source']} | "
                     f"{counts['holds']} / {counts['does not hold']} / {counts['inconclusive']} "
                     f"| {minutes} |")
    lines += [""]
    for name, report in reports.items():
        lines += [f"## {name}: {report['title']}", ""]
        lines += [f"- {c['claim']}: **{c['verdict']}** ({c['detail']})" for c in report["claims"]]
        if not report["claims"]:  # a study that measures rather than tests
            lines += [f"- {finding}" for finding in report.get("findings", [])]
        lines += [""]
    path = out / "README.md"
    text = "\n".join(lines)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
