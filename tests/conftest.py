"""Shared test set-up: CPU only, offline, results written under tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # tests force the CPU
os.environ["HF_HUB_OFFLINE"] = "1"  # and never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Small validation/test splits keep each evaluation under a second in the fast tier.
FAST = [
    "train.max_steps=3",
    "train.batch_size=8",
    "train.progress=false",
    "task.val_fraction=0.02",
    "task.test_fraction=0.02",
]


def compose(*overrides: str):
    """The run config that `python -m experiments.train <overrides>` would get."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import experiments.train  # noqa: F401  (registers the structured-config schema)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"
