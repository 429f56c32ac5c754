"""Every loss, the supervised objective and the normalisation options train end to end."""

import pytest
import torch

from fixtures import tiny_config
from fastclr.checkpoint import latest_checkpoint, load_checkpoint
from fastclr.errors import DataError
from fastclr.train import train


@pytest.mark.parametrize("overrides", [
    dict(loss="nt-logistic", temperature=0.2),
    dict(loss="margin-triplet", semi_hard=True),
    dict(loss="nt-xent", l2_norm=False, temperature=10.0),
    dict(encoder_norm="group", head_norm="layer"),
    dict(bn_groups=4),
])
def test_variant_trains(tmp_path, overrides):
    run = train(tiny_config(tmp_path, max_steps=3, **overrides), progress=False)
    state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_supervised_objective_trains_a_classifier_on_h(tmp_path):
    run = train(tiny_config(tmp_path, objective="supervised", max_steps=4), progress=False)
    state = load_checkpoint(latest_checkpoint(run))
    assert state["spec"]["head"]["kind"] == "linear" and state["spec"]["head"]["out_dim"] == 10
    losses = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4


def test_supervised_needs_labels(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (i * 30, 0, 0)).save(folder / f"{i}.png")
    cfg = tiny_config(tmp_path / "run", data=f"folder:{folder}", data_dir=None, image_size=16,
                      batch_size=4, objective="supervised", num_workers=0, max_steps=1)
    with pytest.raises(DataError, match="supervised objective needs labeled images"):
        train(cfg, progress=False)
