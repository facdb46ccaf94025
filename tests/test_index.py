"""Index and Tables 5/6 from run directories (analysis.index), on hand-made runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.index import collect, main, table5, table6
from lora_repro import runs

D = 16  # square W: every type costs 2*D parameters per unit of rank and layer
LAYERS = 2


def _run(
    results: Path,
    targets: list[str],
    r: int,
    seed: int,
    acc: float,
    *,
    group: str = "runs",
    lr: float = 2e-3,
    batch_size: int = 8,
    sweep: str = "table6",
    method: str = "lora",
) -> Path:
    name = f"{'_'.join(targets)}-" + ("full" if method == "full" else f"r{r}-a8")
    d = results / group / "toy" / "tiny" / name / f"seed{seed}"
    full = method == "full"
    cfg = {
        "model": {"name": "tiny"},
        "task": {"name": "toy"},
        "seed": seed,
        "group": group,
        "sweep": sweep,  # not a setting: the grid that launched the run
        "adapter": {
            "targets": targets,
            "r": None if full else r,
            "alpha": None if full else 8.0,
            "init": None if full else "gaussian",
            "scaling": None if full else "standard",
            **({"method": "full", "dropout": None} if full else {}),
        },
        "train": {"lr": lr, "max_steps": 3, "batch_size": batch_size, "eval_every": 3},
        "paths": {"results": str(results)},
    }
    runs.atomic_write_yaml(d / "config.yaml", cfg)
    runs.atomic_write_json(d / "meta.json", {"seeds": {"seed": seed}})
    counts = {"n_lora_params": r * len(targets) * LAYERS * 2 * D}
    if full:
        counts = {"n_lora_params": None, "n_trained_params": len(targets) * LAYERS * D * D}
    runs.atomic_write_json(d / "summary.json", {"val_accuracy": acc, **counts})
    runs.atomic_write_json(d / "status.json", {"status": "success"})
    return d


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
    _run(res, ["q"], 8, 1, 0.74, sweep="seeds")  # another grid, same setting: a second seed
    _run(res, ["q", "v"], 4, 0, 0.80)
    _run(res, ["q", "k", "v", "o"], 2, 0, 0.81)
    _run(res, ["q", "v"], 64, 0, 0.79)
    # an unfinished run is left out
    _run(res, ["k"], 8, 0, 0.99)
    runs.atomic_write_json(res / "runs/toy/tiny/k-r8-a8/seed0/status.json", {"status": "running"})
    return res


def test_full_fine_tuning_runs_are_reference_rows_and_keep_the_lora_cells(results):
    lr_full = 1e-4
    for seed, acc in ((0, 0.82), (1, 0.84)):
        _run(results, ["q", "v"], 0, seed, acc, method="full", lr=lr_full, sweep="full")
    out = collect(results)
    index = out["index"]
    full = index[index["method"] == "full"]
    assert len(full) == 2 and full["r"].isna().all() and full["alpha"].isna().all()
    assert (index[index["method"] == "lora"]["r"].notna()).all()
    for name in ("table5", "table6"):
        t = out[name]
        ref = t[t["method"] == "full"]
        assert list(ref["targets"]) == ["q,v"] and ref["r"].isna().all()
        assert ref["cell"].iloc[0] == "83.0 ± 1.4 (n=2)"
        assert ref["params"].iloc[0] == 2 * LAYERS * D * D
        # the LoRA cells are as without the full runs: one setting, no lr column
        assert "lr" not in t and (t["method"] == "lora").sum() == (7 if name == "table5" else 15)
    t5 = out["table5"].set_index(["targets", "method"])
    assert t5.loc[("q", "lora"), "cell"] == "72.0 ± 2.8 (n=2)"


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


T6_COLUMNS = ["task", "model", "targets", "r", "params", "val_acc_mean", "val_acc_std", "n_seeds"]


def test_one_setting_keeps_the_plain_layout(results):
    out = collect(results)
    t6 = out["table6"]
    assert list(t6.columns[:8]) == T6_COLUMNS and "group" not in t6 and "lr" not in t6
    assert len(t6) == 15  # one row per (targets, r)
    assert "setting" not in (results / "tables" / "table6.md").read_text()


def test_runs_with_other_settings_are_not_pooled_as_seeds(results):
    # the conflict message's advice: the same cell again in group=alt, at another lr
    _run(results, ["q", "v"], 64, 0, 0.61, group="alt", lr=1e-2)
    _run(results, ["q", "v"], 64, 1, 0.65, group="alt", lr=1e-2)
    out = collect(results)
    t6 = out["table6"]
    assert list(t6.columns[:6]) == ["task", "model", "targets", "r", "group", "lr"]
    cell = t6[(t6.targets == "q,v") & (t6.r == 64)].set_index("group")
    assert len(cell) == 2
    assert cell.loc["runs", "val_acc_mean"] == pytest.approx(79.0)
    assert cell.loc["runs", "n_seeds"] == 1 and cell.loc["runs", "lr"] == 2e-3
    assert cell.loc["alt", "val_acc_mean"] == pytest.approx(63.0)
    assert cell.loc["alt", "n_seeds"] == 2 and cell.loc["alt", "lr"] == 1e-2
    # a cell that only one setting filled keeps one row, with that setting shown
    q8 = t6[(t6.targets == "q") & (t6.r == 8)]
    assert len(q8) == 1 and q8.group.item() == "runs" and q8.cell.item() == "72.0 ± 2.8 (n=2)"
    empty = t6[(t6.targets == "q") & (t6.r == 1)]
    assert len(empty) == 1 and empty.cell.item() == "–" and pd.isna(empty.group.item())
    assert len(t6) == 16
    md = (results / "tables" / "table6.md").read_text()
    assert "| q,v       | 64  | alt" in md and "63.0 ± 2.8 (n=2)" in md
    t5 = out["table5"]
    assert t5[t5.targets == "q,v"].cell.tolist() == ["80.0 (n=1)"]  # r = 4: only one setting


def test_a_setting_outside_the_index_columns_also_splits_a_cell(results):
    _run(results, ["q", "v"], 4, 1, 0.70, batch_size=64)
    out = collect(results)
    index = pd.read_csv(results / "index.csv")
    assert "train.batch_size" in index.columns  # a setting that varies gets its own column
    t5 = out["table5"]
    cell = t5[t5.targets == "q,v"].set_index("train.batch_size")
    assert cell.loc[8, "cell"] == "80.0 (n=1)" and cell.loc[64, "cell"] == "70.0 (n=1)"
    assert "group" not in t5  # it does not vary


def _perturbed(obj, rel: float):
    if isinstance(obj, float):
        return obj * (1 + rel)
    if isinstance(obj, dict):
        return {k: _perturbed(v, rel) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_perturbed(v, rel) for v in obj]
    return obj


@pytest.mark.parametrize("noise", [0.0, 1e-12])
def test_committed_tables_and_index_are_rebuilt_byte_for_byte(tmp_path, noise):
    """Tables 5 and 6 and the index rebuilt from the committed run summaries equal the committed
    files, also with every summary value perturbed by 1e-12 (another BLAS kernel's rounding)."""
    committed = Path(__file__).resolve().parents[1] / "results"
    if not (committed / "tables" / "table6.md").exists():
        pytest.skip("no committed results in this checkout")
    res = tmp_path / "results"
    shutil.copytree(
        committed / "runs", res / "runs", ignore=shutil.ignore_patterns("*.safetensors")
    )
    shutil.copytree(committed / "base_weights", res / "base_weights")
    if noise:
        for summary in res.glob("runs/**/summary.json"):
            runs.atomic_write_json(summary, _perturbed(runs.read_json(summary), noise))
    collect(res)
    for name in ("table5", "table6"):
        for ext in ("md", "csv", "tex"):
            got = (res / "tables" / f"{name}.{ext}").read_bytes()
            assert got == (committed / "tables" / f"{name}.{ext}").read_bytes(), f"{name}.{ext}"
    assert (res / "index.csv").read_bytes() == (committed / "index.csv").read_bytes()


def test_rounded_keeps_eight_significant_digits():
    x = {"a": [0.1234567891234, 1e-12 * 3.14159265358979], "b": 12345.678912, "c": float("nan")}
    got = runs.rounded(x)
    assert got["a"] == [0.12345679, 3.1415927e-12] and got["b"] == 12345.679
    assert np.isnan(got["c"]) and runs.rounded(_perturbed(x, 1e-12))["a"] == got["a"]


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


def _status(run_dir: Path, **status) -> None:
    runs.atomic_write_json(run_dir / "status.json", status)


def test_a_killed_run_is_told_apart_from_a_running_one(results, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.kill()
    dead.wait()  # reaped: the pid is gone, as after kill -9 of a training process
    here = socket.gethostname()
    base = results / "runs" / "toy" / "tiny"
    _status(base / "k-r8-a8" / "seed0", status="running", pid=dead.pid, host=here, started=0.0)
    alive = _run(results, ["v"], 8, 0, 0.5)
    _status(alive, status="running", pid=os.getpid(), host=here, started=0.0)
    elsewhere = _run(results, ["o"], 8, 0, 0.5)
    _status(elsewhere, status="running", pid=dead.pid, host=here + "-other", started=0.0)
    assert main(["--results", str(results)]) == 0
    err = capsys.readouterr().err.splitlines()
    line = next(x for x in err if "k-r8-a8" in x)
    assert f"its process {dead.pid} is gone" in line and "rerun" in line
    assert next(x for x in err if "v-r8-a8" in x).startswith("not finished (running):")
    other = next(x for x in err if "o-r8-a8" in x)
    assert "gone" not in other and f"{here}-other" in other


@pytest.mark.parametrize("cli", ["analysis.index", "analysis.figures"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_results_path_that_is_not_a_folder_is_one_clear_line(tmp_path, capsys, kind, cli):
    from analysis.figures.__main__ import main as figures_main

    run = {"analysis.index": main, "analysis.figures": figures_main}[cli]
    path = tmp_path / "does_not_exist"
    if kind == "file":
        path.write_text("x")
    assert run(["--results", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and str(path) in err and "make sweep" in err
    assert ("does not exist" if kind == "missing" else "not a folder") in err
    assert sorted(tmp_path.iterdir()) == ([path] if kind == "file" else [])  # nothing created


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("status.json", b"\xff\xfe", "not valid UTF-8"),
        ("status.json", b"[1, 2]", "holds list, not an object"),
        ("status.json", b"null", "holds null"),
        ("status.json", b'{"status": "succ', "torn or not JSON"),
        ("summary.json", b'{"val_accuracy": 0.', "torn or not JSON"),
        ("config.yaml", b"\xff", "not valid UTF-8"),
        ("meta.json", b"null", "holds null"),
    ],
)
def test_a_damaged_run_is_named_and_the_others_are_indexed(results, capsys, name, data, why):
    bad = results / "runs/toy/tiny/q_v-r4-a8/seed0"
    (bad / name).write_bytes(data)
    assert main(["--results", str(results)]) == 0
    captured = capsys.readouterr()
    assert f"not usable (damaged: {bad / name}: {why}" in captured.err
    assert "Traceback" not in captured.err
    index = pd.read_parquet(results / "index.parquet")
    assert len(index) == 4 and "q,v" not in set(index[index["r"] == 4]["targets"])
