"""Repository paths and the run config that ``python -m experiments.train <overrides>`` would get."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

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
