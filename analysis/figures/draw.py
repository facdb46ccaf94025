"""Figures 3, 4, 6, 7, 8 and Table 7 drawn from chosen runs (paper §7.2, §7.3, App. H).

Each figure is written as PNG / PDF (:mod:`analysis.figures.plots`) beside a CSV of the plotted
numbers in long format ``figure, view, layer, panel, i, j, phi``; Table 7 through the one table
writer (:func:`analysis.tables.write_table7`). Every function records what it wrote in the
build's :class:`~analysis.figures.options.Report`. The math is :mod:`analysis.subspace` and
:mod:`analysis.amplification`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import amplification, subspace, tables
from analysis.factors import LayerFactors, phi_between
from analysis.figures.options import Report
from analysis.figures.plots import Panel, heatmap_figure, save_figure
from analysis.figures.select import BuildPlan
from analysis.selection import RunRecord
from lora_repro.runs import CSV_FLOAT_FORMAT, atomic_write_text


def random_like(f1: LayerFactors, f2: LayerFactors, view: str, seed: int) -> np.ndarray:
    """φ grid between two seeded random Gaussian matrices of the same shapes as f1, f2."""
    n = subspace.basis_dim(view, f1.d, f1.k)
    return subspace.random_phi_grid(n, f1.A.shape[0], f2.A.shape[0], seed)


def long_frame(
    figure: str, view: str, layer: int | str, panel: str, grid: np.ndarray
) -> pd.DataFrame:
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


def _write_figure(
    plan: BuildPlan, report: Report, fig, stem: str, frames: list[pd.DataFrame]
) -> None:
    report.written += save_figure(fig, plan.out / stem, plan.opts.formats)
    csv = plan.out / f"{stem}.csv"
    atomic_write_text(
        csv, pd.concat(frames, ignore_index=True).to_csv(index=False, float_format=CSV_FLOAT_FORMAT)
    )
    report.written.append(csv)
    report.drawn.append(stem)


def run_label(rec: RunRecord) -> str:
    """``r=<r> seed<k>``: how a run is named in titles, axes and the summary."""
    return f"r={rec.spec.r} seed{rec.spec.seed}"


def figure3(
    plan: BuildPlan,
    report: Report,
    pair: tuple[RunRecord, RunRecord],
    view: str,
    layers: Sequence[int],
) -> None:
    """Fig. 3 (one layer) or Fig. 6 (several): rank r1 vs r2, ΔWq and ΔWv, full and zoom.

    Raises:
        ValueError, KeyError: a view or module that the runs lack (e.g. ``dA`` without A_init).
    """
    a, b = pair
    name = "figure3" if len(layers) == 1 else "figure6"
    rows, frames = [], []
    zoom = min(a.spec.r, b.spec.r)
    for layer in layers:
        row_full, row_zoom = [], []
        for w in plan.opts.targets:
            g = phi_between(plan.layer_factors(a, w, layer), plan.layer_factors(b, w, layer), view)
            frames.append(long_frame(name, view, layer, f"dW{w}", g))
            t = f"ΔW{w} layer {layer}"
            ylab, xlab = f"i ({run_label(a)})", f"j ({run_label(b)})"
            row_full.append(Panel(g, t, ylab, xlab))
            row_zoom.append(Panel(g, f"{t}, i,j ≤ {zoom}", ylab, xlab, zoom=zoom))
        rows.append(row_full + row_zoom)
    nt = len(plan.opts.targets)
    fig = heatmap_figure(
        rows,
        f"φ({view}: {run_label(a)} vs {run_label(b)}) — {subspace.VIEW_DESCRIPTIONS[view]} — "
        f"{plan.opts.task}/{plan.opts.model}",
        width_ratios=[3.0] * nt + [1.1] * nt,
        panel_size=(2.0, 1.9),
    )
    _write_figure(plan, report, fig, f"{name}_{view}", frames)


def figure4(
    plan: BuildPlan,
    report: Report,
    pair: tuple[RunRecord, RunRecord],
    view: str,
    layers: Sequence[int],
) -> None:
    """Fig. 4 (one layer) or Fig. 7 (several): seed s0 vs s1, ΔWq, ΔWv, and random Gaussian.

    Raises:
        ValueError, KeyError: a view or module that the runs lack (e.g. ``dA`` without A_init).
    """
    a, b = pair
    name = "figure4" if len(layers) == 1 else "figure7"
    rows, frames = [], []
    for li, layer in enumerate(layers):
        row = []
        for w in plan.opts.targets:
            fa, fb = plan.layer_factors(a, w, layer), plan.layer_factors(b, w, layer)
            g = phi_between(fa, fb, view)
            frames.append(long_frame(name, view, layer, f"dW{w}", g))
            row.append(
                Panel(g, f"ΔW{w} layer {layer}", f"i ({run_label(a)})", f"j ({run_label(b)})")
            )
        rnd = random_like(fa, fb, view, plan.opts.seed + li)
        frames.append(long_frame(name, view, layer, "random", rnd))
        row.append(Panel(rnd, "random Gaussian", "i", "j"))
        rows.append(row)
    fig = heatmap_figure(
        rows,
        f"φ({view}: seed {a.spec.seed} vs seed {b.spec.seed}, r={a.spec.r}) — "
        f"{subspace.VIEW_DESCRIPTIONS[view]} — {plan.opts.task}/{plan.opts.model}",
        panel_size=(3.0, 2.8),
    )
    _write_figure(plan, report, fig, f"{name}_{view}", frames)


def figure8(plan: BuildPlan, report: Report, ranked: dict[int, RunRecord]) -> dict[str, float]:
    """Fig. 8: φ(W's top-i left directions, ΔW's top-j left directions) per rank, and random.

    Returns:
        ``{"r=<r>": φ(r, r), ..., "random": φ(r_max, r_max)}``.

    Raises:
        KeyError, FileNotFoundError: a module or W that the runs or base weights lack;
            ValueError: W not oriented (d, k).
    """
    layer, w = plan.layer, plan.opts.weight
    panels, frames, head = [], [], {}
    for r, rec in sorted(ranked.items()):
        f = plan.layer_factors(rec, w, layer)
        W = amplification.check_orientation(plan.base.matrix(f.key), f.d, f.k)
        g = amplification.w_vs_dw_phi(W, subspace.factored_svd(f.B, f.A).U)
        frames.append(long_frame("figure8", "W_left_vs_dW_left", layer, f"r={r}", g))
        panels.append(Panel(g, f"W{w} vs ΔW{w}, r={r}", f"i (W{w})", f"j (ΔW{w})"))
        head[f"r={r}"] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    r_max = max(ranked)
    rng = np.random.default_rng(plan.opts.seed)
    g = amplification.w_vs_dw_phi(W, subspace.random_gaussian_basis(f.d, r_max, rng))
    frames.append(long_frame("figure8", "W_left_vs_dW_left", layer, "random", g))
    panels.append(Panel(g, f"W{w} vs random, r={r_max}", f"i (W{w})", "j (random)"))
    head["random"] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    fig = heatmap_figure(
        [panels],
        f"φ(W{w} top-i, ΔW{w} top-j), left singular vectors, layer {layer} — "
        f"{plan.opts.task}/{plan.opts.model}",
        panel_size=(2.2, 4.0),
    )
    _write_figure(plan, report, fig, "figure8", frames)
    return head


def table7(
    plan: BuildPlan, report: Report, ranked: dict[int, RunRecord]
) -> dict[int, dict[str, float]]:
    """Table 7 at the build's layer for every rank in ``ranked``; writes md, csv, tex.

    Returns:
        rank -> :func:`analysis.amplification.table7_stats`.

    Raises:
        KeyError, FileNotFoundError: a module or W that the runs or base weights lack.
    """
    layer, w, o = plan.layer, plan.opts.weight, plan.opts
    stats = {}
    for r, rec in sorted(ranked.items()):
        f = plan.layer_factors(rec, w, layer)
        W = plan.base.matrix(f.key)
        stats[r] = amplification.table7_stats(
            W, f.B, f.A, f.scaling, n_random=o.n_random, seed=o.seed
        )
    df = tables.table7_frame(stats)
    caption = (
        f"Table 7 reproduction: ΔW{w} at layer {layer} of {plan.n_layers}, {o.task}/{o.model}, "
        f"targets [{','.join(o.targets)}], seed {o.seeds[0]}; random = mean of {o.n_random} "
        "random orthonormal pairs. Paper: GPT-3 175B layer 48 of 96 "
        "(arXiv 2106.09685 v2, Table 7)."
    )
    report.written += tables.write_table7(df, plan.tables_dir, caption)
    report.drawn.append("table7")
    return stats
