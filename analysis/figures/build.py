"""Rebuild every Section 7 figure and Table 7 from saved runs (never trains).

Artifacts (``<results>/figures/`` unless told otherwise; each figure as PNG + PDF + CSV of the
plotted numbers, long format ``figure, view, layer, panel, i, j, phi``). A layer other than the
default middle one writes into ``<results>/figures/layer<L>/`` and ``<results>/tables/layer<L>/``
instead, so the default files always describe the middle layer:

- ``figure3_<view>``: φ between r = 8 and r = 64 (seed 0) for ΔWq and ΔWv at one layer: full
  grid (i ≤ 8, j ≤ 64) and the zoom i, j ≤ 8 (paper Fig. 3).

Only the adapters of the runs drawn are read (a fresh clone has only the Wq,Wv ones).
- ``figure4_<view>``: φ between seeds 0 and 1 at r = 64, ΔWq, ΔWv, plus two random Gaussian
  matrices (paper Fig. 4).
- ``figure6_<view>`` / ``figure7_<view>``: Fig. 3 / Fig. 4 at the first, quarter, middle,
  three-quarter and last layers (paper App. H.1).
- ``figure8``: φ between W's top-i left-singular directions and ΔWq's top-j ones for every rank
  found, plus random (paper App. H.3).
- ``<results>/tables/table7.{md,csv,tex}``: Table 7 with the paper's numbers beside ours.
- ``summary.json`` / ``summary.md``: φ(1, 1) of every view and of random, Table 7 ratios, what
  was missing.

Math lives in :mod:`analysis.subspace` / :mod:`analysis.amplification`; drawing in
:mod:`analysis.figures.plots`; this module only wires them to run directories.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import amplification as amp
from analysis import layer_data as ld
from analysis import subspace as sub
from analysis import tables
from analysis.figures.plots import Panel, heatmap_figure, save_figure
from analysis.layer_data import LayerFactors, RunRecord, RunSpec, phi_between
from lora_repro import runs as runs_io
from lora_repro.runs import CSV_FLOAT_FORMAT, atomic_write_json, atomic_write_text, rounded

ARTIFACTS = ("figure3", "figure4", "figure6", "figure7", "figure8", "table7")


@dataclass
class Options:
    """What to draw and from where (CLI flags of ``python -m analysis.figures``).

    Attributes:
        results: results folder (holds ``runs/`` and ``base_weights/``).
        out: figures folder; default ``<results>/figures``, or ``<results>/figures/layer<L>``
            for a layer other than the middle one.
        tables_dir: tables folder; default ``<results>/tables`` (``.../tables/layer<L>`` for
            a layer other than the middle one).
        task: task name as in the runs' configs.
        model: model name as in the runs' configs.
        layer: block for Fig. 3 / 4 / 8 and Table 7; default the middle one (n_layers // 2).
        views: subspace views to draw (:data:`analysis.subspace.VIEWS`); the summary has all.
        ranks: (small, large) ranks compared in Fig. 3 / 6; the large one is the rank of
            Fig. 4 / 7. Exactly these are used (a missing one is reported, not replaced).
            ``None``: the paper's 8 and 64, or the nearest ranks found when those were not run
            (:func:`analysis.layer_data.pick_rank_pair`; a note says so).
        seeds: the two seeds compared in Fig. 4 / 7.
        targets: adapted weight types of the runs to use (paper: q, v).
        weight: weight type of Table 7 and Fig. 8 (paper: q).
        table_ranks: ranks of paper Table 7 (4, 64); every rank found is tabulated.
        fig8_ranks: ranks of paper Fig. 8 (4, 8, 64); every rank found is drawn.
        where: only use runs whose config has these values (dotted keys, compared as
            strings), e.g. ``{"adapter.init": "kaiming_uniform"}``.
        n_random: random orthonormal pairs averaged for Table 7's random level.
        seed: seed of every random baseline.
        formats: figure file formats.
    """

    results: Path
    out: Path | None = None
    tables_dir: Path | None = None
    task: str = "rotten_tomatoes"
    model: str = "minilm"
    layer: int | None = None
    views: tuple[str, ...] = ("A",)
    ranks: tuple[int, int] | None = None
    seeds: tuple[int, int] = (0, 1)
    targets: tuple[str, ...] = ("q", "v")
    weight: str = "q"
    table_ranks: tuple[int, ...] = (4, 64)
    fig8_ranks: tuple[int, ...] = (4, 8, 64)
    where: dict[str, str] = field(default_factory=dict)
    n_random: int = 10
    seed: int = 0
    formats: tuple[str, ...] = ("png", "pdf")

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        self.out = Path(self.out) if self.out else None
        self.tables_dir = Path(self.tables_dir) if self.tables_dir else None
        for v in self.views:
            if v not in sub.VIEWS:
                raise ValueError(f"unknown view {v!r}; expected one of {', '.join(sub.VIEWS)}")
        self.targets = ld.canonical_targets(self.targets)
        if self.weight not in self.targets:
            raise ValueError(f"weight {self.weight!r} is not among targets {list(self.targets)}")
        if (self.ranks is not None and len(self.ranks) != 2) or len(self.seeds) != 2:
            raise ValueError(
                f"ranks and seeds take two values each, got {self.ranks}, {self.seeds}"
            )
        if self.ranks is not None:
            self.ranks = (int(self.ranks[0]), int(self.ranks[1]))

    @property
    def large_rank(self) -> int:
        """The rank of Fig. 4 / 7: the larger of ``ranks`` (the paper's 64 by default)."""
        return (self.ranks or ld.PAPER_RANK_PAIR)[1]

    def dirs(self, layer: int, n_layers: int) -> tuple[Path, Path]:
        """(figures folder, tables folder) for a build at ``layer`` of ``n_layers``.

        The defaults for the middle layer are ``<results>/figures`` and ``<results>/tables``;
        for any other layer ``.../layer<L>`` below them. A folder given explicitly is kept.
        """
        sub_dir = "" if layer == ld.default_layer(n_layers) else f"layer{layer}"
        out = self.out or self.results / "figures" / sub_dir
        tables_dir = self.tables_dir or self.results / "tables" / sub_dir
        return Path(out), Path(tables_dir)


@dataclass
class Report:
    """What a build did.

    Attributes:
        drawn: artifacts written (names from :data:`ARTIFACTS`, with the view suffix).
        not_drawn: artifact -> why not.
        missing: runs that the full set of figures needs and the results lack.
        skipped: finished-looking runs left out for a damaged file (each names the file).
        notes: substitutions and other remarks.
        written: every file written.
        summary: the content of ``summary.json``.
        out: the figures folder written to (``None`` before the layer is known).
        tables_dir: the tables folder written to.
    """

    drawn: list[str] = field(default_factory=list)
    not_drawn: dict[str, str] = field(default_factory=dict)
    missing: list[RunSpec] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    tables_dir: Path | None = None

    def need(self, spec: RunSpec) -> None:
        """Record a missing run once."""
        if spec not in self.missing:
            self.missing.append(spec)

    @property
    def complete(self) -> bool:
        """Everything drawn, nothing missing."""
        return bool(self.drawn) and not self.not_drawn and not self.missing and not self.skipped

    def exit_code(self, allow_partial: bool = False) -> int:
        """0 when complete (or partial with ``allow_partial``), 1 partial, 2 nothing drawn."""
        if not self.drawn:
            return 2
        return 0 if self.complete or allow_partial else 1


class _Ctx:
    """The runs, adapters and layer of one build."""

    def __init__(self, opts: Options, report: Report) -> None:
        self.opts = opts
        self.report = report
        damaged: list = []
        self.records = [
            r
            for r in ld.index_runs(opts.results, opts.where, damaged)
            if r.spec.task == opts.task and r.spec.model == opts.model
        ]
        report.skipped += [str(d) for d in damaged]
        self.cache = ld.AdapterCache()
        self.base = ld.BaseWeights(opts.results, opts.model)
        self._n_layers: int | None = None
        self.out = opts.out or opts.results / "figures"
        self.tables_dir = opts.tables_dir or opts.results / "tables"

    def spec(self, r: int, seed: int) -> RunSpec:
        o = self.opts
        return RunSpec(o.task, o.model, o.targets, int(r), int(seed))

    def noting(self, fn, *args):
        """``fn(*args)`` with its warnings (several runs match) turned into report notes."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn(*args)
        for w in caught:
            note = str(w.message)
            if note not in self.report.notes:
                self.report.notes.append(note)
        return out

    def run(self, r: int, seed: int) -> RunRecord | None:
        return self.noting(ld.select_run, self.records, self.spec(r, seed))

    def ranks(self, seed: int) -> list[int]:
        o = self.opts
        return ld.ranks_available(
            self.records, task=o.task, model=o.model, targets=o.targets, seed=seed
        )

    def factors(self, rec: RunRecord, weight: str, layer: int) -> LayerFactors:
        return ld.layer_factors(self.cache.get(rec), weight, layer)

    def find_n_layers(self, needed: Sequence[RunRecord]) -> int:
        """Block count from the first run drawn that has its adapter, else from the base weights.

        Raises:
            FileNotFoundError: when no run in ``needed`` has an adapter and W was not saved.
        """
        for rec in needed:
            if ld.has_adapter(rec):
                self._n_layers = ld.n_layers_of(self.cache.get(rec))
                return self._n_layers
        if self.base.exists():
            self._n_layers = self.base.n_layers()
            return self._n_layers
        if not needed:
            raise FileNotFoundError(
                f"no [{','.join(self.opts.targets)}] run at seed {self.opts.seeds[0]} and no "
                f"pretrained weights at {self.base.path}: nothing to draw"
            )
        raise FileNotFoundError(
            f"none of the runs the figures need has its adapter file ({runs_io.ADAPTER_FILE}), "
            f"e.g. {needed[0].path}, and there are no pretrained weights at {self.base.path}; "
            "rerun those runs (make sweep) or point --results at a folder that has them"
        )

    @property
    def n_layers(self) -> int:
        if self._n_layers is None:
            raise RuntimeError("find_n_layers() first")
        return self._n_layers

    @property
    def layer(self) -> int:
        o = self.opts
        if o.layer is None:
            return ld.default_layer(self.n_layers)
        return ld.check_layer(o.layer, self.n_layers)


# --------------------------------------------------------------------------------------------
# Pair selection (the paper's ranks by default with graceful fallbacks; asked ranks exactly)
# --------------------------------------------------------------------------------------------
def _rank_pair(ctx: _Ctx) -> tuple[tuple[RunRecord, RunRecord] | None, str]:
    """Seed-s0 runs at the small and large rank of Fig. 3, or ``None`` and why not."""
    o = ctx.opts
    try:
        pick = ctx.noting(
            lambda: ld.pick_rank_pair(
                ctx.records,
                task=o.task,
                model=o.model,
                targets=o.targets,
                seed=o.seeds[0],
                ranks=o.ranks,
            )
        )
    except ld.MissingRuns as e:
        for spec in e.specs:
            ctx.report.need(spec)
        return None, str(e)
    for spec in pick.missing:
        ctx.report.need(spec)
    if pick.note:
        ctx.report.notes.append(f"figure 3/6: {pick.note}")
    return (pick.small, pick.large), ""


def _seed_pair(ctx: _Ctx) -> tuple[tuple[RunRecord, RunRecord] | None, str]:
    """Runs at the large rank with the two seeds of Fig. 4, or ``None`` and why not.

    With ``--ranks`` given, that large rank exactly; by default the paper's r = 64, else the
    largest rank run with both seeds (noted).
    """
    o = ctx.opts
    s0, s1 = o.seeds
    r = o.large_rank
    a, b = ctx.run(r, s0), ctx.run(r, s1)
    lacking = [ctx.spec(r, s) for s, rec in ((s0, a), (s1, b)) if rec is None]
    for spec in lacking:
        ctx.report.need(spec)
    if a is not None and b is not None:
        return (a, b), ""
    why = f"needs seeds {s0} and {s1} at r={r}: " + "; ".join(m.missing_message() for m in lacking)
    if o.ranks is not None:
        return None, why
    both = sorted(set(ctx.ranks(s0)) & set(ctx.ranks(s1)))
    if both:
        ctx.report.notes.append(
            f"figure 4/7: r={r} seeds {s0},{s1} not both found; using r={both[-1]}"
        )
        return (ctx.run(both[-1], s0), ctx.run(both[-1], s1)), ""
    return None, why


def _ranked_runs(ctx: _Ctx, wanted: Sequence[int]) -> dict[int, RunRecord]:
    """Seed-s0 runs at every rank found that have their adapter; absent paper ranks are noted."""
    s0 = ctx.opts.seeds[0]
    have = ctx.ranks(s0)
    for r in wanted:
        if r not in have:
            ctx.report.need(ctx.spec(r, s0))
    out = {}
    for r in have:
        rec = ctx.run(r, s0)
        if rec is None:
            continue
        if ld.has_adapter(rec):
            out[r] = rec
        else:
            ctx.report.notes.append(
                f"figure 8 / table 7: r={r} left out: {rec.path} has no {runs_io.ADAPTER_FILE}"
            )
    return out


# --------------------------------------------------------------------------------------------
# φ computations on runs
# --------------------------------------------------------------------------------------------
def random_like(f1: LayerFactors, f2: LayerFactors, view: str, seed: int) -> np.ndarray:
    """φ grid between two seeded random Gaussian matrices of the same shapes as f1, f2."""
    n = sub.basis_dim(view, f1.d, f1.k)
    return sub.random_phi_grid(n, f1.A.shape[0], f2.A.shape[0], seed)


def _long(figure: str, view: str, layer: int | str, panel: str, grid: np.ndarray) -> pd.DataFrame:
    i, j = np.meshgrid(np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1))
    return pd.DataFrame(
        {
            "figure": figure,
            "view": view,
            "layer": layer,
            "panel": panel,
            "i": i.T.ravel(),
            "j": j.T.ravel(),
            "phi": grid.ravel(),
        }
    )


def _write_figure(ctx: _Ctx, fig, stem: str, frames: list[pd.DataFrame]) -> None:
    ctx.report.written += save_figure(fig, ctx.out / stem, ctx.opts.formats)
    csv = ctx.out / f"{stem}.csv"
    atomic_write_text(
        csv, pd.concat(frames, ignore_index=True).to_csv(index=False, float_format=CSV_FLOAT_FORMAT)
    )
    ctx.report.written.append(csv)
    ctx.report.drawn.append(stem)


def _label(rec: RunRecord) -> str:
    return f"r={rec.spec.r} seed{rec.spec.seed}"


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figure3(ctx: _Ctx, pair: tuple[RunRecord, RunRecord], view: str, layers: Sequence[int]):
    """Fig. 3 (one layer) or Fig. 6 (several): rank r1 vs r2, ΔWq and ΔWv, full and zoom."""
    a, b = pair
    name = "figure3" if len(layers) == 1 else "figure6"
    rows, frames = [], []
    zoom = min(a.spec.r, b.spec.r)
    for layer in layers:
        row_full, row_zoom = [], []
        for w in ctx.opts.targets:
            g = phi_between(ctx.factors(a, w, layer), ctx.factors(b, w, layer), view)
            frames.append(_long(name, view, layer, f"dW{w}", g))
            t = f"ΔW{w} layer {layer}"
            ylab, xlab = f"i ({_label(a)})", f"j ({_label(b)})"
            row_full.append(Panel(g, t, ylab, xlab))
            row_zoom.append(Panel(g, f"{t}, i,j ≤ {zoom}", ylab, xlab, zoom=zoom))
        rows.append(row_full + row_zoom)
    nt = len(ctx.opts.targets)
    fig = heatmap_figure(
        rows,
        f"φ({view}: {_label(a)} vs {_label(b)}) — {sub.VIEW_DESCRIPTIONS[view]} — "
        f"{ctx.opts.task}/{ctx.opts.model}",
        width_ratios=[3.0] * nt + [1.1] * nt,
        panel_size=(2.0, 1.9),
    )
    _write_figure(ctx, fig, f"{name}_{view}", frames)


def figure4(ctx: _Ctx, pair: tuple[RunRecord, RunRecord], view: str, layers: Sequence[int]):
    """Fig. 4 (one layer) or Fig. 7 (several): seed s0 vs s1, ΔWq, ΔWv, and random Gaussian."""
    a, b = pair
    name = "figure4" if len(layers) == 1 else "figure7"
    rows, frames = [], []
    for li, layer in enumerate(layers):
        row = []
        for w in ctx.opts.targets:
            fa, fb = ctx.factors(a, w, layer), ctx.factors(b, w, layer)
            g = phi_between(fa, fb, view)
            frames.append(_long(name, view, layer, f"dW{w}", g))
            row.append(Panel(g, f"ΔW{w} layer {layer}", f"i ({_label(a)})", f"j ({_label(b)})"))
        rnd = random_like(fa, fb, view, ctx.opts.seed + li)
        frames.append(_long(name, view, layer, "random", rnd))
        row.append(Panel(rnd, "random Gaussian", "i", "j"))
        rows.append(row)
    fig = heatmap_figure(
        rows,
        f"φ({view}: seed {a.spec.seed} vs seed {b.spec.seed}, r={a.spec.r}) — "
        f"{sub.VIEW_DESCRIPTIONS[view]} — {ctx.opts.task}/{ctx.opts.model}",
        panel_size=(3.0, 2.8),
    )
    _write_figure(ctx, fig, f"{name}_{view}", frames)


def figure8(ctx: _Ctx, runs: dict[int, RunRecord]) -> dict[str, float]:
    """Fig. 8: φ(W's top-i left directions, ΔW's top-j left directions) per rank, and random."""
    layer, w = ctx.layer, ctx.opts.weight
    panels, frames, head = [], [], {}
    for r, rec in sorted(runs.items()):
        f = ctx.factors(rec, w, layer)
        W = amp.check_orientation(ctx.base.matrix(f.key), f.d, f.k)
        g = amp.w_vs_dw_phi(W, sub.factored_svd(f.B, f.A).U)
        frames.append(_long("figure8", "W_left_vs_dW_left", layer, f"r={r}", g))
        panels.append(Panel(g, f"W{w} vs ΔW{w}, r={r}", f"i (W{w})", f"j (ΔW{w})"))
        head[f"r={r}"] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    r_max = max(runs)
    rng = np.random.default_rng(ctx.opts.seed)
    g = amp.w_vs_dw_phi(W, sub.random_gaussian_basis(f.d, r_max, rng))
    frames.append(_long("figure8", "W_left_vs_dW_left", layer, "random", g))
    panels.append(Panel(g, f"W{w} vs random, r={r_max}", f"i (W{w})", "j (random)"))
    head["random"] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    fig = heatmap_figure(
        [panels],
        f"φ(W{w} top-i, ΔW{w} top-j), left singular vectors, layer {layer} — "
        f"{ctx.opts.task}/{ctx.opts.model}",
        panel_size=(2.2, 4.0),
    )
    _write_figure(ctx, fig, "figure8", frames)
    return head


def table7(ctx: _Ctx, runs: dict[int, RunRecord]) -> dict[int, dict[str, float]]:
    """Table 7 at the build's layer for every rank in ``runs``; writes md, csv, tex."""
    layer, w, o = ctx.layer, ctx.opts.weight, ctx.opts
    stats = {}
    for r, rec in sorted(runs.items()):
        f = ctx.factors(rec, w, layer)
        W = ctx.base.matrix(f.key)
        stats[r] = amp.table7_stats(W, f.B, f.A, f.scaling, n_random=o.n_random, seed=o.seed)
    df = tables.table7_frame(stats)
    caption = (
        f"Table 7 reproduction: ΔW{w} at layer {layer} of {ctx.n_layers}, {o.task}/{o.model}, "
        f"targets [{','.join(o.targets)}], seed {o.seeds[0]}; random = mean of {o.n_random} "
        "random orthonormal pairs. Paper: GPT-3 175B layer 48 of 96 "
        "(arXiv 2106.09685 v2, Table 7)."
    )
    ctx.report.written += tables.write_table7(df, ctx.tables_dir, caption)
    ctx.report.drawn.append("table7")
    return stats


# --------------------------------------------------------------------------------------------
# Summary: φ(1, 1) of every view beside the default
# --------------------------------------------------------------------------------------------
def _phi11_all_views(ctx: _Ctx, a: RunRecord, b: RunRecord, layer: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in ctx.opts.targets:
        fa, fb = ctx.factors(a, w, layer), ctx.factors(b, w, layer)
        views: dict[str, float | None] = {}
        for view in sub.VIEWS:
            try:
                views[view] = float(phi_between(fa, fb, view)[0, 0])
            except ValueError:  # dA without A_init
                views[view] = None
        out[f"dW{w}"] = views
    rnd = {}
    for view in sub.VIEWS:
        rnd[view] = float(random_like(fa, fb, view, ctx.opts.seed)[0, 0])
    out["random"] = rnd
    out["random_expected"] = {v: 1.0 / sub.basis_dim(v, fa.d, fa.k) for v in sub.VIEWS}
    return out


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _summary_md(s: dict[str, Any]) -> str:
    lines = [
        f"# Section 7 summary: {s['task']}/{s['model']}, layer {s['layer']} of {s['n_layers']}",
        "",
        "φ(1, 1) = overlap of the top singular directions (paper Fig. 3: > 0.5 for ΔWq, ΔWv). "
        f"Default view: {sub.VIEWS[0]} ({sub.VIEW_DESCRIPTIONS[sub.VIEWS[0]]}).",
        "",
    ]
    for key, title in (("ranks", "rank pair"), ("seeds", "seed pair")):
        block = s["phi11"].get(key)
        if not block:
            continue
        lines += [f"## φ(1, 1), {title}: {block['pair']}", ""]
        lines += ["| | " + " | ".join(sub.VIEWS) + " |", "|---|" + "---|" * len(sub.VIEWS)]
        for row in [k for k in block if k.startswith("dW")] + ["random", "random_expected"]:
            vals = block[row]
            cells = [("" if vals[v] is None else f"{vals[v]:.3f}") for v in sub.VIEWS]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if s.get("table7"):
        lines += [
            f"## Table 7 (ΔW{s['weight']}), ours vs paper",
            "",
            "| r | amplification | ΔW/random | σ2/σ1 | paper amplification | paper ΔW/random |",
            "|---|---|---|---|---|---|",
        ]
        paper = tables.paper_table7()
        for r, t in s["table7"].items():
            p = paper.get(int(r), {})
            pa = f"{p['amplification']:.2f}" if p else ""
            pr = f"{p['ratio_to_random']:.2f}" if p else ""
            cells = [
                _num(t["amplification"], ".2f"),
                _num(t["ratio_to_random"], ".2f"),
                _num(t["sigma2_over_sigma1"], ".3f"),  # None at r = 1: ΔW has one σ
            ]
            lines.append(f"| {r} | " + " | ".join(cells) + f" | {pa} | {pr} |")
        lines.append("")
    if s.get("missing"):
        lines += ["## Missing", ""] + [f"- {m}" for m in s["missing"]] + [""]
    if s.get("notes"):
        lines += ["## Notes", ""] + [f"- {m}" for m in s["notes"]] + [""]
    return "\n".join(lines)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def build_all(opts: Options) -> Report:
    """Draw every figure and table that the results allow; record what is missing.

    Args:
        opts: what to draw.

    Returns:
        A :class:`Report`; ``report.exit_code()`` is the CLI's exit status.

    Raises:
        ValueError: for a layer out of range, or when ``opts.results`` is not an existing folder
            (one line saying so; nothing is created).
    """
    problem = runs_io.results_read_problem(opts.results)
    if problem:
        raise ValueError(problem)
    report = Report()
    ctx = _Ctx(opts, report)
    if not ctx.records:
        pairs = ld.task_models(ld.index_runs(opts.results, opts.where))
        have = ", ".join(f"{t}/{m}" for t, m in pairs) if pairs else "none"
        where = "".join(f" {k}={v}" for k, v in opts.where.items())
        report.not_drawn["all"] = (
            f"no finished runs for task={opts.task} model={opts.model}{where} under "
            f"{opts.results} (finished runs there: {have})"
        )
        small, large = opts.ranks or ld.PAPER_RANK_PAIR
        for spec in (
            ctx.spec(small, opts.seeds[0]),
            ctx.spec(large, opts.seeds[0]),
            ctx.spec(large, opts.seeds[1]),
            *(ctx.spec(r, opts.seeds[0]) for r in opts.table_ranks),
        ):
            report.need(spec)
        return report

    # Which runs are drawn is decided from the configs alone; only their adapters are read.
    rank_pair, seed_pair = _rank_pair(ctx), _seed_pair(ctx)
    ranked = _ranked_runs(ctx, sorted(set(opts.table_ranks) | set(opts.fig8_ranks)))
    needed = [*(rank_pair[0] or ()), *(seed_pair[0] or ()), *ranked.values()]
    try:
        ctx.find_n_layers(needed)
    except FileNotFoundError as e:
        report.not_drawn["all"] = str(e)
        return report
    layer = ctx.layer
    ctx.out, ctx.tables_dir = opts.dirs(layer, ctx.n_layers)
    report.out, report.tables_dir = ctx.out, ctx.tables_dir
    if layer != ld.default_layer(ctx.n_layers):
        report.notes.append(
            f"layer {layer} is not the default middle layer: written to {ctx.out} and "
            f"{ctx.tables_dir}"
        )
    layers = [x for x in ld.spread_layers(ctx.n_layers)]
    summary: dict[str, Any] = {
        "task": opts.task,
        "model": opts.model,
        "layer": layer,
        "n_layers": ctx.n_layers,
        "layers_fig6_fig7": layers,
        "views": list(sub.VIEWS),
        "view_descriptions": sub.VIEW_DESCRIPTIONS,
        "weight": opts.weight,
        "phi11": {},
        "phi11_by_layer": {},
        "runs": {},
    }

    def attempt(name: str, fn, *args) -> Any:
        try:
            return fn(*args)
        except (ValueError, KeyError, FileNotFoundError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            report.not_drawn[name] = str(msg)
            return None

    # Fig. 3 / 6 compare two ranks at seed 0; Fig. 4 / 7 two seeds at one rank: same steps.
    for kind, (pair, why), fig, fig_layers, summary_name in (
        ("ranks", rank_pair, figure3, ("figure3", "figure6"), "summary φ(1,1) ranks"),
        ("seeds", seed_pair, figure4, ("figure4", "figure7"), "summary φ(1,1) seeds"),
    ):
        if pair is None:
            for v in opts.views:
                report.not_drawn[", ".join(f"{name}_{v}" for name in fig_layers)] = why
            continue
        summary["runs"][kind] = [_relative(p.path, opts.results) for p in pair]
        for v in opts.views:
            attempt(f"{fig_layers[0]}_{v}", fig, ctx, pair, v, [layer])
            attempt(f"{fig_layers[1]}_{v}", fig, ctx, pair, v, layers)
        block = attempt(summary_name, _phi11_all_views, ctx, *pair, layer)
        if block:
            block["pair"] = f"{_label(pair[0])} vs {_label(pair[1])}"
            summary["phi11"][kind] = block
        summary["phi11_by_layer"][kind] = {
            f"dW{w}": {
                v: {str(li): _safe_phi11(ctx, pair, w, li, v) for li in layers} for v in sub.VIEWS
            }
            for w in opts.targets
        }

    if not ranked:
        report.not_drawn["figure8"] = report.not_drawn["table7"] = "no runs at seed 0"
    elif not ctx.base.exists():
        msg = (
            f"no pretrained weights at {ctx.base.path}; any finished training run of "
            f"{opts.model} writes them (train.save_base_weights=true)"
        )
        report.not_drawn["figure8"] = report.not_drawn["table7"] = msg
    else:
        head8 = attempt("figure8", figure8, ctx, ranked)
        if head8:
            summary["figure8_phi_top_r"] = head8
        stats = attempt("table7", table7, ctx, ranked)
        if stats:
            summary["table7"] = {
                str(r): {
                    k: t[k]
                    for k in (
                        "amplification",
                        "amplification_unscaled",
                        "ratio_to_random",
                        "proj_dW",
                        "proj_W",
                        "proj_random",
                        "norm_W",
                        "norm_dW",
                        "norm_dW_unscaled",
                        "sigma1",
                        "sigma2_over_sigma1",
                    )
                }
                for r, t in stats.items()
            }
    summary["paper"] = {
        "table7": {str(r): v for r, v in tables.paper_table7().items()},
        "figure3_phi11_min": tables.paper_values()["figure3"]["phi11_min"],
        "source": tables.paper_values()["source"],
    }
    summary["missing"] = [m.missing_message() for m in report.missing]
    summary["not_drawn"] = dict(report.not_drawn)
    summary["notes"] = list(report.notes)
    report.summary = summary
    if report.drawn:
        summary = rounded(_nan_to_none(summary))
        report.written.append(atomic_write_json(ctx.out / "summary.json", summary))
        report.written.append(atomic_write_text(ctx.out / "summary.md", _summary_md(summary)))
    return report


def _relative(path: Path, results: Path) -> str:
    """``path`` relative to the results folder (the summary reads the same from any cwd)."""
    try:
        return Path(path).resolve().relative_to(Path(results).resolve()).as_posix()
    except ValueError:
        return str(path)


def _safe_phi11(
    ctx: _Ctx, pair: tuple[RunRecord, RunRecord], w: str, layer: int, view: str
) -> float | None:
    try:
        return float(
            phi_between(ctx.factors(pair[0], w, layer), ctx.factors(pair[1], w, layer), view)[0, 0]
        )
    except (ValueError, KeyError, FileNotFoundError):
        return None
