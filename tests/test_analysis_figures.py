"""``python -m analysis.figures`` on fixture results: files, plotted numbers, missing runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_analysis import N_LAYERS, make_results, write_run

from analysis import subspace as sub
from analysis.figures import Report
from analysis.figures.__main__ import main
from analysis.layer_data import RunSpec
from lora_repro import runs as runs_io

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--ranks", "8,32", "--table-ranks", "4,32", "--fig8-ranks", "4,8,32"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A complete fixture results folder and one CLI build over it (shared: plotting is slow)."""
    results = make_results(tmp_path_factory.mktemp("results"))
    code = main(["--results", str(results), *SMALL])
    return results, code


def test_cli_writes_every_listed_file(built):
    results, code = built
    assert code == 0
    figs, tabs = results / "figures", results / "tables"
    for stem in ("figure3_A", "figure4_A", "figure6_A", "figure7_A", "figure8"):
        for ext in ("png", "pdf", "csv"):
            assert (figs / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
    for ext in ("md", "csv", "tex"):
        assert (tabs / f"table7.{ext}").stat().st_size > 0
    assert (figs / "summary.md").exists()
    summary = json.loads((figs / "summary.json").read_text())
    assert summary["layer"] == N_LAYERS // 2
    assert summary["missing"] == [] and summary["not_drawn"] == {}


def test_figure3_csv_equals_phi_computed_from_the_adapters(built):
    results, _ = built
    layer = N_LAYERS // 2
    df = pd.read_csv(results / "figures" / "figure3_A.csv")
    run8 = results / "runs/rotten_tomatoes/minilm/q_v-r8-a8/seed0"
    run32 = results / "runs/rotten_tomatoes/minilm/q_v-r32-a8/seed0"
    a8, a32 = runs_io.load_adapter(run8), runs_io.load_adapter(run32)
    for w in ("q", "v"):
        key = a8.key_for(w, layer)
        expected = sub.phi(a8.A[key], a32.A[key])
        part = df[(df.panel == f"dW{w}") & (df.layer == layer)]
        got = np.full(expected.shape, np.nan)
        got[part.i.to_numpy() - 1, part.j.to_numpy() - 1] = part.phi.to_numpy()
        assert expected.shape == (8, 32)
        np.testing.assert_allclose(got, expected, atol=1e-12)
        # the planted shared direction shows as in the paper (φ(1, 1) > 0.5)
        assert expected[0, 0] > 0.9


def test_figure6_has_every_spread_layer_and_figure4_a_random_panel(built):
    results, _ = built
    f6 = pd.read_csv(results / "figures" / "figure6_A.csv")
    assert sorted(f6.layer.unique()) == [0, 1, 2, 3]
    f4 = pd.read_csv(results / "figures" / "figure4_A.csv")
    assert set(f4.panel) == {"dWq", "dWv", "random"}
    rnd = f4[f4.panel == "random"]
    assert rnd[(rnd.i == 1) & (rnd.j == 1)].phi.item() < 0.3


def test_summary_reports_every_view_and_random(built):
    results, _ = built
    s = json.loads((results / "figures" / "summary.json").read_text())
    for pair in ("ranks", "seeds"):
        block = s["phi11"][pair]
        for w in ("dWq", "dWv"):
            assert set(block[w]) == set(sub.VIEWS)
            assert min(block[w].values()) > 0.9  # planted direction, every view
        assert max(block["random"].values()) < 0.3
    assert set(s["table7"]) == {"4", "8", "32"}
    assert s["paper"]["table7"]["4"]["amplification"] == 21.5


def test_table7_has_paper_values_beside(built):
    results, _ = built
    t = pd.read_csv(results / "tables" / "table7.csv", index_col="quantity")
    assert {"r=4", "paper r=4", "r=32", "paper r=64"} <= set(t.columns)
    assert t.loc["proj_dW", "paper r=4"] == 0.32
    assert t.loc["proj_W", "paper r=64"] == 37.71
    assert t.loc["norm_W", "paper r=4"] == 61.95
    assert t.loc["amplification", "r=4"] == pytest.approx(
        t.loc["norm_dW", "r=4"] / t.loc["proj_dW", "r=4"]
    )
    assert "arXiv 2106.09685 v2" in (results / "tables" / "table7.md").read_text()
    assert r"\toprule" in (results / "tables" / "table7.tex").read_text()


def test_missing_seed_runs_are_named_with_their_sweep(tmp_path, capsys):
    results = make_results(tmp_path, ranks=(8, 32), seed1_ranks=(), with_base=False)
    code = main(["--results", str(results), "--formats", "png", *SMALL])
    err = capsys.readouterr().err
    assert code == 1  # drew some, not all
    assert "[q,v] r=32 seed=1" in err and "`seeds`" not in err  # r=32 is not a sweep rank
    assert "no pretrained weights" in err
    assert (results / "figures" / "figure3_A.png").exists()
    assert not (results / "figures" / "figure4_A.png").exists()


def test_exit_codes():
    r = Report()
    assert r.exit_code() == 2  # nothing drawn
    r.drawn.append("figure3_A")
    assert r.exit_code() == 0
    r.missing.append(RunSpec("t", "m", ("q", "v"), 64, 1))
    assert r.exit_code() == 1 and r.exit_code(allow_partial=True) == 0


def test_paper_ranks_by_default_fall_back_and_name_the_sweep(tmp_path, capsys):
    results = make_results(tmp_path, ranks=(8, 32), seed1_ranks=(), with_base=False)
    code = main(["--results", str(results), "--formats", "png", "--view", "B"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "[q,v] r=64 seed=1" in err and "`seeds` sweep" in err
    assert "[q,v] r=64 seed=0" in err and "`subspace`" in err
    assert "using r=8 vs r=32" in out
    assert (results / "figures" / "figure3_B.png").exists()


def test_nothing_to_draw_exits_2(tmp_path, capsys):
    assert main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing could be drawn" in err and "no finished runs" in err


def test_layer_out_of_range_is_a_clear_error(tmp_path, capsys):
    write_run(tmp_path, r=8)
    assert main(["--results", str(tmp_path), "--layer", "9"]) == 2
    assert "layer 9 out of range" in capsys.readouterr().err


def test_no_init_means_no_dA_view(tmp_path, capsys):
    make_results(tmp_path, ranks=(8, 32), seed1_ranks=(), with_base=False, with_init=False)
    assert main(["--results", str(tmp_path), "--view", "dA", *SMALL]) == 2
    assert "needs A at initialisation" in capsys.readouterr().err


def test_module_entry_point_runs_without_torch(tmp_path):
    """``python -m analysis.figures`` works as a process; analysis never imports torch."""
    code = (
        "import sys, runpy\n"
        "import analysis, analysis.layer_data, analysis.tables, analysis.figures.build\n"
        "sys.argv = ['analysis.figures', '--results', sys.argv[1]]\n"
        "try:\n    runpy.run_module('analysis.figures', run_name='__main__')\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print('BAD', bad, 'RC', rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "BAD [] RC 2" in p.stdout, p.stdout + p.stderr
    assert "nothing could be drawn" in p.stderr


def test_where_filters_runs_and_rejects_bad_syntax(tmp_path, capsys):
    write_run(tmp_path, r=8)
    assert main(["--results", str(tmp_path), "--where", "adapter.init=kaiming_uniform"]) == 2
    assert "adapter.init=kaiming_uniform" in capsys.readouterr().err
    assert main(["--results", str(tmp_path), "--where", "noequals"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
