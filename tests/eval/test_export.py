"""fastclr export: what leaves fastclr computes what fastclr computes."""

import json

import pytest
import torch
import torch.nn as nn

from fastclr.checkpoint import export_encoder, load_encoder
from fastclr.cli import EXPORT_FORMATS, main
from fastclr.config import Config
from fastclr.data import load_split
from fastclr.errors import ExportError
from fastclr.eval.export import FORMATS, export, info_path, refusal
from fastclr.eval.weights import Weights, load_weights
from fastclr.models import build_encoder
from fastclr.spec import EncoderSpec
from fixtures import SAMPLE

ARCHS = ("resnet18", "resnet34", "resnet50")
STEMS = ("small", "small-s2", "imagenet")


def trained_like(spec: EncoderSpec, seed: int = 0) -> nn.Module:
    """A fresh encoder with BN layers that do something (a fresh BN is the identity in eval
    mode, and zero-init residuals hide half the network): scales, shifts and statistics drawn
    at random, so a wrongly mapped layer shows."""
    torch.manual_seed(seed)
    encoder = build_encoder(spec)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 0.8)  # features of a trained size (|h| < 10)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return encoder.eval()


def images(channels: int = 1, count: int = 8) -> torch.Tensor:
    """Real Fashion-MNIST test images from the shipped sample: float (count, C, 28, 28)."""
    x = load_split("fashion-mnist", "test", SAMPLE).images[:count].float() / 255
    return x.expand(-1, channels, -1, -1).contiguous()


def weights_of(encoder, path) -> Weights:
    cfg = Config(data="fashion-mnist", data_dir=str(SAMPLE)).validate()
    return Weights(encoder, None, cfg, 7, "encoder", path)


def run_recipe(lines: list[str]) -> nn.Module:
    """Run the lines a user is told to run; return their `model`."""
    scope: dict = {}
    exec("\n".join(lines), scope)  # noqa: S102  our own recipe text, as printed
    return scope["model"].eval()


def test_cli_formats_are_the_exporters():
    assert EXPORT_FORMATS == tuple(FORMATS)


# ---- torchvision and timm ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stem,channels", [(s, 1) for s in STEMS] + [("imagenet", 3)])
@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_library_model_computes_the_encoder(library, arch, stem, channels, tmp_path):
    """The printed recipe, run as written, loads the state dict with strict=True and gives
    fastclr's h on the same (normalised) images."""
    if library == "timm":
        pytest.importorskip("timm")
    mean, std = (0.3,) * channels, (0.35,) * channels
    encoder = trained_like(EncoderSpec(arch, 1.0, stem, channels, mean, std))
    out = tmp_path / f"{library}.pt"
    done = export(weights_of(encoder, tmp_path / "w.safetensors"), library, out,
                  images=images(channels))
    assert done.info["check"]["max_abs_diff"] <= 1e-5
    assert json.loads(info_path(out).read_text()) == json.loads(json.dumps(done.info))
    model = run_recipe(done.info["recipe"])  # load_state_dict(..., strict=True) inside
    x = images(channels)
    with torch.no_grad():
        h = model((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
        torch.testing.assert_close(h, encoder(x), rtol=0, atol=1e-5)
    if stem == "imagenet" and channels == 3:  # the README case: import + at most 3 lines
        assert len(done.info["recipe"]) <= 4


@pytest.mark.parametrize("library", ["torchvision", "timm"])
@pytest.mark.parametrize("width", [0.125, 0.5, 2.0])
def test_widths_the_libraries_cannot_build_are_refused(library, width, tmp_path):
    spec = EncoderSpec("resnet18", width, "small", 1, (0.3,), (0.35,))
    reason = refusal(spec, library)
    assert "width 1 only" in reason and "--format onnx" in reason and "\n" not in reason
    with pytest.raises(ExportError, match="width 1 only"):
        export(weights_of(build_encoder(spec), tmp_path / "w.safetensors"), library,
               tmp_path / "out.pt", images=images())
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert refusal(EncoderSpec("resnet50", 1.0, "small", 1), library) is None


# ---- ONNX and TorchScript ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graphs_compute_the_encoder_with_any_batch(fmt, tmp_path):
    """The graph normalises its [0, 1] input itself and takes a batch size other than the
    one it was exported with; metadata carries the input statistics."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        onnx = pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
    spec = EncoderSpec("resnet50", 0.125, "small-s2", 1, (0.2860,), (0.3530,))
    encoder = trained_like(spec)
    out = tmp_path / f"encoder.{'onnx' if fmt == 'onnx' else 'pt'}"
    done = export(weights_of(encoder, tmp_path / "w.safetensors"), fmt, out, images=images())
    x = images(count=5)  # exported with a batch of 2, checked on 8
    if fmt == "onnx":
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (h,) = session.run(None, {"images": x.numpy()})
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        described = json.loads(meta["fastclr"])
    else:
        files = {"fastclr.json": ""}
        module = torch.jit.load(str(out), _extra_files=files)
        with torch.no_grad():
            h = module(x)
        described = json.loads(files["fastclr.json"])
    with torch.no_grad():
        diff = (torch.as_tensor(h) - encoder(x)).abs().max().item()
    print(f"{fmt}: max abs difference {diff:.2e} (at export: "
          f"{done.info['check']['max_abs_diff']:.2e})")
    assert diff <= 1e-4 and done.info["check"]["max_abs_diff"] <= 1e-4
    assert described["mean"] == [0.2860] and described["std"] == [0.3530]


# ---- the command ---------------------------------------------------------------------------


@pytest.fixture
def exported_encoder(tmp_path):
    """A width-1 ResNet-18 saved as fastclr's encoder.safetensors, trained on the sample."""
    spec = EncoderSpec("resnet18", 1.0, "small-s2", 1, (0.2860,), (0.3530,))
    cfg = Config(data="fashion-mnist", data_dir=str(SAMPLE)).validate()
    path = tmp_path / "run" / "encoder.safetensors"
    path.parent.mkdir()
    export_encoder(trained_like(spec), path, {"config": cfg.to_dict(), "step": 3})
    return path


def test_export_command_prints_input_statistics_check_and_recipe(exported_encoder, tmp_path,
                                                                  capsys):
    out = tmp_path / "out" / "resnet18.pt"
    assert main(["export", str(exported_encoder), "--format", "torchvision",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean (0.2860), std (0.3530)" in printed
    assert "checked on 64 fashion-mnist test images: max abs difference" in printed
    assert "model.load_state_dict(torch.load(" in printed
    info = json.loads((tmp_path / "out" / "resnet18.json").read_text())
    assert info["encoder_step"] == 3 and info["mean"] == [0.2860]
    assert set(torch.load(out)) == set(load_encoder(exported_encoder).backbone.state_dict())


@pytest.mark.parametrize("argv_tail,message", [
    (["--format", "keras", "--out", "{tmp}/x.pt"], "invalid choice: 'keras'"),
    (["--format", "torchvision", "--out", "{file}/x.pt"], "cannot write --out"),
    (["--format", "torchvision", "--out", "{tmp}"], "is a folder"),
    (["--format", "onnx", "--out", "{tmp}/x.json"], "the .json name is kept"),
])
def test_bad_export_requests_are_one_line_and_write_nothing(exported_encoder, tmp_path, capsys,
                                                            argv_tail, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [part.format(tmp=tmp_path, file=a_file) for part in argv_tail]
    try:
        code = main(["export", str(exported_encoder), *argv])
    except SystemExit as e:  # argparse's refusal of an unknown choice
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_width_refusal_from_the_command(tmp_path, capsys):
    spec = EncoderSpec("resnet50", 0.125, "small-s2", 1, (0.3,), (0.35,))
    cfg = Config(data="fashion-mnist", data_dir=str(SAMPLE)).validate()
    path = tmp_path / "encoder.safetensors"
    export_encoder(build_encoder(spec), path, {"config": cfg.to_dict(), "step": 1})
    assert main(["export", str(path), "--format", "timm", "--out", str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "width 0.125" in err and "--format onnx" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.safetensors"]


def test_a_failed_write_leaves_neither_file(exported_encoder, tmp_path, monkeypatch):
    import fastclr.eval.export as export_module

    real = export_module.atomic_write

    def fail_on_json(path, write):
        if str(path).endswith(".json"):
            raise OSError(28, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(export_module, "atomic_write", fail_on_json)
    out = tmp_path / "out.pt"
    with pytest.raises(ExportError, match="No space left"):
        export(load_weights(exported_encoder), "torchscript", out, images=images())
    assert not out.exists() and not info_path(out).exists()


@pytest.mark.parametrize("missing,fmt", [("onnxscript", "onnx"), ("timm", "timm")])
def test_a_missing_extra_is_one_line_naming_it(exported_encoder, tmp_path, monkeypatch, capsys,
                                               missing, fmt):
    monkeypatch.setitem(__import__("sys").modules, missing, None)  # import raises ImportError
    out = tmp_path / "x.out"
    assert main(["export", str(exported_encoder), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install 'fastclr[{fmt}]'" in err, err
    assert not out.exists()
