"""fastclr.plots: the augmentation grid is a real PNG of the expected layout, written atomically;
the embedding map by t-SNE or UMAP."""

import pytest
import torch
from PIL import Image

from fastclr.augment import SimCLRAugment
from fastclr.eval.plots import save_augmentation_grid


def test_augmentation_grid_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    for channels, side in ((3, 32), (1, 28)):
        images = torch.randint(0, 256, (6, channels, side, side), dtype=torch.uint8,
                               generator=g)
        v1, v2 = SimCLRAugment.small_images(size=24).two_views(images, g)
        path = tmp_path / "sub" / f"grid{channels}.png"
        assert save_augmentation_grid(images, v1, v2, path, nrow=4) == path
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            width, height = im.size
        # 4 tiles of three 24-px images per row, 2 rows, enlarged x4 to reach 96 px
        assert width > 4 * 3 * 24 * 4 and height > 2 * 24 * 4
        assert height < width
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["grid1.png", "grid3.png"]


def _plots_session(tmp_path, method):
    """What the plots protocol reads of a Session, on 120 real images and clustered features."""
    from types import SimpleNamespace

    from fastclr.data import load_split
    from fixtures import SAMPLE

    test = load_split("fashion-mnist", "test", SAMPLE).subset(torch.arange(120))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=g) * 3
    h = centres[test.labels] + torch.randn(120, 16, generator=g)  # (120, 16), one blob a class
    weights = SimpleNamespace(run_dir=None)
    return SimpleNamespace(weights=weights, h=lambda: (h, h), train=test, test=test, seed=0,
                           out_dir=tmp_path, map_method=method)


@pytest.mark.slow  # umap-learn's numba compilation: ~30 s on 2 cores
def test_umap_map_names_itself(tmp_path):
    pytest.importorskip("umap")
    from fastclr.eval import plots
    from fastclr.eval.protocols import run_plots

    report = run_plots(_plots_session(tmp_path, "umap"))
    assert report["embedding_map_method"] == "UMAP"
    assert (tmp_path / "embedding_map.png").stat().st_size > 1000
    h = _plots_session(tmp_path, "umap").h()[0]
    assert torch.equal(plots.umap_map(h, seed=1), plots.umap_map(h, seed=1))  # seeded


def test_tsne_stays_the_default_and_umap_without_its_package_is_refused(tmp_path, monkeypatch):
    import importlib.util
    import inspect

    from fastclr.errors import ConfigError
    from fastclr.eval import plots
    from fastclr.eval.protocols import Session, run_plots
    from fastclr.eval.runner import evaluate_weights

    assert inspect.signature(Session).parameters["map_method"].default == "tsne"
    assert inspect.signature(evaluate_weights).parameters["map_method"].default == "tsne"
    assert run_plots(_plots_session(tmp_path, "tsne"))["embedding_map_method"] == "t-SNE"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "umap" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'fastclr\[umap\]'"):
        plots.require_map("umap")
    with pytest.raises(ConfigError, match="unknown embedding map 'pca'"):
        plots.require_map("pca")
