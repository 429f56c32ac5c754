from pathlib import Path

import pytest
import torch

from fixtures import SAMPLE


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, to run the official SimCLR code's TensorFlow ops next to ours (tests that
    compare with it are skipped where it is not installed; requirements-official.txt pins
    the version these tests were written against)."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:    # torch imports triton on first use; loaded after TensorFlow, it crashes the process
        import triton  # noqa: F401
    except ImportError:
        pass
    return pytest.importorskip("tensorflow")
