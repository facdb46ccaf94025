"""The claims report (analysis/claims.py): claims that hold, fail or are inconclusive by
construction, the committed report and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import claims
from analysis.tables import paper_values
from tests.helpers.fixtures_analysis import make_results

REPO = Path(__file__).resolve().parents[1]
RANKS5 = {"q": 8, "k": 8, "v": 8, "o": 8, "q,k": 4, "q,v": 4, "q,k,v,o": 2}
PAPER = paper_values()


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


def by_id(built):
    return {c.id: c for c in built}


def claims_of(index, data=None):
    return by_id(claims.build_claims(index, data, PAPER, table5_ranks=RANKS5,
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
    frame = claims.claims_frame(list(got.values()))
    assert set(frame["verdict"]) == {"inconclusive"}


# ------------------------------------------------------------------------------------------------
# Subspace claims on constructed grids
# ------------------------------------------------------------------------------------------------
def grid(first: float, rest: float, shape=(8, 64)) -> np.ndarray:
    g = np.full(shape, rest)
    g[0, 0] = first
    return g


def data_with(
    phi11: float, rest: float, shared_q: int, shared_v: int, k=384
) -> claims.SubspaceData:
    d = claims.SubspaceData(k=k, d=k, layer=3)
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
    assert claims.shared_directions(g, 384) == 2


def test_random_matrices_match_the_closed_form():
    from analysis import subspace

    d = claims.SubspaceData(k=384, d=384, layer=0)
    d.random_grids = [subspace.random_phi_grid(384, 64, 64, seed=i) for i in range(5)]
    (f42,) = [c for c in claims.f4_claims(d, 0) if c.id == "F4-2"]
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
    assert block.group(1) == claims.readme_block(payload)


def test_the_cli_lists_damaged_runs_and_exits_1(tmp_path, capsys):
    from lora_repro import runs

    results = make_results(tmp_path)
    for cfg_path in results.glob("runs/**/config.yaml"):  # what the index reads of a real run
        cfg = runs.read_object(cfg_path)
        cfg["adapter"]["scaling"] = "standard"
        cfg["train"] = {"lr": 4e-3, "max_steps": 3}
        runs.atomic_write_yaml(cfg_path, cfg)
    assert claims.main(["--results", str(results)]) == 0
    damaged = results / "runs/rotten_tomatoes/minilm/q_v-r8-a8/seed0/meta.json"
    damaged.write_bytes(b"[1, 2]")
    assert claims.main(["--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"skipped (damaged, retrained by the next sweep): {damaged}: holds list" in err
    payload = json.loads((results / "claims.json").read_text(encoding="utf-8"))
    assert any(str(damaged) in line for line in payload["skipped"])
    assert str(damaged) in (results / "claims.md").read_text(encoding="utf-8")


def test_gather_reads_only_the_runs_of_the_index_it_is_given(tmp_path):
    """The caller's index is the one scan of the tree: a run left out of it is never read."""
    results = make_results(tmp_path, ranks=(8, 64), seed1_ranks=(64,), d=64, k=64)
    rows = [
        {"targets": "q,v", "layers": None, "r": r, "seed": s,
         "path": f"runs/rotten_tomatoes/minilm/q_v-r{r}-a8/seed{s}"}
        for r, s in ((8, 0), (64, 0), (64, 1))
    ]  # fmt: skip
    data, problems = claims.gather(results, pd.DataFrame(rows), "minilm")
    assert problems == [] and (data.layer, data.k) == (2, 64)
    assert list(data.phi_ranks["q"][2]) == [0] and data.phi_ranks["q"][2][0][0, 0] > 0.9
    assert list(data.phi_seeds["v"][2]) == [(0, 1)] and sorted(data.table7) == [64]
    data, _ = claims.gather(results, pd.DataFrame(rows[:2]), "minilm")  # seed 1 left out
    assert data.phi_seeds["v"][2] == {} and list(data.table7[64]) == [0]
