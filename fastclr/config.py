"""One typed config for a run; YAML presets and CLI flags are its two front ends.

The config is flat (every option has one unique name, used as is in YAML and as `--name` on the
command line) and grouped for help text only; fastclr.options declares the options. This module
turns text (YAML, flags) into typed values, finds presets and names run folders.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

import yaml

from fastclr.errors import ConfigError
from fastclr.options import (DATA_PATH_PREFIXES, GROUPS, IDENTITY_GROUPS, Config,  # noqa: F401
                             _HINTS, _unknown, identity_options, options)

PRESET_DIR = Path(__file__).parent / "configs"


def _base_type(name: str):
    """(type, optional) of an option; tuples come back as `tuple`."""
    hint = _HINTS[name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is tuple:
        return tuple, optional
    return hint, optional


def _type_name(kind) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "two numbers like 0.2,1.0"}[kind]


def coerce(name: str, value, from_text: bool = False):
    """Turn a YAML value, or CLI text if `from_text`, into the option's type, or raise."""
    kind, optional = _base_type(name)
    bad = ConfigError(f"{name} must be {_type_name(kind)}"
                      f"{' or null' if optional else ''}; got {value!r}")
    if from_text and isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        if kind is bool:
            table = {"true": True, "yes": True, "1": True, "on": True,
                     "false": False, "no": False, "0": False, "off": False}
            if text.lower() not in table:
                raise bad
            return table[text.lower()]
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise bad from None
        if kind is float:
            try:
                return float(text)
            except ValueError:
                raise bad from None
        if kind is tuple:
            value = text.strip("()[] ").split(",")
        else:
            return text
    if value is None:
        if optional:
            return None
        raise bad
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise bad
        try:
            return tuple(coerce_number(v) for v in value)
        except (TypeError, ValueError):
            raise bad from None
    if not isinstance(value, str):
        raise bad
    return value


def coerce_number(v) -> float:
    if isinstance(v, bool):
        raise TypeError(v)
    if isinstance(v, str):
        return float(v.strip())
    if not isinstance(v, (int, float)):
        raise TypeError(v)
    return float(v)


def resolve_preset(path_or_name: str) -> Path:
    """A preset name (fashion-mnist-cpu) or a path to a YAML file."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{path_or_name}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"config {path_or_name!r} is neither a file nor a preset; presets: "
                      f"{', '.join(list_presets())}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config {path} is not valid YAML{at}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of option: value")
    return raw


def _preset_options(path: Path, raw: dict, seen: tuple = ()) -> dict:
    """The options a YAML file (`raw`, read from `path`) sets, typed; `extends: PRESET` takes
    another preset's first, so a preset that differs from one in a few options says only those."""
    options = {}
    if "extends" in raw:
        parent = resolve_preset(str(raw["extends"]))
        if parent in (*seen, path):
            raise ConfigError(f"config {parent} extends itself (through {path})")
        options = _preset_options(parent, read_yaml(parent), (*seen, path))
    for key, value in raw.items():
        if key in ("name", "extends"):
            continue
        if not isinstance(key, str) or key not in _HINTS:
            raise _unknown(str(key))
        options[key] = coerce(key, value)
    return options


def load_config(config: str | None = None, overrides: dict | None = None,
                text_overrides: dict[str, str] | None = None) -> Config:
    """Defaults <- preset/YAML file <- `overrides` (typed) <- `text_overrides` (CLI strings).

    The config's name, and with it the default run folder runs/<name>, is the preset's (or
    the YAML file's; a run's own config.yaml, given back, keeps the run's name), followed by
    each option that changes what is learned and that the overrides set to another value
    (`_temperature=0.5`): a variant never lands in the folder of the preset's run.
    """
    base: dict = {}
    name = "custom"
    if config is not None:
        path = resolve_preset(config)
        raw = read_yaml(path)
        name = _name_text(raw.get("name", path.stem))
        base = _preset_options(path, raw)
    values = dict(base)
    for key, value in (overrides or {}).items():
        if key not in _HINTS or key == "name":
            raise _unknown(key)
        values[key] = coerce(key, value)
    for key, value in (text_overrides or {}).items():
        if key not in _HINTS or key == "name":
            raise _unknown(key)
        values[key] = coerce(key, value, from_text=True)
    cfg = Config(name=name, **values).validate()
    reference = Config(name=name, **base)
    changed = [k for k in identity_options() if getattr(cfg, k) != getattr(reference, k)]
    return dataclasses.replace(cfg, name=name + variant_suffix(cfg, changed))


def variant_suffix(cfg: Config, names: list[str], limit: int = 100) -> str:
    """`_temperature=0.5_seed=1`: readable, safe in a path, and short (a hash past `limit`)."""
    def text(value) -> str:
        if isinstance(value, tuple):
            return ",".join(f"{v:g}" for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    suffix = "".join(f"_{k}={text(getattr(cfg, k))}" for k in names)
    suffix = "".join(c if c.isalnum() or c in "._=,+-" else "-" for c in suffix)
    if len(suffix) > limit:
        import hashlib
        suffix = suffix[:limit - 9] + "-" + hashlib.sha1(suffix.encode()).hexdigest()[:8]
    return suffix


def _name_text(value) -> str:
    text = str(value).strip()
    if not text or "/" in text or text in (".", ".."):
        raise ConfigError(f"name must be a plain folder name, got {value!r}")
    return text


def config_from_dict(raw: dict) -> Config:
    """Rebuild a saved config (run folder or checkpoint); unknown keys are an error. An option
    the saved config predates takes the value that was in effect then (its `absent` value,
    e.g. stream_crop square), so a run folder's config keeps describing its weights."""
    name = raw.get("name", "custom")
    values = {f.name: f.metadata["absent"](raw) for f in options()
              if "absent" in f.metadata and f.name not in raw}
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in _HINTS:
            raise _unknown(key)
        values[key] = coerce(key, value)
    return Config(name=name, **values).validate()


def with_absolute_paths(cfg: Config) -> Config:
    """`cfg` with its data paths (data_dir, and the PATH of folder:PATH and imagefolder:PATH)
    absolute, as a run saves it: its config.yaml and checkpoints then mean the same files from
    any directory (`fastclr eval RUN` elsewhere). A relative path is taken from the current
    directory, as the run reads it."""
    def absolute(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    changes = {}
    if cfg.data_dir is not None:
        changes["data_dir"] = absolute(cfg.data_dir)
    kind, _, path = cfg.data.partition(":")
    if cfg.data.startswith(DATA_PATH_PREFIXES) and path:
        changes["data"] = f"{kind}:{absolute(path)}"
    return dataclasses.replace(cfg, **changes)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
