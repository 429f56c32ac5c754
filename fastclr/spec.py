"""The model spec: what rebuilding an encoder f and a head g needs, and nothing else.

config -> spec -> model, in one place (`ModelSpec.from_config`). The spec is written whole into
every checkpoint and into `encoder.safetensors`, and models are rebuilt from it, never from
arguments repeated by hand. A spec field takes its value from the config option of the same
name (or the option named in its metadata), so adding a model option means: the option in
config.py (marked as part of the run's identity), the field here, and the code in models.py
that uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fastclr.errors import ConfigError


def _from_data(default):
    """A field that comes from the data set, not from an option."""
    return field(default=default, metadata={"from_data": True})


def _option(default, name: str | None = None):
    return field(default=default, metadata={"option": name} if name else {})


@dataclass(frozen=True)
class EncoderSpec:
    """Encoder f: a backbone by name (fastclr.registry.BACKBONES) and its input statistics.

    The encoder normalises its input itself, so an exported encoder takes plain [0, 1] images.
    """

    arch: str = _option("resnet18")
    width: float = _option(1.0)
    stem: str = _option("small")
    in_channels: int = _from_data(3)
    mean: tuple[float, ...] = _from_data((0.0, 0.0, 0.0))
    std: tuple[float, ...] = _from_data((1.0, 1.0, 1.0))
    norm: str = _option("batch", "encoder_norm")


@dataclass(frozen=True)
class HeadSpec:
    """Projection head g (SimCLR section 4.2): a head kind by name (fastclr.registry.HEADS)."""

    kind: str = _option("nonlinear", "head")
    layers: int = _option(2, "head_layers")
    hidden: int | None = _option(None, "head_hidden")
    out_dim: int = _option(128, "proj_dim")
    norm: str = _option("batch", "head_norm")
    # the official code's output layer: batch norm with a scale and no shift on z (specs
    # saved before this field existed load with "none", the head they were trained with)
    out_norm: str = _option("none", "head_out_norm")


@dataclass(frozen=True)
class ModelSpec:
    encoder: EncoderSpec
    head: HeadSpec

    @classmethod
    def from_config(cls, cfg, in_channels: int, mean, std, classes: int | None = None
                    ) -> "ModelSpec":
        """The spec of a run's model. The supervised objective (`classes` given) replaces the
        projection head by a linear classifier on h."""
        data = {"in_channels": in_channels, "mean": tuple(mean), "std": tuple(std)}
        head = _from_options(HeadSpec, cfg, data)
        if getattr(cfg, "objective", "simclr") == "supervised":
            head = HeadSpec(kind="linear", out_dim=classes)
        return cls(_from_options(EncoderSpec, cfg, data), head)

    def to_dict(self) -> dict:
        return {"encoder": encoder_spec_dict(self.encoder), "head": dataclasses.asdict(self.head)}

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelSpec":
        return cls(encoder_spec_from_dict(raw["encoder"]), _build(HeadSpec, raw["head"]))


def option_names(spec_type) -> list[str]:
    """The config options a spec type is built from."""
    return [f.metadata.get("option") or f.name for f in dataclasses.fields(spec_type)
            if not f.metadata.get("from_data")]


def encoder_spec_dict(spec: EncoderSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def encoder_spec_from_dict(raw: dict) -> EncoderSpec:
    return _build(EncoderSpec, raw)


def _from_options(spec_type, cfg, data: dict):
    values = {}
    for f in dataclasses.fields(spec_type):
        if f.metadata.get("from_data"):
            values[f.name] = data[f.name]
        else:
            values[f.name] = getattr(cfg, f.metadata.get("option") or f.name)
    return spec_type(**values)


def _build(spec_type, raw: dict):
    """A spec from its saved dict; unknown fields mean a newer fastclr wrote it."""
    names = {f.name for f in dataclasses.fields(spec_type)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"the saved model spec has fields this fastclr does not know "
                          f"({', '.join(unknown)}); was it written by a newer version?")
    return spec_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
