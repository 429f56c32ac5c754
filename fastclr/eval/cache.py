"""Results that depend only on the data, the architecture and the seed, kept across runs.

The random-init and raw-pixel baselines of `fastclr eval` take most of a small run's
evaluation (measured: 82 of the demo's 130 s) and are the same for every run of a preset:
they read no trained weight. They are kept as JSON files under $FASTCLR_CACHE/baselines/,
named by a hash of everything they depend on, so a changed data set (its files' fingerprint),
encoder spec, seed, kNN setting, torch version or device kind makes a new entry, never a
stale answer. Files are written atomically; a damaged one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fastclr.checkpoint import atomic_write
from fastclr.data.registry import CACHE_DIR

# bump when the baselines' code changes what they compute
BASELINES_VERSION = 1


def cache_key(parts: dict) -> str:
    """sha256 (first 24 hex digits) of the parts' canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def baselines_key(train, test, encoder_spec: dict, seed: int, knn_k: int,
                  knn_temperature: float, image_size: int | None, device_kind: str) -> dict:
    """What the baselines depend on: the data (name, fingerprints, sizes), the architecture
    and its input statistics, the seed of the random init, the kNN setting, the resolution,
    and the numerics (torch version, device kind)."""
    import torch

    return {"version": BASELINES_VERSION, "data": train.name,
            "train": [train.fingerprint, len(train)], "test": [test.fingerprint, len(test)],
            "encoder": encoder_spec, "seed": seed, "knn_k": knn_k,
            "knn_temperature": knn_temperature, "image_size": image_size,
            "torch": torch.__version__, "device": device_kind}


def cached(kind: str, key_parts: dict, compute, folder: Path | None = None
           ) -> tuple[dict, bool]:
    """(result, whether it came from the cache): `compute()` -> dict of JSON values, run
    only when no entry for `key_parts` exists under folder (default $FASTCLR_CACHE/kind)."""
    folder = Path(folder) if folder is not None else CACHE_DIR / kind
    path = folder / f"{cache_key(key_parts)}.json"
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == json.loads(json.dumps(key_parts, default=str)):
            return entry["result"], True
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    result = compute()
    blob = json.dumps({"key": key_parts, "result": result}, indent=1, default=str).encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(blob))
    except OSError:
        pass  # a read-only cache costs time next run, never this run's result
    return result, False
