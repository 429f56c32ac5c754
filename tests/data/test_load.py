import gzip
import logging

import pytest
import torch

from fastclr.data import load_split, read_idx
from fastclr.data.batches import InMemoryBatches
from fastclr.errors import DataError


def test_reads_the_shipped_sample(sample_dir):
    train = load_split("fashion-mnist", "train", sample_dir)
    test = load_split("fashion-mnist", "test", sample_dir)
    assert train.images.shape == (2000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (500, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [200] * 10
    assert train.classes[9] == "Ankle boot"


def test_truncated_idx_is_a_data_error(tmp_path, sample_dir):
    raw = gzip.decompress((sample_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_missing_split_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_split("fashion-mnist", "train", tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_split("imagenet-22k", "train")


def test_batches_split_the_global_batch_across_ranks():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    single = InMemoryBatches(images, 20, seed=3)
    ranks = [InMemoryBatches(images, 20, seed=3, rank=r, world_size=2) for r in range(2)]
    assert single.steps_per_epoch == 5
    for whole, a, b in zip(single.epoch(1), ranks[0].epoch(1), ranks[1].epoch(1)):
        assert torch.equal(torch.cat([a, b]), whole)  # together: exactly one process's batch
    seen = torch.cat(list(single.epoch(1))).flatten()
    assert len(set(seen.tolist())) == 100  # each image once per epoch
    assert not torch.equal(torch.cat(list(single.epoch(2))), torch.cat(list(single.epoch(1))))
    resumed = list(single.epoch(1, start=3))
    assert len(resumed) == 2 and torch.equal(resumed[0], list(single.epoch(1))[3])


def test_unreadable_files_of_every_split_are_named_once(tmp_path):
    """Training names its split's unreadable files; evaluation names the others' too, and a
    file met again (the final evaluation after training) is not named twice."""
    from PIL import Image

    from fastclr.config import Config
    from fastclr.eval.runner import _labeled_splits

    for split in ("train", "val"):
        for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (12, 12), colour).save(folder / f"{k}.png")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"")
    (tmp_path / "val" / "dog" / "torn.png").write_text("not an image")
    cfg = Config(data=f"imagefolder:{tmp_path}", image_size=8)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    log = logging.getLogger("fastclr")
    log.addHandler(handler)  # not caplog: a run's logging set-up stops propagation
    try:
        train, test = _labeled_splits(cfg)
        _labeled_splits(cfg)  # read again in the same process: named already
    finally:
        log.removeHandler(handler)
    named = [m for m in messages if "skipped" in m]
    assert len(named) == 2
    assert any("cat/broken.png" in m for m in named) and any("dog/torn.png" in m for m in named)
    assert len(train) == 6 and len(test) == 6
    assert [p for p, _ in test.skipped] == ["dog/torn.png"]
