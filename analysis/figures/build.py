"""Rebuild every Section 7 figure and Table 7 from saved runs (never trains).

Artifacts (``<results>/figures/`` unless told otherwise; each figure as PNG + PDF + CSV of the
plotted numbers, long format ``figure, view, layer, panel, i, j, phi``). A layer other than the
default middle one writes into ``<results>/figures/layer<L>/`` and ``<results>/tables/layer<L>/``
instead, so the default files always describe the middle layer:

- ``figure3_<view>``: φ between r = 8 and r = 64 (seed 0) for ΔWq and ΔWv at one layer: full
  grid (i ≤ 8, j ≤ 64) and the zoom i, j ≤ 8 (paper Fig. 3).
- ``figure4_<view>``: φ between seeds 0 and 1 at r = 64, ΔWq, ΔWv, plus two random Gaussian
  matrices (paper Fig. 4).
- ``figure6_<view>`` / ``figure7_<view>``: Fig. 3 / Fig. 4 at the first, quarter, middle,
  three-quarter and last layers (paper App. H.1).
- ``figure8``: φ between W's top-i left-singular directions and ΔWq's top-j ones for every rank
  found, plus random (paper App. H.3).
- ``<results>/tables/table7.{md,csv,tex}``: Table 7 with the paper's numbers beside ours.
- ``summary.json`` / ``summary.md``: φ(1, 1) of every view and of random, Table 7 ratios, what
  was missing.

Only the adapters of the runs drawn are read (a fresh clone has only the Wq,Wv ones). A build
chooses its runs and layer (:mod:`analysis.figures.select`), draws
(:mod:`analysis.figures.draw`) and writes the summary (:mod:`analysis.figures.summary`); math
lives in :mod:`analysis.subspace` / :mod:`analysis.amplification`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from analysis import selection
from analysis.figures import draw, summary
from analysis.figures.options import Options, Report
from analysis.figures.select import (
    BuildPlan,
    RunPair,
    choose_runs,
    no_runs_message,
    plan_build,
    wanted_runs,
)
from analysis.selection import RunRecord
from lora_repro import runs

# pair kind -> (draw function, figure at the build's layer, figure at the spread layers)
PAIR_FIGURES = {
    "ranks": (draw.figure3, "figure3", "figure6"),
    "seeds": (draw.figure4, "figure4", "figure7"),
}


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
    problem = runs.results_read_problem(opts.results)
    if problem:
        raise ValueError(problem)
    report, damaged = Report(), []
    found = selection.index_runs(opts.results, opts.where, damaged)
    report.skipped += [str(d) for d in damaged]
    records = [r for r in found if (r.spec.task, r.spec.model) == (opts.task, opts.model)]
    if not records:
        report.not_drawn["all"] = no_runs_message(opts, found)
        report.missing += wanted_runs(opts)
        return report
    # Which runs are drawn is decided from the configs alone; only their adapters are read.
    choice = choose_runs(opts, records)
    report.missing += choice.missing
    report.notes += choice.notes
    try:
        plan = plan_build(opts, choice)
    except FileNotFoundError as e:
        report.not_drawn["all"] = str(e)
        return report
    report.out, report.tables_dir = plan.out, plan.tables_dir
    if plan.layer_note:
        report.notes.append(plan.layer_note)
    content = summary.start(plan)
    for pair in choice.pairs:
        _pair_figures(plan, pair, report, content)
    _against_w(plan, choice.ranked, report, content)
    report.summary = summary.finish(content, report)
    if report.drawn:
        report.written += summary.write(report.summary, plan.out)
    return report


def _attempt(report: Report, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``None`` with the reason under ``report.not_drawn[name]``."""
    try:
        return fn(*args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        report.not_drawn[name] = str(msg)
        return None


def _pair_figures(plan: BuildPlan, pair: RunPair, report: Report, content: dict) -> None:
    """Fig. 3 / 6 (two ranks) or Fig. 4 / 7 (two seeds) in every view, and the pair's φ(1, 1)."""
    draw_pair, one_layer, spread = PAIR_FIGURES[pair.kind]
    views = plan.opts.views
    if pair.records is None:
        for v in views:
            report.not_drawn[f"{one_layer}_{v}, {spread}_{v}"] = pair.why
        return
    content["runs"][pair.kind] = summary.run_paths(pair.records, plan.opts.results)
    for v in views:
        _attempt(report, f"{one_layer}_{v}", draw_pair, plan, report, pair.records, v, [plan.layer])
        _attempt(report, f"{spread}_{v}", draw_pair, plan, report, pair.records, v, plan.spread)
    name = f"summary φ(1,1) {pair.kind}"
    block = _attempt(report, name, summary.phi11_block, plan, pair.records)
    if block:
        content["phi11"][pair.kind] = block
    content["phi11_by_layer"][pair.kind] = summary.phi11_by_layer(plan, pair.records)


def _against_w(
    plan: BuildPlan, ranked: dict[int, RunRecord], report: Report, content: dict
) -> None:
    """Fig. 8 and Table 7: ΔW of the build's weight type against the pretrained W, every rank."""
    if not ranked:
        report.not_drawn["figure8"] = report.not_drawn["table7"] = "no runs at seed 0"
        return
    if not plan.base.exists():
        msg = (
            f"no pretrained weights at {plan.base.path}; any finished training run of "
            f"{plan.opts.model} writes them (train.save_base_weights=true)"
        )
        report.not_drawn["figure8"] = report.not_drawn["table7"] = msg
        return
    head8 = _attempt(report, "figure8", draw.figure8, plan, report, ranked)
    if head8:
        content["figure8_phi_top_r"] = head8
    stats = _attempt(report, "table7", draw.table7, plan, report, ranked)
    if stats:
        content["table7"] = summary.table7_entries(stats)
