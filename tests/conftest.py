import os
from pathlib import Path

import pytest
import torch

SAMPLE = Path(__file__).parent / "data" / "fashion-mnist-sample"

# Subprocess tests wait on progress, never on a guess of how fast this machine is; this limit
# only catches a hang, so it is far above what any machine needs (a 2-core CPU needs < 60 s).
HANG_SECONDS = float(os.environ.get("FASTCLR_TEST_HANG_SECONDS", 1800))


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


def tiny_config(run_dir, **overrides):
    """A config that trains a very small model on the shipped sample in a second or two."""
    from fastclr.config import load_config

    values = dict(data="fashion-mnist", data_dir=str(SAMPLE), arch="resnet18", width=0.125,
                  stem="small-s2", batch_size=32, epochs=2, warmup_epochs=0.5,
                  run_dir=str(run_dir), log_every=1, checkpoint_every=1000, tensorboard=False,
                  final_eval=False, deterministic=True, seed=0)
    values.update(overrides)
    return load_config(None, overrides=values)
