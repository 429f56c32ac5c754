"""fastclr.lightning: a Lightning Trainer trains SimCLR with fastclr's own step."""

import pytest
import torch

from fixtures import SAMPLE, tiny_config

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

from fastclr import distributed  # noqa: E402
from fastclr.data import load_pretrain  # noqa: E402
from fastclr.lightning import SimCLRModule  # noqa: E402
from fastclr.train.step import build_run  # noqa: E402


def _trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kw)


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_lightning_steps_equal_fastclr_train_steps(tmp_path):
    """The same batches, seed and schedule give the same losses and weights as Run.train_step:
    step 0's loss is the forward alone; steps 1 and 2 also check the lr schedule and LARS."""
    cfg = tiny_config(tmp_path / "run", epochs=3)
    pretrain = load_pretrain("fashion-mnist", SAMPLE)
    run = build_run(cfg, distributed.Context(0, 0, 1, torch.device("cpu")), pretrain)
    batches = list(run.batches.epoch(0))[:1]  # one batch a epoch: 3 steps in all
    run.total_steps, run.warmup_steps = 3, round(cfg.warmup_epochs * 1)
    expected = [run.train_step(batches[0], step)[0].item() for step in range(3)]

    module = SimCLRModule(cfg, pretrain.shape[0], pretrain.mean, pretrain.std)
    losses = Losses()
    loader = torch.utils.data.DataLoader(batches[0], batch_size=len(batches[0]))
    _trainer(tmp_path, max_epochs=3, callbacks=[losses]).fit(module, loader)
    assert module.total_steps == 3 and module.warmup_steps == run.warmup_steps
    print(f"first-step loss: fastclr {expected[0]!r}, lightning {losses.losses[0]!r}")
    torch.testing.assert_close(torch.tensor(losses.losses), torch.tensor(expected),
                               rtol=0, atol=1e-5)
    for (name, a), b in zip(run.model.state_dict().items(), module.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def _labeled_loader(n=64, batch=32):
    from fastclr.data import load_split
    images = load_split("fashion-mnist", "train", SAMPLE)
    data = torch.utils.data.TensorDataset(images.images[:n], images.labels[:n])
    return torch.utils.data.DataLoader(data, batch_size=batch), images


def test_lightning_probe_checkpoint_and_encoder_round_trip(tmp_path):
    from fastclr.checkpoint import load_encoder

    cfg = tiny_config(tmp_path / "run", online_probe=True)
    loader, images = _labeled_loader()
    module = SimCLRModule(cfg, 1, (0.3,), (0.35,), num_classes=10)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader)
    assert trainer.global_step == 2
    assert "train/probe_top1" in trainer.callback_metrics  # the probe saw the labels
    assert "probe" not in dict(module.named_children())  # kept out of DDP's parameters

    trainer.save_checkpoint(tmp_path / "last.ckpt")
    again = SimCLRModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    for (name, a), b in zip(module.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name

    module.save_encoder(tmp_path / "encoder.safetensors")
    encoder = load_encoder(tmp_path / "encoder.safetensors")
    x = images.images[:8].float() / 255
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), module(x), rtol=0, atol=1e-6)  # memory formats


def test_lightning_skips_a_non_finite_step(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    loader, _ = _labeled_loader()
    module = SimCLRModule(cfg, 1, (0.3,), (0.35,))
    seen = {}

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen[batch_idx] = {k: v.clone() for k, v in module.model.state_dict().items()}

    calls = []

    def nan_on_second_step(head, inputs, z):
        calls.append(1)
        return z * float("nan") if len(calls) == 2 else z

    module.model.head.register_forward_hook(nan_on_second_step)
    _trainer(tmp_path, max_epochs=1, callbacks=[Poison()]).fit(module, loader)
    after = module.model.state_dict()
    for name, value in seen[1].items():  # step 1 changed no weight, no BN statistic
        assert torch.equal(after[name], value), name
    key = "encoder.backbone.bn1.running_mean"  # step 0 (lr 0: warmup) moved BN statistics
    assert not torch.equal(seen[0][key], seen[1][key])
