"""Streamed sets take each view's random resized crop from the full-resolution file in the
loader (issue 19): the boxes, EXIF orientation, reduced-scale JPEG decoding, the batches'
layout and reproducibility, and the older square mode for run folders made with it."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastclr.augment import SimCLRAugment
from fastclr.augment.crops import CropBoxes
from fastclr.data.batches import StreamingBatches
from fastclr.data.images import decode_crops, index_folder

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 40), (30, 40, 210), (250, 250, 250)


def quadrants(w: int, h: int) -> np.ndarray:
    """An image whose four quadrants are red, green (top), blue, white (bottom)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2:] = RED, GREEN
    img[h // 2:, : w // 2], img[h // 2:, w // 2:] = BLUE, WHITE
    return img


def fixed(*boxes):
    return lambda height, width: list(boxes)


def test_each_box_is_cropped_from_the_full_image(tmp_path):
    Image.fromarray(quadrants(400, 300)).save(tmp_path / "q.png")
    out = decode_crops(tmp_path / "q.png", 16, fixed((10, 10, 100, 150), (200, 250, 90, 140)))
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.uint8
    out = out.transpose(0, 2, 3, 1).astype(int)                # (2, 16, 16, 3) to compare
    assert (np.abs(out[0] - RED) <= 2).all()                   # top-left quadrant
    assert (np.abs(out[1] - WHITE) <= 2).all()                 # bottom-right quadrant


def test_boxes_are_in_the_oriented_image(tmp_path):
    # stored 300 wide, 400 high, EXIF 6 (rotate 90 clockwise): shown 400 wide, 300 high
    stored = np.ascontiguousarray(np.rot90(quadrants(400, 300), k=1))       # (400, 300, 3)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    seen = []

    def boxes(height, width):
        seen.append((height, width))
        return [(10, 10, 100, 150), (200, 250, 90, 140)]

    out = decode_crops(tmp_path / "turned.jpg", 16, boxes).transpose(0, 2, 3, 1).astype(int)
    assert seen == [(300, 400)]
    assert np.abs(out[0] - RED).max() < 30
    assert np.abs(out[1] - WHITE).max() < 30


def test_large_jpegs_decode_at_reduced_scale_only_where_the_crops_allow(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (1600, 1200), Image.Resampling.BICUBIC)
    smooth.save(tmp_path / "big.jpg", quality=92)
    from PIL.JpegImagePlugin import JpegImageFile
    drafts = []
    original = JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    big_boxes = fixed((0, 0, 1200, 1200), (100, 300, 900, 1000))
    reduced = decode_crops(tmp_path / "big.jpg", 64, big_boxes)
    assert drafts == [(200, 150)]                     # every crop >= 8 x 64: 1/8 scale
    drafts.clear()
    small_box = fixed((0, 0, 1200, 1200), (500, 500, 100, 120))
    decode_crops(tmp_path / "big.jpg", 64, small_box)
    assert drafts == []                               # a 100-px crop keeps full resolution
    # what the reduced decode gives is what the full decode gives, to JPEG's accuracy
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: None)
    full = decode_crops(tmp_path / "big.jpg", 64, big_boxes)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for k in range(12):
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(root / f"{k}.jpg")
    return root


def crop_batches(root, seed=0, rank=0, world=1, workers=0, sampler="torchvision"):
    crops = CropBoxes((0.08, 1.0), (3 / 4, 4 / 3), sampler)
    return StreamingBatches(index_folder(root), 16, 6, seed, rank, world, "cpu", workers,
                            crops=crops)


def test_crop_batches_hold_both_views_and_are_reproducible(photo_dir):
    a = list(crop_batches(photo_dir).epoch(0))
    # the batched fetch gives what each image's own fetch gives
    one = crop_batches(photo_dir)
    order = one.local_indices(0)[0]
    dataset = __import__("fastclr.data.batches", fromlist=["_CropFiles"])._CropFiles(
        one.index, 16, 0, 0, one.crops)
    for k, i in enumerate(order):
        crops, failed = dataset[i]
        assert not failed and torch.equal(crops, torch.stack([a[0][k], a[0][6 + k]]))
    assert len(a) == 2 and a[0].shape == (12, 3, 16, 16) and a[0].dtype == torch.uint8
    assert crop_batches(photo_dir).cropped
    assert all(torch.equal(x, y) for x, y in zip(a, crop_batches(photo_dir).epoch(0)))
    workers = list(crop_batches(photo_dir, workers=2).epoch(0))
    assert all(torch.equal(x, y) for x, y in zip(a, workers))
    resumed = list(crop_batches(photo_dir).epoch(0, start=1))
    assert len(resumed) == 1 and torch.equal(resumed[0], a[1])
    assert not torch.equal(a[0][:6], a[0][6:])          # two independent crops per image
    other = list(crop_batches(photo_dir, seed=1).epoch(0))
    assert not torch.equal(torch.cat(a), torch.cat(other))
    official = list(crop_batches(photo_dir, sampler="official").epoch(0))
    assert not torch.equal(torch.cat(a), torch.cat(official))


def test_crop_batches_of_ranks_are_the_views_of_their_images(photo_dir):
    whole = next(crop_batches(photo_dir).epoch(3))                       # (12, 3, 16, 16)
    parts = [next(crop_batches(photo_dir, rank=r, world=2).epoch(3)) for r in range(2)]
    assert parts[0].shape == (6, 3, 16, 16)
    # rank r holds images r*3 .. r*3+2 of the global batch: their first views, then second
    for r, part in enumerate(parts):
        images = slice(3 * r, 3 * r + 3)
        assert torch.equal(part[:3], whole[:6][images])
        assert torch.equal(part[3:], whole[6:][images])


def test_cropped_views_get_the_rest_of_the_augmentation(photo_dir):
    crops = next(crop_batches(photo_dir).epoch(0))                       # (12, 3, 16, 16)
    aug = SimCLRAugment(size=16, color_strength=1.0, blur_p=0.5)
    g = torch.Generator().manual_seed(0)
    views = aug.stacked_views(crops, g, cropped=True)
    assert views.shape == (12, 3, 16, 16)
    # with the colour, blur and flip off, a view is its crop exactly (no second crop)
    plain = SimCLRAugment(size=16, color_p=0.0, gray_p=0.0, flip_p=0.0)
    same = plain.stacked_views(crops, torch.Generator().manual_seed(0), cropped=True)
    torch.testing.assert_close(same, crops.float() / 255, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one_branch"):
        SimCLRAugment(size=16, one_branch=True).stacked_views(crops, g, cropped=True)


def test_run_folders_from_before_keep_the_square_mode():
    from fastclr.config import config_from_dict, load_config
    assert config_from_dict({"data": "imagenet"}).stream_crop == "square"
    assert config_from_dict({"data": "folder:/photos"}).stream_crop == "square"
    assert config_from_dict({"data": "fashion-mnist"}).stream_crop == "full"   # not streamed
    assert load_config(None, overrides={"data": "folder:/photos"}).stream_crop == "full"


def test_one_branch_on_a_folder_asks_for_the_square_mode(tmp_path, photo_dir):
    from fastclr.errors import ConfigError
    from fastclr.train import train
    from fixtures import tiny_config
    cfg = tiny_config(tmp_path / "run", data=f"folder:{photo_dir}", data_dir=None,
                      image_size=16, batch_size=4, one_branch=True, num_workers=0,
                      max_steps=1)
    with pytest.raises(ConfigError, match="stream-crop square"):
        train(cfg, progress=False)
    train(tiny_config(tmp_path / "square", data=f"folder:{photo_dir}", data_dir=None,
                      image_size=16, batch_size=4, one_branch=True, num_workers=0,
                      max_steps=1, stream_crop="square"), progress=False)


@pytest.mark.parametrize("sampler", ["torchvision", "official"])
def test_boxes_of_many_sizes_at_once_are_each_images_own(sampler):
    # a loader draws a batch's boxes in one call; each image's must be what a call for that
    # image alone gives
    crops = CropBoxes((0.08, 1.0), (3 / 4, 4 / 3), sampler)
    u = torch.rand(40, crops.draws, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    heights = torch.tensor([375, 500, 12, 1, 224] * 8)
    widths = torch.tensor([500, 375, 40, 1, 224] * 8)
    together = crops.from_uniforms(u, heights, widths)
    for k in range(40):
        alone = crops.from_uniforms(u[k:k + 1], int(heights[k]), int(widths[k]))
        assert torch.equal(together[k], alone[0]), k


def test_an_unreadable_file_in_a_crop_batch_is_replaced(tmp_path, photo_dir):
    import shutil
    for k, path in enumerate(sorted(photo_dir.glob("*.jpg"))[:6]):
        shutil.copy(path, tmp_path / f"{k}.jpg")
    data = (tmp_path / "2.jpg").read_bytes()
    (tmp_path / "2.jpg").write_bytes(data[:len(data) // 2])       # its header reads, not its data
    batches = StreamingBatches(index_folder(tmp_path), 16, 6, 0, crops=CropBoxes(
        (0.08, 1.0), (3 / 4, 4 / 3)), num_workers=0)
    got = next(batches.epoch(0))
    assert got.shape == (12, 3, 16, 16) and batches.failures == 1
