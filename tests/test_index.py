"""Index and Tables 5/6 from run directories (analysis.index), on hand-made runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.index import collect, table5, table6
from lora_repro import runs

D = 16  # square W: every type costs 2*D parameters per unit of rank and layer
LAYERS = 2


def _run(results: Path, targets: list[str], r: int, seed: int, acc: float) -> None:
    d = results / "runs" / "toy" / "tiny" / f"{'_'.join(targets)}-r{r}-a8" / f"seed{seed}"
    cfg = {
        "model": {"name": "tiny"},
        "task": {"name": "toy"},
        "seed": seed,
        "group": "runs",
        "adapter": {
            "targets": targets,
            "r": r,
            "alpha": 8.0,
            "init": "gaussian",
            "scaling": "standard",
        },
        "train": {"lr": 2e-3, "max_steps": 3},
    }
    runs.atomic_write_yaml(d / "config.yaml", cfg)
    runs.atomic_write_json(d / "meta.json", {"seeds": {"seed": seed}})
    runs.atomic_write_json(
        d / "summary.json",
        {"val_accuracy": acc, "n_lora_params": r * len(targets) * LAYERS * 2 * D},
    )
    runs.atomic_write_json(d / "status.json", {"status": "success"})


@pytest.fixture
def results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    infos, W = {}, {}
    for layer in range(LAYERS):
        for t in "qkvo":
            key = f"l{layer}.{t}"
            infos[key] = runs.ModuleInfo(key=key, module=key, type=t, layer=layer, d=D, k=D)
            W[key] = np.eye(D, dtype=np.float32)
    runs.save_base_weights(runs.base_weights_path(res, "tiny"), W, infos, "tiny")
    _run(res, ["q"], 8, 0, 0.70)
    _run(res, ["q"], 8, 1, 0.74)
    _run(res, ["q", "v"], 4, 0, 0.80)
    _run(res, ["q", "k", "v", "o"], 2, 0, 0.81)
    _run(res, ["q", "v"], 64, 0, 0.79)
    # an unfinished run is left out
    _run(res, ["k"], 8, 0, 0.99)
    runs.atomic_write_json(res / "runs/toy/tiny/k-r8-a8/seed0/status.json", {"status": "running"})
    return res


def test_index_and_tables(results):
    out = collect(results)
    index = pd.read_parquet(results / "index.parquet")
    assert len(index) == len(out["index"]) == 5
    assert set(index["targets"]) == {"q", "q,v", "q,k,v,o"}
    t5 = out["table5"].set_index("targets")
    # budget auto = r 8 on Wq alone: r = 8 / 4 / 2 for one / two / four types
    assert t5.loc["q", "r"] == 8 and t5.loc["q,v", "r"] == 4 and t5.loc["q,k,v,o", "r"] == 2
    assert t5.loc["q", "val_acc_mean"] == pytest.approx(72.0)
    assert t5.loc["q", "val_acc_std"] == pytest.approx(np.std([70, 74], ddof=1))
    assert t5.loc["q", "n_seeds"] == 2 and t5.loc["q", "cell"] == "72.0 ± 2.8 (n=2)"
    assert t5.loc["q,v", "cell"] == "80.0 (n=1)"
    assert t5.loc["k", "n_seeds"] == 0 and t5.loc["k", "cell"] == "–"  # the unfinished run
    assert t5.loc["q", "paper_WikiSQL"] == 70.4 and t5.loc["q,k,v,o", "paper_MultiNLI"] == 91.7
    assert t5.loc["q,v", "params"] == 4 * 2 * LAYERS * 2 * D
    t6 = out["table6"].set_index(["targets", "r"])
    assert t6.loc[("q,v", 64), "val_acc_mean"] == pytest.approx(79.0)
    assert t6.loc[("q,v", 1), "n_seeds"] == 0
    assert t6.loc[("q", 1), "paper_WikiSQL"] == 68.8
    for name in ("table5", "table6"):
        for ext in ("md", "csv", "tex"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0
    md = (results / "tables" / "table5.md").read_text()
    assert "72.0 ± 2.8 (n=2)" in md
    assert "72.0 $\\pm$ 2.8 (n=2)" in (results / "tables" / "table5.tex").read_text()


def test_table5_with_an_explicit_budget(results):
    index = collect(results)["index"]
    t5 = table5(index, results, budget=LAYERS * 2 * D * 4).set_index("targets")  # r=4 on one type
    assert t5.loc["q", "r"] == 4 and t5.loc["q,v", "r"] == 2 and t5.loc["q,k,v,o", "r"] == 1
    assert table6(index.iloc[0:0]).empty


def test_write_table_formats_escapes_and_leaves_nan_empty(tmp_path):
    from analysis.tables import write_table

    df = pd.DataFrame(
        {"targets": ["q_v", "q,k"], "acc_%": [80.12345, float("nan")], "cell": ["80.1 ± 0.2", "#1"]}
    )
    csv, md, tex = write_table(
        df,
        tmp_path / "sub" / "t",
        "A 50% & more",
        preamble="Note.",
        tex_cells={"cell": ["$x$", "$y$"]},
    )
    assert [p.name for p in (csv, md, tex)] == ["t.csv", "t.md", "t.tex"]
    text = md.read_text()
    assert text.startswith("**A 50% & more**\n\nNote.\n\n| targets")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[6:]]
    assert rows == [["q_v", "80.12", "80.1 ± 0.2"], ["q,k", "", "#1"]]  # 4 significant figures
    latex = tex.read_text()
    assert r"\caption{A 50\% \& more}" in latex and r"\toprule" in latex
    assert r"targets & acc\_\% & cell \\" in latex
    assert r"q\_v & 80.12 & $x$ \\" in latex and r"q,k &  & $y$ \\" in latex  # raw cells kept
    back = pd.read_csv(csv)
    assert back["acc_%"].iloc[0] == 80.12345 and np.isnan(back["acc_%"].iloc[1])


def test_latex_escape_turns_plus_minus_into_math():
    from analysis.tables import latex_escape

    assert latex_escape("72.0 ± 2.8 (n=2)") == r"72.0 $\pm$ 2.8 (n=2)"
    assert latex_escape(r"a\b_c") == r"a\textbackslash{}b\_c"
