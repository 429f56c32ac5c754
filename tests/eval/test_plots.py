"""fastclr.plots: the augmentation grid is a real PNG of the expected layout, written atomically."""

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
