"""Pictures of how a run's representation formed, drawn from its tracking record
(fastclr/eval/tracking.py) and metrics.jsonl: `fastclr inspect RUN`, and `fastclr eval`'s
plots protocol when the run has a record.

    dynamics.png             every tracked measure of h and z against the training step
    spectrum.png             covariance eigenvalues of h and of z at several points, log scale
    embedding_over_time.png  the same probe images mapped (t-SNE of h) at up to six points,
                             each map turned onto the last one (orthogonal Procrustes)
    similarities.png         cosines of positive and of negative pairs, first point and last

Like plots.py: matplotlib's object API, each PNG written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from fastclr.eval.plots import _save_png, plot_training_curves, read_metrics, tsne_map
from fastclr.eval.tracking import COSINE_BINS, read_points, read_probe

MAPS = 6  # points of embedding_over_time.png
SPECTRA = 6  # points of spectrum.png
COLOURS = {"h": "tab:blue", "z": "tab:orange"}


def spread(n: int, k: int) -> list[int]:
    """min(n, k) indices of 0..n-1, evenly spaced, the first and the last included."""
    k = min(n, k)
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def procrustes(xy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """xy (N, 2) centred, scaled to the reference's spread and turned (rotation or
    reflection) to lie as close as it can to reference (N, 2): maps of the same points become
    comparable without changing any distance within a map."""
    a, b = xy - xy.mean(0), reference - reference.mean(0)
    a = a / a.norm().clamp_min(1e-12)
    u, _, vt = torch.linalg.svd(a.T @ b)  # the orthogonal r minimising ||a r - b||
    return (a @ (u @ vt)) * b.norm()


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_dynamics(records: list[dict], probe: dict, path: Path) -> Path:
    """Eight panels against the step: loss, kNN top-1, contrastive top-1, effective rank,
    alignment, uniformity, positive and negative cosines, learning rate."""
    fig = Figure(figsize=(17, 7.5))
    axes = fig.subplots(2, 4).ravel()
    dims = {s: probe.get(f"dim_{s}") for s in "hz"}

    def both(ax, measure, scale=1.0, label="{}"):
        drawn = False
        for s in "hz":
            steps, values = _series(records, f"dynamics/{measure}_{s}")
            if steps:
                ax.plot(steps, [scale * v for v in values], marker=".", color=COLOURS[s],
                        label=label.format(s))
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured\n(no labels?)", ha="center", va="center",
                    transform=ax.transAxes, color="gray")

    steps, loss = _series(records, "loss")
    axes[0].plot(steps, loss, color="tab:gray")
    axes[0].set(title="NT-Xent loss (training batches)", ylabel="loss")
    both(axes[1], "knn_top1", 100)
    axes[1].set(title=f"kNN top-1 (k={probe.get('knn_k')}, probe vs "
                f"{probe.get('bank_images')} bank images)", ylabel="top-1 (%)")
    both(axes[2], "contrastive_top1", 100)
    axes[2].set(title="contrastive task top-1 (positive found among "
                f"{2 * probe.get('contrastive_batch', 0) - 1})", ylabel="top-1 (%)")
    both(axes[3], "effective_rank", label="{}")
    axes[3].set(title="effective rank (dimensions in use)", ylabel="effective rank")
    both(axes[4], "alignment")
    axes[4].set(title="alignment (0: the two views agree)", ylabel="E ||f(x) - f(x')||^2")
    both(axes[5], "uniformity")
    axes[5].set(title="uniformity (lower: spread over the sphere)", ylabel="log E exp(-2 d^2)")
    for s in "hz":
        for kind, style in (("pos", "-"), ("neg", "--")):
            steps, values = _series(records, f"dynamics/cos_{kind}_{s}")
            axes[6].plot(steps, values, style, color=COLOURS[s],
                         label=f"{s}: {'positives' if kind == 'pos' else 'negatives'}")
    axes[6].legend(fontsize=8)
    axes[6].set(title="mean cosine of view pairs", ylabel="cosine")
    steps, lr = _series(records, "lr")
    axes[7].plot(steps, lr, color="tab:gray")
    axes[7].set(title="learning rate", ylabel="lr")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    sizes = ", ".join(f"{s} {d}-d" for s, d in dims.items() if d)
    fig.suptitle(f"how the representation formed: {probe.get('images')} held-out training "
                 f"images ({probe.get('data')}, {probe.get('split')} split){', ' if sizes else ''}"
                 f"{sizes}", fontsize=11)
    fig.tight_layout()
    return _save_png(fig, path)


def plot_spectra(points: list, probe: dict, path: Path, epochs_per_step: float | None) -> Path:
    """Covariance eigenvalues (as fractions of the total variance, log scale) of h and of z
    at up to SPECTRA points, early light, late dark."""
    import matplotlib

    chosen = [points[i] for i in spread(len(points), SPECTRA)]
    cmap = matplotlib.colormaps["viridis"]
    fig = Figure(figsize=(12, 4.6))
    for ax, s in zip(fig.subplots(1, 2), "hz"):
        for j, (step, arrays) in enumerate(chosen):
            eig = np.asarray(arrays[f"spectrum_{s}"], dtype=np.float64)
            frac = eig / max(eig.sum(), 1e-30)
            frac[frac < 1e-9] = np.nan  # rounding noise of a zero eigenvalue: not drawn
            ax.semilogy(np.arange(1, len(frac) + 1), frac, color=cmap(j / max(len(chosen) - 1, 1)),
                        label=_when(step, epochs_per_step))
        ax.set(title=f"{s}: covariance eigenvalues of {probe.get('images')} probe embeddings "
               "(L2-normalised)", xlabel="index (largest first)",
               ylabel="fraction of variance (log)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("spectrum: a tail that falls away is dimensions the representation does not "
                 "use (dimensional collapse, Jing et al. 2022)", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, path)


def plot_maps(points: list, probe: dict, records: list[dict], path: Path,
              epochs_per_step: float | None, seed: int = 0) -> Path:
    """t-SNE maps of the probe's h at up to MAPS points, each turned onto the last map."""
    import matplotlib

    chosen = [points[i] for i in spread(len(points), MAPS)]
    maps = [tsne_map(torch.from_numpy(np.asarray(a["h"], dtype=np.float32)), seed)
            for _, a in chosen]
    maps = [procrustes(m, maps[-1]) for m in maps]
    labels = probe.get("labels")
    names = probe.get("classes") or ([str(c) for c in range(max(labels) + 1)] if labels
                                     else [])
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    knn = dict(zip(*_series(records, "dynamics/knn_top1_h")))
    cols = min(3, len(maps))
    rows = -(-len(maps) // cols)
    fig = Figure(figsize=(4.4 * cols + 1.8, 4.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    lim = float(max(m.abs().max() for m in maps)) * 1.05
    for ax, (step, _), xy in zip(axes, chosen, maps):
        if labels:
            y = torch.tensor(labels)
            for c in sorted(set(labels)):
                mask = y == c
                ax.scatter(xy[mask, 0], xy[mask, 1], s=5, color=cmap(c % cmap.N),
                           label=names[c], alpha=0.8, linewidths=0)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=5, color="tab:blue", alpha=0.8, linewidths=0)
        title = _when(step, epochs_per_step)
        if step in knn:
            title += f"\nkNN top-1 of h {100 * knn[step]:.1f}%"
        ax.set(title=title, xticks=[], yticks=[], xlim=(-lim, lim), ylim=(-lim, lim))
        ax.title.set_fontsize(9)
    for ax in axes[len(maps):]:
        ax.set_axis_off()
    if labels:
        handles, texts = axes[0].get_legend_handles_labels()
        fig.legend(handles, texts, loc="center right", markerscale=3, frameon=False,
                   title="class", fontsize=8)
    fig.suptitle(f"the same {probe.get('images')} held-out training images during training "
                 "(t-SNE of h; each map rotated onto the last)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86 if labels else 1, 0.96))
    return _save_png(fig, path)


def plot_similarities(points: list, path: Path, epochs_per_step: float | None) -> Path:
    """Distributions of the cosines of positive pairs and of negatives, first against last
    point, in h and in z."""
    centres = 0.5 * (COSINE_BINS[1:] + COSINE_BINS[:-1])
    width = COSINE_BINS[1] - COSINE_BINS[0]
    (first, a0), (last, a1) = points[0], points[-1]
    fig = Figure(figsize=(12, 4.4))
    for ax, s in zip(fig.subplots(1, 2), "hz"):
        low, top = 1.0, {}
        for arrays, step, style in ((a0, first, "--"), (a1, last, "-")):
            for kind, colour, name in (("pos", "tab:green", "positives"),
                                       ("neg", "tab:red", "negatives")):
                counts = np.asarray(arrays[f"cos_{kind}_hist_{s}"], dtype=np.float64)
                if counts.any():
                    low = min(low, float(COSINE_BINS[np.flatnonzero(counts)[0]]))
                density = counts / max(counts.sum() * width, 1e-30)
                mean = float((counts * centres).sum() / max(counts.sum(), 1))
                top[style] = max(top.get(style, 0.0), float(density.max()))
                ax.plot(centres, density, style, color=colour,
                        label=f"{name}, {_when(step, epochs_per_step)} (mean {mean:.2f})")
        if top["--"] > 2 * top["-"]:  # a narrow first peak would flatten the last point's
            ax.set_ylim(0, 1.3 * top["-"])
            ax.text(0.96, 0.97, f"first point's peak:\n{top['--']:.0f}, off the scale",
                    transform=ax.transAxes, fontsize=7, va="top", ha="right", color="gray")
        ax.set(title=f"{s}: cosine of two views of one image (positives) and of different "
               "images (negatives)", xlabel="cosine similarity", ylabel="density",
               xlim=(max(-1.0, low - 0.05), 1.0))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("what the loss pulls together and pushes apart: dashed at the first point, "
                 "solid at the last", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, path)


def _when(step: int, epochs_per_step: float | None) -> str:
    if epochs_per_step is None:
        return f"step {step}"
    return f"step {step} (epoch {step * epochs_per_step:.1f})"


def has_record(run_dir: Path) -> bool:
    return read_probe(run_dir) is not None and any((Path(run_dir) / "dynamics").glob("*.npz"))


def draw(run_dir: Path, out_dir: Path | None = None, seed: int = 0,
         training_curves: bool = True) -> list[Path]:
    """Every picture of the run's record into out_dir (default: the run folder); returns
    their paths. A run without a tracking record gets its training curves only."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    written = []
    if training_curves and records:
        written.append(plot_training_curves(records, out_dir / "training_curves.png"))
    probe = read_probe(run_dir)
    points = read_points(run_dir) if probe is not None else []
    if not points:
        return written
    with_epoch = [r for r in records if "epoch" in r and r["step"]]
    per_step = with_epoch[-1]["epoch"] / with_epoch[-1]["step"] if with_epoch else None
    first = points[0][1]
    probe = {**probe, "dim_h": first["h"].shape[1], "dim_z": first["z"].shape[1]}
    written.append(plot_dynamics(records, probe, out_dir / "dynamics.png"))
    written.append(plot_spectra(points, probe, out_dir / "spectrum.png", per_step))
    written.append(plot_maps(points, probe, records, out_dir / "embedding_over_time.png",
                             per_step, seed))
    written.append(plot_similarities(points, out_dir / "similarities.png", per_step))
    return written
