"""Distributed maths is tested, not trusted (STYLE.md): 2 processes == 1 process, on gloo."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from fixtures import HANG_SECONDS, SAMPLE, tiny_config

pytestmark = pytest.mark.distributed

N = 16  # global batch of images


def _images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=g)


class FixedViews:
    """Deterministic 'augmentation' so that both set-ups see exactly the same views."""

    def stacked_views(self, images, generator, out=None, memory_format=None):
        x = images.float() / 255
        return torch.cat([x, x.flip(-1).roll(3, dims=-2)]).contiguous(memory_format=memory_format)


def _plain_gather(x):
    """The classic bug: all_gather without gradient, own slot put back so local grads flow."""
    import torch.distributed as dist
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def one_step(rank, world, out, broken, port=0, overrides=None):
    """One training step through the real Run.train_step; saves loss and parameters."""
    from fastclr import distributed, loss
    from fastclr.data import Pretrain
    from fastclr.train.step import build_run

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if broken:
        loss.gather_with_grad = _plain_gather
    with distributed.joined("cpu") as ctx:
        options = dict(batch_size=N, warmup_epochs=0.0, sync_bn=True, width=0.125,
                       optimizer="lars", base_lr=0.3)
        cfg = tiny_config(out, **{**options, **(overrides or {})})
        images = _images()
        run = build_run(cfg, ctx, Pretrain.from_images(images))
        run.augment = FixedViews()
        local = images[rank * N // world: (rank + 1) * N // world]
        step_loss, _ = run.train_step(local, step=0)
        total = distributed.all_reduce_sum(step_loss.clone()) / world
        torch.save({"loss": total, "params": {k: v.detach().clone() for k, v in
                                              run.model.state_dict().items()}},
                   f"{out}/rank{rank}.pt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare(tmp_path, broken):
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    one_step(0, 1, single, broken=False)
    mp.spawn(one_step, args=(2, double, broken, _free_port()), nprocs=2, join=True)
    a = torch.load(single / "rank0.pt")
    b0, b1 = torch.load(double / "rank0.pt"), torch.load(double / "rank1.pt")
    for k in a["params"]:  # both ranks hold the same model after the step
        assert torch.equal(b0["params"][k], b1["params"][k])
    return a, b0


def _mismatch(a, b):
    """Names of floating-point tensors whose relative difference ||b - a|| / ||a|| > 1e-5.

    Per tensor, not per element: summation order differs between the set-ups, which moves
    near-zero elements by ~1e-7. The zero-initialised last BN scale of each block is the
    step's update alone, so this also checks the update itself.
    """
    return [k for k, v in a["params"].items() if v.is_floating_point()
            and (b["params"][k] - v).norm() > 1e-5 * v.norm().clamp_min(1e-12)]


def test_two_processes_equal_one(tmp_path):
    a, b = _compare(tmp_path, broken=False)
    assert b["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-5)
    assert _mismatch(a, b) == []


def test_the_comparison_catches_a_gather_without_gradient(tmp_path):
    a, b = _compare(tmp_path, broken=True)
    # the loss value itself cannot tell: the bug lives only in the backward pass
    assert b["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-5)
    assert len(_mismatch(a, b)) > 10  # but the updated weights are wrong


@pytest.mark.slow
def test_torchrun_trains_then_resumes(tmp_path):
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
            "--master-port", str(_free_port()), "-m", "fastclr", "train", "--data-dir",
            str(SAMPLE), "--width", "0.125", "--stem", "small-s2", "--batch-size", "32",
            "--epochs", "1", "--device", "cpu", "--run-dir", str(run_dir), "--log-every", "1", "--threads", "1",
            "--tensorboard", "false", "--final-eval", "false", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True,
                           env=env, timeout=HANG_SECONDS)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run_dir / "checkpoints" / "ckpt-00000002.pt").is_file()
    second = subprocess.run(base + ["--max-steps", "4"], capture_output=True, text=True,
                            env=env, timeout=HANG_SECONDS)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout and "at step 2" in second.stdout
    # rank 0 alone speaks: each message once, not once per process
    assert second.stdout.count("resumed from") == 1
    assert second.stdout.count("resuming with changed options") == 1
    assert "world size 2" in second.stdout
    assert (run_dir / "checkpoints" / "ckpt-00000004.pt").is_file()


LOSS_CASES = [
    ("nt-xent", dict(temperature=0.5)),
    ("nt-xent", dict(temperature=10.0, normalize=False)),
    ("nt-logistic", dict(temperature=0.2)),
    ("nt-logistic", dict(temperature=0.2, semi_hard_negatives=True)),
    ("margin-triplet", dict(temperature=1.0, margin=0.4)),
    ("margin-triplet", dict(temperature=1.0, margin=0.4, semi_hard_negatives=True)),
]


def _loss_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 8, generator=g), torch.randn(N, 8, generator=g)


def loss_grads(rank, world, out, port):
    """Each loss case's value and input gradients on this process's share of a fixed batch."""
    from fastclr import distributed
    from fastclr.loss import build_loss

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with distributed.joined("cpu"):
        z1, z2 = _loss_batch()
        part = slice(rank * N // world, (rank + 1) * N // world)
        results = []
        for name, options in LOSS_CASES:
            a, b = z1[part].clone().requires_grad_(), z2[part].clone().requires_grad_()
            loss = build_loss(name, **options)(a, b, distributed=True)
            loss.backward()
            results.append({"loss": loss.detach(), "g1": a.grad, "g2": b.grad})
        torch.save(results, f"{out}/rank{rank}.pt")


def test_every_loss_on_two_processes_equals_one(tmp_path):
    """Negatives from every process: the mean of the 2 processes' losses, and their input
    gradients (each process's own rows, summed over both losses by the gather's backward),
    equal one process holding the whole batch, for every loss and its options."""
    from fastclr.loss import build_loss

    mp.spawn(loss_grads, args=(2, tmp_path, _free_port()), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case, (name, options) in enumerate(LOSS_CASES):
        z1, z2 = (z.requires_grad_() for z in _loss_batch())
        whole = build_loss(name, **options)(z1, z2)
        whole.backward()
        got = [p[case] for p in parts]
        assert sum(p["loss"] for p in got).item() / 2 == pytest.approx(whole.item(), rel=1e-5), name
        g1 = torch.cat([p["g1"] for p in got]) / 2  # DDP averages the processes' gradients
        g2 = torch.cat([p["g2"] for p in got]) / 2
        torch.testing.assert_close(g1, z1.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {options}")
        torch.testing.assert_close(g2, z2.grad, rtol=1e-4, atol=1e-6, msg=f"{name} {options}")


def test_grouped_batch_norm_equals_devices_without_global_bn(tmp_path):
    """bn_groups=2 in one process == 2 processes with per-device BN (sync_bn false): the same
    loss and, on rank 0 (whose BN statistics DDP broadcasts), the same weights and stats."""
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    one_step(0, 1, single, broken=False, overrides={"bn_groups": 2})
    mp.spawn(one_step, args=(2, double, False, _free_port(), {"sync_bn": False}), nprocs=2,
             join=True)
    a, b = torch.load(single / "rank0.pt"), torch.load(double / "rank0.pt")
    assert b["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-5)
    assert _mismatch(a, b) == []
    # and global statistics differ: the comparison can tell the two apart
    c = tmp_path / "global"
    c.mkdir()
    one_step(0, 1, c, broken=False)
    assert torch.load(c / "rank0.pt")["loss"].item() != pytest.approx(a["loss"].item(), rel=1e-5)


def test_leaving_the_group_waits_for_peers_only_after_a_clean_end(monkeypatch):
    """A clean end: barrier, then destroy (no process closes its connections while a peer's
    collective is in flight). An error: destroy at once (a barrier could wait on a dead peer)."""
    from fastclr import distributed

    calls = []
    monkeypatch.setattr(distributed, "setup", lambda pref: calls.append("setup") or "ctx")
    monkeypatch.setattr(distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed, "teardown", lambda: calls.append("teardown"))
    with distributed.joined("cpu") as ctx:
        assert ctx == "ctx"
    assert calls == ["setup", "barrier", "teardown"]
    calls.clear()
    with pytest.raises(KeyError):
        with distributed.joined("cpu"):
            raise KeyError("a peer may be gone")
    assert calls == ["setup", "teardown"]


GROUP_FREED = """
import gc, sys, weakref
import torch.distributed as dist
from fastclr import distributed
from fastclr.loss import gather_with_grad
store = dist.HashStore()
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
group = weakref.ref(dist.group.WORLD)
from torch.distributed.nn.functional import all_gather  # what the loss calls
dist.destroy_process_group()
gc.collect()
sys.exit(0 if group() is None else 1)
"""


def test_a_destroyed_process_group_is_freed_before_shutdown():
    """The loss's all_gather module, imported with fastclr.loss before any group exists, does
    not pin the group in its defaults: destroy_process_group frees it. (Pinned, it was
    destroyed during interpreter shutdown, where gloo aborted ~2 in 100 finished processes.)"""
    done = subprocess.run([sys.executable, "-c", GROUP_FREED], capture_output=True, text=True,
                          timeout=HANG_SECONDS)
    assert done.returncode == 0, done.stderr[-2000:] or "the destroyed process group is alive"
