"""Run folders and exports used from elsewhere (issue 20): data paths saved absolute, and a
folder evaluated or embedded at the size the encoder was trained at."""

import json

import numpy as np
import torch
import yaml
from PIL import Image

from fixtures import SAMPLE
from fastclr.checkpoint import (encoder_metadata, export_encoder, latest_checkpoint,
                                load_checkpoint)
from fastclr.cli import main
from fastclr.config import Config
from fastclr.data import load_split
from fastclr.eval.features import extract_features
from fastclr.eval.weights import load_weights
from fastclr.models import build_encoder
from fastclr.spec import EncoderSpec

TINY = ["--width", "0.125", "--stem", "small-s2", "--epochs", "1", "--max-steps", "1",
        "--num-workers", "0", "--tensorboard", "false", "--no-progress", "--threads", "1",
        "--final-eval", "false"]


def _class_folders(root, size=(20, 14)):
    for split, count in (("train", 4), ("val", 2)):
        for c, colour in (("cat", (220, 40, 40)), ("dog", (40, 40, 220))):
            folder = root / split / c
            folder.mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", size, tuple(v - 20 * k for v in colour)).save(folder / f"{k}.png")
    return root


def _saved_configs(run):
    meta = encoder_metadata(run / "encoder.safetensors")
    return [yaml.safe_load((run / "config.yaml").read_text()),
            load_checkpoint(latest_checkpoint(run))["config"], meta["config"]]


def test_a_run_folder_made_with_relative_paths_is_evaluated_from_elsewhere(
        tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    _class_folders(work / "pics")
    (work / "sample").symlink_to(SAMPLE)
    monkeypatch.chdir(work)
    assert main(["train", "--data", "imagefolder:pics", "--image-size", "8", "--batch-size",
                 "4", "--run-dir", "runs/folder", *TINY]) == 0
    assert main(["train", "--data-dir", "sample", "--batch-size", "8", "--run-dir",
                 "runs/fashion", *TINY]) == 0
    for saved in _saved_configs(work / "runs" / "folder"):
        assert saved["data"] == f"imagefolder:{work / 'pics'}"
    for saved in _saved_configs(work / "runs" / "fashion"):
        assert saved["data_dir"] == str(work / "sample")
    # resuming from the same place is the same run (its identity did not change)
    assert main(["train", "--data", "imagefolder:pics", "--image-size", "8", "--batch-size",
                 "4", "--run-dir", "runs/folder", *TINY]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    for target in (work / "runs" / "folder", latest_checkpoint(work / "runs" / "folder"),
                   work / "runs" / "folder" / "encoder.safetensors"):
        assert main(["eval", str(target), "--protocol", "knn", "--out", "report",
                     "--threads", "1"]) == 0, capsys.readouterr().err
    assert main(["embed", "--weights", str(work / "runs" / "fashion"), "--split", "test",
                 "--out", "h.npy", "--threads", "1"]) == 0, capsys.readouterr().err
    assert np.load(elsewhere / "h.npy").shape[0] == 500


def _imagenet_export(path):
    """An encoder export as a run on ImageNet's layout without --image-size writes it: the
    config leaves image_size to the set (224 px), the metadata records the 224 it trained at.
    (Made by hand: a CPU training step at 224 px with these tiny layers hits torch's
    channels_last crash, see fastclr.models.channels_last_ok.)"""
    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec("resnet18", 0.125, "small-s2", 3, (0.5,) * 3,
                                        (0.25,) * 3))
    cfg = Config(data="imagenet", data_dir=str(path.parent / "imagenet")).validate()
    export_encoder(encoder, path, {"data": cfg.data, "step": 1, "feat_dim": encoder.feat_dim,
                                   "image_size": 224, "config": cfg.to_dict()})
    return encoder


def test_eval_and_embed_of_a_folder_use_the_exported_training_size(tmp_path, capsys):
    """Embedded or evaluated on imagefolder:PATH, whose own default size is 96, an encoder
    trained at 224 px sees the folder at 224."""
    other = _class_folders(tmp_path / "other", size=(30, 22))
    export = tmp_path / "encoder.safetensors"
    encoder = _imagenet_export(export)
    assert load_weights(export, data=f"imagefolder:{other}").cfg.image_size == 224
    assert load_weights(export, data=f"folder:{other}").cfg.image_size == 224
    assert load_weights(export, data="fashion-mnist").cfg.image_size is None  # stored size
    out = tmp_path / "h.npy"
    capsys.readouterr()
    assert main(["embed", "--weights", str(export), "--data", f"imagefolder:{other}",
                 "--split", "val", "--out", str(out), "--threads", "1"]) == 0, \
        capsys.readouterr().err
    val = load_split(f"imagefolder:{other}", "val", size=224)
    expected = extract_features(encoder.eval(), val.images, 64, size=224)
    assert torch.allclose(torch.from_numpy(np.load(out)), expected, atol=1e-5)
    assert main(["eval", str(export), "--data", f"imagefolder:{other}", "--protocol", "knn",
                 "--threads", "1"]) == 0
    report = json.loads((tmp_path / "eval-encoder" / "report.json").read_text())
    assert report["eval_train_images"] == 8 and report["eval_test_images"] == 4
