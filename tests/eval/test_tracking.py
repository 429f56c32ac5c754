"""Tracking during pretraining: the measures against hand computations, the probe set fixed and
drawn from training images only, training unchanged by it, and the pictures drawn from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fixtures import SAMPLE, tiny_config
from fastclr.augment.pipeline import augment_from_config
from fastclr.checkpoint import latest_checkpoint, load_checkpoint
from fastclr.data import load_split
from fastclr.eval.tracking import (covariance_spectrum, histogram, measure, pair_cosines,
                                   read_points, read_probe)
from fastclr.train import train

# ---- the measures, by hand ---------------------------------------------------------------------


def test_pair_cosines_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # views 1 of images 0 and 1
    b = torch.tensor([[3.0, 3.0], [0.0, -1.0]])  # views 2
    positive, negative = pair_cosines(a, b)
    r = 1 / math.sqrt(2)
    assert positive.tolist() == pytest.approx([r, -1.0])
    # negatives: (a0, a1) 0, (a0, b1) 0, (a1, b0) r, (b0, b1) -r, each counted in both orders
    assert sorted(negative.tolist()) == pytest.approx(sorted([0, 0, r, -r] * 2), abs=1e-6)


def test_covariance_spectrum_by_hand():
    # points (+-1, 0) and (0, +-2): mean 0, covariance diag(2/3, 8/3) with N - 1 = 3
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert covariance_spectrum(x).tolist() == pytest.approx([8 / 3, 2 / 3])
    g = torch.Generator().manual_seed(0)
    y = torch.randn(40, 5, generator=g) @ torch.randn(5, 5, generator=g)
    reference = np.sort(np.linalg.eigvalsh(np.cov(y.double().numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(covariance_spectrum(y).numpy(), reference, rtol=1e-8)
    assert len(covariance_spectrum(y[:3])) == 2  # 3 points span at most 2 directions


def test_histogram_counts_every_cosine_once():
    counts = histogram(torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.0000001]))
    assert counts.sum() == 6 and counts[0] == 2 and counts[-1] == 2


def test_measure_by_hand():
    # 4 images; views of image i are e_i and e_i + small noise: aligned, orthogonal to others
    e = torch.eye(4)
    view1, view2 = e, e + 0.01 * torch.tensor([[0, 1, 0, 0.0]] * 4)
    clean = e * torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    bank = torch.cat([e, e])  # each image's two nearest bank rows: itself, twice
    bank_labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    scalars, arrays = measure(clean, view1, view2, labels, bank, bank_labels, k=2,
                              temperature=0.1, task_batch=4)
    positive, negative = pair_cosines(view1, view2)
    assert scalars["cos_pos"] == pytest.approx(positive.mean().item())
    assert scalars["cos_pos"] > 0.99 and abs(scalars["cos_neg"]) < 0.01
    assert scalars["alignment"] == pytest.approx(((torch.nn.functional.normalize(view2) - e)
                                                  .norm(dim=1) ** 2).mean().item(), rel=1e-5)
    assert scalars["effective_rank"] == pytest.approx(4.0)  # four equal singular values
    assert scalars["contrastive_top1"] == 1.0 and scalars["knn_top1"] == 1.0
    assert scalars["uniformity"] == pytest.approx(-4.0, abs=0.05)  # near-orthonormal rows
    assert arrays["spectrum"].shape == (3,)  # 4 centred points span 3 directions
    assert arrays["cos_pos_hist"].sum() == 4 and arrays["cos_neg_hist"].sum() == 8 * 6
    no_labels, _ = measure(clean, view1, view2)
    assert "knn_top1" not in no_labels


# ---- tracking in a run -------------------------------------------------------------------------


def points_of(run_dir):
    return {step: arrays for step, arrays in read_points(run_dir)}


@pytest.mark.slow
def test_tracking_changes_nothing_in_training(tmp_path):
    """Same weights, losses and global random state after training with and without it."""
    torch.manual_seed(5)
    tracked = train(tiny_config(tmp_path / "on", max_steps=4, track_every=0.04,
                                track_images=32), progress=False)
    after_tracked = torch.get_rng_state()
    torch.manual_seed(5)
    plain = train(tiny_config(tmp_path / "off", max_steps=4), progress=False)
    assert torch.equal(after_tracked, torch.get_rng_state())
    wa = load_checkpoint(latest_checkpoint(tracked))["model"]
    wb = load_checkpoint(latest_checkpoint(plain))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(points_of(tracked)) == [0, 2, 4]  # every 2 steps, from before the first
    assert not (plain / "dynamics").exists()
    lines = [json.loads(l) for l in (tracked / "metrics.jsonl").read_text().splitlines()]
    tracked_lines = [l for l in lines if "dynamics/alignment_h" in l]
    assert [l["step"] for l in tracked_lines] == [0, 2, 4]
    for key in ("alignment", "uniformity", "effective_rank", "knn_top1", "contrastive_top1",
                "cos_pos", "cos_neg"):
        assert all(f"dynamics/{key}_{s}" in tracked_lines[0] for s in "hz"), key


@pytest.mark.slow
def test_probe_set_is_fixed_training_images_and_survives_a_resume(tmp_path, monkeypatch):
    import fastclr.eval.tracking as tracking

    splits = []
    real = tracking.load_split

    def spy(name, split, *args, **kwargs):
        splits.append(split)
        return real(name, split, *args, **kwargs)

    monkeypatch.setattr(tracking, "load_split", spy)
    kw = dict(track_every=0.05, track_images=32, checkpoint_every=4)  # a point every 3 steps
    straight = train(tiny_config(tmp_path / "straight", max_steps=7, **kw), progress=False)
    resumed = tmp_path / "resumed"
    train(tiny_config(resumed, max_steps=5, **kw), progress=False)  # checkpoint at 4, stop at 5
    train(tiny_config(resumed, max_steps=7, **kw), progress=False)  # resumes from step 5
    assert set(splits) == {"train"}  # never the test split

    probe = read_probe(resumed)
    assert probe == read_probe(straight) and probe["split"] == "train"
    assert probe["images"] == 32 and probe["bank_images"] == 128 and not probe["changed_at_step"]
    # the images a Tracker of this config measures (probe.json's hash says the run's are the
    # same) are training images, none of them a test image
    cfg = tiny_config(tmp_path / "other", **kw)
    tracker = tracking.Tracker(cfg, torch.device("cpu"), tmp_path / "other", 3,
                               augment_from_config(cfg, 1))
    assert read_probe(tmp_path / "other")["sha256"] == probe["sha256"]
    as_rows = lambda images: {img.numpy().tobytes() for img in images}  # noqa: E731
    measured = as_rows(tracker.probe.images) | as_rows(tracker.bank.images)
    assert len(measured) == 32 + 128
    assert measured <= as_rows(load_split("fashion-mnist", "train", str(SAMPLE)).images)
    assert not measured & as_rows(load_split("fashion-mnist", "test", str(SAMPLE)).images)

    a, b = points_of(straight), points_of(resumed)
    assert sorted(a) == [0, 3, 6, 7] and sorted(b) == [0, 3, 5, 6, 7]  # 5 ended a session
    for step in (0, 3, 6, 7):  # the same images, measured the same, before and after resuming
        assert np.array_equal(a[step]["h"], b[step]["h"]), step
        assert np.array_equal(a[step]["spectrum_z"], b[step]["spectrum_z"]), step
    assert a[0]["h"].dtype == np.float16 and a[0]["h"].shape == (32, 64)
    np.testing.assert_allclose(np.linalg.norm(a[0]["h"].astype(np.float32), axis=1), 1,
                               atol=2e-3)


@pytest.mark.slow
def test_a_killed_run_drops_its_later_points(tmp_path):
    """Points after the checkpoint a run resumes from are redone, not kept twice."""
    from fastclr.eval.tracking import point_path

    run = tmp_path / "run"
    kw = dict(track_every=0.05, track_images=32, checkpoint_every=3)
    train(tiny_config(run, max_steps=3, **kw), progress=False)
    stale = point_path(run / "dynamics", 9)
    stale.write_bytes(b"left by a session killed after its last checkpoint")
    train(tiny_config(run, max_steps=6, **kw), progress=False)
    assert sorted(points_of(run)) == [0, 3, 6]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "dynamics/seconds" in l] == [0, 3, 6]


@pytest.mark.slow
def test_inspect_draws_every_picture(tmp_path, capsys):
    from fastclr.cli import main

    run = train(tiny_config(tmp_path / "run", max_steps=4, track_every=0.04, track_images=32),
                progress=False)
    assert main(["inspect", str(run), "--out", str(tmp_path / "pictures")]) == 0
    out = capsys.readouterr().out
    names = ["training_curves.png", "dynamics.png", "spectrum.png", "embedding_over_time.png",
             "similarities.png"]
    for name in names:
        path = tmp_path / "pictures" / name
        assert str(path) in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    plain = train(tiny_config(tmp_path / "plain", max_steps=1), progress=False)
    assert main(["inspect", str(plain)]) == 0
    assert "no tracking record" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path)]) == 2  # not a run folder: one line


def test_spread_and_procrustes():
    from fastclr.eval.dynamics import procrustes, spread

    assert spread(3, 6) == [0, 1, 2] and spread(11, 6) == [0, 2, 4, 6, 8, 10]
    assert spread(1, 6) == [0] and spread(20, 4)[-1] == 19
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(30, 2, generator=g)
    turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    moved = 3 * (ref @ turn) + torch.tensor([5.0, -2.0])  # turned, scaled, shifted
    torch.testing.assert_close(procrustes(moved, ref), ref - ref.mean(0), atol=1e-5, rtol=0)
