"""The claims report (analysis/claims.py): statistics against scipy and hand cases, and claims
that hold, fail or are inconclusive by construction."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import claims as C
from analysis.tables import paper_values

REPO = Path(__file__).resolve().parents[1]
RANKS5 = {"q": 8, "k": 8, "v": 8, "o": 8, "q,k": 4, "q,v": 4, "q,k,v,o": 2}
PAPER = paper_values()


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------
def test_interval_is_scipys_student_t():
    x = [0.8, 1.3, 0.2, 0.9]
    s = C.summarize(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (s.n, s.mean) == (4, pytest.approx(0.8)) and (s.lo, s.hi) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    assert C.summarize([3.0]) == C.Summary(1, 3.0, None, None, None)


def test_one_sided_bounds_are_the_90_percent_interval():
    x = [1.0, 2.0, 4.0]
    lo, hi = C.one_sided_bounds(x)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.90, 2, loc=np.mean(x), scale=stats.sem(x)))


def test_power_and_seeds_needed_hand_case():
    # one-sided one-sample t at 5%, effect = 1 sd: the textbook n for 80% power is 8
    assert C.seeds_for_power(1.0, 1.0) == 8
    assert C.power_one_sided(1.0, 1.0, 7) < 0.8 <= C.power_one_sided(1.0, 1.0, 8)
    # power equals a direct noncentral-t computation
    n, d = 5, 0.7
    crit = stats.t.ppf(0.95, n - 1)
    assert C.power_one_sided(d, 1.0, n) == pytest.approx(
        stats.nct.sf(crit, n - 1, d * math.sqrt(n))
    )
    assert C.seeds_for_power(0.0, 1.0) is None and C.seeds_for_power(1e-3, 1.0) is None


@pytest.mark.parametrize(
    ("values", "level", "verdict"),
    [([1.0, 1.2, 0.9], 0.0, "holds"), ([-1.0, -1.2, -0.9], 0.0, "fails"),
     ([1.0, -1.0, 0.5], 0.0, "inconclusive"), ([2.0], 0.0, "inconclusive"),
     ([0.6, 0.7, 0.65], 0.5, "holds")],
)  # fmt: skip
def test_directional(values, level, verdict):
    assert C.directional(values, level)[0] == verdict


@pytest.mark.parametrize(
    ("values", "verdict"),
    [([0.1, -0.1, 0.05], "holds"), ([5.0, 5.2, 4.9], "fails"), ([-5.0, -5.2, -4.9], "fails"),
     ([0.9, -0.9, 2.5], "inconclusive"), ([0.0], "inconclusive")],
)  # fmt: skip
def test_equivalence_tost(values, verdict):
    assert C.equivalence(values, 1.0)[0] == verdict


def test_non_inferiority_and_non_superiority():
    assert C.non_inferiority([-0.2, 0.1, -0.1], 1.0)[0] == "holds"
    assert C.non_inferiority([-3.0, -3.2, -2.9], 1.0)[0] == "fails"
    assert C.non_superiority([-2.0, -1.5, -1.8], 1.0)[0] == "holds"  # worse is "does not help"
    assert C.non_superiority([3.0, 3.2, 2.9], 1.0)[0] == "fails"


# ------------------------------------------------------------------------------------------------
# Accuracy claims on synthetic index rows
# ------------------------------------------------------------------------------------------------
def index_of(cells: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    rows = [
        {"task": "t", "model": "m", "targets": t, "r": r, "seed": s, "val_accuracy": a / 100,
         "layers": None, "path": f"runs/{t}-{r}/seed{s}"}
        for (t, r), accs in cells.items() for s, a in enumerate(accs)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def table5_cells(qv: list[float], single: float, noise=(0.0, 0.3, -0.3)) -> dict:
    cells = {(s, RANKS5[s]): [single + n for n in noise] for s in ("q", "k", "v", "o", "q,k")}
    cells[("q,v", 4)] = list(qv)
    cells[("q,k,v,o", 2)] = list(qv)
    return cells


def by_id(claims):
    return {c.id: c for c in claims}


def claims_of(index, data=None):
    return by_id(C.build_claims(index, data, PAPER, table5_ranks=RANKS5,
                                table6_ranks=[1, 2, 4, 8, 64], n_eval=1275))  # fmt: skip


def test_table5_claims_hold_fail_and_are_inconclusive_by_construction():
    holds = claims_of(index_of(table5_cells([80.0, 80.4, 79.8], single=76.0)))
    assert holds["T5-1"].verdict == "holds" and holds["T5-2"].verdict == "holds"
    assert holds["T5-3"].verdict == "holds" and holds["T5-1"].n_seeds == 3
    fails = claims_of(index_of(table5_cells([72.0, 72.3, 71.8], single=78.0)))
    assert fails["T5-1"].verdict == "fails" and fails["T5-2"].verdict == "fails"
    one = claims_of(index_of(table5_cells([80.0], single=79.0, noise=(0.0,))))
    assert one["T5-1"].verdict == "inconclusive" and one["T5-1"].n_seeds == 1
    assert one["T5-1"].seeds_needed is not None  # from the binomial prior spread


def test_table6_claims():
    cells = {}
    for r, q, qv in ((1, 70.0, 80.0), (2, 72.0, 80.2), (4, 74.0, 80.4), (8, 75.0, 80.3),
                     (64, 74.5, 80.1)):  # fmt: skip
        cells[("q", r)] = [q, q + 0.2, q - 0.2]
        cells[("q,v", r)] = [qv, qv + 0.25, qv - 0.1]
        cells[("q,k,v,o", r)] = [qv + 0.5, qv + 0.4, qv + 0.7]
    got = claims_of(index_of(cells))
    assert got["T6-1"].verdict == "holds"  # r=1 within 1 point of the best r (4)
    assert got["T6-2"].verdict == "holds"  # Wq loses 5 points from best to r=1, Wq,Wv 0.4
    assert got["T6-3"].verdict == "holds"  # r=64 no better than r=8


def test_missing_inputs_name_the_sweep_and_never_crash():
    got = claims_of(pd.DataFrame(columns=["task", "model", "targets", "r", "seed", "val_accuracy"]))
    assert all(c.verdict == "inconclusive" for c in got.values())
    assert any("make sweep SWEEP=table5" in m for m in got["T5-1"].missing)
    assert any("SWEEP=subspace" in m for m in got["F3-1"].missing)
    frame = C.claims_frame(list(got.values()))
    assert set(frame["verdict"]) == {"inconclusive"}


# ------------------------------------------------------------------------------------------------
# Subspace claims on constructed grids
# ------------------------------------------------------------------------------------------------
def grid(first: float, rest: float, shape=(8, 64)) -> np.ndarray:
    g = np.full(shape, rest)
    g[0, 0] = first
    return g


def data_with(phi11: float, rest: float, shared_q: int, shared_v: int, k=384) -> C.SubspaceData:
    d = C.SubspaceData(k=k, d=k, layer=3)
    for w in ("q", "v"):
        d.phi_ranks[w] = {3: {s: grid(phi11 + 0.01 * s, rest) for s in range(3)}}
    pairs = [(0, 1), (0, 2), (1, 2)]
    for w, n in (("q", shared_q), ("v", shared_v)):
        gs = {}
        for i, p in enumerate(pairs):
            g = np.zeros((64, 64))
            np.fill_diagonal(g, 0.0)
            g[np.arange(n + i % 2), np.arange(n + i % 2)] = 0.9  # n or n + 1 shared directions
            gs[p] = g
        d.phi_seeds[w] = {3: gs}
    d.random_grids = []  # F4-2 is tested on its own
    return d


def test_f3_and_f4_verdicts_by_construction():
    strong = claims_of(index_of({}), data_with(0.9, 0.01, shared_q=10, shared_v=2))
    assert strong["F3-1"].verdict == "holds" and strong["F3-2"].verdict == "holds"
    assert strong["F4-1"].verdict == "holds" and strong["F4-1"].n_seeds == 3
    weak = claims_of(index_of({}), data_with(0.1, 0.5, shared_q=2, shared_v=10))
    assert weak["F3-1"].verdict == "fails" and weak["F3-2"].verdict == "fails"
    assert weak["F4-1"].verdict == "fails"


def test_shared_directions_counts_against_the_random_level():
    g = np.zeros((64, 64))
    g[0, 0], g[1, 1], g[2, 2] = 0.9, 2.1 * 2 / 384, 1.9 * 3 / 384
    assert C.shared_directions(g, 384) == 2


def test_random_matrices_match_the_closed_form():
    from analysis import subspace as sub

    d = C.SubspaceData(k=384, d=384, layer=0)
    d.random_grids = [sub.random_phi_grid(384, 64, 64, seed=i) for i in range(5)]
    (f42,) = [c for c in C.f4_claims(d, 0) if c.id == "F4-2"]
    assert f42.verdict == "holds" and abs(f42.parts[0].mean) < 0.01


# ------------------------------------------------------------------------------------------------
# The committed report and the README
# ------------------------------------------------------------------------------------------------
def test_readme_shows_the_committed_claims_table():
    path = REPO / "results" / "claims.json"
    if not path.exists():
        pytest.skip("no committed claims report in this checkout")
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert {"T5-1", "T5-2", "T5-3", "T6-1", "T6-2", "T6-3", "F3-1", "F3-2", "F4-1", "F4-2",
            "T7-1", "T7-2", "T7-3", "F8-1"} <= {c["id"] for c in payload["claims"]}  # fmt: skip
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- claims:start -->\n(.*?)<!-- claims:end -->", readme, re.S)
    assert block, "README has no claims block"
    assert block.group(1) == C.readme_block(payload)


def test_the_cli_lists_damaged_runs_and_exits_1(tmp_path, capsys):
    from fixtures_analysis import make_results

    from lora_repro import runs

    results = make_results(tmp_path)
    for cfg_path in results.glob("runs/**/config.yaml"):  # what the index reads of a real run
        cfg = runs.read_object(cfg_path)
        cfg["adapter"]["scaling"] = "standard"
        cfg["train"] = {"lr": 4e-3, "max_steps": 3}
        runs.atomic_write_yaml(cfg_path, cfg)
    assert C.main(["--results", str(results)]) == 0
    damaged = results / "runs/rotten_tomatoes/minilm/q_v-r8-a8/seed0/meta.json"
    damaged.write_bytes(b"[1, 2]")
    assert C.main(["--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"skipped (damaged, retrained by the next sweep): {damaged}: holds list" in err
    payload = json.loads((results / "claims.json").read_text(encoding="utf-8"))
    assert any(str(damaged) in line for line in payload["skipped"])
    assert str(damaged) in (results / "claims.md").read_text(encoding="utf-8")
