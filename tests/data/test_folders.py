"""Image folders given the wrong way (issue 20): refused in one line before a run's first step,
and symlinked folders read the same way by folder: and imagefolder:, without loops."""

import os

import pytest
from PIL import Image

from fastclr.cli import main
from fastclr.data import check_evaluation_data, load_pretrain
from fastclr.data.images import index_folder
from fastclr.errors import DataError


def _images(folder, count, colour=(200, 30, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.new("RGB", (12, 12), colour).save(folder / f"{k}.png")


def _class_folders(root, splits=("train", "val"), classes=("cat", "dog")):
    for split in splits:
        for c in classes:
            _images(root / split / c, 4)
    return root


def _train(root, run_dir, capsys):
    """`fastclr train` on imagefolder:root: (exit status, stderr lines, stdout)."""
    rc = main(["train", "--data", f"imagefolder:{root}", "--width", "0.125", "--stem",
               "small-s2", "--image-size", "8", "--batch-size", "4", "--epochs", "1",
               "--max-steps", "1", "--num-workers", "0", "--tensorboard", "false",
               "--run-dir", str(run_dir), "--no-progress", "--threads", "1"])
    captured = capsys.readouterr()
    return rc, [l for l in captured.err.splitlines() if l.strip()], captured.out


@pytest.mark.parametrize("case", ["no val", "class only in val", "flat folder",
                                  "flat train folder", "empty val classes"])
def test_an_image_folder_the_run_cannot_evaluate_is_refused_before_the_first_step(
        tmp_path, capsys, case):
    root = tmp_path / "data"
    if case == "no val":
        _class_folders(root, splits=("train",))
        expected = [f"{root} has no val/ folder", f"{root}/train/<class>/*".replace(
            str(root), "PATH"), "PATH/val/<class>/*", f"folder:{root}"]
    elif case == "class only in val":
        _class_folders(root)
        _images(root / "val" / "zebra", 1)
        expected = ["val has class folders that", "train lacks: zebra"]
    elif case == "flat folder":
        _images(root, 6)
        expected = [f"{root} has no train/ folder", "PATH/train/<class>/*",
                    "PATH/val/<class>/*", f"--data folder:{root}"]
    elif case == "flat train folder":
        _images(root / "train", 6)
        _class_folders(root, splits=("val",))
        expected = [f"{root / 'train'} has no class folders", "folder:PATH"]
    else:
        _class_folders(root, splits=("train",))
        for c in ("cat", "dog"):
            (root / "val" / c).mkdir(parents=True)
        expected = [f"{root / 'val'} has no image file in a class folder"]
    rc, err, out = _train(root, tmp_path / "run", capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("fastclr: error: "), err
    for text in expected:
        assert text in err[0], (text, err[0])
    assert "pretraining done" not in out and "fastclr: " not in out  # no banner: no step
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "encoder.safetensors").exists()


def test_without_a_final_evaluation_only_what_pretraining_reads_is_needed(tmp_path):
    root = _class_folders(tmp_path / "data", splits=("train",))
    assert load_pretrain(f"imagefolder:{root}", image_size=8).count == 8
    with pytest.raises(DataError, match="has no val/ folder"):
        check_evaluation_data(f"imagefolder:{root}")
    check_evaluation_data(f"folder:{root}")  # unlabeled: never evaluated, nothing to find


def test_folder_and_imagefolder_follow_symlinked_folders_once(tmp_path):
    outside = tmp_path / "elsewhere"
    _images(outside / "more", 3)
    root = tmp_path / "photos"
    _images(root / "a", 2)
    os.symlink(outside / "more", root / "a" / "linked")  # a linked subfolder: followed
    os.symlink(root, root / "a" / "loop")  # back up the tree: no loop
    os.symlink(root / "a", root / "again")  # a second way into one folder: read once
    index = index_folder(root)
    kept = sorted(index.paths[i] for i in range(len(index)))
    assert kept == ["a/0.png", "a/1.png", "a/linked/0.png", "a/linked/1.png", "a/linked/2.png"]
    classes = tmp_path / "classes"
    for split in ("train", "val"):
        _images(classes / split / "cat", 2)
        (classes / split / "dog").mkdir()
        os.symlink(outside / "more", classes / split / "dog" / "linked")
        os.symlink(classes / split, classes / split / "cat" / "loop")
    train = load_pretrain(f"imagefolder:{classes}", image_size=8).index
    assert len(train) == 5 and sorted(train.labels.tolist()) == [0, 0, 1, 1, 1]
    folder = load_pretrain(f"folder:{classes / 'train'}", image_size=8).index
    assert len(folder) == 5  # the same images as the labeled set, unlabeled
