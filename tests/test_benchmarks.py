"""The whole-step benchmarks run end to end at a tiny size (their figures are not judged here:
speed lives in the scripts' output, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_train_step_times_both_loops_and_counts_flops():
    out = run("train_step.py", "--config", "fashion-mnist-cpu", "--device", "cpu",
              "--synthetic", "--steps", "2", "--rounds", "1", "--warmup", "1",
              "--batch-size", "16", "--workers", "1", "--threads", "1", "--json")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert (r["arch"], r["batch"], r["timed_steps"], r["peer_workers"]) == \
        ("resnet50", 16, 2, 1)
    assert r["views_per_s"] > 0 and r["peer_views_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["views_per_s"] / r["peer_views_per_s"], abs=0.01)
    # one round: its own ratio is the whole run's (both timed over the same slices)
    assert r["round_ratios"] == [pytest.approx(r["ratio"], abs=0.01)]
    # on a CPU two peers, each timed on its own: the model of PyTorch's layers first (the top
    # level's figures), then of fastclr's
    assert [p["layers"] for p in r["peers"]] == ["torch", "fastclr"]
    assert r["peer_layers"] == "torch" and r["peers"][0]["ratio"] == r["ratio"]
    for p in r["peers"]:
        assert p["views_per_s"] > 0 and len(p["round_ratios"]) == 1
        assert p["ratio"] == pytest.approx(r["views_per_s"] / p["views_per_s"], abs=0.01)
    assert 0 < r["augment_share"] < 1
    # ResNet-50 x1/8 with the stride-2 stem on 28 px: ~28 MFLOP a view, forward + backward
    assert 0.02 < r["gflop_per_view"] < 0.04


@pytest.mark.parametrize("own", ["rows", "wide"])
def test_batch_norm_times_each_shape_of_the_preset_both_ways(own):
    out = run("batch_norm.py", "--config", "fashion-mnist-cpu", "--batch-size", "4",
              "--rounds", "2", "--steps", "1", "--step-steps", "1", "--threads", "1", "--json",
              "--own", own)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["own"] == own
    # ResNet-50: the stem's, 3 in each of 16 bottlenecks, 4 downsampling ones
    assert sum(row["layers"] for row in r["rows"]) == 53
    assert all(row["shape"][0] == 8 for row in r["rows"])  # 2 views of 4 images
    # fastclr's own way exactly where the channels are not a multiple of 16 (rows) or fewer
    # than 16 (wide): at width 1/8 the stem's and the first stage's 8 either way
    assert {row["shape"][1] for row in r["rows"] if row["own_backward"]} == {8}
    assert all(row["native_ms"] > 0 and row["fastclr_ms"] > 0 for row in r["rows"])
    assert r["step_native_ms"] > 0 and r["step_fastclr_ms"] > 0  # two whole training steps


def test_conv_backward_times_each_convolution_both_ways():
    out = run("conv_backward.py", "--config", "fashion-mnist-cpu", "--batch-size", "4",
              "--rounds", "2", "--steps", "1", "--step-steps", "1", "--threads", "1",
              "--no-compile", "--json")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # ResNet-50: the stem, 3 in each of 16 bottlenecks, 4 shortcuts (3 of stride 2); of the
    # 1x1 ones, 2 a bottleneck and the shortcuts
    assert sum(row["layers"] for row in r["rows"]) == 53
    ones = [row for row in r["rows"] if row["kernel"] == 1]
    assert sum(row["layers"] for row in ones) == 36
    assert sum(row["layers"] for row in ones if row["stride"] == 2) == 3
    # fastclr's backward (28 px, stride-2 stem: maps of 14, 7, 4, 2): on maps of 16 pixels or
    # fewer with 64 channels in (layer 4's 3x3 ones among them); for 1x1 also 2x2 maps, and 7x7
    # ones where the layer narrows or strides; never at 14x14
    for row in r["rows"]:
        side, stride = row["shape"][2], row["stride"]
        out_pixels = ((side - 1) // stride + 1) ** 2
        pays = out_pixels <= 16 and row["shape"][1] >= 64
        if row["kernel"] == 1:
            narrows_or_strides = row["shape"][1] > row["out"] or stride > 1
            pays = pays or out_pixels <= 4 or (out_pixels <= 49 and narrows_or_strides)
        assert row["own_backward"] == pays, row
    assert {row["shape"][2] for row in r["rows"] if not row["own_backward"]} >= {14, 28}
    own_3x3 = [row for row in r["rows"] if row["kernel"] == 3 and row["own_backward"]]
    assert sum(row["layers"] for row in own_3x3) == 3
    assert all(row["native_ms"] > 0 and row["fastclr_ms"] > 0 for row in r["rows"])
    assert r["step_native_ms"] > 0 and r["step_fastclr_ms"] > 0  # two whole training steps


def test_conv_backward_times_the_fp32_products_on_small_maps():
    out = run("conv_backward.py", "--config", "fashion-mnist-cpu", "--batch-size", "4",
              "--precision", "fp32", "--rounds", "2", "--steps", "1", "--step-steps", "0",
              "--threads", "1", "--json")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["precision"] == "fp32" and r["compile"] is False
    assert r["cpu_takes_it"] == (not torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    # timed as a CPU without AVX-512 runs them: outputs of 4 pixels or fewer from 1x1 ones
    # and stride-1 3x3 ones (layer 4's two 2x2 ones), of 16 or fewer from strided 1x1 ones
    for row in r["rows"]:
        side, stride = row["shape"][2], row["stride"]
        out_pixels = ((side - 1) // stride + 1) ** 2
        pays = out_pixels <= 16 if row["kernel"] == 1 and stride > 1 else \
            (row["kernel"] == 1 or stride == 1) and out_pixels <= 4
        assert row["own_backward"] == pays, row
    assert sum(row["layers"] for row in r["rows"]
               if row["kernel"] == 3 and row["own_backward"]) == 2
    assert all(row["native_ms"] > 0 and row["fastclr_ms"] > 0 for row in r["rows"])
    assert "step_native_ms" not in r


def test_time_to_accuracy_snapshots_both_loops_at_each_mark(tmp_path):
    run("time_to_accuracy.py", "--minutes", "0.03", "0.06", "--images", "1000",
        "--probe-train", "600", "--probe-test", "300", "--slice-seconds", "1",
        "--workers", "1", "--threads", "1", "--data-dir", str(SAMPLE), "--out", str(tmp_path))
    r = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert (tmp_path / "time_to_accuracy.png").stat().st_size > 0
    assert r["marks_min"] == [0.03, 0.06]
    for side in ("fastclr", "peer"):
        points = r[side]
        assert [p["mark_min"] for p in points] == [0.03, 0.06]
        # a copy is taken when the loop's clock passes the mark, or earlier where the loop
        # finished its schedule first (a fast machine: 1,000 images are 15 steps)
        assert all(p["minutes"] >= p["mark_min"] or p["step"] == r["schedule_steps"]
                   for p in points)
        assert 0 < points[0]["step"] <= points[1]["step"]
        assert all(0.1 < p["linear_top1"] <= 1 for p in points)  # above chance on 10 classes


def test_peer_model_is_built_of_torch_layers_with_the_same_numbers():
    """The peer's model of PyTorch's own layers is a copy of fastclr's whose SmallMapConv2d
    and norms.BatchNorm2d layers are nn.Conv2d and nn.BatchNorm2d: the same weights, the same
    training forward and gradients in fp32 (where fastclr's layers compute what torch's do);
    fastclr's model is left as it was."""
    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peer import peer_model
    from fastclr import norms
    from fastclr.config import load_config
    from fastclr.models import SmallMapConv2d, build_model
    from fastclr.spec import ModelSpec
    torch.manual_seed(0)
    spec = ModelSpec.from_config(load_config("fashion-mnist-cpu"), 1, (0.5,), (0.25,))
    ours = build_model(spec).to(memory_format=torch.channels_last)
    theirs = peer_model(ours, "torch")
    fastclr_kinds = (SmallMapConv2d, norms.BatchNorm2d)
    # ResNet-50: 53 convolutions, each with its batch norm
    assert sum(type(m) in fastclr_kinds for m in ours.modules()) == 106
    assert not any(type(m) in fastclr_kinds for m in theirs.modules())
    assert sum(type(m) is torch.nn.Conv2d for m in theirs.modules()) == 53
    assert sum(isinstance(m, fastclr_kinds) for m in peer_model(ours, "fastclr").modules()) \
        == 106
    x = torch.rand(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    outs = []
    for model in (ours, theirs):
        model.zero_grad()
        h, z = model(x)
        z.square().sum().backward()
        outs.append((h.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
