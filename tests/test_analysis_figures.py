"""``python -m analysis.figures`` on fixture results: files, plotted numbers, missing runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import factors, selection, subspace
from analysis.figures import Options, Report
from analysis.figures.__main__ import main
from analysis.selection import RunSpec
from lora_repro import runs
from tests.helpers.fixtures_analysis import N_LAYERS, make_results, write_run

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
    a8, a32 = runs.load_adapter(run8), runs.load_adapter(run32)
    for w in ("q", "v"):
        key = a8.key_for(w, layer)
        expected = subspace.phi(a8.A[key], a32.A[key])
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
            assert set(block[w]) == set(subspace.VIEWS)
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
        "import analysis, analysis.layer_data, analysis.tables, analysis.claims, analysis.stats, analysis.figures.build\n"
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


def test_figures_read_only_the_adapters_of_the_runs_they_draw(tmp_path, capsys):
    """A fresh clone: the runs not drawn (other targets) have summaries but no adapter files."""
    results = make_results(tmp_path)
    for targets, r in ((("k",), 8), (("q", "k", "v", "o"), 2)):  # sort before the q_v runs
        run = write_run(results, targets=targets, r=r)
        (run / runs.ADAPTER_FILE).unlink()
        (run / runs.ADAPTER_INIT_FILE).unlink()
    assert main(["--results", str(results), "--formats", "png", *SMALL]) == 0
    s = json.loads((results / "figures" / "summary.json").read_text())
    assert s["layer"] == N_LAYERS // 2 and s["n_layers"] == N_LAYERS
    assert s["not_drawn"] == {} and set(s["table7"]) == {"4", "8", "32"}


def test_a_drawn_run_without_its_adapter_is_left_out_of_table7_with_a_note(tmp_path, capsys):
    results = make_results(tmp_path, seed1_ranks=())
    (results / "runs/rotten_tomatoes/minilm/q_v-r4-a8/seed0" / runs.ADAPTER_FILE).unlink()
    main(["--results", str(results), "--formats", "png", *SMALL])
    out = capsys.readouterr().out
    assert "r=4 left out" in out and "adapter.safetensors" in out
    s = json.loads((results / "figures" / "summary.json").read_text())
    assert set(s["table7"]) == {"8", "32"} and "table7" not in s["not_drawn"]


def _phi_shape(csv: Path) -> tuple[int, int]:
    df = pd.read_csv(csv)
    return int(df.i.max()), int(df.j.max())


def test_default_rank_pair_keeps_r8_when_r64_is_missing(tmp_path, capsys):
    results = make_results(tmp_path, ranks=(1, 8, 32), seed1_ranks=(), with_base=False)
    assert main(["--results", str(results), "--formats", "png"]) == 1
    out = capsys.readouterr().out
    assert "using r=8 vs r=32" in out and "r=1 vs" not in out
    assert _phi_shape(results / "figures" / "figure3_A.csv") == (8, 32)
    s = json.loads((results / "figures" / "summary.json").read_text())
    assert s["phi11"]["ranks"]["pair"] == "r=8 seed0 vs r=32 seed0"


def test_asked_ranks_are_used_exactly_or_named_missing(tmp_path, capsys):
    results = make_results(
        tmp_path, ranks=(1, 8, 64), seed1_ranks=(64,), d=64, k=64, with_base=False
    )
    figs = results / "figures"
    assert main(["--results", str(results), "--formats", "png", "--ranks", "8,64"]) == 1
    assert _phi_shape(figs / "figure3_A.csv") == (8, 64)  # partial only for the absent W
    (figs / "figure3_A.csv").unlink()
    capsys.readouterr()
    # r=32 was not run: no figure 3 (no substitute pair), one line naming it; figure 4 at r=32
    # cannot be drawn either
    assert main(["--results", str(results), "--formats", "png", "--ranks", "8,32"]) == 2
    out, err = capsys.readouterr()
    line = next(x for x in err.splitlines() if x.startswith("  not drawn: figure3_A"))
    assert "r=8 vs r=32 was asked for" in line and "[q,v] r=32 seed=0" in line
    assert "no predefined sweep makes it" in line and "seed 0: 1, 8, 64" in line
    assert "using r=" not in out and not (figs / "figure3_A.csv").exists()
    # a missing paper rank is named with the sweep that makes it
    assert main(["--results", str(results), "--formats", "png", "--ranks", "4,64"]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("  not drawn: figure3_A"))
    assert "[q,v] r=4 seed=0: made by the `subspace` or `table6` sweep" in line
    assert not (figs / "figure3_A.csv").exists() and (figs / "figure4_A.csv").exists()


def test_another_layer_writes_into_its_own_folders(built, tmp_path):
    src, _ = built
    results = tmp_path / "results"
    shutil.copytree(src, results)
    default = [
        results / "figures" / "summary.json",
        results / "figures" / "summary.md",
        results / "figures" / "figure3_A.csv",
        results / "tables" / "table7.md",
        results / "tables" / "table7.csv",
    ]
    before = [p.read_bytes() for p in default]
    assert main(["--results", str(results), "--formats", "png", "--layer", "0", *SMALL]) == 0
    assert [p.read_bytes() for p in default] == before  # the middle layer's files are untouched
    s = json.loads((results / "figures" / "layer0" / "summary.json").read_text())
    assert s["layer"] == 0
    f3 = pd.read_csv(results / "figures" / "layer0" / "figure3_A.csv")
    assert set(f3.layer) == {0}
    assert "layer 0 of 4" in (results / "tables" / "layer0" / "table7.md").read_text()
    assert not (results / "figures" / "layer0" / "table7.md").exists()


def test_output_folders_per_layer(tmp_path):
    o = Options(results=tmp_path)
    assert o.dirs(2, 4) == (tmp_path / "figures", tmp_path / "tables")  # middle: the defaults
    assert o.dirs(0, 4) == (tmp_path / "figures" / "layer0", tmp_path / "tables" / "layer0")
    mine = Options(results=tmp_path, out=tmp_path / "mine")
    assert mine.dirs(0, 4) == (tmp_path / "mine", tmp_path / "tables" / "layer0")


def test_figures_are_written_readable_by_others(tmp_path):
    import os

    from matplotlib.figure import Figure

    from analysis.figures.plots import save_figure

    old = os.umask(0o022)
    try:
        paths = save_figure(Figure(), tmp_path / "f")
    finally:
        os.umask(old)
    assert [p.name for p in paths] == ["f.png", "f.pdf"]
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == ["0o644", "0o644"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_runs_of_another_group_are_not_drawn_unless_asked_for(tmp_path):
    results = make_results(tmp_path / "res", ranks=(8, 32), seed1_ranks=())
    alt = write_run(results, r=8, seed=0, group="alt")  # e.g. a run with another lr
    assert main(["--results", str(results), "--out", str(tmp_path / "f"), "--ranks", "8,32"]) == 1
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert [Path(p).parts[-5] for p in summary["runs"]["ranks"]] == ["runs", "runs"]
    assert not any("runs match" in n for n in summary["notes"])
    (rec,) = [r for r in selection.index_runs(results, where={"group": "alt"})]
    assert rec.path == alt  # what --group alt draws from


def test_committed_outputs_are_byte_stable_under_last_digit_noise(tmp_path, monkeypatch):
    """Factors and W perturbed by 1e-12 (another BLAS kernel's rounding) write the committed
    table7.csv and summary.json byte for byte."""
    committed = REPO / "results"
    if not (committed / "figures" / "summary.json").exists():
        pytest.skip("no committed results in this checkout")
    res = tmp_path / "results"
    shutil.copytree(committed / "runs", res / "runs")
    shutil.copytree(committed / "base_weights", res / "base_weights")
    real_factors, matrix = factors.layer_factors, factors.BaseWeights.matrix

    def noisy_factors(*a, **k):
        f = real_factors(*a, **k)
        return factors.LayerFactors(
            **{**f.__dict__, "A": f.A * (1 + 1e-12), "B": f.B * (1 - 1e-12)}
        )

    monkeypatch.setattr(factors, "layer_factors", noisy_factors)
    monkeypatch.setattr(
        factors.BaseWeights, "matrix", lambda self, key: matrix(self, key) * (1 + 1e-12)
    )
    assert main(["--results", str(res), "--formats", "png"]) == 0
    for rel in ("tables/table7.csv", "figures/summary.json", "figures/summary.md"):
        assert (res / rel).read_bytes() == (committed / rel).read_bytes(), rel


@pytest.mark.parametrize(
    ("name", "data"),
    [
        (runs.ADAPTER_FILE, b"\x10\x00\x00\x00\x00\x00\x00\x00{torn"),
        (runs.STATUS_FILE, b"[1, 2]"),
        (runs.SUMMARY_FILE, b"\xff\xfe not utf-8"),
    ],
)
def test_a_damaged_run_is_named_and_skipped_while_the_rest_is_drawn(tmp_path, capsys, name, data):
    """Figure 4 and Table 7 do not need the seed-1 run: they are drawn; the build exits 1."""
    results = make_results(tmp_path)
    damaged = results / "runs/rotten_tomatoes/minilm/q_v-r32-a8/seed1" / name
    damaged.write_bytes(data)
    assert main(["--results", str(results), "--formats", "png", *SMALL]) == 1
    err = capsys.readouterr().err
    assert f"skipped (damaged, retrained by the next sweep): {damaged}: " in err
    assert "Traceback" not in err and "peft" not in err
    s = json.loads((results / "figures" / "summary.json").read_text())
    assert set(s["table7"]) == {"4", "8", "32"} and "ranks" in s["phi11"]
