"""The summary table of benchmarks/gpu.sh: one Markdown table of what its steps measured.

    python benchmarks/gpu_summary.py OUT_DIR

Reads what the steps left in OUT_DIR (augment.json, train_step_{eager,compiled}.json,
metrics.jsonl and report.json of the run, cuda-tests.txt, tests.txt); a step that left
nothing shows as "no result" rather than stopping the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    """A JSON file, or the last line of a log that ends with one."""
    try:
        text = path.read_text().strip()
        try:
            return json.loads(text)
        except ValueError:
            return json.loads(text.splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text().splitlines() if l.strip()]
    except OSError:
        return "no result"
    return lines[-1].strip("= ") if lines else "no result"


def machine() -> str:
    import torch
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = "no CUDA device"
    return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def augmentation(out: Path) -> list[tuple[str, str]]:
    a = _json(out / "augment.json")
    if a is None:
        return [("augmentation on the device", "no result")]
    rows = []
    for size in (32, 96, 224, 28):
        if f"views_per_s_{size}" in a:
            label = f"{size} px {'grey' if size == 28 else 'RGB'}"
            rows.append((f"augmentation, {label} ({a['device']} vs torchvision per image, "
                         f"{a['threads']} CPU thread)",
                         f"{a[f'views_per_s_{size}']:,.0f} vs "
                         f"{a[f'reference_views_per_s_{size}']:,.0f} views/s "
                         f"({a[f'ratio_{size}']:.0f}x)"))
    return rows


def step(out: Path, mode: str) -> tuple[str, str]:
    r = _json(out / f"train_step_{mode}.json")
    if r is None:
        return (f"whole training step, {mode}", "no result")
    preset = r["config"].split("_")[0]  # without the variant's suffix
    label = (f"whole step, {mode}: {preset} model ({r['arch']} x{r['width']:g}), "
             f"{'x'.join(map(str, r['image']))}, batch {r['batch']}, "
             f"{'bf16' if r['bf16'] else 'fp32'}{', synthetic images' if r['synthetic'] else ''}")
    mfu = f"MFU {100 * r['mfu']:.1f}% ({r['peak_source']})" if r["mfu"] is not None \
        else "MFU n/a"
    figure = (f"{r['views_per_s']:,.0f} views/s, {r['step_ms']:.1f} ms a step, "
              f"{r['gflop_per_view']:.2f} GFLOP a view, {r['achieved_tflops']:.1f} TFLOP/s, "
              f"{mfu}; augmentation {100 * r['augment_share']:.1f}% of a step")
    if r.get("ratio") is not None:
        layers = {"torch": ", PyTorch's layers", "fastclr": ", fastclr's layers"}.get(
            r.get("peer_layers"), "")
        figure += (f"; peer loop {r['peer_views_per_s']:,.0f} views/s ({r['peer_workers']} "
                   f"workers{layers}): fastclr {r['ratio']:.2f}x")
    return label, figure


def pretraining(out: Path) -> tuple[str, str]:
    label = "pretraining fashion-mnist-resnet18 (compiled, bf16, batch 512)"
    try:
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return label, "no result"
    speeds = [r["views_per_s"] for r in rows if "views_per_s" in r]
    steady = speeds[len(speeds) // 4:] or speeds
    epochs = max((r.get("epoch", 0) for r in rows), default=0)
    figure = f"{epochs:.3g} epochs, median {statistics.median(steady):,.0f} views/s" \
        if speeds else "no steps logged"
    report = _json(out / "report.json") or {}
    for key, name in (("linear_top1", "linear on h"), ("knn_top1", "kNN")):
        if isinstance(report.get(key), (int, float)):
            figure += f", {name} {100 * report[key]:.2f}%"
    return label, figure


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("runs/gpu-check")
    rows = [("machine", machine()), ("CUDA tests", _last_line(out / "cuda-tests.txt"))]
    rows += augmentation(out)
    rows += [step(out, "eager"), step(out, "compiled"), pretraining(out),
             ("test suite", _last_line(out / "tests.txt"))]
    print("| check | result |\n|---|---|")
    for label, figure in rows:
        print(f"| {label} | {figure} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
