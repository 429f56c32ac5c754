import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Tests never write into the user's cache (the evaluation's cached baselines, downloads):
# set before fastclr is imported, and inherited by the commands tests start.
os.environ["FASTCLR_CACHE"] = tempfile.mkdtemp(prefix="fastclr-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTCLR_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from fixtures import SAMPLE  # noqa: E402


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
