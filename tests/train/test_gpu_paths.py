"""The GPU preset's code paths, run on the CPU at tiny size (issue 18): torch.compile against
eager (one process and DDP), bf16 autocast against fp32, the preset's whole configuration, and
a step that reads nothing back to the host.

Every comparison drives the real Run.train_step from one initialisation and one seed: the
views are drawn on the device from (seed, step, rank), so two runs see the same pixels.
"""

import contextlib
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fixtures import SAMPLE, tiny_config
from fixtures.host_reads import HostRead, NoHostReads
from fastclr import distributed
from fastclr.data import Pretrain, load_pretrain
from fastclr.train.loop import RunningStats
from fastclr.train.step import build_run

N = 16  # images per step (global batch)
STEPS = 3


def _images(count: int = STEPS * N) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=g)


def _one_process(device: str = "cpu") -> distributed.Context:
    return distributed.Context(0, 0, 1, torch.device(device))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def _train(cfg, images: torch.Tensor, ctx: distributed.Context | None = None,
           steps: int = STEPS) -> tuple[torch.Tensor, dict]:
    """Losses (steps,) and the model's state after `steps` steps, batch i = images[i*N:(i+1)*N]
    cut into this process's share.

    The views come from the augmentation's tensor ops, the path CUDA runs (the C kernel is for
    CPUs), and the last step runs inside NoHostReads: every set-up here is also checked for
    host reads."""
    ctx = ctx or _one_process()
    run = build_run(cfg, ctx, Pretrain.from_images(images))
    run.augment.native = False
    local = N // ctx.world_size
    losses = []
    for step in range(steps):
        batch = images[step * N + ctx.rank * local: step * N + (ctx.rank + 1) * local]
        with NoHostReads() if step == steps - 1 and step > 0 else contextlib.nullcontext():
            loss, bad = run.train_step(batch, step)
        assert not bad
        losses.append(distributed.all_reduce_sum(loss.clone()) / ctx.world_size)
    return torch.stack(losses), {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def _relative_differences(a: dict, b: dict) -> dict[str, float]:
    """||b - a|| / ||a|| of each floating-point tensor of a state dict.

    Per tensor, not per element: a near-zero element moves by rounding alone. The
    zero-initialised last BN scale of each block, and every BN bias, hold the updates alone,
    so this compares the steps' updates too, not only the initial weights."""
    return {k: ((b[k] - v).norm() / v.norm().clamp_min(1e-12)).item() for k, v in a.items()
            if v.is_floating_point()}


# ---- torch.compile --------------------------------------------------------------------------

# Inductor fuses ops and reorders fp32 reductions (BN statistics, the convolutions' weight
# gradients): each rounds differently, ~1e-7 relative per op. Measured over 3 steps: losses
# 7e-8 apart, parameters at most 1.4e-5 (a BN bias made of the updates alone). The limits
# leave 7x room or more; a wrong compiled graph (a lost BN update, a missed gradient) is off
# by far more.
COMPILE_LOSS_RTOL = 1e-5
COMPILE_PARAM_RTOL = 1e-4


@pytest.mark.slow
def test_compiled_steps_match_eager(tmp_path):
    images = _images()
    eager = _train(tiny_config(tmp_path, batch_size=N, warmup_epochs=0.0), images)
    compiled = _train(tiny_config(tmp_path, batch_size=N, warmup_epochs=0.0, compile=True),
                      images)
    torch.testing.assert_close(compiled[0], eager[0], rtol=COMPILE_LOSS_RTOL, atol=0)
    worst = _relative_differences(eager[1], compiled[1])
    assert max(worst.values()) < COMPILE_PARAM_RTOL, \
        sorted(worst.items(), key=lambda kv: kv[1])[-3:]


def _ddp_worker(rank: int, world: int, out, port: int) -> None:
    """Eager, then compiled: STEPS steps of the DDP-wrapped model on this process's share."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with distributed.joined("cpu") as ctx:
        images = _images()
        results = {}
        for compiled in (False, True):
            cfg = tiny_config(out, batch_size=N, warmup_epochs=0.0, compile=compiled)
            results["compiled" if compiled else "eager"] = _train(cfg, images, ctx)
        torch.save(results, f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_compiled_ddp_steps_match_eager(tmp_path):
    """DDP under torch.compile splits the graph at its gradient buckets (DDPOptimizer) and
    runs the global batch norm and the gathered loss around it; 2 gloo processes."""
    mp.spawn(_ddp_worker, args=(2, tmp_path, _free_port()), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for run in ranks:
        eager, compiled = run["eager"], run["compiled"]
        torch.testing.assert_close(compiled[0], eager[0], rtol=COMPILE_LOSS_RTOL, atol=0)
        worst = _relative_differences(eager[1], compiled[1])
        assert max(worst.values()) < COMPILE_PARAM_RTOL, \
            sorted(worst.items(), key=lambda kv: kv[1])[-3:]
    first, second = (r["compiled"][1] for r in ranks)
    assert all(torch.equal(first[k], second[k]) for k in first)  # DDP kept them in step


# ---- bf16 autocast --------------------------------------------------------------------------

# bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2%); the loss's logits stay fp32.
# Measured at this size: losses within 0.6% of fp32 over 3 steps (the bf16 updates take the
# weights apart a little more each step), the first step's update (all parameters as one
# vector) at cosine 0.9997 to fp32's (0.988 with the C kernel's views). Single entries are no
# measure: a BN bias's gradient is a sum with cancellation, and bf16 may keep none of its
# digits (up to 90% off per tensor). The loss limit is 3x the measured drift; a gradient
# lost to a cast, or a step gone wrong under autocast, fails the cosine.
BF16_LOSS_RTOL = 2e-2
BF16_UPDATE_COSINE = 0.95


def test_bf16_steps_are_finite_and_close_to_fp32(tmp_path):
    images = _images()
    fp32_cfg = tiny_config(tmp_path, batch_size=N, warmup_epochs=0.0, precision="fp32")
    bf16_cfg = tiny_config(tmp_path, batch_size=N, warmup_epochs=0.0, precision="bf16")
    assert build_run(bf16_cfg, _one_process(), Pretrain.from_images(images)).autocast
    start = build_run(fp32_cfg, _one_process(), Pretrain.from_images(images)).model.state_dict()
    fp32, bf16 = _train(fp32_cfg, images), _train(bf16_cfg, images)
    assert bf16[0].dtype == torch.float32 and torch.isfinite(bf16[0]).all()
    assert all(torch.isfinite(v).all() for v in bf16[1].values() if v.is_floating_point())
    assert not torch.equal(bf16[0], fp32[0])  # autocast did run
    torch.testing.assert_close(bf16[0], fp32[0], rtol=BF16_LOSS_RTOL, atol=0)
    one_step = [_train(c, images, steps=1)[1] for c in (fp32_cfg, bf16_cfg)]
    update = [torch.cat([(s[k] - start[k]).flatten() for k in start
                         if start[k].is_floating_point()]) for s in one_step]
    assert torch.nn.functional.cosine_similarity(*update, dim=0) > BF16_UPDATE_COSINE


# ---- the GPU preset, whole ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_gpu_preset_builds_and_steps(tmp_path, device):
    """fashion-mnist-resnet18 as the GPU runs it (compiled, bf16: what precision auto gives
    on CUDA, channels_last), only narrower and with a smaller batch, on the shipped sample;
    on the CPU, and on CUDA where there is one."""
    from fastclr.config import load_config
    cfg = load_config("fashion-mnist-resnet18", overrides=dict(
        width=0.125, batch_size=N, data_dir=str(SAMPLE), run_dir=str(tmp_path),
        precision="bf16", device=device))
    assert (cfg.compile, cfg.arch, cfg.stem) == (True, "resnet18", "small")
    pretrain = load_pretrain(cfg.data, cfg.data_dir, image_size=cfg.image_size)
    run = build_run(cfg, _one_process(device), pretrain)
    assert run.autocast and run.channels_last
    assert isinstance(run.forward, torch._dynamo.eval_frame.OptimizedModule)
    run.augment.native = False  # the augmentation CUDA runs (the C kernel is for CPUs)
    batches = run.batches.epoch(0)
    run.forward.train()
    losses = [run.train_step(next(batches), 0)[0]]  # compiles
    with NoHostReads():  # the compiled step reads nothing on the host either
        loss, bad = run.train_step(next(batches), 1)
    losses.append(loss)
    assert torch.isfinite(torch.stack(losses)).all() and not bad


# ---- no host reads between log points -------------------------------------------------------


def _guarded_steps(tmp_path, probe: bool = False, device: str = "cpu", **overrides):
    """Two warm-up steps, then two steps and their statistics inside NoHostReads: what
    Trainer.fit does between two log lines."""
    from fastclr.eval.monitor import OnlineProbe
    from fastclr.data.batches import InMemoryBatches
    images = _images(4 * N)
    labels = torch.arange(4 * N) % 10
    run = build_run(tiny_config(tmp_path, batch_size=N, device=device, **overrides),
                    _one_process(device),
                    Pretrain.from_images(images, labels=labels))
    # the CUDA path: the C kernel, CPU only, checks its crop boxes on the host
    run.augment.native = False
    if probe:
        run.probe = OnlineProbe(run.model.encoder.feat_dim, 10).to(device)
    label_batches = InMemoryBatches(labels.to(device), N, 0).epoch(0)
    batches = zip(run.batches.epoch(0), label_batches)

    def step(i: int):
        images, batch_labels = next(batches)
        return run.train_step(images, i, batch_labels)

    stats = RunningStats(torch.device(device))
    step(0), step(1)
    counters = []
    if probe:  # neither fused nor capturable, the probe's Adam keeps its step counts on the
        opt = run.probe.optimizer  # CPU on every device (and reads them there)
        assert not (opt.defaults["fused"] or opt.defaults["capturable"])
        counters = [s["step"] for s in opt.state.values()]
    guard = NoHostReads(host_tensors=counters)
    with guard:
        for i in (2, 3):
            stats.add(*step(i))
    return run, stats, guard


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("probe", [False, True], ids=["step", "step+online-probe"])
def test_steps_read_nothing_on_the_host(tmp_path, probe, device):
    run, stats, guard = _guarded_steps(tmp_path, probe, device)
    assert guard.reads == []
    assert stats.read(1, False)[0] > 0  # reading happens at the log line, outside


@pytest.mark.parametrize("overrides", [
    dict(loss="nt-logistic", semi_hard=True), dict(loss="margin-triplet"),
    dict(l2_norm=False, temperature=10.0), dict(bn_groups=2), dict(objective="supervised"),
    dict(encoder_norm="group", head_norm="layer"),
])
def test_every_variant_steps_without_host_reads(tmp_path, overrides):
    run, stats, guard = _guarded_steps(tmp_path, **overrides)
    assert guard.reads == []


def test_the_guard_catches_an_item_inside_the_step(tmp_path, monkeypatch):
    """So that the test above can fail: a loss read with .item() inside train_step."""
    import fastclr.train.step as step_module
    real = step_module.build_loss

    def build_reading_loss(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def reads_the_loss(*a, **k):
            loss = loss_fn(*a, **k)
            if loss.item() > 1e9:  # a plausible-looking check that syncs every step
                raise AssertionError
            return loss
        return reads_the_loss

    monkeypatch.setattr(step_module, "build_loss", build_reading_loss)
    with pytest.raises(HostRead, match="_local_scalar_dense"):
        _guarded_steps(tmp_path)


_t = torch.tensor([0.5, 2.0])
READ_KINDS = {
    "item": lambda: _t[0].item(), "float": lambda: float(_t[0]), "int": lambda: int(_t[1]),
    "bool": lambda: bool(_t[0] > 0), "if": lambda: 1 if _t.sum() > 1 else 0,
    "tolist": lambda: _t.tolist(), "numpy": lambda: _t.numpy(),
    "array": lambda: __import__("numpy").asarray(_t), "equal": lambda: torch.equal(_t, _t),
    "allclose": lambda: torch.allclose(_t, _t), "nonzero": lambda: _t.nonzero(),
    "mask-index": lambda: _t[_t > 1], "mask-assign": lambda: _t.clone().__setitem__(_t > 1, 0),
    "masked_select": lambda: _t.masked_select(_t > 1), "unique": lambda: _t.unique(),
    "repeat_interleave": lambda: _t.repeat_interleave(torch.tensor([1, 2])),
    "format": lambda: f"{_t[0]:.2f}",
}


@pytest.mark.parametrize("kind", READ_KINDS)
def test_the_guard_catches_each_kind_of_read(kind):
    with pytest.raises(HostRead):
        with NoHostReads():
            READ_KINDS[kind]()


@needs_cuda
def test_the_guard_catches_a_copy_from_cuda_to_the_host():
    on_device = _t.cuda()  # the other way is no read
    for copy_back in (on_device.cpu, lambda: torch.empty(2).copy_(on_device)):
        with pytest.raises(HostRead, match="copy"):
            with NoHostReads():
                copy_back()


def test_the_guard_lets_device_work_through_and_restores_tensor_methods():
    with NoHostReads():
        x = torch.where(_t > 1, _t, 0.0).sum() + _t.repeat_interleave(2, output_size=4).sum()
        y = _t[torch.tensor([1, 0])]  # integer indexing: the size is known
    assert x.item() == pytest.approx(7.0) and y.tolist() == [2.0, 0.5]
    assert _t.numpy().shape == (2,)


class _Kernels(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that compute (each a kernel launch on a GPU); views launch nothing."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def test_optimiser_and_buffer_guard_launch_the_same_kernels_for_any_depth():
    """The skip-aware LARS step and the batch-norm buffer guard work on whole groups of
    tensors (foreach ops, one select over tensors laid end to end): their kernel count must not
    grow with the number of layers, as it did with a loop of three ops per tensor, nor with
    a copy per channels-last weight to reorder it."""
    from fastclr.optim import build_optimizer
    from fastclr.train.step import BufferGuard

    def kernels(depth: int) -> tuple[int, int]:
        model = torch.nn.Sequential(*[m for _ in range(depth) for m in (
            torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4))])
        model = model.to(memory_format=torch.channels_last)
        opt, guard = build_optimizer("lars", model, 1e-6), BufferGuard(model)
        for group in opt.param_groups:
            group["lr"] = 0.1
        for _ in range(2):  # the second step is the steady state (momentum buffers exist)
            guard.save()
            x = torch.randn(8, 4, 5, 5).to(memory_format=torch.channels_last)
            loss = model(x).pow(2).sum()
            loss.backward()
            opt.found_inf = (~loss.isfinite()).float()
            with _Kernels() as in_step:
                opt.step()
            with _Kernels() as in_guard:
                guard.restore_if(~loss.isfinite())
        return in_step.count, in_guard.count

    assert kernels(2) == kernels(12)
