"""Every data set format, read from small files each test writes in the official layout.

CIFAR pickles are written with pickle.dump of the official dict structure, STL-10 binaries
byte by byte in column-major order, Tiny ImageNet and class folders as JPEG/PNG trees, and a
plain folder mixes formats, modes and broken files. Known pixels prove the layouts are read the
right way round.
"""

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import tiny_config
from fastclr.data.batches import StreamingBatches
from fastclr.cli import main
from fastclr.data import get_spec, load_pretrain, load_split
from fastclr.errors import DataError
from fastclr.data.images import center_view, decode_square, index_folder, load_rgb

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---- CIFAR-10/100 ------------------------------------------------------------------------------


def _cifar_batch(rng, n, label_key, num_classes, label):
    return {b"batch_label": label, label_key: [int(v) for v in rng.integers(0, num_classes, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """DIR/cifar-10-batches-py (5 x 4 train, 20 test) and DIR/cifar-100-python (20 + 20)."""
    base = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    c10 = base / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        batch = _cifar_batch(rng, 4, b"labels", 10, f"training batch {i} of 5".encode())
        if i == 1:  # known pixels: red (0, 1), green (2, 0), blue (31, 30) of image 0
            batch[b"data"][0, [0 * 1024 + 0 * 32 + 1, 1 * 1024 + 2 * 32 + 0,
                               2 * 1024 + 31 * 32 + 30]] = [11, 22, 33]
            batch[b"labels"][:4] = [3, 1, 4, 1]
        raw = pickle.dumps(batch, protocol=2)
        if i == 2:  # as written by numpy 1.x, like the official files
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (c10 / f"data_batch_{i}").write_bytes(raw)
    with open(c10 / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(rng, 20, b"labels", 10, b"testing batch 1 of 1"), f)
    with open(c10 / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in "airplane automobile bird cat deer "
                                      "dog frog horse ship truck".split()],
                     b"num_cases_per_batch": 4, b"num_vis": 3072}, f)
    c100 = base / "cifar-100-python"
    c100.mkdir()
    for split in ("train", "test"):
        batch = _cifar_batch(rng, 20, b"fine_labels", 100, split.encode())
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        batch[b"fine_labels"][0] = 99
        with open(c100 / split, "wb") as f:
            pickle.dump(batch, f)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, f)
    return base


def test_cifar10_layout_labels_and_pixels(cifar_dir):
    train = load_split("cifar10", "train", cifar_dir)
    test = load_split("cifar10", "test", cifar_dir)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels[:4].tolist() == [3, 1, 4, 1]
    assert 0 <= int(train.labels.min()) and int(train.labels.max()) <= 9
    # channel planes of 1024, each row-major: (c, row, col)
    assert train.images[0, 0, 0, 1] == 11 and train.images[0, 1, 2, 0] == 22
    assert train.images[0, 2, 31, 30] == 33
    assert train.classes[1] == "automobile" and train.source.endswith("cifar-10-batches-py")
    assert len(train.fingerprint) == 64


def test_cifar100_fine_labels(cifar_dir):
    train = load_split("cifar100", "train", cifar_dir)
    assert train.images.shape == (20, 3, 32, 32)
    assert train.labels[0] == 99 and int(train.labels.max()) <= 99
    assert len(train.classes) == 100 and train.classes[99] == "class99"


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["shell", "eval"])
def test_malicious_cifar_pickle_is_refused(tmp_path, cifar_dir, payload):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in os.listdir(cifar_dir / "cifar-10-batches-py"):
        (root / name).write_bytes((cifar_dir / "cifar-10-batches-py" / name).read_bytes())
    marker = tmp_path / "pwned"
    evil = _Shell(marker) if payload == "shell" else _Eval()
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": evil, b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"refusing to unpickle .*data_batch_3.*refused global "
                                        r"(posix\.system|builtins\.eval)") as e:
        load_split("cifar10", "train", tmp_path)
    assert "\n" not in str(e.value) and not marker.exists()


# ---- STL-10 ---------------------------------------------------------------------------------


def _stl_offset(n, c, row, col):
    # column-major per channel: the first 96 bytes are the first column of red
    return n * 27648 + c * 9216 + col * 96 + row


@pytest.fixture(scope="module")
def stl_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("stl")
    root = base / "stl10_binary"
    root.mkdir()
    for split in ("train", "test", "unlabeled"):
        raw = np.zeros(20 * 27648, dtype=np.uint8)
        raw[_stl_offset(0, 0, 5, 70)] = 200  # red at row 5, column 70 of image 0
        raw[_stl_offset(1, 2, 95, 0)] = 77  # blue at the bottom-left of image 1
        raw.tofile(root / f"{split}_X.bin")
        if split != "unlabeled":
            np.array([1 + i % 10 for i in range(20)], dtype=np.uint8).tofile(root / f"{split}_y.bin")
    return base


def test_stl10_column_major_pixels_and_labels(stl_dir):
    train = load_split("stl10", "train", stl_dir)
    assert train.images.shape == (20, 3, 96, 96) and train.images.dtype == torch.uint8
    assert train.images[0, 0, 5, 70] == 200 and train.images[0, 0, 70, 5] == 0
    assert train.images[1, 2, 95, 0] == 77 and train.images.sum() == 200 + 77
    assert train.labels.tolist() == [i % 10 for i in range(20)]  # 1..10 on disk
    unlabeled = load_split("stl10", "unlabeled", stl_dir)
    assert unlabeled.labels is None and len(unlabeled) == 20


def test_stl10_pretrains_on_unlabeled_plus_train(stl_dir):
    pre = load_pretrain("stl10", stl_dir)
    assert pre.count == 40 and pre.shape == (3, 96, 96) and not pre.streamed
    assert len(pre.fingerprint) == 64 and pre.images.shape == (40, 3, 96, 96)


def test_truncated_stl10_file_is_a_data_error(tmp_path, stl_dir):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    raw = (stl_dir / "stl10_binary" / "test_X.bin").read_bytes()
    (root / "test_X.bin").write_bytes(raw[:-10])
    (root / "test_y.bin").write_bytes((stl_dir / "stl10_binary" / "test_y.bin").read_bytes())
    with pytest.raises(DataError, match="not a whole number of 96x96x3 images"):
        load_split("stl10", "test", tmp_path)


# ---- Tiny ImageNet ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    root = base / "tiny-imagenet-200"
    wnids = ["n01443537", "n09999999"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid, colour in zip(wnids, (RED, BLUE)):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (64, 64), colour).save(folder / f"{wnid}_{k}.JPEG", quality=95)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    Image.new("L", (64, 64), 90).save(root / "train" / wnids[1] / "images" / "gray.JPEG")
    lines = []
    for k, wnid in enumerate([wnids[1], wnids[0], wnids[0], wnids[1]]):
        Image.new("RGB", (64, 64), GREEN).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_train_and_val(tiny_dir):
    train = load_split("tiny-imagenet", "train", tiny_dir)
    assert train.images.shape == (7, 3, 64, 64) and train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert (train.images[0].float().mean((1, 2)) - torch.tensor(RED)).abs().max() < 3
    gray = train.images[3]  # files sort by name: gray.JPEG before n09999999_0.JPEG
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # grayscale -> RGB
    assert (train.images[4].float().mean((1, 2)) - torch.tensor(BLUE)).abs().max() < 3
    val = load_split("tiny-imagenet", "val", tiny_dir)
    assert val.images.shape == (4, 3, 64, 64) and val.labels.tolist() == [1, 0, 0, 1]
    assert get_spec("tiny-imagenet").test == "val" and len(val.fingerprint) == 64


# ---- class folders (imagenet, imagefolder:PATH) -------------------------------------------------


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for split, count in (("train", 6), ("val", 2)):
        for name, colour in (("cat", RED), ("dog", BLUE)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (40 + 10 * k, 30), colour).save(folder / f"{k}.png")
    return root


def test_imagefolder_and_imagenet_layouts(class_dir):
    train = load_split(f"imagefolder:{class_dir}", "train", size=16)
    assert train.images.shape == (12, 3, 16, 16) and train.labels.tolist() == [0] * 6 + [1] * 6
    assert train.classes == ["cat", "dog"] and tuple(train.images[0, :, 8, 8]) == RED
    val = load_split("imagenet", "val", class_dir, size=8)  # the same layout under --data-dir
    assert val.images.shape == (4, 3, 8, 8) and val.labels.tolist() == [0, 0, 1, 1]
    pre = load_pretrain(f"imagefolder:{class_dir}", image_size=24)
    assert pre.streamed and pre.count == 12 and pre.shape == (3, 24, 24)
    assert pre.mean == [0.485, 0.456, 0.406]  # ImageNet statistics for streamed sets


def test_val_class_missing_from_train_is_a_data_error(tmp_path, class_dir):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "a.png")
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    with pytest.raises(DataError, match="zebra"):
        load_split(f"imagefolder:{tmp_path}", "val", size=8)


# ---- a plain folder of mixed, partly broken files -----------------------------------------------


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    (root / "sub" / "deeper").mkdir(parents=True)
    photo = np.zeros((32, 48, 3), dtype=np.uint8)
    photo[:, :24] = RED
    photo[:, 24:] = BLUE
    Image.fromarray(photo).save(root / "a.jpg", quality=95)
    pal = Image.new("P", (20, 10))
    pal.putpalette(list(GREEN) + list(BLUE) + [0] * 762)
    pal.paste(1, (10, 0, 20, 10))  # right half palette entry 1 (blue)
    pal.save(root / "sub" / "b_palette.png")
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)  # left: transparent black, right: opaque red
    rgba[:, 10:] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(root / "sub" / "c_rgba.png")
    wide = np.zeros((10, 10), dtype=np.uint16)
    wide[0], wide[1] = 65535, 128 * 257
    Image.fromarray(wide).save(root / "sub" / "deeper" / "d_16bit.png")
    assert Image.open(root / "sub" / "deeper" / "d_16bit.png").mode.startswith("I")
    Image.fromarray(photo).save(root / "e.webp", lossless=True)
    Image.fromarray(photo).save(root / "f.BMP")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48 wide x 32 high; shown rotated 90 degrees clockwise
    Image.fromarray(photo).save(root / "g_exif.jpg", quality=95, exif=exif.tobytes())
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.jpg", quality=90)  # headers are a small part
    full = (root / "full.jpg").read_bytes()
    (root / "full.jpg").unlink()
    (root / "h_truncated.jpg").write_bytes(full[: 2 * len(full) // 3])  # header intact
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image at all\n")
    (root / "notes.txt").write_text("a sidecar file\n")
    (root / ".hidden.jpg").write_text("ignored: hidden")
    return root


def test_mixed_folder_index_names_what_it_skips(mixed_dir):
    index = index_folder(mixed_dir)
    kept = [index.paths[i] for i in range(len(index))]
    assert kept == ["a.jpg", "e.webp", "f.BMP", "g_exif.jpg", "h_truncated.jpg",
                    "sub/b_palette.png", "sub/c_rgba.png", "sub/deeper/d_16bit.png"]
    skipped = dict(index.skipped)
    assert set(skipped) == {"zero.jpg", "text.jpg"}
    assert skipped["zero.jpg"] == "empty file" and "UnidentifiedImageError" in skipped["text.jpg"]
    assert index.ignored == 1 and index.labels is None  # notes.txt; hidden files unseen
    assert index_folder(mixed_dir).fingerprint == index.fingerprint


def test_fingerprint_changes_with_the_files(tmp_path):
    for k in range(3):
        Image.new("RGB", (8, 8), RED).save(tmp_path / f"{k}.png")
    before = index_folder(tmp_path).fingerprint
    with open(tmp_path / "1.png", "ab") as f:
        f.write(b"\0")  # one byte more (PNG readers ignore bytes after IEND)
    grown = index_folder(tmp_path).fingerprint
    assert grown != before
    (tmp_path / "1.png").rename(tmp_path / "one.png")
    assert index_folder(tmp_path).fingerprint not in (before, grown)


def _pixel(img, x, y):
    return tuple(np.asarray(img)[y, x])


def test_every_mode_becomes_rgb_uint8(mixed_dir):
    pal = load_rgb(mixed_dir / "sub" / "b_palette.png")
    assert pal.mode == "RGB" and _pixel(pal, 2, 2) == GREEN and _pixel(pal, 15, 2) == BLUE
    rgba = load_rgb(mixed_dir / "sub" / "c_rgba.png")  # composited on white
    assert _pixel(rgba, 2, 2) == WHITE and _pixel(rgba, 15, 2) == RED
    wide = np.asarray(load_rgb(mixed_dir / "sub" / "deeper" / "d_16bit.png"))
    assert wide.dtype == np.uint8 and wide.shape == (10, 10, 3)
    assert tuple(wide[0, 0]) == (255,) * 3 and tuple(wide[1, 0]) == (128,) * 3  # scaled, not clipped
    assert tuple(wide[5, 0]) == (0,) * 3
    for name in ("e.webp", "f.BMP"):
        img = load_rgb(mixed_dir / name)
        assert img.size == (48, 32) and _pixel(img, 0, 0) == RED and _pixel(img, 47, 31) == BLUE
    turned = load_rgb(mixed_dir / "g_exif.jpg")
    assert turned.size == (32, 48)  # orientation applied: now 32 wide, 48 high
    top, bottom = np.asarray(turned)[2, 16].astype(int), np.asarray(turned)[45, 16].astype(int)
    assert abs(top - RED).max() < 40 and abs(bottom - BLUE).max() < 40  # left half went on top
    with pytest.raises(OSError):
        load_rgb(mixed_dir / "h_truncated.jpg")


def test_decode_square_centres_and_resizes(tmp_path):
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, 20:60] = GREEN  # the centred 40x40 square is all green
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_square(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8 and (out == GREEN).all()
    big = Image.new("RGB", (1200, 900), RED)  # JPEG draft path: decoded at reduced scale
    big.save(tmp_path / "big.jpg", quality=90)
    small = decode_square(tmp_path / "big.jpg", 64)
    assert small.shape == (64, 64, 3) and abs(small.astype(int) - RED).max() < 5


def test_folder_split_for_evaluation_skips_what_fails(mixed_dir):
    images = load_split(f"folder:{mixed_dir}", "train", size=16)
    assert images.images.shape == (7, 3, 16, 16) and images.labels is None
    assert {p for p, _ in images.skipped} >= {"zero.jpg", "text.jpg"}
    assert any(p.endswith("h_truncated.jpg") for p, _ in images.skipped)


# ---- streaming batches ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(1)
    for k in range(14):
        w, h = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{k:02d}.png")
    return root


def _batches(root, seed=0, rank=0, world=1, workers=0, batch=6):
    return StreamingBatches(index_folder(root), 8, batch, seed, rank, world, "cpu", workers)


def test_streaming_is_a_function_of_the_seed(stream_dir):
    a = list(_batches(stream_dir).epoch(0))
    b = list(_batches(stream_dir).epoch(0))
    assert len(a) == 2 and a[0].shape == (6, 3, 8, 8) and a[0].dtype == torch.uint8
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = list(_batches(stream_dir, seed=1).epoch(0))
    assert not torch.equal(torch.cat(a), torch.cat(other))
    assert not torch.equal(torch.cat(a), torch.cat(list(_batches(stream_dir).epoch(1))))
    resumed = list(_batches(stream_dir).epoch(0, start=1))
    assert len(resumed) == 1 and torch.equal(resumed[0], a[1])  # resume: same order, same crops


def test_streaming_ranks_are_disjoint_shards_of_the_global_batch(stream_dir):
    single = _batches(stream_dir)
    ranks = [_batches(stream_dir, rank=r, world=2) for r in range(2)]
    for step, (i0, i1) in enumerate(zip(ranks[0].local_indices(3), ranks[1].local_indices(3))):
        assert not set(i0) & set(i1) and i0 + i1 == single.local_indices(3)[step]
    for whole, x0, x1 in zip(single.epoch(3), ranks[0].epoch(3), ranks[1].epoch(3)):
        assert x0.shape == (3, 3, 8, 8) and torch.equal(torch.cat([x0, x1]), whole)


def test_streaming_workers_give_the_same_batches(stream_dir):
    inline = torch.cat(list(_batches(stream_dir, workers=0).epoch(2)))
    workers = torch.cat(list(_batches(stream_dir, workers=2).epoch(2)))
    assert torch.equal(inline, workers)


def test_a_file_that_fails_to_decode_is_replaced_counted_and_named(mixed_dir, caplog):
    batches = StreamingBatches(index_folder(mixed_dir), 8, 8, seed=0, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="fastclr"):
        got = list(batches.epoch(0))
    assert len(got) == 1 and got[0].shape == (8, 3, 8, 8)
    assert batches.failures == 1 and "h_truncated.jpg" in caplog.text


def test_a_folder_that_never_decodes_is_one_data_error(tmp_path, mixed_dir):
    half = (mixed_dir / "h_truncated.jpg").read_bytes()
    for k in range(4):
        (tmp_path / f"{k}.jpg").write_bytes(half)
    batches = StreamingBatches(index_folder(tmp_path), 8, 2, seed=0, num_workers=0)
    with pytest.raises(DataError, match="could not be decoded") as e:
        next(batches.epoch(0))
    assert "\n" not in str(e.value)


# ---- missing and empty data sets ---------------------------------------------------------------


def test_missing_data_sets_say_how_to_get_them(tmp_path):
    for name, hint in (("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python"),
                       ("stl10", "stl10_binary.tar.gz"), ("tiny-imagenet", "tiny-imagenet-200.zip"),
                       ("imagenet", "DIR/train/<wnid>")):
        with pytest.raises(DataError, match=name) as e:
            load_split(name, get_spec(name).test, tmp_path)
        assert hint in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="is not a folder"):
        load_pretrain(f"folder:{tmp_path / 'nowhere'}")


def test_empty_folder_is_one_data_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no readable image") as e:
        load_pretrain(f"folder:{tmp_path}")
    assert "broken.png" in str(e.value) and "1 other files ignored" in str(e.value)
    assert "\n" not in str(e.value)


# ---- evaluation at the training resolution ----------------------------------------------------


def test_center_view_resizes_the_shorter_side_and_crops():
    x = torch.arange(24.0).view(1, 1, 4, 6)
    assert torch.equal(center_view(x, 4), x[:, :, :, 1:5])  # shorter side already 4: crop only
    assert center_view(x, 4).shape == (1, 1, 4, 4)
    square = torch.rand(2, 3, 8, 8)
    assert center_view(square, 8) is square  # the Fashion-MNIST path: untouched
    assert center_view(torch.ones(2, 3, 96, 96), 64).shape == (2, 3, 64, 64)


def test_extract_features_at_the_stored_size_is_unchanged():
    from fastclr.eval.features import extract_features
    from fastclr.models import build_encoder
    from fastclr.spec import EncoderSpec

    torch.manual_seed(0)
    encoder = build_encoder(EncoderSpec("resnet18", 0.125, "small-s2", 1, (0.3,), (0.3,)))
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(extract_features(encoder, images, 4), extract_features(encoder, images, 4,
                                                                              size=28))
    assert extract_features(encoder, images, 4, size=16).shape == (5, encoder.feat_dim)


# ---- the command line and the run folder --------------------------------------------------------


def test_train_on_a_folder_skips_labeled_evaluation(tmp_path, stream_dir, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "--data", f"folder:{stream_dir}", "--arch", "resnet18", "--width",
               "0.125", "--stem", "small-s2", "--image-size", "16", "--batch-size", "4",
               "--epochs", "1", "--max-steps", "2", "--num-workers", "0", "--knn-every", "1",
               "--track-every", "1", "--track-images", "16",
               "--run-dir", str(run_dir), "--tensorboard", "false", "--final-eval", "true",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "has no labels: skipping the linear-probe and kNN evaluation" in out
    assert "kNN monitor off" in out and (run_dir / "encoder.safetensors").is_file()
    # tracked without labels: every measure but kNN, on all 14 images (no bank to keep)
    assert "tracking h and z every 3 steps on 14 held-out training images\n" in out
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "dynamics/alignment_z" in line]
    assert [p["step"] for p in points] == [0, 2] and "dynamics/knn_top1_h" not in points[0]
    data = json.loads((run_dir / "run.json").read_text())["run"]["data"]
    assert data["images"] == 14 and data["shape"] == [3, 16, 16] and data["held"] == "streamed"
    assert data["sha256"] == index_folder(stream_dir).fingerprint and data["skipped"] == 0
    rc = main(["eval", str(run_dir)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no labels" in err[0]
    assert captured.out == ""  # refused before announcing any work


def test_train_and_evaluate_cifar_at_a_smaller_resolution(tmp_path, cifar_dir):
    from fastclr.eval.runner import evaluate_run
    from fastclr.train import train

    cfg = tiny_config(tmp_path / "run", data="cifar10", data_dir=str(cifar_dir), image_size=16,
                      batch_size=8, max_steps=1, width=0.125)
    run = train(cfg, progress=False)
    info = json.loads((run / "run.json").read_text())["run"]["data"]
    assert info["images"] == 20 and info["shape"] == [3, 32, 32] and info["held"] == "in memory"
    report = evaluate_run(run, "cpu", ("linear", "knn"))
    assert report["eval_test_images"] == 20 and 0.0 <= report["knn_top1"] <= 1.0


def test_data_command_lists_what_is_found(cifar_dir, capsys):
    assert main(["data", "--data-dir", str(cifar_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("cifar10 "))
    assert "in memory" in row and "found" in row and "cifar-10-batches-py" in row
    assert any(line.startswith("stl10") and "not found" in line for line in lines)
    assert any(line.startswith("folder:PATH") for line in lines)
