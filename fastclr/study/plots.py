"""The pictures of a study report: bars, lines over a factor, a heat map of op pairs (the
paper's Figure 5), and accuracy against embedding size. Error bars are the seeds' standard
deviation."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from fastclr.eval.plots import _save_png
from fastclr.study.catalog import NAMES, Study


def draw(study: Study, table: dict, out: Path, extra: dict) -> list[str]:
    kind = study.plot.get("kind", "bars")
    if kind == "heatmap":
        return [_heatmap(study, table, out)]
    if kind == "lines":
        return [_lines(study, table, out)]
    if kind == "sizes":
        return [_sizes(extra["points"], out)]
    return [_bars(study, table, out)]


def _sd(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _bars(study: Study, table: dict, out: Path) -> str:
    if "series" in study.plot:
        return _grouped_bars(study, table, out)
    metrics = study.plot.get("metrics", ("linear_top1",))
    labels = [c.label for c in study.cells]
    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) * len(metrics) / 1.5 + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        means = [table[c][m][0] for c in labels]
        sds = [_sd(table[c][m][1]) for c in labels]
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, means, width, yerr=sds, capsize=3, label=NAMES.get(m, m))
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0,
                  ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("top-1 (%)")
    return _finish_bars(fig, ax, study, [table[c][m][0] for c in labels for m in metrics], out)


def _finish_bars(fig, ax, study: Study, means: list[float], out: Path) -> str:
    """The y range from the finite means, title, legend; writes results.png."""
    finite = [m for m in means if math.isfinite(m)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 3))
    ax.set_title(study.title, fontsize=9)
    ax.legend(fontsize=8)
    return _save_png(fig, out / "results.png").name


def _grouped_bars(study: Study, table: dict, out: Path) -> str:
    """Linear top-1 with one bar per series (e.g. SimCLR and supervised) at each x (e.g. the
    model), so that the gap between the series reads at each x."""
    x_name, series = study.plot["x"], study.plot["series"]
    xs = list(dict.fromkeys(c.factors[x_name] for c in study.cells))
    names = list(dict.fromkeys(c.factors[series] for c in study.cells))
    fig = Figure(figsize=(max(5.0, 1.2 * len(xs) + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(names)
    means = []
    for i, name in enumerate(names):
        cells = {c.factors[x_name]: c.label for c in study.cells if c.factors[series] == name}
        stats = [table[cells[x]]["linear_top1"] if x in cells else (math.nan, math.nan, 0)
                 for x in xs]
        means += [m for m, _, _ in stats]
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(xs))],
               [m for m, _, _ in stats], width, yerr=[_sd(sd) for _, sd, _ in stats],
               capsize=3, label=str(name))
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(x_name)
    ax.set_ylabel("linear top-1 (%)")
    return _finish_bars(fig, ax, study, means, out)


def _lines(study: Study, table: dict, out: Path) -> str:
    x_name, series = study.plot["x"], study.plot.get("series")
    metrics = study.plot.get("metrics", ("linear_top1",))
    groups: dict = {}
    for cell in study.cells:
        key = cell.factors.get(series) if series else None
        groups.setdefault(key, []).append(cell)
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    positions = {}
    for cells in groups.values():  # categorical x values keep their order
        for c in cells:
            positions.setdefault(c.factors[x_name], len(positions))
    numeric = all(isinstance(v, (int, float)) for v in positions)
    for key, cells in groups.items():
        for m in metrics:
            xs = [c.factors[x_name] if numeric else positions[c.factors[x_name]] for c in cells]
            ys = [table[c.label][m][0] for c in cells]
            es = [_sd(table[c.label][m][1]) for c in cells]
            name = " ".join(str(p) for p in (key if series else None,
                                             NAMES.get(m, m) if len(metrics) > 1 else None) if p)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                        label=f"{series}={name}" if series and len(metrics) == 1 else name or None)
    if numeric and study.plot.get("log_x"):
        ax.set_xscale("log", base=2)
    if not numeric:
        ax.set_xticks(list(positions.values()), [str(v) for v in positions])
    ax.set_xlabel(x_name)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(study.title, fontsize=9)
    if len(groups) > 1 or len(metrics) > 1:
        ax.legend(fontsize=8)
    return _save_png(fig, out / "results.png").name


def _heatmap(study: Study, table: dict, out: Path) -> str:
    """Figure 5's layout: rows the first op, columns the second, singles on the diagonal."""
    order = list(study.plot["order"])
    n = len(order)
    grid = [[math.nan] * n for _ in range(n)]
    for cell in study.cells:
        i, j = order.index(cell.factors["first"]), order.index(cell.factors["second"])
        grid[i][j] = table[cell.label]["linear_top1"][0]
    fig = Figure(figsize=(1.0 * n + 2, 0.9 * n + 1.2))
    ax = fig.subplots()
    image = ax.imshow([[v if math.isfinite(v) else float("nan") for v in row] for row in grid],
                      cmap="viridis")
    for i in range(n):
        for j in range(n):
            if math.isfinite(grid[i][j]):
                ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white")
    ax.set_xticks(range(n), order, rotation=30, ha="right")
    ax.set_yticks(range(n), order)
    ax.set_xlabel("second op (diagonal: one op alone)")
    ax.set_ylabel("first op")
    ax.set_title("linear top-1 (%), ops on one branch", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save_png(fig, out / "results.png").name


def _sizes(points: list, out: Path) -> str:
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for kind in dict.fromkeys(p[0] for p in points):  # in the report table's order
        pts = sorted((p for p in points if p[0] == kind), key=lambda p: p[1])
        ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=[_sd(p[3]) for p in pts],
                    marker="o", capsize=3, label=kind)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding size (dimensions)")
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("accuracy against the size of the representation", fontsize=9)
    ax.legend(fontsize=7)
    return _save_png(fig, out / "results.png").name
