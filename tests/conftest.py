"""Shared test set-up: CPU only, offline, results written under tmp_path; shared fixtures.

Helpers that tests import (tiny models, synthetic results, the config composer) live in the
``tests.helpers`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # tests force the CPU
os.environ["HF_HUB_OFFLINE"] = "1"  # and never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module on one intra-op thread, then restore the previous setting.

    Ops on 32-wide tensors gain nothing from threads, and on a small, busy CPU the thread
    hand-offs dominate: one thread made the tiny-model tests ~5x faster (39 s -> 6 s on 2 cores).
    A module applies it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
