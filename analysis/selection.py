"""Choose the finished runs an analysis needs, by their configs (paper §7: which ranks, which seeds).

Runs are identified by their resolved ``config.yaml`` (task, model, adapter targets / r, seed),
never by their path. The only project modules this touches are :mod:`lora_repro.runs` and
:mod:`lora_repro.grids` (numpy, safetensors, PyYAML): analysis never imports torch,
transformers or the training code. Reading a chosen run's factors is :mod:`analysis.factors`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lora_repro import grids, runs
from lora_repro.errors import LoraReproError

WEIGHT_TYPES: tuple[str, ...] = runs.WEIGHT_TYPES

SWEEPS: tuple[tuple[str, tuple[tuple[str, ...], ...], tuple[int, ...], tuple[int, ...]], ...] = (
    tuple(
        (g.name, g.targets, g.ranks, g.seeds)
        for g in (grids.load(n) for n in ("subspace", "seeds", "table6"))
    )
)
"""Which sweep (``conf/sweep/<name>.yaml``) makes which runs, for the missing-run messages."""


def known_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Targets in the paper's order q, k, v, o, each once (:func:`lora_repro.runs.canonical_targets`),
    every one of them among :data:`WEIGHT_TYPES` (the four attention weight types the analysis
    reads).

    Raises:
        ValueError: for an unknown weight type (the message lists the known ones).
    """
    ordered = runs.canonical_targets(targets)
    unknown = sorted(set(ordered) - set(WEIGHT_TYPES))
    if unknown:
        raise ValueError(f"unknown weight type(s) {unknown}; expected some of {list(WEIGHT_TYPES)}")
    return tuple(ordered)


@dataclass(frozen=True)
class RunSpec:
    """The identity of a run the analysis needs.

    Attributes:
        task: task name (``config.task.name``).
        model: model name (``config.model.name``).
        targets: adapted weight types, canonical order.
        r: rank.
        seed: run seed (``config.seed``).
    """

    task: str
    model: str
    targets: tuple[str, ...]
    r: int
    seed: int

    def describe(self) -> str:
        """One line, e.g. ``rotten_tomatoes/minilm [q,v] r=64 seed=1``."""
        return f"{self.task}/{self.model} [{','.join(self.targets)}] r={self.r} seed={self.seed}"

    def sweeps(self) -> list[str]:
        """Names of the sweeps (:data:`SWEEPS`) that make this run."""
        return [
            name
            for name, tsets, ranks, seeds in SWEEPS
            if self.targets in tsets and self.r in ranks and self.seed in seeds
        ]

    def missing_message(self) -> str:
        """What is missing and which sweep makes it."""
        sw = self.sweeps()
        if sw:
            how = " or ".join(f"`{s}`" for s in sw)
            return f"missing run {self.describe()}: made by the {how} sweep (conf/sweep/)"
        return f"missing run {self.describe()}: no predefined sweep makes it; train it directly"


@dataclass(frozen=True)
class RunRecord:
    """A finished run found below a results folder.

    Attributes:
        path: the run directory.
        spec: its identity.
        alpha: α of the adapter.
        init: name of A's initialisation (``None`` if the config does not say).
        config: the resolved config.
    """

    path: Path
    spec: RunSpec
    alpha: float | None
    init: str | None
    config: dict[str, Any] = field(repr=False, compare=False)


def _name(section: Any) -> str | None:
    if isinstance(section, dict):
        return section.get("name")
    return section if isinstance(section, str) else None


def config_get(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``None`` when a key is absent."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def record_from_config(path: str | os.PathLike, cfg: Mapping[str, Any]) -> RunRecord | None:
    """A :class:`RunRecord` from a resolved config, or ``None`` if it is not a LoRA run."""
    adapter = cfg.get("adapter") or {}
    task, model = _name(cfg.get("task")), _name(cfg.get("model"))
    if not isinstance(adapter, Mapping) or "r" not in adapter or task is None or model is None:
        return None
    try:
        spec = RunSpec(
            task=str(task),
            model=str(model),
            targets=known_targets(adapter.get("targets") or ()),
            r=int(adapter["r"]),
            seed=int(cfg.get("seed", 0)),
        )
    except (TypeError, ValueError):
        return None
    alpha = adapter.get("alpha")
    return RunRecord(
        path=Path(path),
        spec=spec,
        alpha=float(alpha) if alpha is not None else None,
        init=adapter.get("init"),
        config=dict(cfg),
    )


def index_runs(
    results: str | os.PathLike,
    where: Mapping[str, str] | None = None,
    damaged: list | None = None,
) -> list[RunRecord]:
    """Every usable finished LoRA run below ``results`` (status success, files sound), by path.

    Args:
        results: results folder.
        where: keep only runs whose config has these values, dotted keys compared as strings,
            e.g. ``{"adapter.init": "kaiming_uniform", "train.max_steps": "300"}``.
        damaged: when given, the damaged files of runs left out are appended to it.
    """
    out = []
    for path, cfg in runs.iter_finished(results, damaged):
        rec = record_from_config(path, cfg or {})
        if rec is None:
            continue
        if where and any(str(config_get(rec.config, k)) != str(v) for k, v in where.items()):
            continue
        out.append(rec)
    return out


def select_run(records: Sequence[RunRecord], spec: RunSpec) -> RunRecord | None:
    """The run matching ``spec``, or ``None``.

    When several runs match (e.g. different α, init or group), the first by path is used and a
    warning lists them all; narrow the choice with ``index_runs(where=...)``.
    """
    hits = [r for r in records if r.spec == spec]
    if len(hits) > 1:
        warnings.warn(
            f"{len(hits)} runs match {spec.describe()}: "
            + ", ".join(str(h.path) for h in hits)
            + f"; using {hits[0].path} (narrow with --where key=value)",
            stacklevel=2,
        )
    return hits[0] if hits else None


def ranks_available(
    records: Sequence[RunRecord], *, task: str, model: str, targets: Sequence[str], seed: int
) -> list[int]:
    """Sorted ranks of finished runs with these task, model, targets and seed."""
    t = known_targets(targets)
    return sorted(
        {
            r.spec.r
            for r in records
            if (r.spec.task, r.spec.model, r.spec.targets, r.spec.seed) == (task, model, t, seed)
        }
    )


PAPER_RANK_PAIR: tuple[int, int] = (8, 64)
"""The ranks compared in paper Fig. 3 (and the rank of Fig. 4: the larger one)."""


class MissingRuns(LoraReproError, ValueError):
    """Runs that an analysis needs are not among the finished ones.

    Attributes:
        specs: the missing runs (their :meth:`RunSpec.missing_message` names the sweep).
    """

    def __init__(self, message: str, specs: Sequence[RunSpec]) -> None:
        super().__init__(message)
        self.specs = list(specs)


@dataclass(frozen=True)
class RankPair:
    """The two runs of one seed compared in Fig. 3 / 6.

    Attributes:
        small: the smaller rank's run.
        large: the larger rank's run.
        note: why these ranks when they are not the ones asked for (``None`` when they are).
        missing: the runs of the paper's pair that are absent (for the missing-run list).
    """

    small: RunRecord
    large: RunRecord
    note: str | None = None
    missing: tuple[RunSpec, ...] = ()


def _nearest(have: Sequence[int], target: int) -> int:
    # nearest on a log scale (ranks go 1, 2, 4, 8, 64); a tie goes to the larger rank
    return min(have, key=lambda r: (abs(np.log2(r / target)), -r))


def pick_rank_pair(
    records: Sequence[RunRecord],
    *,
    task: str,
    model: str,
    targets: Sequence[str],
    seed: int,
    ranks: tuple[int, int] | None = None,
) -> RankPair:
    """The runs at two ranks (one seed) compared in Fig. 3 / 6 and the notebook.

    Args:
        records: finished runs (:func:`index_runs`).
        task: task name.
        model: model name.
        targets: adapted weight types of the runs.
        seed: the seed of both runs.
        ranks: (small, large) asked for: exactly these are used. ``None``: the paper's
            :data:`PAPER_RANK_PAIR` (r = 8 vs r = 64) when both were run; otherwise r = 64 or else
            the largest rank found, against r = 8 or else the smaller rank nearest to 8, with a
            note saying so.

    Returns:
        A :class:`RankPair` (when several runs match a rank, :func:`select_run` picks and warns).

    Raises:
        MissingRuns: when an asked rank has no finished run (the message names it and the sweep
            that makes it, in one line), or when fewer than two ranks were run.
    """
    t = known_targets(targets)
    have = ranks_available(records, task=task, model=model, targets=t, seed=seed)
    found = ", ".join(map(str, have)) or "none"
    where = f"[{','.join(t)}] ranks at seed {seed}: {found}"

    def spec(r: int) -> RunSpec:
        return RunSpec(task, model, t, int(r), int(seed))

    def run(r: int) -> RunRecord:
        rec = select_run(records, spec(r))
        assert rec is not None  # r is in `have`
        return rec

    if ranks is not None:
        small, large = (int(r) for r in ranks)
        lacking = [spec(r) for r in dict.fromkeys((small, large)) if r not in have]
        if lacking:
            raise MissingRuns(
                f"r={small} vs r={large} was asked for: "
                + "; ".join(m.missing_message() for m in lacking)
                + f" ({where})",
                lacking,
            )
        return RankPair(run(small), run(large))
    small, large = PAPER_RANK_PAIR
    lacking = tuple(spec(r) for r in (small, large) if r not in have)
    if not lacking:
        return RankPair(run(small), run(large))
    if len(have) < 2:
        raise MissingRuns(
            "needs runs at two ranks at one seed: "
            + "; ".join(m.missing_message() for m in lacking)
            + f" ({where})",
            lacking,
        )
    hi = large if large in have else have[-1]
    lo = small if small in have and small < hi else _nearest([r for r in have if r < hi], small)
    note = f"r={small} vs r={large} (the paper's) not both found ({where}); using r={lo} vs r={hi}"
    return RankPair(run(lo), run(hi), note, lacking)


def task_models(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """Sorted distinct (task, model) pairs among ``records``."""
    return sorted({(r.spec.task, r.spec.model) for r in records})


def has_adapter(run: RunRecord) -> bool:
    """Whether the run directory holds its adapter file (a fresh clone has only some)."""
    return (Path(run.path) / runs.ADAPTER_FILE).exists()
