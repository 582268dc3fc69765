"""Shared pytest fixtures.

Tests that need the real offline data look for it under ``$PRUNELAB_DATA`` or, as in CI, in
``../shared/data`` beside the repository, and are skipped when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path | None:
    for candidate in (os.environ.get("PRUNELAB_DATA"), REPO_ROOT.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def shared_data_dir() -> Path:
    """The folder holding the offline datasets (``mnist.npz``, ``cifar10.npz``, ``weights/``)."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("offline data not found: set PRUNELAB_DATA or place ../shared/data beside the repo")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    # Small, fixed thread count: the CI machine has 2 cores and tests must not fight over them.
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one torch thread (tiny models: a second thread only adds synchronisation, and
    on a loaded 2-core machine it makes every step several times slower). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
