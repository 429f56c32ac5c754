"""The files a command reads and writes, checked before it does any work (and before torch is
imported): a weights path that cannot be weights, an output under a file or where nothing can
be written, is refused in one line with exit status 2, not found after minutes of computing.

Checks look and probe, never leave anything behind: an output's missing folders are made when
the output is written, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastclr.errors import CheckpointError, ConfigError

WEIGHTS_SUFFIXES = (".safetensors", ".pt")
# the picture formats fastclr writes, by file suffix (PIL's format names)
PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                   ".bmp": "BMP"}


def check_weights(path: str | os.PathLike) -> Path:
    """A run folder, an encoder .safetensors, a checkpoint .pt that exists, or pretrained:NAME
    (a shipped encoder, checked when it is loaded, as every file's contents are)."""
    if str(path).startswith("pretrained:"):
        return Path(path)
    path = Path(path)
    if path.is_dir():
        return path
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (give a run folder, an encoder "
                              ".safetensors or a checkpoint .pt)")
    if path.suffix not in WEIGHTS_SUFFIXES:
        raise CheckpointError(f"{path}: expected a run folder, an encoder .safetensors or a "
                              "checkpoint .pt")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    return path


def check_output_file(path: str | os.PathLike, what: str,
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """A file a command will write (replacing any file there): not a folder, with one of
    `suffixes` if given, in a folder that exists or can be made, where a file can be created."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} {path}: the name must end in {', '.join(suffixes)} (the "
                          "format follows the suffix)")
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{what} {path} is not a regular file")
    _check_writable_folder(path.parent, what, path)
    return path


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """A folder a command will write into: a folder already, or one that can be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder")
    _check_writable_folder(path, what, path)
    return path


def _check_writable_folder(folder: Path, what: str, target: Path) -> None:
    """`folder` exists or can be made, and a file can be created in it (or in the folder
    that will hold it)."""
    existing = folder
    try:
        while not existing.exists():
            if existing.is_symlink():  # a link to nowhere: mkdir would fail on it
                raise ConfigError(f"{what} {target}: {existing} is a broken link")
            existing = existing.parent
    except OSError as e:  # a folder on the way that cannot be looked into
        raise ConfigError(f"{what} {target}: {e.strerror or e}") from None
    if not existing.is_dir():
        raise ConfigError(f"{what} {target}: {existing} is a file, not a folder")
    import tempfile  # here: not on the path of a command line refused at parsing
    try:  # a probe file says more than permission bits (root, read-only mounts, quotas);
        # TemporaryFile has no name on Linux (O_TMPFILE): nothing is left, even on a kill
        with tempfile.TemporaryFile(prefix=".fastclr-probe-", dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {target}: cannot write in {existing} "
                          f"({e.strerror or e})") from None


def embedding_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """`fastclr embed --out OUT`: OUT.npy (".npy" added when missing) and OUT.index.jsonl."""
    path = Path(out)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    return path, path.with_name(path.stem + ".index.jsonl")


def check_embedding_out(out: str | os.PathLike) -> tuple[Path, Path]:
    """`fastclr embed --out OUT`: both files it writes, checked (OUT itself a folder is refused:
    OUT.npy would land beside it, not in it)."""
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, like "
                          f"{Path(out) / 'embeddings.npy'}")
    return tuple(check_output_file(path, "--out") for path in embedding_paths(out))
