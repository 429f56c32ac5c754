"""The evaluation suite on tiny models and a few hundred real Fashion-MNIST images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastclr.checkpoint import export_encoder, save_checkpoint
from fastclr.config import Config
from fastclr.data import ImageSet, load_split
from fastclr.data.batches import InMemoryBatches
from fastclr.eval.diagnostics import alignment, contrastive_top1, diagnose, effective_rank, uniformity
from fastclr.eval.embed import embed, embedding_parts, index_path, write_embedding
from fastclr.errors import ConfigError, DataError
from fastclr.eval.features import EncoderChangedError, extract_features, frozen, state_digest
from fastclr.eval.monitor import OnlineProbe
from fastclr.eval.probes import (choose_knn_k, k_that_fits, knn_predict, knn_table, linear_probe,
                                 linear_probe_augmented, nearest_neighbours)
from fastclr.eval.finetune import balanced_subset, finetune
from fastclr.models import build_encoder, build_model
from fastclr.spec import EncoderSpec, HeadSpec, ModelSpec
from fastclr.eval.protocols import crop_flip_augment
from fastclr.eval.report import format_report
from fastclr.eval.runner import FAST, PROTOCOLS, parse_protocols
from fastclr.eval.weights import load_weights

from fixtures import SAMPLE

FASHION = str(SAMPLE)  # the shipped sample: no test depends on a system-wide data set


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU two spinning OpenMP threads per process can
    make these tests ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fashion() -> ImageSet:
    """400 real test images, 40 of each class (from the sample's 50 per class)."""
    test = load_split("fashion-mnist", "test", FASHION)
    return test.subset(balanced_subset(test.labels, 0.8, seed=0))


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(EncoderSpec("resnet18", 0.125, "small-s2", 1, (0.29,), (0.35,)))


def tiny_model(mean=(0.0,), std=(1.0,)) -> nn.Module:
    return build_model(ModelSpec(EncoderSpec("resnet18", 0.125, "small-s2", 1, mean, std),
                                 HeadSpec(out_dim=16)))


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    """Gaussian clusters around well-separated random centres: (N, dim) features, (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


# ---- linear probe ----------------------------------------------------------------------------


def test_linear_probe_separable_features_reach_100_percent():
    x, y = blobs(60, 4, 16, spread=0.5, seed=0)
    tx, ty = blobs(30, 4, 16, spread=0.5, seed=0)  # same centres (same seed), new noise
    tx = tx + 0.1 * torch.randn_like(tx)
    result = linear_probe(x, y, tx, ty)
    assert result["top1"] == 1.0 and result["top5"] == 1.0


# ---- the frozen-encoder check ----------------------------------------------------------------


def test_frozen_catches_bn_left_in_train_mode(fashion):
    encoder = tiny_encoder()
    x = fashion.images[:32].float() / 255
    with pytest.raises(EncoderChangedError, match="running_mean"):
        with frozen(encoder):
            encoder.train()  # the classic slip: model.train() on a probe that wraps the encoder
            encoder(x)  # no gradient, no optimiser, yet BN statistics move


def test_frozen_catches_a_probe_that_trains_the_encoder(fashion):
    encoder = tiny_encoder()
    x, y = fashion.images[:32].float() / 255, fashion.labels[:32]
    with pytest.raises(EncoderChangedError, match="weight"):
        with frozen(encoder):
            clf = nn.Linear(encoder.feat_dim, 10)
            encoder.requires_grad_(True)  # a probe that "unfreezes" to be safe ...
            opt = torch.optim.SGD([*encoder.parameters(), *clf.parameters()], lr=0.1)
            nn.functional.cross_entropy(clf(encoder(x)), y).backward()
            opt.step()  # ... and so fine-tunes the backbone


def test_frozen_passes_and_restores_modes_and_flags(fashion):
    encoder = tiny_encoder().train()
    encoder.backbone.layer1.requires_grad_(False)  # a caller's own choice must survive
    flags = [p.requires_grad for p in encoder.parameters()]
    with frozen(encoder):
        assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
        extract_features(encoder, fashion.images[:16], 8)
    assert encoder.training and all(m.training for m in encoder.modules())
    assert [p.requires_grad for p in encoder.parameters()] == flags


def test_augmented_linear_probe_leaves_the_encoder_untouched(fashion):
    encoder = tiny_encoder()
    before = state_digest(encoder)
    train, test = fashion.subset(torch.arange(0, 300)), fashion.subset(torch.arange(300, 400))
    augment = crop_flip_augment(Config())
    result = linear_probe_augmented(encoder, train.images, train.labels, test.images,
                                    test.labels, augment, epochs=2, batch_size=64)
    assert state_digest(encoder) == before
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["steps"] == 2 * (300 // 64)


# ---- semi-supervised subsets and fine-tuning ---------------------------------------------------


def test_balanced_subset_sizes_balance_and_determinism():
    counts = [1000, 250, 37, 5]  # uneven classes, in shuffled order
    labels = torch.arange(4).repeat_interleave(torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    for fraction in (0.01, 0.1, 0.29):
        idx = balanced_subset(labels, fraction, seed=3)
        assert len(idx.unique()) == len(idx)
        per_class = torch.bincount(labels[idx], minlength=4).tolist()
        assert per_class == [max(1, math.floor(fraction * n + 1e-9)) for n in counts]
        assert torch.equal(idx, balanced_subset(labels, fraction, seed=3))  # same seed, same set
    assert not torch.equal(balanced_subset(labels, 0.1, seed=3), balanced_subset(labels, 0.1, 4))
    small, large = balanced_subset(labels, 0.01, 3), balanced_subset(labels, 0.1, 3)
    assert set(small.tolist()) <= set(large.tolist())  # a growing label budget is nested


def test_balanced_subset_on_real_labels():
    labels = load_split("fashion-mnist", "train", FASHION).labels  # 200 per class
    assert torch.bincount(labels[balanced_subset(labels, 0.05)]).tolist() == [10] * 10
    assert torch.bincount(labels[balanced_subset(labels, 0.5)]).tolist() == [100] * 10


def test_finetune_trains_a_copy_and_leaves_the_encoder_alone(fashion):
    encoder = tiny_encoder()
    before = state_digest(encoder)
    train, test = fashion.subset(torch.arange(0, 300)), fashion.subset(torch.arange(300, 400))
    result = finetune(encoder, train.images, train.labels, test.images, test.labels,
                      crop_flip_augment(Config()), epochs=2, batch_size=100)
    assert state_digest(encoder) == before
    assert result["steps"] == 6 and result["images"] == 300
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0


# ---- kNN ---------------------------------------------------------------------------------------


def knn_reference(train_x, train_y, test_x, k, temperature, classes):
    """The weighted cosine kNN vote, one query at a time, in plain numpy."""
    bank = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = []
    for q in test_x:
        sims = bank @ (q / np.linalg.norm(q))
        votes = np.zeros(classes)
        for j in np.argsort(-sims)[:k]:
            votes[train_y[j]] += math.exp(sims[j] / temperature)
        scores.append(votes)
    return np.array(scores)


def test_knn_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 12, generator=g), torch.randn(50, 12, generator=g)
    train_y, test_y = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (50,),
                                                                              generator=g)
    for k, temp in ((1, 0.1), (7, 0.5), (300, 0.07)):
        ref = knn_reference(train_x.double().numpy(), train_y.numpy(), test_x.double().numpy(),
                            k, temp, 5)
        ours = knn_predict(train_x, train_y, test_x, k, temp, num_classes=5, chunk=16)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4)
    table = knn_table(train_x, train_y, test_x, test_y, ks=(1, 5, 20, 200))
    for k, acc in table.items():
        ref = knn_reference(train_x.numpy(), train_y.numpy(), test_x.numpy(), k, 0.1, 5)
        assert acc == pytest.approx(float((ref.argmax(1) == test_y.numpy()).mean()))


def test_headline_k_fits_the_smallest_class():
    x, y = blobs(12, 5, 8, spread=3.0, seed=0)  # 12 training images per class
    k, why = choose_knn_k(x, y, 200, 0.1)
    assert k in (1, 5) and "exceeds the 12 training images of the smallest class" in why
    assert choose_knn_k(x, y, 10, 0.1) == (10, None)  # fits: the configured k stays
    assert k_that_fits(200, y) == 5 and k_that_fits(12, y) == 12
    assert k_that_fits(200, torch.tensor([0, 1, 1])) == 1


def test_cached_results_are_keyed_by_what_they_depend_on(tmp_path):
    from fastclr.eval.cache import cached

    calls = []

    def compute():
        calls.append(1)
        return {"top1": 0.5 + len(calls)}

    key = {"data": "fashion-mnist", "train": ["abc", 60000], "seed": 1}
    first, hit = cached("baselines", key, compute, tmp_path)
    assert first == {"top1": 1.5} and not hit
    assert cached("baselines", key, compute, tmp_path) == (first, True) and len(calls) == 1
    other, hit = cached("baselines", {**key, "seed": 2}, compute, tmp_path)
    assert other == {"top1": 2.5} and not hit  # another seed: another entry
    entry = next(p for p in tmp_path.iterdir() if json.loads(p.read_text())["key"]["seed"] == 1)
    entry.write_text("{torn")  # a damaged entry is recomputed, not trusted
    assert cached("baselines", key, compute, tmp_path) == ({"top1": 3.5}, False)


# ---- diagnostics -------------------------------------------------------------------------------


def test_alignment_and_uniformity_by_hand():
    x = torch.randn(20, 8)
    assert alignment(x, x).item() == pytest.approx(0.0, abs=1e-6)  # identical views
    assert alignment(x, -3 * x).item() == pytest.approx(4.0, abs=1e-5)  # antipodal: |2u|^2
    assert uniformity(torch.ones(10, 4)).item() == pytest.approx(0.0, abs=1e-6)  # one point
    e = torch.eye(3)  # three orthonormal rows: every pair at squared distance 2
    assert uniformity(e).item() == pytest.approx(-4.0, abs=1e-5)  # log exp(-2 * 2)
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # squared distance 4
    assert uniformity(two, t=1.0).item() == pytest.approx(-4.0, abs=1e-5)


def test_effective_rank_of_known_singular_values():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))

    def with_singular_values(s):
        return u[:, :6] @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T

    assert effective_rank(with_singular_values([3, 3, 3, 0, 0, 0])).item() == pytest.approx(3)
    assert effective_rank(with_singular_values([5, 0, 0, 0, 0, 0])).item() == pytest.approx(1)
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, so the effective rank is 2^1.5
    assert effective_rank(with_singular_values([2, 1, 1, 0, 0, 0])).item() == \
        pytest.approx(2 ** 1.5, rel=1e-5)


def test_contrastive_top1_by_hand():
    z = torch.randn(16, 32)
    assert contrastive_top1(z, z.clone()).item() == 1.0  # each view's twin is its copy
    # views 0 and 1 swapped in z2: images 0 and 1 now match the wrong twin, in both directions
    z2 = z.clone()[[1, 0, *range(2, 16)]]
    assert contrastive_top1(z, z2).item() == pytest.approx(28 / 32)
    assert contrastive_top1(z, z.clone(), batch_size=4).item() == 1.0


def test_diagnose_reports_h_and_z(fashion):
    model = tiny_model()
    out = diagnose(model.encoder, fashion.images[:64], crop_flip_augment(Config()),
                   head=model.head, task_batch=32)
    for space in ("h", "z"):
        assert 0 <= out[f"alignment_{space}"] <= 4
        assert out[f"uniformity_{space}"] <= 0
        assert 1 <= out[f"effective_rank_{space}"] <= out[f"dim_{space}"]
        assert 0 <= out[f"contrastive_top1_{space}"] <= 1


# ---- the online probe --------------------------------------------------------------------------


def test_label_batches_line_up_with_image_batches():
    # an image whose pixels all equal its label: a batch of images shows its own labels
    labels = torch.arange(10).repeat(30)
    images = labels.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    image_batches = InMemoryBatches(images, 32, seed=5)
    label_batches = InMemoryBatches(labels, 32, seed=5)
    for epoch in (0, 3):
        for imgs, lbls in zip(image_batches.epoch(epoch, start=2),
                              label_batches.epoch(epoch, start=2)):
            assert torch.equal(imgs[:, 0, 0, 0].long(), lbls)


def test_online_probe_learns_without_touching_its_input():
    x, y = blobs(50, 3, 8, spread=0.5, seed=1)
    h = x.clone().requires_grad_(True)
    probe = OnlineProbe(8, 3, lr=0.05)
    for _ in range(50):
        probe.step(h, y, torch.tensor(False))
    assert h.grad is None  # stop-gradient: nothing flows back into the encoder's output
    probe.read()
    probe.step(h, y, torch.tensor(False))
    assert probe.read() == 1.0
    nan_h = torch.full_like(x, float("nan"))
    probe.step(nan_h, y, torch.tensor(True))  # a skipped pretraining step
    assert all(torch.isfinite(p).all() for p in probe.parameters())
    assert math.isnan(probe.read())  # nothing counted


def test_online_probe_leaves_the_pretraining_step_unchanged(fashion):
    from fastclr.distributed import Context
    from fastclr.train.step import build_run

    cfg = Config(width=0.125, stem="small-s2", batch_size=32, online_probe=True)
    ctx = Context(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    labels = next(InMemoryBatches(fashion.labels, 32, cfg.seed).epoch(0))
    digests = []
    from fastclr.data import Pretrain

    for with_probe in (False, True):
        run = build_run(cfg, ctx, Pretrain.from_images(fashion.images))
        images = next(run.batches.epoch(0))
        if with_probe:
            run.probe = OnlineProbe(run.model.encoder.feat_dim, 10)
        for step in range(2):
            run.train_step(images, step, labels)
        digests.append(state_digest(run.model))
    assert digests[0] == digests[1]  # same weights and BN statistics, bit for bit
    assert run.probe.seen.item() == 64


# ---- embed -------------------------------------------------------------------------------------


def test_embed_writes_features_and_a_matching_index(fashion, tmp_path):
    encoder = tiny_encoder()
    parts = [("test", fashion.subset(torch.arange(50))),
             ("train", ImageSet(fashion.images[50:70], None, None))]
    features, rows = embed(encoder, parts, batch_size=32)
    npy, index = write_embedding(tmp_path / "out" / "feats", features, rows)
    assert npy.name == "feats.npy" and index == index_path(npy)
    saved = np.load(npy)
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    assert saved.shape == (70, encoder.feat_dim) and saved.dtype == np.float32
    assert len(lines) == len(saved)
    assert [r["position"] for r in lines] == list(range(70))
    assert lines[0]["split"] == "test" and lines[0]["label"] == int(fashion.labels[0])
    assert lines[0]["class"] == fashion.classes[int(fashion.labels[0])]
    assert lines[60] == {"position": 60, "split": "train", "index": 10, "label": None,
                         "class": None, "source": None}
    np.testing.assert_allclose(saved[:50], extract_features(encoder, fashion.images[:50]),
                               atol=1e-5)


def write_idx(path, data: torch.Tensor) -> None:
    """uint8 tensor -> an IDX file (LeCun's MNIST format: magic 0 0 8 ndim, big-endian sizes)."""
    header = bytes([0, 0, 8, data.ndim]) + b"".join(n.to_bytes(4, "big") for n in data.shape)
    path.write_bytes(header + data.contiguous().numpy().tobytes())


@pytest.fixture
def small_fashion_dir(fashion, tmp_path):
    """A Fashion-MNIST of 40 train and 20 test images, in its official IDX format."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    order = torch.randperm(len(fashion), generator=torch.Generator().manual_seed(0))
    for prefix, rows in (("train", order[:40]), ("t10k", order[40:60])):
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte", fashion.images[rows, 0])
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte", fashion.labels[rows].to(torch.uint8))
    return data_dir


def test_embed_cli_from_an_exported_encoder(small_fashion_dir, tmp_path, capsys):
    from fastclr.cli import main

    data_dir = small_fashion_dir
    encoder = tiny_encoder()
    meta = {"feat_dim": encoder.feat_dim, "data": "fashion-mnist", "step": 7}
    export_encoder(encoder, tmp_path / "encoder.safetensors", meta)
    out = tmp_path / "h.npy"
    assert main(["embed", "--weights", str(tmp_path / "encoder.safetensors"), "--data-dir",
                 str(data_dir), "--out", str(out), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in index_path(out).read_text().splitlines()]
    assert np.load(out).shape == (60, encoder.feat_dim) and len(rows) == 60
    assert [r["split"] for r in rows] == ["train"] * 40 + ["test"] * 20
    assert rows[40]["index"] == 0 and rows[40]["label"] is not None
    assert main(["embed", "--weights", str(tmp_path / "encoder.safetensors"), "--data",
                 "folder:/nowhere", "--out", str(out), "--device", "cpu"]) == 2
    assert "folder" in capsys.readouterr().err


def test_embedding_parts_refuses_a_split_of_a_folder(tmp_path):
    with pytest.raises(DataError, match="no split 'test'"):
        embedding_parts(f"folder:{tmp_path}", "test")


# ---- loading weights, protocols, report --------------------------------------------------------


def test_load_weights_from_a_checkpoint_gives_encoder_and_head(tmp_path):
    cfg = Config(arch="resnet18", width=0.125, stem="small-s2", proj_dim=16)
    torch.manual_seed(0)
    model = tiny_model((0.3,), (0.4,))
    save_checkpoint(tmp_path / "ckpt.pt", {"step": 11, "model": model.state_dict(),
                                           "spec": model.spec.to_dict(),
                                           "config": cfg.to_dict()})
    weights = load_weights(tmp_path / "ckpt.pt", data_dir=FASHION)
    assert weights.step == 11 and weights.head is not None
    assert weights.cfg.data_dir == FASHION
    assert state_digest(weights.encoder) == state_digest(model.encoder)
    assert state_digest(weights.head) == state_digest(model.head)
    assert not weights.encoder.training


def test_eval_cli_runs_the_protocols_on_a_checkpoint(small_fashion_dir, tmp_path, capsys):
    from fastclr.cli import main

    cfg = Config(width=0.125, stem="small-s2", proj_dim=16, batch_size=16)
    torch.manual_seed(0)
    model = tiny_model((0.3,), (0.4,))
    save_checkpoint(tmp_path / "ckpt.pt", {"step": 3, "model": model.state_dict(),
                                           "spec": model.spec.to_dict(),
                                           "config": cfg.to_dict()})
    args = ["eval", str(tmp_path / "ckpt.pt"), "--data-dir", str(small_fashion_dir),
            "--device", "cpu", "--linear-aug-epochs", "1", "--finetune-epochs", "1,1"]
    assert main(args + ["--protocol", "all", "--no-baselines"]) == 0  # pixels: slow L-BFGS
    out = tmp_path / "eval-ckpt"
    report = json.loads((out / "report.json").read_text())
    for key in ("linear_top1", "linear_z_top1", "knn_top1", "knn_z_top1", "linear_aug_top1",
                "linear_b6_cpu_top1", "finetune_1pct_top1", "finetune_10pct_top1",
                "contrastive_top1_z"):
        assert 0 <= report[key] <= 1, key
    # B.6's recipe: batch 4096 (here the whole 40-image set), lr 0.1 x B/256, 10 epochs
    assert report["linear_b6_cpu_batch_size"] == 40 and report["linear_b6_cpu_epochs"] == 10
    assert report["linear_b6_cpu_lr"] == pytest.approx(0.1 * 40 / 256)
    assert "linear_b6_top1" not in report       # the 90-epoch protocol runs only when named
    assert 1 <= report["effective_rank_h"] <= report["feature_dim"]
    assert report["finetune_1pct_images"] == 10  # 40 images: at least 1 of each class
    assert set(report["knn_table"]) == {"1", "5", "20", "200"}
    assert report["plots"] == ["embedding_map.png", "nearest_neighbours.png"]  # no metrics
    assert all(_is_png(out / name) for name in report["plots"])
    assert "h - z (L-BFGS probe)" in capsys.readouterr().out
    # a later run of one protocol keeps the others' entries for the same weights
    assert main(args + ["--protocol", "knn"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["linear_top1"] == report["linear_top1"] and "finetune_10pct_top1" in again
    assert main(["eval", str(tmp_path / "ckpt.pt"), "--protocol", "svm"]) == 2


def test_parse_protocols():
    assert parse_protocols(None) == FAST
    assert parse_protocols("all") == tuple(p for p in PROTOCOLS if p != "linear-b6")
    assert parse_protocols("linear-b6,linear") == ("linear", "linear-b6")
    assert parse_protocols("finetune, knn") == ("knn", "finetune")
    with pytest.raises(ConfigError, match="unknown protocol"):
        parse_protocols("linear,svm")


def test_every_protocol_is_described_in_the_eval_help():
    from fastclr.cli import eval_help
    for name in PROTOCOLS:
        assert f"\n  {name} " in eval_help()


def test_format_report_shows_what_is_there():
    report = {"linear_top1": 0.8, "linear_top5": 0.99, "knn_top1": 0.75,
              "linear_z_top1": 0.6, "linear_z_top5": 0.9, "knn_z_top1": 0.55,
              "knn_table": {"1": 0.7, "5": 0.72, "20": 0.74, "200": 0.75},
              "knn_temperature": 0.1, "finetune_1pct_top1": 0.6, "finetune_1pct_top5": 0.9,
              "finetune_1pct_images": 600, "finetune_1pct_epochs": 60,
              "seconds": {"linear": 3.0}}
    text = format_report(report)
    assert "80.00%" in text and "60.00%" in text and "+20.00 points" in text
    assert "h: L-BFGS probe (linear, B.8)" in text and "linear-b6" not in text
    assert "k=200: 75.00%" in text and "1% of the labels (600 images" in text
    assert "random-init" not in text and "Table 3" not in text
    text = format_report({"linear_b6_cpu_top1": 0.7, "linear_b6_cpu_top5": 0.95,
                          "linear_b6_cpu_epochs": 10, "linear_b6_top1": 0.72,
                          "linear_b6_top5": 0.96, "linear_b6_epochs": 90})
    assert "h: B.6, 90 epochs (linear-b6)" in text and "72.00%" in text
    assert "h: B.6 recipe, 10 epochs (linear-b6-cpu)" in text and "70.00%" in text


def test_format_report_names_the_headline_k_and_shows_table_3_beside_the_paper():
    from fastclr.eval.transforms import TASKS

    rows = {name: {"label": t.label, "chance": t.chance, "paper_h": t.paper_h,
                   "paper_z": t.paper_z, "h": 0.9, "z": 0.4} for name, t in TASKS.items()}
    rows["colour"].update(h=None, z=None, why="one-channel images: no colour to remove")
    report = {"linear_top1": 0.8, "knn_top1": 0.9, "knn_k": 5, "knn_temperature": 0.1,
              "knn_k_why": "k=200 exceeds the 144 training images of the smallest class",
              "knn_table": {"1": 0.97, "5": 0.9, "20": 0.85, "200": 0.82},
              "transforms": rows, "transforms_images": [5000, 2000],
              "transforms_pretrained_with": [], "baselines_cached": True,
              "seconds": {"linear": 3.0, "baselines": 0.01}}
    text = format_report(report)
    assert "kNN k=5" in text and "exceeds the 144 training images" in text
    assert "baselines 0 (cached)" in text
    lines = text.splitlines()
    colour = next(line for line in lines if "colour vs grayscale" in line)
    assert "n/a" in colour and "99.3%" in colour and "97.4%" in colour and "80.0%" in colour
    assert "  * one-channel images: no colour to remove" in lines
    assert max(len(line) for line in lines) <= 100
    rotation = next(line for line in lines if "rotation" in line and "%" in line)
    assert rotation.split()[-5:] == ["90.0%", "40.0%", "67.6%", "25.6%", "25.0%"]
    assert any("the paper adds rotation, noise and Sobel" in line for line in lines)


# ---- pictures ----------------------------------------------------------------------------------


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and \
        path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(fashion, tmp_path):
    from fastclr.eval import plots

    records = [{"step": s, "epoch": s / 10, "loss": 5 - s / 10, "lr": 0.1 * s, "views_per_s": 1}
               for s in range(1, 21)] + [{"step": 10, "epoch": 1, "knn_top1": 0.5},
                                         {"step": 20, "epoch": 2, "knn_top1": 0.6}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"st')
    assert plots.read_metrics(tmp_path / "m.jsonl") == records  # the torn line is skipped
    assert _is_png(plots.plot_training_curves(records, tmp_path / "curves.png"))
    assert _is_png(plots.plot_training_curves([], tmp_path / "empty_curves.png"))

    encoder = tiny_encoder()
    h = extract_features(encoder, fashion.images)
    xy = plots.tsne_map(h[:120])
    assert xy.shape == (120, 2)
    assert _is_png(plots.plot_embedding_map(xy, fashion.labels[:120], fashion.classes,
                                            tmp_path / "map.png"))
    sim, idx = nearest_neighbours(h[100:], h[:3], 4)
    assert _is_png(plots.plot_neighbour_grid(fashion.images[:3], fashion.images[100:][idx],
                                             fashion.labels[:3], fashion.labels[100:][idx],
                                             fashion.classes, tmp_path / "grid.png", sim))
    assert not list(tmp_path.glob(".*.png"))  # no temp files left behind
