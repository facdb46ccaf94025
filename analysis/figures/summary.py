"""The build's summary: φ(1, 1) of every view and of random, Table 7 ratios, what was missing.

``summary.json`` holds every number (rounded to :data:`lora_repro.runs.SIG_DIGITS` significant
digits, NaN as null) and ``summary.md`` the same for a reader; :func:`write` is their one writer.
φ(1, 1) is the overlap of the top singular directions (paper Fig. 3: > 0.5 for ΔWq, ΔWv).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from analysis import subspace, tables
from analysis.factors import phi_between
from analysis.figures.draw import random_like, run_label
from analysis.figures.options import Report
from analysis.figures.select import BuildPlan
from analysis.selection import RunRecord
from lora_repro.runs import atomic_write_json, atomic_write_text, rounded

# Table 7 quantities kept in the summary (analysis.amplification.table7_stats has more).
TABLE7_KEYS = (
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


def start(plan: BuildPlan) -> dict[str, Any]:
    """The summary's head (model, layer, views); the drawing steps fill in the rest."""
    o = plan.opts
    return {
        "task": o.task,
        "model": o.model,
        "layer": plan.layer,
        "n_layers": plan.n_layers,
        "layers_fig6_fig7": plan.spread,
        "views": list(subspace.VIEWS),
        "view_descriptions": subspace.VIEW_DESCRIPTIONS,
        "weight": o.weight,
        "phi11": {},
        "phi11_by_layer": {},
        "runs": {},
    }


def run_paths(pair: tuple[RunRecord, RunRecord], results: Path) -> list[str]:
    """The pair's run directories relative to the results folder (the same from any cwd)."""
    out = []
    for rec in pair:
        try:
            out.append(Path(rec.path).resolve().relative_to(Path(results).resolve()).as_posix())
        except ValueError:
            out.append(str(rec.path))
    return out


def phi11_block(plan: BuildPlan, pair: tuple[RunRecord, RunRecord]) -> dict[str, Any]:
    """φ(1, 1) at the build's layer in every view, per weight type, of random Gaussian matrices
    of the same shapes, and the random expectation 1 / n (n: the view's dimension).

    ``None`` for a view the runs cannot give (``dA`` without A_init).

    Raises:
        KeyError, FileNotFoundError: a module or adapter that the runs lack.
    """
    a, b = pair
    out: dict[str, Any] = {}
    for w in plan.opts.targets:
        fa, fb = plan.layer_factors(a, w, plan.layer), plan.layer_factors(b, w, plan.layer)
        views: dict[str, float | None] = {}
        for view in subspace.VIEWS:
            try:
                views[view] = float(phi_between(fa, fb, view)[0, 0])
            except ValueError:  # dA without A_init
                views[view] = None
        out[f"dW{w}"] = views
    rnd = {}
    for view in subspace.VIEWS:
        rnd[view] = float(random_like(fa, fb, view, plan.opts.seed)[0, 0])
    out["random"] = rnd
    out["random_expected"] = {v: 1.0 / subspace.basis_dim(v, fa.d, fa.k) for v in subspace.VIEWS}
    out["pair"] = f"{run_label(a)} vs {run_label(b)}"
    return out


def _phi11_or_none(
    plan: BuildPlan, pair: tuple[RunRecord, RunRecord], w: str, layer: int, view: str
) -> float | None:
    try:
        fa, fb = plan.layer_factors(pair[0], w, layer), plan.layer_factors(pair[1], w, layer)
        return float(phi_between(fa, fb, view)[0, 0])
    except (ValueError, KeyError, FileNotFoundError):
        return None


def phi11_by_layer(
    plan: BuildPlan, pair: tuple[RunRecord, RunRecord]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{dW<w>: {view: {layer: φ(1, 1)}}}`` at the layers of Fig. 6 / 7 (``None`` where the
    runs cannot give it)."""
    return {
        f"dW{w}": {
            v: {str(li): _phi11_or_none(plan, pair, w, li, v) for li in plan.spread}
            for v in subspace.VIEWS
        }
        for w in plan.opts.targets
    }


def table7_entries(stats: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The summary's Table 7: rank -> the :data:`TABLE7_KEYS` of its statistics."""
    return {str(r): {k: t[k] for k in TABLE7_KEYS} for r, t in stats.items()}


def finish(summary: dict[str, Any], report: Report) -> dict[str, Any]:
    """``summary`` with the paper's values and what the build missed, could not draw and noted."""
    summary["paper"] = {
        "table7": {str(r): v for r, v in tables.paper_table7().items()},
        "figure3_phi11_min": tables.paper_values()["figure3"]["phi11_min"],
        "source": tables.paper_values()["source"],
    }
    summary["missing"] = [m.missing_message() for m in report.missing]
    summary["not_drawn"] = dict(report.not_drawn)
    summary["notes"] = list(report.notes)
    return summary


def write(summary: dict[str, Any], out: Path) -> list[Path]:
    """Atomically write ``summary.json`` and ``summary.md`` into ``out``; returns both paths."""
    clean = rounded(_nan_to_none(summary))
    return [
        atomic_write_json(out / "summary.json", clean),
        atomic_write_text(out / "summary.md", markdown(clean)),
    ]


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def markdown(s: dict[str, Any]) -> str:
    """``summary.md``: φ(1, 1) per view of both pairs, Table 7 beside the paper, missing runs, notes."""
    lines = [
        f"# Section 7 summary: {s['task']}/{s['model']}, layer {s['layer']} of {s['n_layers']}",
        "",
        "φ(1, 1) = overlap of the top singular directions (paper Fig. 3: > 0.5 for ΔWq, ΔWv). "
        f"Default view: {subspace.VIEWS[0]} ({subspace.VIEW_DESCRIPTIONS[subspace.VIEWS[0]]}).",
        "",
    ]
    for key, title in (("ranks", "rank pair"), ("seeds", "seed pair")):
        block = s["phi11"].get(key)
        if not block:
            continue
        lines += [f"## φ(1, 1), {title}: {block['pair']}", ""]
        lines += [
            "| | " + " | ".join(subspace.VIEWS) + " |",
            "|---|" + "---|" * len(subspace.VIEWS),
        ]
        for row in [k for k in block if k.startswith("dW")] + ["random", "random_expected"]:
            vals = block[row]
            cells = [("" if vals[v] is None else f"{vals[v]:.3f}") for v in subspace.VIEWS]
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
