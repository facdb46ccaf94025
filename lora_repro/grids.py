"""Section 7's ablation grids, read from their one definition: ``conf/sweep/<name>.yaml``.

The sweep runs them through Hydra; the analysis reads the same files to know which cells Tables
5 and 6 have and which sweep makes a missing run. Torch-free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from lora_repro.runs import canonical_targets

CONF = Path(__file__).resolve().parent.parent / "conf"
SWEEP_DIR = CONF / "sweep"
# The grids of `make sweep` (SWEEP=paper), in the order they run.
PAPER = ("table5", "table6", "subspace", "seeds", "full_qv")


@dataclass(frozen=True)
class Grid:
    """One grid: every (targets, r, seed) it trains.

    Attributes:
        name: the file's stem (``table5``, ``table6``, ``subspace``, ``seeds``, ``full``, ...).
        targets: weight-type sets, each canonical (q, k, v, o order).
        ranks: ranks swept; ``None`` where the budget rule sets r per set (Table 5) or there is
            no rank (full fine-tuning).
        seeds: the grid's own seeds (a command-line ``seed=0,1,2`` replaces them).
        method: ``lora`` or ``full`` (``adapter.method``).
    """

    name: str
    targets: tuple[tuple[str, ...], ...]
    ranks: tuple[int, ...] | None
    seeds: tuple[int, ...]
    method: str = "lora"


def _values(text: object) -> list[str]:
    """A Hydra sweep value (``"4,8,64"``, ``"[q],[q,v]"``, ``0``) as its items, as text."""
    s = str(text).strip()
    if s.startswith("["):
        return [item.strip("[] ") for item in s.split("],")]
    return [v.strip() for v in s.split(",") if v.strip()]


@functools.cache
def load(name: str) -> Grid:
    """The grid ``conf/sweep/<name>.yaml``.

    Raises:
        FileNotFoundError: no such grid file.
    """
    spec = yaml.safe_load((SWEEP_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    params = spec["hydra"]["sweeper"]["params"]
    targets = tuple(
        tuple(canonical_targets(t.split(","))) for t in _values(params["adapter.targets"])
    )
    ranks = tuple(int(r) for r in _values(params["adapter.r"])) if "adapter.r" in params else None
    seeds = tuple(int(s) for s in _values(params.get("seed", "0")))
    method = (spec.get("adapter") or {}).get("method", "lora")
    return Grid(name, targets, ranks, seeds, method)


def names() -> list[str]:
    """Every grid file's name, sorted."""
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
