"""The encoders shipped inside the package: their files, hashes, model cards, and use."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fastclr
from fastclr import zoo
from fastclr.checkpoint import export_encoder
from fastclr.cli import main
from fastclr.config import Config
from fastclr.data import load_split
from fastclr.errors import CheckpointError
from fastclr.eval.weights import load_weights
from fastclr.models import build_encoder
from fastclr.spec import EncoderSpec
from fixtures import SAMPLE

FMNIST = "/usr/share/datasets/fashion-mnist"


def images(count: int = 8) -> torch.Tensor:
    """Real Fashion-MNIST test images from the shipped sample: float (count, 1, 28, 28)."""
    return load_split("fashion-mnist", "test", SAMPLE).images[:count].float() / 255


def test_shipped_encoder_loads_and_its_hash_matches():
    assert "fashion-mnist" in zoo.names()
    record = zoo.entry("fashion-mnist")
    path = zoo.weights_file("fashion-mnist")  # raises on a hash mismatch
    assert zoo.sha256_of(path) == record["sha256"]
    assert path.stat().st_size == record["bytes"] < 4 * 2**20  # a few MB at most
    encoder = fastclr.pretrained("fashion-mnist")
    with torch.no_grad():
        h = encoder(images())
    assert h.shape == (8, encoder.feat_dim) and torch.isfinite(h).all()
    card = (zoo.FOLDER / record["card"]).read_text()
    assert record["sha256"] in card
    assert f"{100 * record['figures']['linear_top1']:.2f}%" in card


def test_a_damaged_shipped_encoder_is_one_clear_error(tmp_path, monkeypatch, capsys):
    shutil.copytree(zoo.FOLDER, tmp_path / "pretrained")
    monkeypatch.setattr(zoo, "FOLDER", tmp_path / "pretrained")
    monkeypatch.setattr(zoo, "INDEX", tmp_path / "pretrained" / "index.json")
    damaged = tmp_path / "pretrained" / zoo.entry("fashion-mnist")["file"]
    blob = bytearray(damaged.read_bytes())
    blob[-1] ^= 1
    damaged.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_weights("pretrained:fashion-mnist")
    assert main(["embed", "--weights", "pretrained:fashion-mnist", "--out",
                 str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reinstall fastclr" in err
    with pytest.raises(CheckpointError, match="no shipped encoder 'mnist'"):
        load_weights("pretrained:mnist")


def test_embed_with_the_shipped_encoder(tmp_path, capsys):
    out = tmp_path / "feats.npy"
    assert main(["embed", "--weights", "pretrained:fashion-mnist", "--data-dir", str(SAMPLE),
                 "--split", "test", "--out", str(out), "--threads", "1"]) == 0
    features = np.load(out)
    encoder = zoo.load_pretrained("fashion-mnist")
    with torch.no_grad():
        np.testing.assert_allclose(features[:8], encoder(images()).numpy(), atol=1e-5)


def test_zoo_make_ships_a_run_with_its_card(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "FOLDER", tmp_path / "pretrained")
    monkeypatch.setattr(zoo, "INDEX", tmp_path / "pretrained" / "index.json")
    run = tmp_path / "run"
    run.mkdir()
    spec = EncoderSpec("resnet18", 0.125, "small-s2", 1, (0.3,), (0.35,))
    cfg = Config(data="fashion-mnist", epochs=2, name="tiny").validate()
    export_encoder(build_encoder(spec), run / "encoder.safetensors",
                   {"config": cfg.to_dict(), "step": 40})
    (run / "run.json").write_text(json.dumps({"sessions": [
        {"command": ["fastclr", "train", "--config", "tiny"], "git_revision": "abc123",
         "fastclr": "0.1.0", "torch": "2.14.1", "device": "cpu"}]}))
    report = {"data": "fashion-mnist", "encoder_step": 40, "linear_top1": 0.5, "knn_top1": 0.25,
              "feature_dim": 64, "eval_test_images": 10000, "seed": 0}
    (run / "report.json").write_text(json.dumps(report))
    assert zoo.main(["make", str(run), "--name", "tiny"]) == 0
    record = zoo.entry("tiny")
    card = (tmp_path / "pretrained" / "tiny.md").read_text()
    for text in ("fastclr train --config tiny", "abc123", "| 50.00% |", "| 25.00% |",
                 record["sha256"], "python -m fastclr.zoo make RUN_DIR --name tiny"):
        assert text in card, text
    assert zoo.load_pretrained("tiny").spec == spec
    report["encoder_step"] = 39  # a report of another step is not this encoder's
    (run / "report.json").write_text(json.dumps(report))
    assert zoo.main(["make", str(run), "--name", "tiny"]) == 2
    assert "evaluates step 39" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not any(Path(FMNIST).glob("t10k-images-idx3-ubyte*")),
                    reason=f"Fashion-MNIST is not in {FMNIST}")
def test_shipped_encoder_reproduces_its_model_card(tmp_path):
    """The linear probe on the full test split, from the shipped file, gives the card's
    figure (the same features and the same seeded L-BFGS probe as the run's report)."""
    from fastclr.eval.runner import evaluate_weights

    weights = load_weights("pretrained:fashion-mnist")
    report = evaluate_weights(weights, ("linear",), "cpu", tmp_path, seed=0)
    expected = zoo.entry("fashion-mnist")["figures"]["linear_top1"]
    print(f"linear top-1: {report['linear_top1']:.4f}, card {expected:.4f}")
    assert abs(report["linear_top1"] - expected) <= 0.002
