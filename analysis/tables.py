"""Table 7 (paper §7.3) as a DataFrame with the paper's values beside ours, and the one writer of
every table (md through pandas/tabulate, LaTeX through pandas' Styler, CSV)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.runs import CSV_FLOAT_FORMAT, atomic_write_text

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


def is_missing(v: Any) -> bool:
    """True for a table cell with no value: ``None``, a float NaN or pandas' NA."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def show(v: Any) -> str:
    """A cell of Tables 5/6: floats to 4 significant figures (whole numbers from 10⁴)."""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def table7_cell(x: Any) -> str:
    """A cell of Table 7: 3 significant figures, scientific below 0.01 and from 10⁴."""
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    ax = abs(float(x))
    if ax != 0 and (ax < 0.01 or ax >= 1e4):
        return f"{x:.2e}"
    return f"{x:.3g}" if ax < 1 else f"{x:.2f}"


def latex_escape(s: str) -> str:
    """Escape LaTeX's special characters in plain text (``±`` becomes ``$\\pm$``)."""
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$")


def write_table(
    df: pd.DataFrame,
    stem: str | os.PathLike,
    caption: str,
    *,
    preamble: str = "",
    fmt: Callable[[Any], str] = show,
    tex_cells: Mapping[str, Sequence[str]] | None = None,
) -> list[Path]:
    """Atomically write ``<stem>.md`` (caption, preamble, table), ``<stem>.csv`` and ``<stem>.tex``.

    The one writer of every table (5, 6, 7): markdown through pandas/tabulate, a booktabs table
    through pandas' Styler, the CSV with :data:`lora_repro.runs.SIG_DIGITS` significant digits (the same bytes from
    any BLAS kernel). ``df``'s index is not written.

    Args:
        df: the table, one row per table row; NaN/None cells are left empty.
        stem: path without suffix; its folder is created.
        caption: bold first line of the markdown, ``\\caption`` of the LaTeX (escaped).
        preamble: markdown paragraph between caption and table.
        fmt: how a non-string cell is shown in markdown and LaTeX.
        tex_cells: column -> raw LaTeX cells (not escaped) that replace that column in the .tex.

    Returns:
        The three paths, csv first.
    """
    stem = Path(stem)
    cells = df.astype(object).map(lambda v: "" if is_missing(v) else fmt(v))
    md = cells.to_markdown(index=False, tablefmt="github", disable_numparse=True)
    md = f"**{caption}**\n\n" + (preamble + "\n\n" if preamble else "") + md + "\n"
    tex = cells.map(latex_escape)
    for col, raw in (tex_cells or {}).items():
        tex[col] = list(raw)
    tex.columns = [latex_escape(str(c)) for c in tex.columns]
    latex = tex.style.hide(axis="index").to_latex(
        column_format="l" * tex.shape[1],
        position="t",
        position_float="centering",
        hrules=True,
        caption=latex_escape(caption),
    )
    return [
        atomic_write_text(
            stem.with_suffix(".csv"), df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT)
        ),
        atomic_write_text(stem.with_suffix(".md"), md),
        atomic_write_text(stem.with_suffix(".tex"), latex),
    ]


def write_table7(df: pd.DataFrame, out_dir: str | os.PathLike, caption: str = "") -> list[Path]:
    """Write ``table7.{csv,md,tex}`` into ``out_dir`` atomically (:func:`write_table`).

    The quantity key is the first column; the LaTeX shows the row labels in math.

    Returns:
        The three paths.
    """
    tex_labels = {key: tex for key, _, tex in TABLE7_ROWS}
    flat = df.reset_index()
    raw = [tex_labels.get(str(k), latex_escape(str(k))) for k in flat["quantity"]]
    return write_table(
        flat, Path(out_dir) / "table7", caption, fmt=table7_cell, tex_cells={"label": raw}
    )
