"""Find finished runs for the subspace analyses and pull one layer's factors and W out of them.

The only project module this touches is :mod:`lora_repro.runs` (numpy, safetensors, PyYAML):
analysis never imports torch, transformers or the training code. Runs are identified by their
resolved ``config.yaml`` (task, model, adapter targets / r, seed), never by their path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import amplification as amp
from analysis import subspace as sub
from lora_repro import grids
from lora_repro import runs as runs_io
from lora_repro.errors import LoraReproError

WEIGHT_TYPES: tuple[str, ...] = runs_io.WEIGHT_TYPES

SWEEPS: tuple[tuple[str, tuple[tuple[str, ...], ...], tuple[int, ...], tuple[int, ...]], ...] = (
    tuple(
        (g.name, g.targets, g.ranks, g.seeds)
        for g in (grids.load(n) for n in ("subspace", "seeds", "table6"))
    )
)
"""Which sweep (``conf/sweep/<name>.yaml``) makes which runs, for the missing-run messages."""


def canonical_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Targets in the paper's order q, k, v, o, deduplicated.

    Raises:
        ValueError: for an unknown weight type.
    """
    t = set(targets)
    unknown = t - set(WEIGHT_TYPES)
    if unknown:
        raise ValueError(
            f"unknown weight type(s) {sorted(unknown)}; expected some of {list(WEIGHT_TYPES)}"
        )
    return tuple(w for w in WEIGHT_TYPES if w in t)


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
            targets=canonical_targets(adapter.get("targets") or ()),
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
    for path, cfg in runs_io.iter_finished(results, damaged):
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
    t = canonical_targets(targets)
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
    t = canonical_targets(targets)
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


class AdapterCache:
    """Loads each run's adapter once (:func:`lora_repro.runs.load_adapter`)."""

    def __init__(self) -> None:
        self._cache: dict[Path, runs_io.Adapter] = {}

    def get(self, run: RunRecord | str | os.PathLike) -> runs_io.Adapter:
        """The adapter of a run (record or run directory)."""
        path = Path(run.path if isinstance(run, RunRecord) else run)
        if path not in self._cache:
            self._cache[path] = runs_io.load_adapter(path)
        return self._cache[path]


@dataclass(frozen=True)
class LayerFactors:
    """The LoRA factors of one weight type at one layer, as float64.

    Attributes:
        key: adapter key.
        weight: weight type (q, k, v, o).
        layer: block index.
        A: (r, k).
        B: (d, r).
        A_init: (r, k) or ``None`` when the run saved no initial A.
        scaling: s of ΔW = s·B·A (α/r).
    """

    key: str
    weight: str
    layer: int
    A: np.ndarray
    B: np.ndarray
    A_init: np.ndarray | None
    scaling: float

    @property
    def r(self) -> int:
        """Rank."""
        return int(self.A.shape[0])

    @property
    def d(self) -> int:
        """Output features of W."""
        return int(self.B.shape[0])

    @property
    def k(self) -> int:
        """Input features of W."""
        return int(self.A.shape[1])


def layer_factors(adapter: runs_io.Adapter, weight: str, layer: int) -> LayerFactors:
    """The factors of ΔW_weight at block ``layer`` of an adapter (lora-repro or imported peft).

    Raises:
        KeyError: when the adapter has no such module (the message lists what it has).
    """
    key = adapter.key_for(weight, layer)
    a_init = None
    if adapter.A_init is not None and key in adapter.A_init:
        a_init = np.asarray(adapter.A_init[key], np.float64)
    return LayerFactors(
        key=key,
        weight=weight,
        layer=layer,
        A=np.asarray(adapter.A[key], np.float64),
        B=np.asarray(adapter.B[key], np.float64),
        A_init=a_init,
        scaling=float(adapter.scaling),
    )


def phi_between(f1: LayerFactors, f2: LayerFactors, view: str = "A") -> np.ndarray:
    """φ grid (Eq. 4) between two modules' directions under ``view`` (rows: f1's i, cols: f2's j).

    Raises:
        ValueError: for an unknown view, ``"dA"`` without A_init, or modules of different shape.
    """
    u1 = sub.view_basis(view, f1.A, f1.B, f1.A_init)
    u2 = sub.view_basis(view, f2.A, f2.B, f2.A_init)
    return sub.phi_grid(u1, u2, check=False)


def adapter_phi(
    adapter1: runs_io.Adapter,
    adapter2: runs_io.Adapter,
    weight: str,
    layer: int,
    view: str = "A",
) -> np.ndarray:
    """φ grid between ΔW_weight at ``layer`` of two adapters (any source, e.g. an imported peft one).

    Returns:
        (r1, r2) grid (fewer rows / columns when r exceeds the dimension of the view's space).

    Raises:
        KeyError: when an adapter lacks that module; ValueError as :func:`phi_between`.
    """
    return phi_between(
        layer_factors(adapter1, weight, layer), layer_factors(adapter2, weight, layer), view
    )


def adapter_table7(
    adapter: runs_io.Adapter,
    W: np.ndarray,
    weight: str,
    layer: int,
    *,
    n_random: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Table 7 quantities (§7.3) for ΔW_weight at ``layer`` of an adapter against its W (d, k).

    Raises:
        KeyError: when the adapter lacks that module; ValueError when W is not (d, k).
    """
    f = layer_factors(adapter, weight, layer)
    return amp.table7_stats(W, f.B, f.A, f.scaling, n_random=n_random, seed=seed)


def n_layers_of(adapter: runs_io.Adapter) -> int:
    """Number of blocks of the base model (header ``n_layers``, else 1 + the deepest adapted)."""
    if adapter.n_layers:
        return int(adapter.n_layers)
    return max(adapter.layers()) + 1


def default_layer(n_layers: int) -> int:
    """The middle block, n_layers // 2 (the paper's layer 48 of 96)."""
    return n_layers // 2


def spread_layers(n_layers: int) -> list[int]:
    """First, quarter, middle, three-quarter and last blocks (deduplicated), for Fig. 6 / 7."""
    cand = [0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1]
    return sorted(set(cand))


def has_adapter(run: RunRecord) -> bool:
    """Whether the run directory holds its adapter file (a fresh clone has only some)."""
    return (Path(run.path) / runs_io.ADAPTER_FILE).exists()


def check_layer(layer: int, n_layers: int) -> int:
    """``layer`` if it is a valid block index.

    Raises:
        ValueError: listing the valid range.
    """
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range; the model has blocks 0..{n_layers - 1}")
    return layer


class BaseWeights:
    """Pretrained W of one model, read once from ``<results>/base_weights/<model>.safetensors``."""

    def __init__(self, results: str | os.PathLike, model: str) -> None:
        self.path = runs_io.base_weights_path(results, model)
        self._w: dict[str, np.ndarray] | None = None
        self._infos: dict[str, runs_io.ModuleInfo] = {}

    def exists(self) -> bool:
        """Whether the file is there."""
        return self.path.exists()

    def _load(self) -> dict[str, np.ndarray]:
        if self._w is None:
            self._w, self._infos = runs_io.load_base_weights(self.path)
        return self._w

    def n_layers(self) -> int:
        """Number of blocks, 1 + the deepest layer saved (every block's W is saved).

        Raises:
            FileNotFoundError: when the file is missing (with a hint).
        """
        self._load()
        return 1 + max(info.layer for info in self._infos.values())

    def matrix(self, key: str) -> np.ndarray:
        """W (d, k) = (out, in) of adapter key ``key`` in float64.

        Raises:
            FileNotFoundError: when the file is missing (with a hint).
            KeyError: when the file has no such key.
        """
        self._load()
        assert self._w is not None
        if key not in self._w:
            raise KeyError(
                f"{self.path} has no weight {key!r}; it holds {len(self._w)} keys such as "
                f"{sorted(self._w)[:3]}"
            )
        return np.asarray(self._w[key], np.float64)
