"""Section 7's claims, each checked on the user's runs: seeds, a 95% interval and a verdict.

Every claim has an id, the paper's sentence and where it is, the quantity that tests it, the
paper's value, our value per seed (or seed pair), the mean and a 95% Student-t interval over
seeds, the random baseline where one exists, and a verdict:

* a **directional** claim ("A is worse than B", "φ(1,1) > 0.5") is a one-sided t-test at 5%
  on the per-seed values (paired by seed where both sides share seeds): ``holds`` when
  significant in the paper's direction, ``fails`` when significant the other way;
* an **equivalence** claim ("as good as", "competitive") is a TOST with margin δ: ``holds``
  when the 90% interval (two one-sided 5% tests) lies within ±δ, ``fails`` when it lies wholly
  outside; "at least as good as" is its one-sided half (non-inferiority by δ) and "does not
  help" the other half (non-superiority by δ);
* anything else is ``inconclusive``, with the number of seeds that would resolve it at 80%
  power at the observed spread (or, with one seed, at a stated prior spread).

The claims are pure functions of the index (one row per run) and of per-seed measurements of
the saved factors (:func:`gather`); the statistics are :mod:`analysis.stats`. ``python -m
analysis.claims`` (``make figures``) writes the report, ``results/claims.{md,json}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import amplification, factors, fullft, subspace
from analysis.index import TABLE6_RANKS, budget_ranks, build_index
from analysis.stats import ALPHA, TESTS, VERDICTS, seeds_needed
from analysis.tables import paper_values
from lora_repro import runs
from lora_repro.errors import LoraReproError
from lora_repro.runs import atomic_write_json, atomic_write_text, rounded

# Accuracy margin for "as good as" claims, in points: about the standard error of one run's
# validation accuracy on the embedded default (1,275 reviews at ~80%: 1.1 points).
DELTA_ACC = 1.0
# Margin for "at the random level" overlap claims (φ is in [0, 1]): a tenth of a full overlap.
DELTA_PHI = 0.1
# "≫ random": ΔW's projection on W at least this many times the random directions' (the
# paper's are 16× at r = 4 and 5.8× at r = 64); tested on the log scale.
RATIO_LEVEL = 2.0
# "ΔW does not repeat W's top directions": its projection below this share of W's own top-r.
SHARE_LEVEL = 0.5
# A direction counts as shared across seeds (F4-1) when φ(i, i) exceeds this multiple of the
# random level i / k.
SHARED_LEVEL = 2.0


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One tested quantity of a claim.

    Attributes:
        label: what is compared, e.g. ``acc(Wq,Wv r=4) − acc(Wq r=8)``.
        test: ``directional``, ``equivalence``, ``noninferiority`` or ``nonsuperiority``.
        level: the level or margin of the test (its unit is the quantity's).
        values: per seed (or seed pair), in ``units``.
        seeds: the seed (or pair) of each value.
        units: ``points`` (accuracy %), ``phi``, ``ratio``, ``count``, ...
        paper: the paper's value of the same quantity, where it reports one.
        random: the random baseline of the quantity, where one exists.
        judged: whether the verdict counts for the claim (descriptive parts do not).
        prior_sd: spread assumed with one value (for the seeds needed).
    """

    label: str
    test: str
    level: float
    values: list[float]
    seeds: list[Any]
    units: str
    paper: float | None = None
    random: float | None = None
    judged: bool = True
    prior_sd: float | None = None
    verdict: str = "inconclusive"
    mean: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    seeds_needed: int | None = None

    def evaluate(self) -> Part:
        """Fill verdict, mean, interval and seeds needed from :attr:`values`."""
        if not self.values:
            return self
        verdict, s = TESTS[self.test](self.values, self.level)
        self.verdict, self.mean, self.lo, self.hi, self.n = verdict, s.mean, s.lo, s.hi, s.n
        if verdict == "inconclusive":
            self.seeds_needed = seeds_needed(self.test, self.values, self.level, self.prior_sd)
        return self


@dataclass
class Claim:
    """One of Section 7's claims, tested on the runs.

    Attributes:
        id: e.g. ``T5-1``.
        where: table / figure / section of the paper.
        paper_text: the paper's claim, short.
        quantity: what tests it, in words (with the test and its level).
        parts: the tested quantities (all must hold for the claim to hold).
        missing: runs the claim needs and the results lack (with the sweep that makes them).
        note: anything a reader must know to read the verdict.
    """

    id: str
    where: str
    paper_text: str
    quantity: str
    parts: list[Part] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def verdict(self) -> str:
        """``fails`` if a judged part fails, ``holds`` if all hold, else ``inconclusive``."""
        judged = [p for p in self.parts if p.judged]
        if self.missing or not judged:
            return "inconclusive"
        if any(p.verdict == "fails" for p in judged):
            return "fails"
        if all(p.verdict == "holds" for p in judged):
            return "holds"
        return "inconclusive"

    @property
    def n_seeds(self) -> int:
        """The fewest values any judged part rests on (0 when inputs are missing)."""
        judged = [p for p in self.parts if p.judged]
        return min((p.n for p in judged), default=0)

    @property
    def seeds_needed(self) -> int | None:
        """For an inconclusive claim: the most seeds any undecided judged part needs."""
        if self.verdict != "inconclusive":
            return None
        need = [p.seeds_needed for p in self.parts if p.judged and p.verdict == "inconclusive"]
        known = [n for n in need if n is not None]
        return max(known) if known else None

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict (claims.json)."""
        return {
            "id": self.id,
            "where": self.where,
            "paper_text": self.paper_text,
            "quantity": self.quantity,
            "verdict": self.verdict,
            "n_seeds": self.n_seeds,
            "seeds_needed": self.seeds_needed,
            "missing": list(self.missing),
            "note": self.note,
            "parts": [asdict(p) for p in self.parts],
        }


# ---------------------------------------------------------------------------------------------
# Inputs: accuracies per cell and seed
# ---------------------------------------------------------------------------------------------
def accuracy_by_seed(index: pd.DataFrame, targets: str, r: int) -> dict[int, float]:
    """Validation accuracy (points) of cell (``targets``, ``r``) per seed, from the index."""
    if index.empty:
        return {}
    sel = index[(index["targets"] == targets) & (index["r"] == int(r))]
    if "layers" in sel:
        sel = sel[sel["layers"].isna()]
    return {int(s): float(a) * 100 for s, a in zip(sel["seed"], sel["val_accuracy"], strict=True)}


def paired(a: dict[Any, float], b: dict[Any, float]) -> tuple[list[Any], list[float]]:
    """Seeds both sides have, and a − b for each (paired by seed)."""
    common = sorted(set(a) & set(b))
    return common, [a[s] - b[s] for s in common]


def binomial_sd_points(acc_points: float, n_eval: int) -> float:
    """Standard error (points) of an accuracy measured on ``n_eval`` examples."""
    p = min(max(acc_points / 100, 1e-6), 1 - 1e-6)
    return 100 * math.sqrt(p * (1 - p) / n_eval)


def spread_prior(index: pd.DataFrame, n_eval: int | None) -> float | None:
    """Prior spread (points) of a difference of two cells' accuracies, for one-seed verdicts:
    the spread measured across seeds where some cell has several, else the binomial one."""
    if not index.empty and "val_accuracy" in index:
        sds = index.groupby(["targets", "r"])["val_accuracy"].std(ddof=1).dropna() * 100
        if len(sds):
            return float(math.sqrt(2) * sds.median())
    if n_eval:
        return math.sqrt(2) * binomial_sd_points(80.0, n_eval)
    return None


def _cell(targets: str, r: int) -> str:
    names = "".join(f"W{t}," for t in targets.split(","))[:-1]
    return f"{names} r={r}"


def _missing_cells(index, cells: Iterable[tuple[str, int]], sweep: str) -> list[str]:
    out = []
    for t, r in cells:
        if not accuracy_by_seed(index, t, r):
            out.append(f"[{t}] r={r}: run `make sweep SWEEP={sweep}`")
    return out


def _acc_part(index, a: tuple[str, int], b: tuple[str, int], test: str, level: float, prior,
              paper: float | None = None) -> Part:  # fmt: skip
    seeds, diffs = paired(accuracy_by_seed(index, *a), accuracy_by_seed(index, *b))
    return Part(
        label=f"acc({_cell(*a)}) − acc({_cell(*b)})",
        test=test, level=level, values=diffs, seeds=seeds, units="points",
        paper=paper, prior_sd=prior,
    ).evaluate()  # fmt: skip


def table5_claims(index: pd.DataFrame, ranks: dict[str, int], paper: dict, prior) -> list[Claim]:
    """T5-1..T5-3 on the Table 5 cells (``ranks``: r per weight-type set under the budget)."""
    wiki = dict(zip(paper["table5"]["columns"], paper["table5"]["WikiSQL"], strict=True))
    cell = {s: (s, r) for s, r in ranks.items()}
    need = _missing_cells(index, cell.values(), "table5")
    qv = cell["q,v"]

    c1 = Claim(
        "T5-1", "§7.1, Table 5",
        "Under a fixed budget, adapting Wq alone or Wk alone is worse than Wq,Wv at r=4.",
        f"paired difference of validation accuracy > 0 (one-sided t, {ALPHA:.0%})",
        [_acc_part(index, qv, cell[s], "directional", 0.0, prior, wiki["q,v"] - wiki[s])
         for s in ("q", "k")],
        missing=[m for m in need if m.startswith(("[q,v]", "[q]", "[k]"))],
    )  # fmt: skip
    c2 = Claim(
        "T5-2", "§7.1, Table 5",
        "Wq,Wv at r=4 is at least as good as any single weight type at r=8.",
        f"paired difference > −{DELTA_ACC:g} point (non-inferiority, one-sided t, {ALPHA:.0%})",
        [_acc_part(index, qv, cell[s], "noninferiority", DELTA_ACC, prior, wiki["q,v"] - wiki[s])
         for s in ("q", "k", "v", "o")],
        missing=[m for m in need if m.startswith(("[q,v]", "[q]", "[k]", "[v]", "[o]"))],
    )  # fmt: skip
    c3 = Claim(
        "T5-3", "§7.1, Table 5",
        "All four types at r=2 are as good as Wq,Wv at r=4 (73.7 both on WikiSQL).",
        f"paired difference within ±{DELTA_ACC:g} point (TOST, 90% interval)",
        [_acc_part(index, cell["q,k,v,o"], qv, "equivalence", DELTA_ACC, prior,
                   wiki["q,k,v,o"] - wiki["q,v"])],
        missing=[m for m in need if m.startswith(("[q,v]", "[q,k,v,o]"))],
    )  # fmt: skip
    return [c1, c2, c3]


def _best_rank(index, targets: str, ranks: Sequence[int]) -> int | None:
    means = {
        r: np.mean(list(v.values())) for r in ranks if (v := accuracy_by_seed(index, targets, r))
    }
    return max(means, key=means.get) if means else None


def table6_claims(index: pd.DataFrame, paper: dict, prior, ranks: Sequence[int]) -> list[Claim]:
    """T6-1..T6-3 on the Table 6 cells."""
    wiki = paper["table6"]["WikiSQL"]
    pr = list(paper["table6"]["ranks"])
    need = _missing_cells(index, [(s, r) for s in ("q", "q,v", "q,k,v,o") for r in ranks], "table6")
    best_qv, best_q = _best_rank(index, "q,v", ranks), _best_rank(index, "q", ranks)
    parts1 = []
    if best_qv is not None and best_qv != 1:
        parts1.append(_acc_part(index, ("q,v", 1), ("q,v", best_qv), "equivalence", DELTA_ACC,
                                prior, wiki["q,v"][0] - max(wiki["q,v"])))  # fmt: skip
    c1 = Claim(
        "T6-1", "§7.2, Table 6",
        "r=1 is already competitive for Wq,Wv (within noise of its best r).",
        f"paired difference of r=1 and the best r (by mean) within ±{DELTA_ACC:g} point (TOST)",
        parts1,
        missing=[m for m in need if m.startswith("[q,v]")],
        note="the best r is chosen on the same runs, which favours it slightly"
        if parts1 else "r=1 is itself the best r for Wq,Wv here",
    )  # fmt: skip
    parts2 = []
    if best_q is not None and best_qv is not None:
        gq = paired(accuracy_by_seed(index, "q", best_q), accuracy_by_seed(index, "q", 1))
        gqv = paired(accuracy_by_seed(index, "q,v", best_qv), accuracy_by_seed(index, "q,v", 1))
        seeds, diffs = paired(dict(zip(*gq, strict=True)), dict(zip(*gqv, strict=True)))
        paper_gap = (max(wiki["q"]) - wiki["q"][0]) - (max(wiki["q,v"]) - wiki["q,v"][0])
        parts2.append(Part(
            label=f"[acc(Wq r={best_q}) − acc(Wq r=1)] − [acc(Wq,Wv r={best_qv}) − acc(Wq,Wv r=1)]",
            test="directional", level=0.0, values=diffs, seeds=seeds, units="points",
            paper=paper_gap, prior_sd=prior,
        ).evaluate())  # fmt: skip
    c2 = Claim(
        "T6-2", "§7.2, Table 6",
        "Wq alone needs a larger r than Wq,Wv: its loss from best r to r=1 is larger.",
        "paired difference of the two gaps (best r − r=1) > 0 (one-sided t)",
        parts2,
        missing=[m for m in need if m.startswith(("[q]", "[q,v]"))],
    )  # fmt: skip
    parts3 = [
        _acc_part(index, (s, 64), (s, 8), "nonsuperiority", DELTA_ACC, prior,
                  wiki[s][pr.index(64)] - wiki[s][pr.index(8)])
        for s in ("q", "q,v", "q,k,v,o")
    ]  # fmt: skip
    c3 = Claim(
        "T6-3", "§7.2, Table 6",
        "Raising r beyond 8 does not help: r=64 is not better than r=8.",
        f"paired difference r=64 − r=8 < {DELTA_ACC:g} point, per weight set (non-superiority)",
        parts3,
        missing=[m for m in need if "r=8" in m or "r=64" in m],
    )  # fmt: skip
    return [c1, c2, c3]


# ---------------------------------------------------------------------------------------------
# Subspace and Table 7 claims, from per-seed measurements
# ---------------------------------------------------------------------------------------------
@dataclass
class SubspaceData:
    """Per-seed measurements from the saved factors (built by the figures module).

    Attributes:
        k: input dimension of the adapted matrices (φ's random level is i / k).
        d: output dimension.
        layer: the layer the main claims use.
        phi_ranks: ``{weight: {layer: {seed: φ grid (8, 64) of A_{r=8} vs A_{r=64}}}}``.
        phi_seeds: ``{weight: {layer: {(s1, s2): φ grid (64, 64) of A_{r=64} across seeds}}}``.
        random_grids: φ grids (64, 64) of pairs of random Gaussian matrices, one per draw.
        table7: ``{r: {seed: table7_stats dict}}`` for ΔWq at ``layer``.
        fig8: ``{r: {seed: φ(W top-r, ΔW top-r) at i = j = r}}`` for ΔWq at ``layer``.
        r_matched: the rank whose r/d matches GPT-3's r = 64 / 12288 (None where not run).
    """

    k: int
    d: int
    layer: int
    phi_ranks: dict[str, dict[int, dict[int, np.ndarray]]] = field(default_factory=dict)
    phi_seeds: dict[str, dict[int, dict[tuple[int, int], np.ndarray]]] = field(default_factory=dict)
    random_grids: list[np.ndarray] = field(default_factory=list)
    table7: dict[int, dict[int, dict[str, float]]] = field(default_factory=dict)
    fig8: dict[int, dict[int, float]] = field(default_factory=dict)
    r_matched: int | None = None


def shared_directions(grid: np.ndarray, k: int, multiple: float = SHARED_LEVEL) -> int:
    """How many i have φ(i, i) above ``multiple`` × the random level i / k (F4-1's measure)."""
    n = min(grid.shape)
    i = np.arange(1, n + 1)
    return int(np.sum(np.diag(grid)[:n] > multiple * i / k))


# Spread assumed for one-seed verdicts on factor measurements (seeds needed only), per unit:
# a tenth of a full overlap for φ, half a doubling for log ratios, two directions for counts.
PRIOR_SD = {"phi": DELTA_PHI, "log2 ratio": 0.5, "ratio": 0.1, "directions": 2.0}


def _phi_part(label, per_seed: dict, fn, test, level, random=None, paper=None, units="phi"):
    seeds = sorted(per_seed)
    return Part(
        label=label, test=test, level=level, values=[float(fn(per_seed[s])) for s in seeds],
        seeds=[list(s) if isinstance(s, tuple) else s for s in seeds], units=units,
        random=random, paper=paper, prior_sd=PRIOR_SD.get(units),
    ).evaluate()  # fmt: skip


def f3_claims(data: SubspaceData, layer: int, suffix: str = "") -> list[Claim]:
    """F3-1 and F3-2 at ``layer`` (r = 8 vs r = 64 at one seed, over seeds)."""
    k = data.k
    parts1, parts2, missing = [], [], []
    for w in ("q", "v"):
        grids = data.phi_ranks.get(w, {}).get(layer, {})
        if not grids:
            missing.append(f"ΔW{w} at r=8 and r=64: run `make sweep SWEEP=subspace`")
            continue
        parts1.append(_phi_part(f"φ(1,1) of ΔW{w}, A_r=8 vs A_r=64", grids, lambda g: g[0, 0],
                                "directional", 0.5, random=1 / k, paper=None))  # fmt: skip
        excess = lambda g: float(np.mean([g[i - 1, i - 1] - i / k for i in range(4, 9)]))  # noqa: E731
        parts2.append(_phi_part(f"mean over i=4..8 of φ(i,i) − i/k, ΔW{w}", grids, excess,
                                "nonsuperiority", DELTA_PHI, random=0.0))  # fmt: skip
    f31 = Claim(
        "F3-1" + suffix, "§7.2, Figure 3" if not suffix else "§7.2, Figure 6",
        "The top direction is shared between r=8 and r=64: φ(1,1) > 0.5 for ΔWq and ΔWv.",
        f"φ(1,1) > 0.5 (one-sided t over seeds; random level 1/k = {1 / k:.4f})",
        parts1, missing=missing,
    )  # fmt: skip
    f32 = Claim(
        "F3-2" + suffix, "§7.2, Figure 3",
        "Beyond the top few directions the overlap falls to the random level.",
        f"mean over i=4..8 of φ(i,i) − i/k < {DELTA_PHI:g} (non-superiority)",
        parts2, missing=missing,
    )  # fmt: skip
    return [f31, f32] if not suffix else [f31]


def f4_claims(data: SubspaceData, layer: int, suffix: str = "") -> list[Claim]:
    """F4-1 at ``layer`` (seed pairs at r = 64), and F4-2 (random matrices) once."""
    k, out = data.k, []
    gq = data.phi_seeds.get("q", {}).get(layer, {})
    gv = data.phi_seeds.get("v", {}).get(layer, {})
    common = sorted(set(gq) & set(gv))
    parts = []
    if common:
        diff = {p: shared_directions(gq[p], k) - shared_directions(gv[p], k) for p in common}
        parts.append(Part(
            label=f"shared(ΔWq) − shared(ΔWv), shared = #{{i ≤ 64: φ(i,i) > {SHARED_LEVEL:g}·i/k}}",
            test="directional", level=0.0, values=[float(diff[p]) for p in common],
            seeds=[list(p) for p in common], units="directions", random=0.0,
            prior_sd=PRIOR_SD["directions"],
        ).evaluate())  # fmt: skip
    out.append(Claim(
        "F4-1" + suffix, "§7.2, Figure 4" if not suffix else "§7.2, Figure 7",
        "Across seeds at r=64, ΔWq shares more directions than ΔWv (a higher intrinsic rank).",
        "paired difference of the number of shared directions > 0 (one-sided t over seed pairs)",
        parts,
        missing=[] if common else ["Wq,Wv at r=64 on two or more seeds: `make sweep SWEEP=seeds`"],
        note="seed pairs share seeds, so their values are not independent",
    ))  # fmt: skip
    if not suffix and data.random_grids:

        def deviation(g):
            return float(np.mean(g - np.maximum.outer(np.arange(1, g.shape[0] + 1),
                                                      np.arange(1, g.shape[1] + 1)) / k))  # fmt: skip

        out.append(Claim(
            "F4-2", "§7.2, Figure 4 (right)",
            "Two random Gaussian matrices share nothing: φ(i,j) ≈ max(i,j)/k.",
            "mean over the 64×64 grid of φ(i,j) − max(i,j)/k within ±0.02 (TOST over draws)",
            [_phi_part("mean of φ − max(i,j)/k, random pairs",
                       dict(enumerate(data.random_grids)), deviation, "equivalence", 0.02,
                       random=0.0)],
            note=f"k = {k}: the random level reaches 64/{k} = {64 / k:.2f} at i or j = 64",
        ))  # fmt: skip
    return out


def table7_claims(data: SubspaceData, paper: dict) -> list[Claim]:
    """T7-1..T7-3 and F8-1 for ΔWq at the main layer."""
    t7 = data.table7
    pt = paper["table7"]["ranks"]
    ranks = [r for r in (4, 64, data.r_matched) if r is not None and r in t7]
    ranks = list(dict.fromkeys(ranks))
    missing = [] if 4 in t7 and 64 in t7 else ["Wq,Wv at r=4 and r=64: `make sweep SWEEP=subspace`"]

    def paper_of(r, key):
        return float(pt[str(r)][key]) if str(r) in pt and key in pt[str(r)] else None

    def ratio_paper(r):
        p = pt.get(str(r))
        return p["proj_dW"] / p["proj_random"] if p else None

    tag = lambda r: f"r={r}" + (" (r/d of GPT-3's r=64)" if r == data.r_matched else "")  # noqa: E731
    parts1 = [
        _phi_part(f"log₂ ‖UᵀWV‖F(ΔW) / ‖UᵀWV‖F(random), {tag(r)}", t7[r],
                  lambda s: math.log2(s["proj_dW"] / s["proj_random"]), "directional",
                  math.log2(RATIO_LEVEL), random=0.0,
                  paper=math.log2(ratio_paper(r)) if ratio_paper(r) else None, units="log2 ratio")
        for r in ranks
    ]  # fmt: skip
    parts2 = [
        _phi_part(f"‖UᵀWV‖F(ΔW) / ‖UᵀWV‖F(W's top-r), {tag(r)}", t7[r],
                  lambda s: s["proj_dW"] / s["proj_W"], "nonsuperiority", SHARE_LEVEL,
                  paper=(paper_of(r, "proj_dW") or 0) / paper_of(r, "proj_W")
                  if paper_of(r, "proj_W") else None, units="ratio")
        for r in ranks
    ]  # fmt: skip
    parts3 = []
    if 4 in t7 and 64 in t7:
        low = min(ranks, key=lambda r: r)  # the matched r/d rank when it is below 4
        for name, key, judged in (("amplification", "amplification", False),
                                  ("ratio to random", "ratio_to_random", True)):  # fmt: skip
            seeds, diffs = paired({s: v[key] for s, v in t7[low].items()},
                                  {s: v[key] for s, v in t7[64].items()})  # fmt: skip
            p_low, p_high = (pt.get(str(low)) or {}), pt["64"]
            paper_v = None
            if key in p_low or (key == "ratio_to_random" and p_low):
                paper_v = (p_low.get(key) or ratio_paper(low)) - (
                    p_high.get(key) or ratio_paper(64)
                )
            parts3.append(Part(
                label=f"{name}(r={low}) − {name}(r=64)", test="directional", level=0.0,
                values=diffs, seeds=seeds, units="ratio", judged=judged, paper=paper_v,
                prior_sd=PRIOR_SD["ratio"],
            ).evaluate())  # fmt: skip
    claims = [
        Claim("T7-1", "§7.3, Table 7",
              "ΔW correlates with W more than a random matrix does (16× at r=4, 5.8× at r=64).",
              f"log₂ of the ratio to random directions > log₂ {RATIO_LEVEL:g} (one-sided t)",
              parts1, missing=missing),
        Claim("T7-2", "§7.3, Table 7",
              "ΔW does not repeat W's top singular directions.",
              f"ΔW's projection < {SHARE_LEVEL:g} × W's own top-r projection (non-superiority)",
              parts2, missing=missing),
        Claim("T7-3", "§7.3, Table 7",
              "The amplification factor is large at low r (21.5 at r=4) and falls with r (≈2 at r=64).",
              "ratio to random at the low r minus at r=64 > 0 (judged); the raw factor is shown "
              "but not judged: the random level ‖W‖F·r/√(dk) grows with r by itself",
              parts3, missing=missing,
              note="judged at matched r/d when that rank was run (MiniLM r=2 ≈ GPT-3 r=64)"),
    ]  # fmt: skip
    fig8 = data.fig8
    parts8 = [
        _phi_part(f"φ(W top-{r}, ΔW top-{r}) − {r}/d", fig8[r], lambda v, r=r: v - r / data.d,
                  "nonsuperiority", DELTA_PHI, random=0.0)
        for r in sorted(fig8)
    ]  # fmt: skip
    claims.append(Claim(
        "F8-1", "§7.3, Figure 8 (App. H.3)",
        "ΔW's top directions are not W's top singular directions (φ at the random level).",
        f"φ(i=r, j=r) minus the random level r/d < {DELTA_PHI:g} (non-superiority)",
        parts8, missing=[] if fig8 else ["Wq,Wv adapters and the base weights"],
    ))  # fmt: skip
    return claims


# Full fine-tuning references (post-paper): levels fixed before the runs were looked at.
# "Far from low rank": a 90%-energy rank at least ten times the rank Table 6 finds sufficient
# (r = 8); Biderman et al. measure 10-100x typical LoRA ranks.
FAR_FACTOR = 10
SUFFICIENT_R = 8
# "(Almost) none": fewer than one intruder among a matrix's top 10 directions on average.
ALMOST_NONE = 1.0


def fullft_claims(frame: pd.DataFrame | None, d: int | None) -> list[Claim]:
    """FT-1..FT-3: the references that came after the paper, on full fine-tuning runs.

    Args:
        frame: per-matrix measurements (``analysis.figures.fullft.Measured.frame()``: one row per
            method, r, seed, type and layer), ``None`` without full fine-tuning runs.
        d: output dimension of Wq (the random level of φ).
    """
    need = ["full fine-tuning of Wq,Wv: run `make sweep SWEEP=full`"]
    if frame is None or frame.empty or not (frame["method"] == "full").any():
        frame, missing = None, need
    else:
        missing = []

    def per_seed(t: str, col: str, method: str, r: int | None = None) -> dict[int, float]:
        if frame is None:
            return {}
        sel = frame[(frame["type"] == t) & (frame["method"] == method)]
        if r is not None:
            sel = sel[sel["r"] == r]
        if col not in sel:
            return {}
        return {int(s): float(v) for s, v in sel.groupby("seed")[col].mean().dropna().items()}

    level = FAR_FACTOR * SUFFICIENT_R
    g90 = float(fullft.gaussian_energy_rank(d, d)) if d else None
    p1, p2, p3 = [], [], []
    for t in ("q", "v"):
        p1.append(_phi_part(f"90%-energy rank of full FT's ΔW{t} (mean over layers)",
                            per_seed(t, "energy_rank", "full"), lambda v: v, "directional",
                            level, random=g90, units="directions"))  # fmt: skip
        p1.append(_phi_part(f"90%-energy rank of LoRA r=64's ΔW{t}",
                            per_seed(t, "energy_rank", "lora", 64), lambda v: v, "directional",
                            level, units="directions"))  # fmt: skip
        p1[-1].judged = False
        p2.append(_phi_part(f"φ(1,8): LoRA r=8's top direction of ΔW{t} in full FT's top-8",
                            per_seed(t, "phi_top1_full", "lora", 8), lambda v: v, "directional",
                            SHARE_LEVEL, random=8 / d if d else None))  # fmt: skip
        lora, full = per_seed(t, "intruders", "lora", 8), per_seed(t, "intruders", "full")
        seeds, diffs = paired(lora, full)
        p3.append(Part(
            label=f"intruders per matrix, LoRA r=8 − full FT, ΔW{t}", test="directional",
            level=0.0, values=diffs, seeds=seeds, units="directions",
            random=None, prior_sd=PRIOR_SD["directions"],
        ).evaluate())  # fmt: skip
        p3.append(_phi_part(f"intruders per matrix, full FT, ΔW{t}", full, lambda v: v,
                            "nonsuperiority", ALMOST_NONE, units="directions",
                            random=float(np.mean(list(per_seed(t, "intruders_random", "full")
                                                      .values()) or [np.nan]))))  # fmt: skip
        for r in (1, 8, 64):  # descriptive: beside the level of a random update of LoRA's spectrum
            rand = per_seed(t, "intruders_random", "lora", r)
            p3.append(_phi_part(f"intruders per matrix, LoRA r={r}, ΔW{t}",
                                per_seed(t, "intruders", "lora", r), lambda v: v,
                                "directional", 0.0, units="directions",
                                random=float(np.mean(list(rand.values()))) if rand else None))  # fmt: skip
            p3[-1].judged = False
    return [
        Claim("FT-1", "Biderman et al. 2024 (after the paper)",
              "Full fine-tuning's ΔW is far from low rank: its 90%-energy rank is 10-100× the "
              "LoRA ranks.",
              f"90%-energy rank of full FT's ΔW > {FAR_FACTOR} × r={SUFFICIENT_R} = {level} "
              "(one-sided t over seeds; LoRA r=64 shown, not judged)",
              p1, missing=missing),
        Claim("FT-2", "§7.2 question, against full fine-tuning",
              "LoRA's top direction lies in full fine-tuning's top subspace.",
              f"φ(1,8) between LoRA r=8's top left singular vector of ΔW and full FT's top-8 > "
              f"{SHARE_LEVEL:g} (one-sided t over seeds, mean over layers)",
              p2, missing=missing),
        Claim("FT-3", "Shuttleworth et al. 2024 (after the paper)",
              "LoRA has intruder dimensions and full fine-tuning has (almost) none.",
              f"LoRA r=8 − full FT intruders per matrix > 0 (paired by seed) and full FT < "
              f"{ALMOST_NONE:g} per matrix (non-superiority); top 10, |cos| < 0.5",
              p3, missing=missing),
    ]  # fmt: skip


def build_claims(
    index: pd.DataFrame,
    data: SubspaceData | None,
    paper: dict,
    *,
    table5_ranks: dict[str, int],
    table6_ranks: Sequence[int],
    n_eval: int | None = None,
    layers: Sequence[int] = (),
    full: pd.DataFrame | None = None,
    d_full: int | None = None,
) -> list[Claim]:
    """Every claim, in the paper's order, then the full fine-tuning references (FT-1..FT-3);
    layer claims (F3-1, F4-1 per layer) last.

    Args:
        index: one row per finished run (``analysis.index.build_index``), one (task, model).
        data: per-seed factor measurements, ``None`` when no adapters could be read.
        paper: ``analysis/paper_values.json``.
        table5_ranks: r of each Table 5 weight-type set under the budget.
        table6_ranks: Table 6's ranks.
        n_eval: validation-set size (the prior spread of one-seed accuracy verdicts).
        layers: the layers of the per-layer claims.
        full: per-matrix measurements of full fine-tuning and LoRA
            (:meth:`analysis.fullft.Measured.frame`), ``None`` without full fine-tuning runs.
        d_full: output dimension of the compared Wq (the random level of φ).
    """
    prior = spread_prior(index, n_eval)
    out = table5_claims(index, table5_ranks, paper, prior)
    out += table6_claims(index, paper, prior, table6_ranks)
    if data is None:
        data = SubspaceData(k=1, d=1, layer=0)
    out += f3_claims(data, data.layer)
    out += f4_claims(data, data.layer)
    out += table7_claims(data, paper)
    out += fullft_claims(full, d_full)
    for layer in layers:
        if layer == data.layer:
            continue
        out += f3_claims(data, layer, suffix=f" @L{layer}")
        out += f4_claims(data, layer, suffix=f" @L{layer}")
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _num(x: float | None, units: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if units == "directions":
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def part_cell(p: Part) -> str:
    """``mean [lo, hi]`` (95%), or the one value."""
    if p.mean is None:
        return "–"
    if p.lo is None:
        return f"{_num(p.mean, p.units)} (one seed)"
    return f"{_num(p.mean, p.units)} [{_num(p.lo, p.units)}, {_num(p.hi, p.units)}]"


def claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim part: claim, quantity, paper, ours ± interval, n, verdicts."""
    rows = []
    for c in claims:
        parts = c.parts or [None]
        for p in parts:
            rows.append(
                {
                    "claim": c.id,
                    "paper says": c.paper_text,
                    "quantity": p.label if p else (c.missing[0] if c.missing else c.quantity),
                    "paper": _num(p.paper, p.units) if p else "–",
                    "ours (95% CI)": part_cell(p) if p else "–",
                    "random": _num(p.random, p.units) if p else "–",
                    "n": p.n if p else 0,
                    "part": (p.verdict if p.judged else "(not judged)") if p else "–",
                    "verdict": c.verdict,
                    "seeds needed": c.seeds_needed if c.seeds_needed is not None else "",
                }
            )
    return pd.DataFrame(rows)


def counts(claims: Sequence[Claim]) -> dict[str, int]:
    """How many claims hold, fail and are inconclusive."""
    return {v: sum(c.verdict == v for c in claims) for v in VERDICTS}


# ---------------------------------------------------------------------------------------------
# Reading the runs (the only I/O of this module) and writing the report
# ---------------------------------------------------------------------------------------------
GPT3_R_OVER_D = 64 / 12288  # Table 7's r = 64 on GPT-3's d_model, for the matched-r/d rank
N_RANDOM_DRAWS = 5  # pairs of random Gaussian matrices for F4-2


def validation_size(results, index: pd.DataFrame) -> int | None:
    """The validation split's size, from the first run's meta.json (``None`` if unknown)."""
    for rel in index.get("path", []):
        try:
            meta = runs.read_object(Path(results) / rel / runs.META_FILE)
            return int(meta["data"]["split_sizes"]["validation"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def adapter_runs(results, index: pd.DataFrame) -> dict[tuple[int, int], Path]:
    """Run directories of the Wq,Wv runs on every layer that have their adapter file, by
    (r, seed), from the index of one (task, model, group); the first by path where several match.
    """
    out: dict[tuple[int, int], Path] = {}
    if index.empty:
        return out
    sel = index[(index["targets"] == "q,v") & index["layers"].isna()]
    if "method" in sel:
        sel = sel[sel["method"] == "lora"]
    for r, seed, rel in zip(sel["r"], sel["seed"], sel["path"], strict=True):
        path = Path(results) / rel
        if (path / runs.ADAPTER_FILE).exists():
            out.setdefault((int(r), int(seed)), path)
    return out


def gather(
    results,
    index: pd.DataFrame,
    model: str,
    layer: int | None = None,
    layers: Sequence[int] | None = None,
) -> tuple[SubspaceData | None, list[str]]:
    """Per-seed φ grids and Table 7 statistics from the saved Wq,Wv adapters of one model.

    Args:
        results: the results folder.
        index: the runs of one (task, model, group) (:func:`analysis.index.build_index`, filtered
            by :func:`report`); the tree is not scanned again.
        model: the model (its pretrained W is read from ``<results>/base_weights/``).
        layer: the layer of the main claims; default the middle one.
        layers: the layers of the per-layer claims; default the spread of Fig. 6 / 7.

    Returns:
        ``(data, problems)``: ``data`` is ``None`` when no adapter could be read; problems are
        one line each (an unreadable adapter, a missing base weight).
    """
    problems: list[str] = []
    recs = adapter_runs(results, index)
    if not recs:
        return None, ["no Wq,Wv run with its adapter: run `make sweep SWEEP=subspace`"]
    cache = factors.AdapterCache()

    def read_factors(run_dir: Path, w: str, lay: int) -> factors.LayerFactors | None:
        try:
            return factors.layer_factors(cache.get(run_dir), w, lay)
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{run_dir}: {e}")
            return None

    first = next(iter(recs.values()))
    try:
        n_layers = factors.n_layers_of(cache.get(first))
    except (OSError, ValueError) as e:
        return None, [f"{first}: {e}"]
    layer = factors.default_layer(n_layers) if layer is None else layer
    layers = list(layers) if layers is not None else factors.spread_layers(n_layers)
    f0 = read_factors(first, "q", layer)
    if f0 is None:
        return None, problems
    data = SubspaceData(k=f0.k, d=f0.d, layer=layer)
    seeds = sorted({s for _, s in recs})
    for w in ("q", "v"):
        data.phi_ranks[w], data.phi_seeds[w] = {}, {}
        for lay in sorted(set(layers) | {layer}):
            by_seed = {}
            for s in seeds:
                if (8, s) in recs and (64, s) in recs:
                    a, b = read_factors(recs[8, s], w, lay), read_factors(recs[64, s], w, lay)
                    if a is not None and b is not None:
                        by_seed[s] = factors.phi_between(a, b, "A")
            data.phi_ranks[w][lay] = by_seed
            pairs = {}
            with64 = [s for s in seeds if (64, s) in recs]
            for i, s1 in enumerate(with64):
                for s2 in with64[i + 1 :]:
                    a, b = read_factors(recs[64, s1], w, lay), read_factors(recs[64, s2], w, lay)
                    if a is not None and b is not None:
                        pairs[s1, s2] = factors.phi_between(a, b, "A")
            data.phi_seeds[w][lay] = pairs
    data.random_grids = [
        subspace.random_phi_grid(data.k, 64, 64, seed=i) for i in range(N_RANDOM_DRAWS)
    ]
    matched = max(1, round(GPT3_R_OVER_D * data.d))
    data.r_matched = matched if any(r == matched for r, _ in recs) else None
    base = factors.BaseWeights(results, model)
    try:
        W = amplification.check_orientation(base.matrix(f0.key), f0.d, f0.k)
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"base weights: {e}")
        return data, problems
    for r in sorted({4, 64, matched}):
        for s in seeds:
            if (r, s) not in recs:
                continue
            f = read_factors(recs[r, s], "q", layer)
            if f is None:
                continue
            data.table7.setdefault(r, {})[s] = amplification.table7_stats(W, f.B, f.A, f.scaling)
            if r in (4, 64):
                g = amplification.w_vs_dw_phi(W, subspace.factored_svd(f.B, f.A).U)
                data.fig8.setdefault(r, {})[s] = float(g[r - 1, r - 1])
    return data, problems


def report(results, task: str = "rotten_tomatoes", model: str = "minilm", group: str = "runs"):
    """Build the claims of one (task, model) from a results folder, scanning it once.

    Returns:
        ``(claims, problems)``: problems are one line each, damaged runs left out first.
    """
    damaged: list = []
    index = build_index(results, damaged)
    found = None
    if not index.empty:
        index = index[(index["task"] == task) & (index["model"] == model)]
        if "group" in index:
            index = index[index["group"] == group]
        found = fullft.runs_from_index(results, index)
        index = index[index["method"] == "lora"]
    # without saved base weights, the paper's ranks under the budget (8 / 4 / 2)
    t5 = paper_values()["table5"]
    ranks = budget_ranks(results, model) or dict(zip(t5["columns"], t5["r"], strict=True))
    data, problems = gather(results, index, model)

    problems = [f"skipped (damaged, retrained by the next sweep): {d}" for d in damaged] + problems

    layers = sorted(data.phi_ranks.get("q", {})) if data else []
    full, d_full = None, None
    if found is not None and found.full:
        try:
            measured = fullft.measure(results, model, found)
            full, d_full = measured.frame(), measured.d
            problems += measured.problems
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"full fine-tuning not measured: {e}")
    claims = build_claims(
        index, data, paper_values(),
        table5_ranks=ranks, table6_ranks=TABLE6_RANKS,
        n_eval=validation_size(results, index), layers=layers, full=full, d_full=d_full,
    )  # fmt: skip
    return claims, problems


def write_report(
    claims: Sequence[Claim], out_dir, header: str, skipped: Sequence[str] = ()
) -> list[Path]:
    """Atomically write ``claims.json`` (``{"claims": [...]}``) and ``claims.md``; ``skipped``
    lines (damaged runs left out) are listed in both."""
    out = Path(out_dir)
    c = counts(claims)
    payload = {
        "header": header,
        "counts": c,
        "margins": {
            "accuracy_points": DELTA_ACC,
            "phi": DELTA_PHI,
            "ratio_to_random": RATIO_LEVEL,
            "share_of_W": SHARE_LEVEL,
            "shared_direction_multiple": SHARED_LEVEL,
        },  # fmt: skip
        "claims": [cl.record() for cl in claims],
    }
    if skipped:
        payload["skipped"] = list(skipped)
    table = claims_frame(claims).to_markdown(index=False, tablefmt="github", disable_numparse=True)
    md = (
        f"**Section 7's claims on {header}**\n\n"
        f"{c['holds']} hold, {c['fails']} fail, {c['inconclusive']} inconclusive. Intervals are "
        f"95% Student t over seeds (seed pairs for across-seed overlaps); verdicts use one-sided "
        f"tests at 5% (TOST for equivalence, margin {DELTA_ACC:g} accuracy point or {DELTA_PHI:g} "
        f"in φ). *seeds needed*: for an inconclusive claim, the seeds at which it would resolve "
        f"with 80% power at the observed spread. Built by `make figures` (analysis/claims.py).\n\n"
        + table
        + "\n"
        + "".join(f"\n- {line}" for line in skipped)
        + ("\n" if skipped else "")
    )
    return [
        atomic_write_json(out / "claims.json", rounded(payload)),
        atomic_write_text(out / "claims.md", md),
    ]


def screen(claims: Sequence[Claim]) -> str:
    """The one-screen summary: one line per claim."""
    lines = []
    for c in claims:
        judged = [p for p in c.parts if p.judged]
        value = "; ".join(part_cell(p) for p in judged) or (c.missing[0] if c.missing else "–")
        need = f", {c.seeds_needed} seeds needed" if c.seeds_needed else ""
        lines.append(f"  {c.id:10s} {c.verdict:12s} n={c.n_seeds} {value}{need}")
    return "\n".join(lines)


def readme_block(payload: dict) -> str:
    """The compact claims table the README shows, rendered from a claims.json payload."""
    rows = []
    for c in payload["claims"]:
        judged = [p for p in c["parts"] if p["judged"]]
        ours = "; ".join(
            "–" if p["mean"] is None else
            f"{_num(p['mean'], p['units'])}" + ("" if p["lo"] is None else
                                                f" [{_num(p['lo'], p['units'])}, {_num(p['hi'], p['units'])}]")
            for p in judged
        ) or "–"  # fmt: skip
        paper = "; ".join(_num(p["paper"], p["units"]) for p in judged if p["paper"] is not None)
        need = f" (~{c['seeds_needed']} seeds)" if c["seeds_needed"] else ""
        rows.append(f"| {c['id']} | {c['paper_text']} | {paper or '–'} | {ours} | {c['n_seeds']} | "
                    f"**{c['verdict']}**{need} |")  # fmt: skip
    head = (
        "| claim | paper says | paper | ours (95% CI) | n | verdict |\n|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.claims --results results``: write results/claims.{md,json}.

    Returns:
        0; 1 when damaged runs were left out (each is listed); 2 when ``--results`` is not a
        results folder or the report cannot be written.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--model", default="minilm")
    p.add_argument("--group", default="runs")
    args = p.parse_args(argv)
    problem = runs.results_read_problem(args.results)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    claims, problems = report(args.results, args.task, args.model, args.group)
    header = f"{args.model} / {args.task}"
    skipped = [line for line in problems if line.startswith("skipped")]
    try:
        write_report(claims, args.results, header, skipped)
    except LoraReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = counts(claims)
    print(f"claims ({header}): {c['holds']} hold, {c['fails']} fail, "
          f"{c['inconclusive']} inconclusive -> {Path(args.results) / 'claims.md'}")  # fmt: skip
    print(screen(claims))
    for line in problems:
        print(f"  {line}" if line in skipped else f"  note: {line}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
