"""Plotting only: heatmaps of φ grids and singular-value spectra (matplotlib, Agg canvas).

No analysis math here; every function takes the numbers it draws. Figures are built as bare
:class:`matplotlib.figure.Figure` objects, never through pyplot: no global figure registry, no
backend switch (safe to import in a notebook kernel), and PNG / PDF are rendered by the Agg and
PDF canvases.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lora_repro.runs import atomic_write_bytes

CMAP = "viridis"


@dataclass(frozen=True)
class Panel:
    """One heatmap: ``grid[i - 1, j - 1]`` drawn with i on the y axis (top = 1), j on the x axis.

    Attributes:
        grid: (m1, m2) values in [0, 1].
        title: panel title.
        ylabel: name of the i axis.
        xlabel: name of the j axis.
        zoom: draw only ``grid[:zoom, :zoom]`` when set.
    """

    grid: np.ndarray
    title: str
    ylabel: str = "i"
    xlabel: str = "j"
    zoom: int | None = None


def _ticks(n: int) -> list[int]:
    if n <= 10:
        return list(range(1, n + 1))
    step = max(1, int(np.ceil(n / 8)))
    nice = next(s for s in (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 256) if s >= step)
    return [1] + list(range(nice, n + 1, nice))


def draw_heatmap(ax, panel: Panel, vmin: float = 0.0, vmax: float = 1.0):
    """Draw one :class:`Panel` on ``ax``; returns the image (for a colorbar)."""
    g = np.asarray(panel.grid, dtype=np.float64)
    if panel.zoom is not None:
        g = g[: panel.zoom, : panel.zoom]
    m1, m2 = g.shape
    im = ax.imshow(
        g,
        cmap=CMAP,
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, m2 + 0.5, m1 + 0.5, 0.5),
    )
    ax.set_xticks(_ticks(m2))
    ax.set_yticks(_ticks(m1))
    ax.tick_params(labelsize=7)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.set_title(panel.title, fontsize=9)
    return im


def heatmap_figure(
    rows: Sequence[Sequence[Panel | None]],
    suptitle: str = "",
    width_ratios: Sequence[float] | None = None,
    panel_size: tuple[float, float] = (3.2, 2.4),
) -> Figure:
    """A grid of φ heatmaps sharing one [0, 1] colour scale.

    Uses a fixed layout (no constrained layout): text layout dominates the cost of saving
    figures with many panels, and these figures are rebuilt on every ``make figures``.

    Args:
        rows: panels row by row; ``None`` leaves a cell empty.
        suptitle: figure title.
        width_ratios: relative column widths.
        panel_size: inches per panel (width, height) at ratio 1.
    """
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    ratios = list(width_ratios) if width_ratios else [1.0] * n_cols
    width = panel_size[0] * sum(ratios) + 1.6
    height = panel_size[1] * n_rows + 1.0
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"width_ratios": ratios})
    fig.subplots_adjust(
        left=0.9 / width,
        right=1.0 - 1.2 / width,
        bottom=0.6 / height,
        top=1.0 - 0.75 / height,
        wspace=0.35,
        hspace=0.55 * 2.4 / panel_size[1],
    )
    im = None
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            panel = row[c] if c < len(row) else None
            if panel is None:
                ax.axis("off")
                continue
            im = draw_heatmap(ax, panel)
    if im is not None:
        cax = fig.add_axes((1.0 - 0.9 / width, 0.6 / height, 0.15 / width, 1.0 - 1.35 / height))
        fig.colorbar(im, cax=cax, label="φ(i, j)")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def spectrum_figure(spectra: dict[str, np.ndarray], title: str = "") -> Figure:
    """Singular values (log scale) of several matrices, one line each, σ_1 first."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    for name, s in spectra.items():
        s = np.asarray(s, dtype=np.float64)
        ax.semilogy(np.arange(1, s.size + 1), np.maximum(s, 1e-300), marker=".", label=name)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """``fig`` rendered as PNG (for ``IPython.display.Image`` in notebooks, whatever backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")):
    """Save ``fig`` as ``<stem>.<fmt>`` for each format, atomically (:func:`runs.atomic_write_bytes`).

    Returns:
        The written paths.
    """
    stem = Path(stem)
    out = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        out.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    return out
