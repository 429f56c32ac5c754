import json

import torch

from fixtures import tiny_config
from fastclr.checkpoint import latest_checkpoint, load_checkpoint
from fastclr.train import train


def losses(run_dir):
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {d["step"]: d["loss"] for d in lines if "loss" in d}


def test_resume_gives_the_same_next_loss(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(straight, max_steps=3), progress=False)
    train(tiny_config(resumed, max_steps=2), progress=False)
    assert latest_checkpoint(resumed).name == "ckpt-00000002.pt"
    train(tiny_config(resumed, max_steps=3), progress=False)  # same folder: resumes at step 2
    a, b = losses(straight), losses(resumed)
    assert sorted(a) == [1, 2, 3] and sorted(b) == [1, 2, 3]
    assert b[3] == a[3]  # the step after resuming, bit for bit
    wa = load_checkpoint(latest_checkpoint(straight))["model"]
    wb = load_checkpoint(latest_checkpoint(resumed))["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the second session says once, in the run's log, which options it changed
    log = (resumed / "train.log").read_text()
    assert log.count("resuming with changed options: max_steps 2 -> 3") == 1


def test_run_folder_records_config_and_revision(tmp_path):
    run = train(tiny_config(tmp_path / "r", max_steps=1), progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["sessions"][0]["git_revision"] and info["run"]["data"]["images"] == 2000
    assert info["sessions"][0]["outcome"] == "stopped at --max-steps 1"
    assert "batch_size: 32" in (run / "config.yaml").read_text()
    assert (run / "encoder.safetensors").is_file()


def test_exported_encoder_reloads(tmp_path):
    from fastclr.checkpoint import load_encoder

    run = train(tiny_config(tmp_path / "r", max_steps=1), progress=False)
    encoder = load_encoder(run / "encoder.safetensors")
    state = load_checkpoint(latest_checkpoint(run))["model"]
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, state["encoder." + k])
    h = encoder(torch.rand(3, 1, 28, 28))
    assert h.shape == (3, encoder.feat_dim)
