"""Table 7 (paper §7.3) as a DataFrame with the paper's values beside ours, and its writers.

Markdown and LaTeX are written by hand (no ``tabulate`` or ``jinja2`` needed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.runs import atomic_write_text

PAPER_VALUES_FILE = Path(__file__).with_name("paper_values.json")

TABLE7_ROWS: tuple[tuple[str, str, str], ...] = (
    # (key, markdown label, LaTeX label)
    ("proj_dW", "‖UᵀWV‖F, U,V = top-r of ΔW", r"$\|U^\top W V\|_F$, $U,V$ of $\Delta W$"),
    ("proj_W", "‖UᵀWV‖F, U,V = top-r of W", r"$\|U^\top W V\|_F$, $U,V$ of $W$"),
    ("proj_random", "‖UᵀWV‖F, U,V random (mean)", r"$\|U^\top W V\|_F$, random $U,V$"),
    ("proj_random_std", "  random: std over draws", r"\quad random: std"),
    ("ratio_to_random", "ΔW / random projection", r"$\Delta W$ / random"),
    ("norm_W", "‖W‖F", r"$\|W\|_F$"),
    ("norm_dW", "‖ΔW‖F (with α/r)", r"$\|\Delta W\|_F$ (with $\alpha/r$)"),
    ("norm_dW_unscaled", "‖ΔW‖F (B·A, no α/r)", r"$\|BA\|_F$ (no $\alpha/r$)"),
    ("amplification", "amplification ‖ΔW‖F / ‖UᵀWV‖F", r"amplification"),
    ("amplification_unscaled", "amplification, no α/r", r"amplification, no $\alpha/r$"),
    ("scaling", "scaling α/r", r"scaling $\alpha/r$"),
    ("sigma1", "σ1 of ΔW", r"$\sigma_1(\Delta W)$"),
    ("sigma2", "σ2 of ΔW", r"$\sigma_2(\Delta W)$"),
    ("sigma3", "σ3 of ΔW", r"$\sigma_3(\Delta W)$"),
    ("sigma4", "σ4 of ΔW", r"$\sigma_4(\Delta W)$"),
    ("sigma2_over_sigma1", "σ2/σ1 of ΔW", r"$\sigma_2/\sigma_1$"),
)


@lru_cache(maxsize=1)
def paper_values() -> dict[str, Any]:
    """The paper's reported numbers (``analysis/paper_values.json``, arXiv 2106.09685 v2)."""
    return json.loads(PAPER_VALUES_FILE.read_text(encoding="utf-8"))


def paper_table7() -> dict[int, dict[str, float]]:
    """Paper Table 7 by rank, with ``ratio_to_random`` derived as proj_dW / proj_random."""
    out = {}
    for r, vals in paper_values()["table7"]["ranks"].items():
        v = dict(vals)
        v["ratio_to_random"] = v["proj_dW"] / v["proj_random"]
        out[int(r)] = v
    return out


def table7_frame(stats_by_rank: Mapping[int, Mapping[str, float]]) -> pd.DataFrame:
    """Table 7 with quantities as rows and, per rank, our column and the paper's where it has one.

    Args:
        stats_by_rank: ``r -> table7_stats(...)`` for the ranks measured.

    Returns:
        DataFrame indexed by quantity key (see :data:`TABLE7_ROWS`), a ``label`` column, then
        columns ``r=<r>`` (ours) and ``paper r=<r>`` for the paper's ranks (4 and 64), ranks sorted.
        Paper-only ranks appear too, so the comparison is visible even when we lack that rank.
    """
    paper = paper_table7()
    cols: dict[str, list[float]] = {}
    for r in sorted(set(stats_by_rank) | set(paper)):
        if r in stats_by_rank:
            cols[f"r={r}"] = [
                float(stats_by_rank[r].get(key, math.nan)) for key, _, _ in TABLE7_ROWS
            ]
        if r in paper:
            cols[f"paper r={r}"] = [float(paper[r].get(key, math.nan)) for key, _, _ in TABLE7_ROWS]
    df = pd.DataFrame(cols, index=[key for key, _, _ in TABLE7_ROWS])
    df.index.name = "quantity"
    df.insert(0, "label", [label for _, label, _ in TABLE7_ROWS])
    return df


def _fmt(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    ax = abs(float(x))
    if ax != 0 and (ax < 0.01 or ax >= 1e4):
        return f"{x:.2e}"
    return f"{x:.3g}" if ax < 1 else f"{x:.2f}"


def to_markdown(df: pd.DataFrame, caption: str = "") -> str:
    """A GitHub-markdown table of ``df`` (index as first column), numbers to 3 figures."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [_fmt(v) for v in row.tolist()]) + " |")
    out = "\n".join(lines) + "\n"
    return (caption.rstrip() + "\n\n" + out) if caption else out


def _tex_escape(s: str) -> str:
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def table7_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs LaTeX table of :func:`table7_frame` output (``label`` column as row names)."""
    tex_labels = {key: tex for key, _, tex in TABLE7_ROWS}
    cols = [c for c in df.columns if c != "label"]
    head = " & ".join(["quantity"] + [_tex_escape(c) for c in cols]) + r" \\"
    body = []
    for key, row in df.iterrows():
        cells = [tex_labels.get(str(key), _tex_escape(str(key)))]
        cells += [_fmt(row[c]).replace("inf", r"$\infty$") for c in cols]
        body.append(" & ".join(cells) + r" \\")
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
        head,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if caption:
        lines.append(r"\caption{" + _tex_escape(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table7(df: pd.DataFrame, out_dir: str | os.PathLike, caption: str = "") -> list[Path]:
    """Write ``table7.md``, ``table7.csv`` and ``table7.tex`` into ``out_dir`` atomically.

    Returns:
        The three paths.
    """
    out = Path(out_dir)
    paths = [out / "table7.md", out / "table7.csv", out / "table7.tex"]
    atomic_write_text(paths[0], to_markdown(df, caption))
    atomic_write_text(paths[1], df.to_csv(float_format="%.10g"))
    atomic_write_text(paths[2], table7_latex(df, caption))
    return paths
