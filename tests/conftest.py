"""Shared test settings: FAST mode, few threads, deterministic seeds."""
import os

os.environ.setdefault("COURSE_MODE", "fast")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
