"""The Table 3 probe: it finds a transformation in features that keep it, and only there."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from fastclr.augment import SimCLRAugment
from fastclr.augment.colour import GRAY_WEIGHTS
from fastclr.eval.transforms import TASKS, mlp_top1, pretrained_with, transform, \
    transformation_probe


class ChannelStats(nn.Module):
    """A toy encoder that sees colour: per-channel mean and spread, and the channels'
    differences (all zero for a gray image)."""

    def forward(self, x):  # (N, 3, S, S) in [0, 1] -> (N, 12)
        mean, std = x.mean((2, 3)), x.std((2, 3))
        diff = (x - x.roll(1, dims=1)).abs().mean((2, 3))
        return torch.cat([mean, std, diff, (x - x.mean(1, keepdim=True)).abs().mean((2, 3))], 1)


class LumaStats(nn.Module):
    """The same statistics of the luma alone: grayscale (luma in every channel) leaves its
    input unchanged, so it cannot tell colour from gray."""

    def forward(self, x):
        w = torch.tensor(GRAY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
        luma = (x * w).sum(1)  # (N, S, S)
        return torch.stack([luma.mean((1, 2)), luma.std((1, 2)), luma.amax((1, 2)),
                            luma.amin((1, 2))], 1)


def colourful_images(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, 16, 16): random blobs, each image with its own strong tint."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 16, 16, generator=g)
    tint = torch.rand(n, 3, 1, 1, generator=g)
    return (255 * (0.3 * base + 0.7 * tint * base.sqrt())).clamp(0, 255).to(torch.uint8)


def crop_flip(size=16) -> SimCLRAugment:
    return SimCLRAugment(size=size, crop_scale=(0.5, 1.0), color_p=0.0, gray_p=0.0)


@pytest.mark.parametrize("task", ["colour", "rotation", "noise", "sobel"])
def test_each_transformation_labels_what_it_did(task):
    g = torch.Generator().manual_seed(1)
    views = torch.rand(64, 3, 8, 8, generator=g)
    out, labels = transform(task, views, torch.Generator().manual_seed(2))
    assert out.shape == views.shape and labels.shape == (64,)
    assert set(labels.tolist()) <= set(range(TASKS[task].classes))
    untouched = labels == 0
    assert torch.equal(out[untouched], views[untouched])  # label 0: the original view
    assert not torch.allclose(out[~untouched], views[~untouched])
    if task == "colour":  # grayscale in about GRAY_P of the views: chance is 80%
        assert 0.05 < labels.float().mean() < 0.4
        gray = out[labels == 1]
        assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


@pytest.mark.slow
def test_colour_probe_beats_chance_only_where_colour_is_seen():
    train, test = colourful_images(600, 0), colourful_images(300, 1)
    sees = transformation_probe(ChannelStats(), None, train, test, crop_flip(),
                                tasks=("colour",))["colour"]
    blind = transformation_probe(LumaStats(), None, train, test, crop_flip(),
                                 tasks=("colour",))["colour"]
    assert sees["chance"] == 0.8 and sees["z"] is None  # no head given: no z
    assert sees["h"] >= 0.95
    assert abs(blind["h"] - 0.8) < 0.06  # the share of colour views, give or take sampling


@pytest.mark.slow
def test_probe_on_one_channel_images_says_colour_is_na_and_reads_z():
    images = colourful_images(200, 3)[:, :1]  # (N, 1, 16, 16)

    class Flat(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, ::4]

    head = nn.Linear(64, 8)
    rows = transformation_probe(Flat(), head, images[:150], images[150:], crop_flip(),
                                tasks=("colour", "rotation"))
    assert rows["colour"]["h"] is None and "one-channel" in rows["colour"]["why"]
    assert rows["colour"]["paper_h"] == 0.993 and rows["colour"]["paper_z"] == 0.974
    assert 0 <= rows["rotation"]["h"] <= 1 and 0 <= rows["rotation"]["z"] <= 1


def test_mlp_probe_leaves_the_global_random_state_alone():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] > 0).long()
    state = torch.get_rng_state()
    first = mlp_top1(x[:150], y[:150], x[150:], y[150:], 2, epochs=20)
    assert torch.equal(state, torch.get_rng_state())
    assert first > 0.9 and mlp_top1(x[:150], y[:150], x[150:], y[150:], 2, epochs=20) == first


def test_pretrained_with_reads_the_config():
    from fastclr.config import Config

    assert pretrained_with(Config()) == []
    assert pretrained_with(Config(rotate_p=0.5, noise_p=0.2)) == ["rotation", "noise"]
    assert pretrained_with(Config(rotate_p=0.5, augment="crop,rotate")) == ["rotation"]
    assert pretrained_with(Config(rotate_p=0.5, augment="crop,color")) == []
