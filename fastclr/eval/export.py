"""`fastclr export`: the encoder f for torchvision, timm, ONNX Runtime or TorchScript.

torchvision and timm get a state dict that loads with strict=True into the library's own
ResNet, after the changes its recipe lists (printed, and saved beside the file): the small
stems replace conv1 with a 3x3 conv and the max-pool with Identity, and the classifier `fc`
becomes Identity, so the model returns h, the features the paper evaluates (section 4.2).
Those models take normalised images; the mean and std the encoder normalises with itself are
in the JSON beside the file. ONNX and TorchScript get the whole encoder as a graph,
normalisation included, taking [0, 1] images with any batch size. Every export is run once on
real images of the encoder's data set before it is written, and the largest difference from
fastclr's encoder is reported.

What the libraries can build (torchvision 0.29, timm 1.0): ResNet-18/34/50 at width 1 only.
torchvision fixes every stage's width (64-128-256-512; `width_per_group` widens only a
bottleneck's inner 3x3, not fastclr's width multiplier), and timm's `channels` sets the stage
widths but its single-conv stem stays 64 channels wide, so neither holds a narrower or wider
fastclr encoder. ONNX and TorchScript hold any width, stem and backbone.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fastclr.checkpoint import atomic_write
from fastclr.errors import ExportError
from fastclr.eval.weights import Weights

FORMATS = {
    "torchvision": "a state dict for torchvision.models.resnet18/34/50 (width 1)",
    "timm": "a state dict for timm.create_model('resnet18'/'resnet34'/'resnet50') (width 1)",
    "onnx": "an ONNX graph of the encoder, normalisation included (needs the onnx extra)",
    "torchscript": "a TorchScript module of the encoder, normalisation included",
}
LIBRARIES = ("torchvision", "timm")
LIBRARY_ARCHS = ("resnet18", "resnet34", "resnet50")
CHECK_IMAGES = 64  # real images every export is run on before it is written
EXAMPLE_BATCH = 2  # the batch the graphs are traced with; the check runs another size


@dataclass
class Exported:
    path: Path
    info_path: Path
    info: dict  # what the JSON beside the export says: input, output, recipe, check


# ---- what each library can build -----------------------------------------------------------


def refusal(spec, library: str) -> str | None:
    """Why `library` cannot build a model the encoder of `spec` loads into, or None."""
    if spec.arch not in LIBRARY_ARCHS:
        return (f"{library} export knows {', '.join(LIBRARY_ARCHS)}, not the backbone "
                f"{spec.arch!r}: use --format onnx or --format torchscript (any backbone)")
    if spec.width != 1:
        why = ("every stage's width is fixed" if library == "torchvision"
               else "its stem is 64 channels wide whatever `channels` says")
        return (f"{library} builds ResNets at width 1 only ({why}); this encoder is "
                f"{spec.arch} at width {spec.width:g}: use --format onnx or --format "
                "torchscript (any width), or pretrain with --width 1")
    return None


def stem_lines(spec) -> list[str]:
    """The changes to the library's first layers that fastclr's stem needs, as code."""
    c = spec.in_channels
    if spec.stem == "imagenet":
        if c == 3:
            return []
        return [f"model.conv1 = torch.nn.Conv2d({c}, 64, 7, 2, 3, bias=False)"
                f"  # {c}-channel input"]
    stride = 2 if spec.stem == "small-s2" else 1
    return [f"model.conv1 = torch.nn.Conv2d({c}, 64, 3, {stride}, 1, bias=False)"
            f"  # fastclr's {spec.stem} stem: 3x3, stride {stride}",
            "model.maxpool = torch.nn.Identity()  # and no max-pool"]


def recipe(spec, library: str, path: str) -> list[str]:
    """The Python lines that build the library's model and load the exported state dict."""
    if library == "torchvision":
        lines = ["import torch, torchvision", f"model = torchvision.models.{spec.arch}()"]
        lines += stem_lines(spec)
        lines.append("model.fc = torch.nn.Identity()  # no classifier: the model returns h")
    else:
        channels = "" if spec.in_channels == 3 else f", in_chans={spec.in_channels}"
        lines = ["import timm, torch",
                 f"model = timm.create_model({spec.arch!r}, num_classes=0{channels})"
                 "  # no classifier: the model returns h"]
        lines += stem_lines(spec)
    lines.append(f"model.load_state_dict(torch.load({path!r}))")
    return lines


def build_library_model(spec, library: str) -> nn.Module:
    """The library's model changed as `recipe` says, with fresh weights.

    tests/eval/test_export.py runs the recipe's text and holds it to this.
    """
    if library == "torchvision":
        import torchvision
        model = getattr(torchvision.models, spec.arch)()
        model.fc = nn.Identity()
    else:
        import timm
        model = timm.create_model(spec.arch, num_classes=0, in_chans=spec.in_channels)
    c = spec.in_channels
    if spec.stem == "imagenet":
        if c != 3 and library == "torchvision":
            model.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
    else:
        model.conv1 = nn.Conv2d(c, 64, 3, 2 if spec.stem == "small-s2" else 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def library_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors under the names torchvision and timm use (the same as fastclr's
    ResNet: conv1, bn1, layer1.0.conv1, ...); the input statistics are left out."""
    return {k[len("backbone."):]: v.detach().cpu().clone()
            for k, v in encoder.state_dict().items() if k.startswith("backbone.")}


# ---- the images every export is checked on -------------------------------------------------


def check_images(weights: Weights, count: int = CHECK_IMAGES) -> tuple[torch.Tensor, str]:
    """`count` real images of the encoder's data set as the encoder sees them: float (n, C, S,
    S) in [0, 1] at the training resolution; and what they are, in words."""
    from fastclr.data import get_spec, load_split
    from fastclr.data.images import center_view

    cfg = weights.cfg
    spec = get_spec(cfg.data)
    split = spec.test if spec.labeled else spec.pretrain[0]
    images = load_split(cfg.data, split, cfg.data_dir, size=cfg.image_size, sample=count).images
    x = images.float() / 255
    if cfg.image_size is not None:
        x = center_view(x, cfg.image_size)
    return x, f"{len(x)} {cfg.data} {split} images"


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


# ---- the formats ---------------------------------------------------------------------------


def _library_export(encoder, library: str, path_text: str, x: torch.Tensor
                    ) -> tuple[bytes, dict, float]:
    spec = encoder.spec
    tensors = library_state_dict(encoder)
    try:
        model = build_library_model(spec, library)
    except ImportError:
        raise ExportError(f"--format {library} checks the export in {library}, which is not "
                          f"installed: pip install 'fastclr[{library}]'") from None
    model.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        diff = _max_diff(model.eval()((x - encoder.mean) / encoder.std), encoder(x))
    buf = io.BytesIO()
    torch.save(tensors, buf)
    extra = {"recipe": recipe(spec, library, path_text),
             "classifier": "none: the state dict has no fc.*; set model.fc = Identity (timm: "
                           "num_classes=0) to get h, or a new nn.Linear to fine-tune",
             "input": "float images (N, C, H, W) in [0, 1], normalised by you: "
                      "(x - mean) / std with the mean and std below"}
    return buf.getvalue(), extra, diff


def _onnx_export(encoder, x: torch.Tensor) -> tuple[bytes, dict, float]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  torch.onnx's translator, imported by the exporter
    except ImportError:
        raise ExportError("--format onnx needs onnx, onnxscript and onnxruntime: "
                          "pip install 'fastclr[onnx]'") from None
    example = x[:EXAMPLE_BATCH]
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(encoder, (example,), input_names=["images"],
                                    output_names=["h"], dynamic_shapes=({0: batch},),
                                    dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"fastclr": json.dumps(_describe(encoder))})
    blob = proto.SerializeToString()
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (h,) = session.run(None, {"images": x.numpy()})
    return blob, {"input": "'images': float32 (N, C, H, W) in [0, 1]; the graph normalises",
                  "output": "'h': float32 (N, feat_dim)"}, _max_diff(h, encoder(x))


def _torchscript_export(encoder, x: torch.Tensor) -> tuple[bytes, dict, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        scripted = torch.jit.script(encoder)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={"fastclr.json": json.dumps(
            _describe(encoder))})
        loaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
        with torch.no_grad():
            h = loaded(x)
    return buf.getvalue(), {"input": "float32 (N, C, H, W) in [0, 1]; the module normalises",
                            "note": "PyTorch deprecates TorchScript; onnx is the lasting "
                                    "graph format"}, _max_diff(h, encoder(x))


def _describe(encoder) -> dict:
    """What a user of the exported model must know: the input statistics and the shapes."""
    spec = encoder.spec
    return {"arch": spec.arch, "width": spec.width, "stem": spec.stem,
            "in_channels": spec.in_channels, "mean": list(spec.mean), "std": list(spec.std),
            "feature_dim": encoder.feat_dim}


# ---- export --------------------------------------------------------------------------------


def info_path(out: str | Path) -> Path:
    """OUT -> the JSON beside it: resnet18.pt -> resnet18.json."""
    out = Path(out)
    return out.with_name(out.stem + ".json")


def check_out(out: str | Path) -> Path:
    """Refuse, before any work, an --out that cannot be written (its folder is made later)."""
    out = Path(out)
    if out.suffix == ".json":
        raise ExportError(f"--out {out}: the .json name is kept for the description written "
                          "beside the export; give another suffix (.pt, .onnx)")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name in it")
    folder = out.absolute().parent
    while not folder.exists():  # the nearest folder that exists must take the new one
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write --out {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write --out {out}: {folder} is not writable")
    return out


def export(weights: Weights, fmt: str, out: str | Path, images: torch.Tensor | None = None,
           source: str | None = None) -> Exported:
    """Export the encoder of `weights` as `fmt` to `out`, with a JSON beside it.

    The export is checked on `images` (float (n, C, S, S) in [0, 1]; default: real images of
    the encoder's data set) before anything is written; both files are written atomically,
    and neither is left behind if either cannot be.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    out = check_out(out)
    encoder = weights.encoder.to("cpu").float().eval()
    reason = refusal(encoder.spec, fmt) if fmt in LIBRARIES else None
    if reason:  # before any image is read
        raise ExportError(reason)
    checked_on = "the given images"
    if images is None:
        images, checked_on = check_images(weights)
    x = images.float().cpu()
    with torch.no_grad():
        if fmt in LIBRARIES:
            blob, extra, diff = _library_export(encoder, fmt, str(out), x)
        elif fmt == "onnx":
            blob, extra, diff = _onnx_export(encoder, x)
        else:
            blob, extra, diff = _torchscript_export(encoder, x)
    info = {"format": fmt, "file": out.name, "source": source or str(weights.path),
            "encoder_step": weights.step, "data": weights.cfg.data,
            "image_size": int(x.shape[-1]), **_describe(encoder), **extra,
            "check": {"images": checked_on, "max_abs_diff": diff}}
    sidecar = info_path(out)
    text = (json.dumps(info, indent=2) + "\n").encode()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(blob))
        atomic_write(sidecar, lambda f: f.write(text))
    except OSError as e:
        out.unlink(missing_ok=True)
        raise ExportError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    return Exported(out, sidecar, info)


def summary(done: Exported) -> list[str]:
    """What `fastclr export` prints: where, what it takes, how it was checked, how to load."""
    info = done.info
    mean = ", ".join(f"{v:.4f}" for v in info["mean"])
    std = ", ".join(f"{v:.4f}" for v in info["std"])
    lines = [f"wrote {done.path} ({info['format']}: {info['arch']} width {info['width']:g}, "
             f"{info['stem']} stem, h of {info['feature_dim']} dims) and {done.info_path}"]
    where = "the graph does it" if info["format"] in ("onnx", "torchscript") \
        else "normalise them yourself"
    lines.append(f"input: {info['in_channels']}-channel images in [0, 1], "
                 f"{info['image_size']} px as trained; mean ({mean}), std ({std}): {where}")
    check = info["check"]
    lines.append(f"checked on {check['images']}: max abs difference from fastclr's encoder "
                 f"{check['max_abs_diff']:.2e}")
    if "recipe" in info:
        lines += ["load it with:", *("    " + line for line in info["recipe"])]
    return lines
