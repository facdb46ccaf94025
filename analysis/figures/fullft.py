"""Full fine-tuning beside LoRA: spectra, LoRA-vs-full φ, intruder dimensions, results/tables/fullft.

``python -m analysis.figures.fullft --results results`` (part of ``make figures``) reads the
finished full fine-tuning runs (``adapter.method=full``, their ``delta.safetensors``) and the LoRA
runs of the same weight types (Wq,Wv at every rank and seed), measures every adapted matrix with
:mod:`analysis.fullft`, and writes

* ``figures/fullft_spectra.{png,pdf,csv}``: singular values (log scale) of ΔWq and ΔWv at the
  middle layer, LoRA r ∈ {1, 8, 64} against full fine-tuning, with a Gaussian matrix of full
  fine-tuning's norm as the random level;
* ``figures/fullft_phi.{png,pdf,csv}``: φ(i, j) between LoRA's top-i left singular vectors of ΔW
  (r = 8 and 64) and full fine-tuning's top-j, middle layer, beside two random subspaces;
* ``figures/fullft_intruders.{png,pdf,csv}``: intruder dimensions (of the top 10) by layer for LoRA
  at r ∈ {1, 8, 64} and for full fine-tuning, mean over seeds, with the random level (the same
  spectrum on random singular vectors);
* ``tables/fullft.{md,csv,tex}``: per weight type and method the rank measures, intruders, the
  overlap with full fine-tuning's top directions and Table 7's projection ratio to random.

Everything is measured per (seed, weight type, layer) by :func:`analysis.fullft.measure`, which
the claims report uses too. Reads run directories through :mod:`lora_repro.runs` only (no torch); never trains.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import fullft
from analysis.figures.plots import Panel, heatmap_figure, save_figure
from analysis.fullft import PHI_RANKS, PHI_TOP, SHARED_TOP, SPECTRA_RANKS, TYPES, Measured
from analysis.subspace import random_phi_grid
from analysis.tables import write_table
from lora_repro import runs
from lora_repro.errors import LoraReproError


# ---------------------------------------------------------------------------------------------
# Figures and table
# ---------------------------------------------------------------------------------------------
def _label(method: str, r) -> str:
    return "full FT" if method == "full" else f"LoRA r={int(r)}"


def spectra_figure(m: Measured, layer: int, seed: int) -> tuple[Figure, pd.DataFrame]:
    """Singular values of ΔWq and ΔWv at ``layer`` (one panel each), LoRA r ∈ SPECTRA_RANKS and
    full fine-tuning, with a Gaussian matrix of full fine-tuning's ‖ΔW‖F (the random level)."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, len(TYPES), squeeze=False)[0]
    frames = []
    rng = np.random.default_rng(0)
    for ax, t in zip(axes, TYPES, strict=True):
        lines = {
            f"LoRA r={r}": m.spectra.get((f"LoRA r={r}", seed, t, layer)) for r in SPECTRA_RANKS
        }
        lines["full FT"] = m.spectra.get(("full", seed, t, layer))
        full = lines["full FT"]
        if full is not None:
            g = rng.standard_normal((m.d, full.size))
            g *= np.sqrt(np.sum(full**2)) / np.linalg.norm(g)
            lines["random (Gaussian, full FT's ‖ΔW‖F)"] = np.linalg.svd(g, compute_uv=False)
        for name, s in lines.items():
            if s is None:
                continue
            style = "--" if name.startswith("random") else "-"
            marker = "o" if s.size <= 8 else None  # r = 1 is one point
            ax.semilogy(np.arange(1, s.size + 1), np.maximum(s, 1e-12), style, label=name, lw=1.2,
                        marker=marker, ms=4)  # fmt: skip
            frames.append(pd.DataFrame({"type": t, "layer": layer, "seed": seed, "line": name,
                                        "index": np.arange(1, s.size + 1), "sigma": s}))  # fmt: skip
        ax.set_title(f"ΔW{t}, layer {layer}, seed {seed}", fontsize=9)
        ax.set_xlabel("index i")
        ax.set_ylabel("σ_i")
        ax.legend(fontsize=7)
    return fig, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def phi_figure(m: Measured, layer: int, seed: int) -> tuple[Figure, pd.DataFrame]:
    """φ(i, j): LoRA's top-i (r = 8, 64) vs full fine-tuning's top-j left singular vectors of ΔW,
    rows ΔWq / ΔWv, with two random subspaces of the same sizes as the last column."""
    rows, frames = [], []
    for t in TYPES:
        row = []
        for r in PHI_RANKS:
            g = m.phi.get((r, seed, t, layer))
            row.append(None if g is None else Panel(g, f"ΔW{t}: LoRA r={r} vs full FT", "i (LoRA)",
                                                    "j (full FT)"))  # fmt: skip
            if g is not None:
                frames.append(_long(g, t, layer, f"lora_r{r}"))
        rnd = random_phi_grid(m.d, max(PHI_RANKS), PHI_TOP, seed=0)
        row.append(Panel(rnd, f"random, d={m.d}", "i", "j"))
        frames.append(_long(rnd, t, layer, "random"))
        rows.append(row)
    fig = heatmap_figure(rows, f"LoRA vs full fine-tuning, left singular vectors of ΔW, layer "
                         f"{layer}, seed {seed}")  # fmt: skip
    return fig, pd.concat(frames, ignore_index=True)


def _long(grid: np.ndarray, t: str, layer: int, panel: str) -> pd.DataFrame:
    i, j = np.meshgrid(
        np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1), indexing="ij"
    )
    return pd.DataFrame({"type": t, "layer": layer, "panel": panel, "i": i.ravel(), "j": j.ravel(),
                         "phi": grid.ravel()})  # fmt: skip


def intruder_figure(df: pd.DataFrame) -> tuple[Figure, pd.DataFrame]:
    """Intruder dimensions of the top 10 by layer, mean ± std over seeds, per method, with the
    random level of LoRA r = 8 (its spectrum on random singular vectors)."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    axes = fig.subplots(1, len(TYPES), squeeze=False)[0]
    keep = df[(df["method"] == "full") | df["r"].isin(SPECTRA_RANKS)]
    g = keep.groupby(["type", "method", "r", "layer"], dropna=False)
    stats = g.agg(intruders=("intruders", "mean"), intruders_std=("intruders", "std"),
                  intruders_random=("intruders_random", "mean"), n_seeds=("seed", "nunique"))  # fmt: skip
    stats = stats.reset_index()
    for ax, t in zip(axes, TYPES, strict=True):
        for (method, r), s in stats[stats["type"] == t].groupby(["method", "r"], dropna=False):
            ax.errorbar(s["layer"], s["intruders"], yerr=s["intruders_std"].fillna(0), marker="o",
                        capsize=2, label=_label(method, r))  # fmt: skip
            if method == "lora" and r == 8:
                ax.plot(s["layer"], s["intruders_random"], "k--", lw=1,
                        label="random (LoRA r=8's spectrum)")  # fmt: skip
        ax.set_title(f"ΔW{t}: intruder dimensions of the top {fullft.INTRUDER_TOP_K} "
                     f"(|cos| < {fullft.INTRUDER_EPSILON})", fontsize=9)  # fmt: skip
        ax.set_xlabel("layer")
        ax.set_ylabel("count")
        ax.legend(fontsize=7)
    return fig, stats


TABLE_COLUMNS = (
    ("energy_rank", "rank for 90% of ‖ΔW‖F²"),
    ("stable_rank", "stable rank"),
    ("entropy_rank", "entropy rank"),
    ("intruders", "intruders (top 10)"),
    ("intruders_random", "intruders, random level"),
    ("phi_top1_full", f"φ(1,{SHARED_TOP}) to full FT"),
    ("proj_ratio_4", "‖UᵀWV‖F / random, top 4"),
    ("proj_ratio_64", "‖UᵀWV‖F / random, top 64"),
)


def table(df: pd.DataFrame, d: int) -> pd.DataFrame:
    """results/tables/fullft: one row per weight type and method (LoRA per r, then full
    fine-tuning); each measure averaged over layers, then mean ± std over seeds."""
    rows = []
    for t in TYPES:
        sub = df[df["type"] == t]
        keys = sorted({r for r in sub["r"].dropna().astype(int)}) + [None]
        for r in keys:
            sel = sub[sub["method"] == "full"] if r is None else sub[sub["r"] == r]
            if sel.empty:
                continue
            per_seed = sel.groupby("seed").mean(numeric_only=True)
            row = {"type": t, "method": "full" if r is None else "lora",
                   "r": r, "n_seeds": len(per_seed)}  # fmt: skip
            for col, _ in TABLE_COLUMNS:
                if col in per_seed and per_seed[col].notna().any():
                    v = per_seed[col].dropna()
                    row[col] = float(v.mean())
                    row[col + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else None
            rows.append(row)
    out = pd.DataFrame(rows)
    out["r"] = out["r"].astype("Int64")
    return out


def write_all(results: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Every figure and table of this module for each (task, model) with full fine-tuning runs.

    Returns:
        ``{"written": [paths], "problems": [lines], "measured": {(task, model): Measured}}``.
    """
    results = Path(results)
    fig_dir = Path(out_dir) if out_dir else results / "figures"
    damaged: list = []
    found = fullft.find(results, damaged)
    problems = [f"skipped (damaged, retrained by the next sweep): {d}" for d in damaged]
    written: list[Path] = []
    measured = {}
    many = len(found) > 1
    for (task, model), rs in sorted(found.items()):
        try:
            m = fullft.measure(results, model, rs)
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{task}/{model}: {e}")
            continue
        measured[(task, model)] = m
        problems += m.problems
        df = m.frame()
        suffix = f"_{task}_{model}" if many else ""
        layer = m.n_layers // 2
        seed = min(rs.full)
        for name, (fig, data) in (
            ("spectra", spectra_figure(m, layer, seed)),
            ("phi", phi_figure(m, layer, seed)),
            ("intruders", intruder_figure(df)),
        ):
            stem = fig_dir / f"fullft_{name}{suffix}"
            written += save_figure(fig, stem)
            written.append(runs.atomic_write_text(
                stem.with_suffix(".csv"), data.to_csv(index=False, float_format=runs.CSV_FLOAT_FORMAT)
            ))  # fmt: skip
        tab = table(df, m.d)
        caption = (f"Full fine-tuning vs LoRA, {task} / {model}: rank, intruder dimensions and "
                   "alignment of ΔW (Wq, Wv, every layer)")  # fmt: skip
        note = (
            "Each measure is averaged over the layers, then mean and std over seeds (n_seeds). "
            f"Random levels: a Gaussian {m.d}×{m.d} matrix needs "
            f"{fullft.gaussian_energy_rank(m.d, m.d)} directions for 90% of its energy; φ(1,"
            f"{SHARED_TOP}) of a random direction is {SHARED_TOP / m.d:.3f}; the projection ratio "
            "of random directions is 1; intruders, random level: the same spectrum on random "
            "singular vectors."
        )
        written += write_table(tab, results / "tables" / f"fullft{suffix}", caption, preamble=note)
    return {"written": written, "problems": problems, "measured": measured}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.figures.fullft --results DIR``; 0, or 2 with one line on stderr."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (paths.results)")
    p.add_argument("--out", default=None, help="figures folder (default: <results>/figures)")
    args = p.parse_args(argv)
    problem = runs.results_read_problem(args.results)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        out = write_all(args.results, args.out)
    except LoraReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in out["problems"]:
        print(line, file=sys.stderr)
    if not out["measured"]:
        print("full fine-tuning: no finished adapter.method=full runs of Wq,Wv (make sweep "
              "SWEEP=full); nothing drawn")  # fmt: skip
    for path in out["written"]:
        if path.suffix in (".png", ".md"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
