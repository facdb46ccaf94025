"""Which runs one build draws and at which layer, decided from the configs before any drawing.

Fig. 3 / 6 compare two ranks at one seed, Fig. 4 / 7 two seeds at one rank, Fig. 8 and Table 7
use every rank found (paper §7.2, §7.3, App. H). The paper's ranks are used by default with
graceful fallbacks (each noted); ranks that were asked for are used exactly. Only the adapters of
the chosen runs are ever read, and only once the choice is made (:func:`plan_build`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import factors, selection
from analysis.factors import AdapterCache, BaseWeights, LayerFactors
from analysis.figures.options import Options
from analysis.selection import RunRecord, RunSpec
from lora_repro import runs


@dataclass(frozen=True)
class RunPair:
    """The two runs of one pair of figures, or why there are none.

    Attributes:
        kind: ``ranks`` (Fig. 3 / 6: two ranks at the first seed) or ``seeds`` (Fig. 4 / 7: two
            seeds at the large rank); the key of the pair in the summary.
        records: (a, b), rows and columns of the φ grids; ``None`` when the pair is missing.
        why: one line on what is missing (empty when ``records`` is set).
    """

    kind: str
    records: tuple[RunRecord, RunRecord] | None
    why: str = ""


@dataclass(frozen=True)
class RunChoice:
    """Every run one build draws, chosen from the configs alone.

    Attributes:
        pairs: the rank pair, then the seed pair.
        ranked: rank -> the first seed's run with its adapter, for Fig. 8 and Table 7.
        missing: runs of the full set of figures that the results lack, each once, in the order
            found.
        notes: substitutions and ambiguities (several runs matching one spec), in order.
    """

    pairs: tuple[RunPair, RunPair]
    ranked: dict[int, RunRecord]
    missing: tuple[RunSpec, ...]
    notes: tuple[str, ...]

    @property
    def needed(self) -> list[RunRecord]:
        """The chosen runs: both pairs' (where found), then the ranked ones."""
        pair_runs = [rec for pair in self.pairs for rec in (pair.records or ())]
        return [*pair_runs, *self.ranked.values()]


class _Choosing:
    """What choosing runs found out so far: the missing runs (each once) and the notes."""

    def __init__(self, opts: Options, records: Sequence[RunRecord]) -> None:
        self.opts, self.records = opts, records
        self.missing: list[RunSpec] = []
        self.notes: list[str] = []

    def need(self, spec: RunSpec) -> None:
        if spec not in self.missing:
            self.missing.append(spec)

    def spec(self, r: int, seed: int) -> RunSpec:
        o = self.opts
        return RunSpec(o.task, o.model, o.targets, int(r), int(seed))

    def noting(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with its warnings (several runs match) turned into notes, each once."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn(*args)
        for w in caught:
            note = str(w.message)
            if note not in self.notes:
                self.notes.append(note)
        return out

    def run(self, r: int, seed: int) -> RunRecord | None:
        return self.noting(selection.select_run, self.records, self.spec(r, seed))

    def ranks(self, seed: int) -> list[int]:
        o = self.opts
        return selection.ranks_available(
            self.records, task=o.task, model=o.model, targets=o.targets, seed=seed
        )


def _rank_pair(c: _Choosing) -> RunPair:
    """First-seed runs at the small and large rank of Fig. 3 (:func:`selection.pick_rank_pair`)."""
    o = c.opts
    try:
        pick = c.noting(
            lambda: selection.pick_rank_pair(
                c.records, task=o.task, model=o.model, targets=o.targets, seed=o.seeds[0],
                ranks=o.ranks,
            )
        )  # fmt: skip
    except selection.MissingRuns as e:
        for spec in e.specs:
            c.need(spec)
        return RunPair("ranks", None, str(e))
    for spec in pick.missing:
        c.need(spec)
    if pick.note:
        c.notes.append(f"figure 3/6: {pick.note}")
    return RunPair("ranks", (pick.small, pick.large))


def _seed_pair(c: _Choosing) -> RunPair:
    """Runs at the large rank with the two seeds of Fig. 4.

    With ``--ranks`` given, that large rank exactly; by default the paper's r = 64, else the
    largest rank run with both seeds (noted).
    """
    o = c.opts
    s0, s1 = o.seeds
    r = o.large_rank
    a, b = c.run(r, s0), c.run(r, s1)
    lacking = [c.spec(r, s) for s, rec in ((s0, a), (s1, b)) if rec is None]
    for spec in lacking:
        c.need(spec)
    if a is not None and b is not None:
        return RunPair("seeds", (a, b))
    why = f"needs seeds {s0} and {s1} at r={r}: " + "; ".join(m.missing_message() for m in lacking)
    if o.ranks is not None:
        return RunPair("seeds", None, why)
    both = sorted(set(c.ranks(s0)) & set(c.ranks(s1)))
    if both:
        c.notes.append(f"figure 4/7: r={r} seeds {s0},{s1} not both found; using r={both[-1]}")
        return RunPair("seeds", (c.run(both[-1], s0), c.run(both[-1], s1)))
    return RunPair("seeds", None, why)


def _ranked_runs(c: _Choosing, wanted: Sequence[int]) -> dict[int, RunRecord]:
    """First-seed runs at every rank found that have their adapter; absent paper ranks are noted."""
    s0 = c.opts.seeds[0]
    have = c.ranks(s0)
    for r in wanted:
        if r not in have:
            c.need(c.spec(r, s0))
    out = {}
    for r in have:
        rec = c.run(r, s0)
        if rec is None:
            continue
        if selection.has_adapter(rec):
            out[r] = rec
        else:
            c.notes.append(
                f"figure 8 / table 7: r={r} left out: {rec.path} has no {runs.ADAPTER_FILE}"
            )
    return out


def choose_runs(opts: Options, records: Sequence[RunRecord]) -> RunChoice:
    """The runs of Fig. 3 / 6 (two ranks), Fig. 4 / 7 (two seeds), Fig. 8 and Table 7 (every rank).

    Args:
        opts: what to draw.
        records: finished runs of ``opts.task`` / ``opts.model`` (:func:`selection.index_runs`).
    """
    c = _Choosing(opts, records)
    pairs = (_rank_pair(c), _seed_pair(c))
    ranked = _ranked_runs(c, sorted(set(opts.table_ranks) | set(opts.fig8_ranks)))
    return RunChoice(pairs, ranked, tuple(c.missing), tuple(c.notes))


def wanted_runs(opts: Options) -> list[RunSpec]:
    """The runs the full set of figures needs, each once: what to list when none is found."""
    c = _Choosing(opts, [])
    small, large = opts.ranks or selection.PAPER_RANK_PAIR
    s0, s1 = opts.seeds
    for r, seed in ((small, s0), (large, s0), (large, s1), *((r, s0) for r in opts.table_ranks)):
        c.need(c.spec(r, seed))
    return c.missing


def no_runs_message(opts: Options, found: Sequence[RunRecord]) -> str:
    """Why nothing can be drawn when ``found`` (every finished run) has none of this task/model."""
    pairs = selection.task_models(found)
    have = ", ".join(f"{t}/{m}" for t, m in pairs) if pairs else "none"
    where = "".join(f" {k}={v}" for k, v in opts.where.items())
    return (
        f"no finished runs for task={opts.task} model={opts.model}{where} under "
        f"{opts.results} (finished runs there: {have})"
    )


@dataclass(frozen=True)
class BuildPlan:
    """One build once its runs are chosen: where the factors and W come from, which layer, and
    where the files go.

    Attributes:
        opts: what to draw.
        adapters: reads each chosen run's adapter once.
        base: the model's pretrained W (``<results>/base_weights/<model>.safetensors``).
        n_layers: blocks of the model.
        layer: the block of Fig. 3 / 4 / 8 and Table 7.
        out: the figures folder.
        tables_dir: the tables folder.
    """

    opts: Options
    adapters: AdapterCache
    base: BaseWeights
    n_layers: int
    layer: int
    out: Path
    tables_dir: Path

    def layer_factors(self, rec: RunRecord, weight: str, layer: int) -> LayerFactors:
        """ΔW_weight's factors at block ``layer`` of run ``rec`` (float64).

        Raises:
            KeyError: when the adapter has no such module.
        """
        return factors.layer_factors(self.adapters.get(rec), weight, layer)

    @property
    def spread(self) -> list[int]:
        """The layers of Fig. 6 / 7 (first, quarter, middle, three-quarter, last)."""
        return factors.spread_layers(self.n_layers)

    @property
    def layer_note(self) -> str | None:
        """Where the files go when the layer is not the default middle one (else ``None``)."""
        if self.layer == factors.default_layer(self.n_layers):
            return None
        return (
            f"layer {self.layer} is not the default middle layer: written to {self.out} and "
            f"{self.tables_dir}"
        )


def _n_layers(
    opts: Options, needed: Sequence[RunRecord], adapters: AdapterCache, base: BaseWeights
) -> int:
    """Block count from the first needed run that has its adapter, else from the base weights.

    Raises:
        FileNotFoundError: when no run in ``needed`` has an adapter and W was not saved.
    """
    for rec in needed:
        if selection.has_adapter(rec):
            return factors.n_layers_of(adapters.get(rec))
    if base.exists():
        return base.n_layers()
    if not needed:
        raise FileNotFoundError(
            f"no [{','.join(opts.targets)}] run at seed {opts.seeds[0]} and no "
            f"pretrained weights at {base.path}: nothing to draw"
        )
    raise FileNotFoundError(
        f"none of the runs the figures need has its adapter file ({runs.ADAPTER_FILE}), "
        f"e.g. {needed[0].path}, and there are no pretrained weights at {base.path}; "
        "rerun those runs (make sweep) or point --results at a folder that has them"
    )


def plan_build(opts: Options, choice: RunChoice) -> BuildPlan:
    """The layer and output folders of a build, from the first chosen adapter (or W).

    Raises:
        FileNotFoundError: when neither a chosen run's adapter nor W can be read (nothing to
            draw; the message says what to do).
        ValueError: for ``opts.layer`` out of range (listing the valid blocks).
    """
    adapters, base = AdapterCache(), BaseWeights(opts.results, opts.model)
    n_layers = _n_layers(opts, choice.needed, adapters, base)
    if opts.layer is None:
        layer = factors.default_layer(n_layers)
    else:
        layer = factors.check_layer(opts.layer, n_layers)
    out, tables_dir = opts.dirs(layer, n_layers)
    return BuildPlan(opts, adapters, base, n_layers, layer, out, tables_dir)
