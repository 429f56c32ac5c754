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
