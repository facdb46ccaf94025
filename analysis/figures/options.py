"""What one build of the figures is asked to draw (:class:`Options`) and what it did (:class:`Report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis import subspace
from analysis.factors import default_layer
from analysis.selection import PAPER_RANK_PAIR, RunSpec, known_targets

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
            (:func:`analysis.selection.pick_rank_pair`; a note says so).
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
            if v not in subspace.VIEWS:
                raise ValueError(f"unknown view {v!r}; expected one of {', '.join(subspace.VIEWS)}")
        self.targets = known_targets(self.targets)
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
        return (self.ranks or PAPER_RANK_PAIR)[1]

    def dirs(self, layer: int, n_layers: int) -> tuple[Path, Path]:
        """(figures folder, tables folder) for a build at ``layer`` of ``n_layers``.

        The defaults for the middle layer are ``<results>/figures`` and ``<results>/tables``;
        for any other layer ``.../layer<L>`` below them. A folder given explicitly is kept.
        """
        sub_dir = "" if layer == default_layer(n_layers) else f"layer{layer}"
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
