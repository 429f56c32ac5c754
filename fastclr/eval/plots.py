"""Pictures of a run: what the model sees, how training went, where the embeddings lie.

Each function takes plain data (lists, tensors), writes one PNG atomically (temp file in the
same folder, then rename: a reader never sees half a picture) and uses matplotlib's object
API, not pyplot, so no global figure state or display backend is involved.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from fastclr.checkpoint import atomic_write
from fastclr.paths import PICTURE_FORMATS

_CLASS_COLOURS = "tab10"  # 10 well-separated colours; tab20 beyond that


def _save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    buffer = io.BytesIO()  # render first: a failed render leaves the old file alone
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(path)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_training_curves(records: list[dict], path: str | Path) -> Path:
    """Loss, learning rate and top-1 monitors (kNN, tracked kNN, online probe) against the
    step."""
    def series(key):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(13, 3.6))
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)
    steps, loss = series("loss")
    ax_loss.plot(steps, loss, color="tab:blue")
    ax_loss.set(title="NT-Xent loss", xlabel="step", ylabel="loss (mean since last line)")
    steps, lr = series("lr")
    ax_lr.plot(steps, lr, color="tab:orange")
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")
    shown = False
    for key, label, colour in (("knn_top1", "kNN monitor (held-out training images)",
                                "tab:green"),
                               ("dynamics/knn_top1_h", "tracked kNN of h (probe set)",
                                "tab:blue"),
                               ("probe_top1", "online linear probe (train batches)",
                                "tab:purple")):
        steps, acc = series(key)
        if steps:
            ax_acc.plot(steps, [100 * a for a in acc], marker="o", color=colour, label=label)
            shown = True
    if shown:
        ax_acc.legend(loc="lower right", fontsize=8)
    else:
        ax_acc.text(0.5, 0.5, "no kNN monitor, tracking or online\nprobe in this run (knn_every, "
                    "track_every = 0,\nonline_probe = false)", ha="center", va="center",
                    transform=ax_acc.transAxes)
    ax_acc.set(title="top-1 during pretraining", xlabel="step", ylabel="top-1 (%)")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.grid(alpha=0.3)
    return _save_png(fig, path)


def tsne_map(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """2-D t-SNE coordinates (N, 2) of features (N, D), on L2-normalised rows so the map
    reflects the cosine geometry the kNN classifier and the loss use."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = F.normalize(features.float().cpu(), dim=1).numpy()
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # one thread: on a small shared CPU, sklearn's OpenMP pool and torch's spin against each
    # other (measured: 120 points took 25 s with 2 threads, 0.6 s with 1)
    with threadpool_limits(1):
        xy = tsne.fit_transform(x)
    return torch.from_numpy(xy).float()


def umap_map(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """2-D UMAP coordinates (N, 2) of features (N, D) (McInnes et al. 2018), with the cosine
    geometry of the loss and the kNN classifier, like `tsne_map`. Needs umap-learn."""
    require_map("umap")
    import umap
    from threadpoolctl import threadpool_limits

    x = F.normalize(features.float().cpu(), dim=1).numpy()
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed,
                        n_jobs=1)  # a seed makes it one thread anyway; say so, no warning
    with threadpool_limits(1):  # as for t-SNE: sklearn's and torch's pools on a small CPU
        xy = reducer.fit_transform(x)
    return torch.from_numpy(xy).float()


# the 2-D maps by name, with the name a picture shows
MAPS = {"tsne": (tsne_map, "t-SNE"), "umap": (umap_map, "UMAP")}


def require_map(method: str) -> None:
    """Refuse, before any work, a map method that is unknown or whose package is missing."""
    from fastclr.errors import ConfigError

    if method not in MAPS:
        raise ConfigError(f"unknown embedding map {method!r}; known: {', '.join(MAPS)}")
    if method == "umap":
        import importlib.util
        if importlib.util.find_spec("umap") is None:
            raise ConfigError("the UMAP embedding map needs umap-learn: "
                              "pip install 'fastclr[umap]' (or use --map tsne)")


def plot_embedding_map(xy: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None,
                       path: str | Path, title: str = "test features (t-SNE of h)") -> Path:
    """Points (N, 2) coloured by class, with a legend of class names."""
    labels = labels.cpu()
    classes = sorted(torch.unique(labels).tolist())
    names = class_names or [str(c) for c in range(max(classes) + 1)]
    import matplotlib
    cmap = matplotlib.colormaps[_CLASS_COLOURS if len(names) <= 10 else "tab20"]
    fig = Figure(figsize=(8.5, 7))
    ax = fig.subplots()
    for c in classes:
        mask = labels == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap(c % cmap.N), label=names[c],
                   alpha=0.8, linewidths=0)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=3, frameon=False,
              title="class")
    ax.set(title=f"{title}, {len(xy)} images", xticks=[], yticks=[])
    return _save_png(fig, path)


def _montage(queries: torch.Tensor, neighbours: torch.Tensor, same: torch.Tensor,
             frame: int, gap: int, band: int) -> torch.Tensor:
    """One RGB uint8 picture of the grid: per row a caption band of `band` white pixels, then
    the query, a wider gap, and its neighbours, each inside a coloured `frame` (green: same
    class as the query, red: another), cells `gap` pixels apart."""
    q, k, c, h, w = neighbours.shape
    cell_h, cell_w = h + 2 * frame, w + 2 * frame
    height, width = q * (band + cell_h), (k + 1) * (cell_w + gap) + 3 * gap
    canvas = torch.full((height, width, 3), 255, dtype=torch.uint8)
    green = torch.tensor([44, 160, 44], dtype=torch.uint8)
    red = torch.tensor([214, 39, 40], dtype=torch.uint8)

    def put(image, row, col, colour=None):
        y0 = row * (band + cell_h) + band
        x0 = col * (cell_w + gap) + (3 * gap if col else 0)  # the query stands apart
        if colour is not None:
            canvas[y0: y0 + cell_h, x0: x0 + cell_w] = colour
        rgb = image.expand(3, h, w) if c == 1 else image  # (3, H, W)
        canvas[y0 + frame: y0 + frame + h, x0 + frame: x0 + frame + w] = rgb.permute(1, 2, 0)
        return x0 + cell_w / 2, y0  # where the caption goes

    spots = []
    for i in range(q):
        spots.append([put(queries[i], i, 0)])
        for j in range(k):
            spots[i].append(put(neighbours[i, j], i, j + 1, green if same[i, j] else red))
    return canvas, spots


def plot_neighbour_grid(queries: torch.Tensor, neighbours: torch.Tensor,
                        query_labels: torch.Tensor, neighbour_labels: torch.Tensor,
                        class_names: list[str] | None, path: str | Path,
                        similarities: torch.Tensor | None = None) -> Path:
    """One row per query image (uint8 (Q, C, H, W)) followed by its nearest neighbours
    (uint8 (Q, K, C, H, W)); a green frame marks a neighbour of the query's class, red another.

    The grid is one montage image (one matplotlib axes, not Q x K of them: several times
    faster to draw).
    """
    q, k, _, h, w = neighbours.shape
    query_labels, neighbour_labels = query_labels.cpu(), neighbour_labels.cpu()
    names = class_names or [str(c) for c in range(int(max(query_labels.max(),
                                                              neighbour_labels.max())) + 1)]
    same = neighbour_labels == query_labels[:, None]  # (Q, K)
    canvas, spots = _montage(queries.cpu(), neighbours.cpu(), same, frame=max(1, h // 16),
                             gap=max(1, w // 8), band=max(6, round(0.6 * h)))
    width_in = 1.15 * (k + 1.3)
    image_in = width_in * canvas.shape[0] / canvas.shape[1]
    fig = Figure(figsize=(width_in, image_in + 0.4))
    ax = fig.add_axes((0, 0, 1, image_in / (image_in + 0.4)))
    ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_axis_off()
    for i in range(q):
        x, y = spots[i][0]
        ax.text(x, y - 1, f"query:\n{names[int(query_labels[i])]}", ha="center", va="bottom",
                fontsize=7, fontweight="bold")
        for j in range(k):
            x, y = spots[i][j + 1]
            caption = names[int(neighbour_labels[i, j])]
            if similarities is not None:
                caption += f"\ncos {float(similarities[i, j]):.3f}"
            ax.text(x, y - 1, caption, ha="center", va="bottom", fontsize=6.5,
                    color="black" if same[i, j] else "tab:red")
    fig.suptitle("test queries (left) and their nearest training images by cosine similarity "
                 "of h\n(green frame: same class as the query, red: another class)", fontsize=9,
                 y=1.0, va="top")
    return _save_png(fig, path)


# ---- what the model sees ------------------------------------------------------------------


def save_augmentation_grid(images_uint8: Tensor, view1: Tensor, view2: Tensor,
                           path: str | os.PathLike, nrow: int = 4) -> Path:
    """Write a picture showing each original image next to its two augmented views, in the
    format its suffix names (.png, .jpg, .jpeg, .webp, .bmp).

    images_uint8 (N, C, H, W) uint8; view1, view2 (N, C, S, S) float in [0, 1] (the
    pipeline's output, before any normalisation); C is 1 or 3. Each tile is
    [original | view 1 | view 2], `nrow` tiles per row. Originals are resized to S for
    display only; small images are enlarged by a whole factor (nearest) to at least 96 px so
    a person can see them. The file is written atomically (temp file, then rename).
    """
    path = Path(path)
    if path.suffix.lower() not in PICTURE_FORMATS:
        raise ValueError(f"{path}: a picture name ends in {', '.join(PICTURE_FORMATS)}")
    if not (images_uint8.shape[0] == view1.shape[0] == view2.shape[0]):
        raise ValueError("images and views must have the same batch size")
    n, S = view1.shape[0], view1.shape[-1]
    original = images_uint8.detach().to("cpu", torch.float32) / 255
    if original.shape[-2:] != (S, S):
        original = F.interpolate(original, size=(S, S), mode="bilinear", antialias=True,
                                 align_corners=False)
    parts = [original, view1.detach().float().cpu(), view2.detach().float().cpu()]
    parts = [p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p for p in parts]   # grey -> RGB
    gap = torch.ones(n, 3, S, max(1, S // 16))                     # white line between the three
    tiles = torch.cat([parts[0], gap, parts[1], gap, parts[2]], dim=-1)      # (n, 3, S, ~3S)
    grid = _tile(tiles, nrow, pad=max(2, S // 6))
    zoom = max(1, -(-96 // S))
    grid = grid.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return _write_picture_atomically(pixels, path)


def _tile(tiles: Tensor, nrow: int, pad: int) -> Tensor:
    """(n, 3, h, w) tiles -> (3, H, W) image, nrow per row, white padding around each."""
    n, _, h, w = tiles.shape
    cols = max(1, min(nrow, n))
    rows = -(-n // cols)
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, top:top + h, left:left + w] = tiles[i]
    return grid


def _write_picture_atomically(pixels, path: Path) -> Path:
    from PIL import Image

    kind = PICTURE_FORMATS[path.suffix.lower()]
    options = {"quality": 95} if kind in ("JPEG", "WEBP") else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: Image.fromarray(pixels, mode="RGB").save(f, format=kind,
                                                                          **options))
    return path
