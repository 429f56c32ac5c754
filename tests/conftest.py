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
