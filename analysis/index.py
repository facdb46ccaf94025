"""Collect finished runs into an index and the paper's Tables 5 and 6 (§7.1, §7.2).

``python -m analysis.index --results results`` writes

* ``results/index.parquet`` and ``results/index.csv``: one row per successful run (config
  columns, metrics, parameter counts, path relative to the results folder);
* ``results/tables/table5.{md,csv,tex}``: validation accuracy per adapted weight-type set at the
  rank the budget rule gives (budget = r=8 on Wq alone, as in the paper);
* ``results/tables/table6.{md,csv,tex}``: validation accuracy against r for Wq; Wq,Wv;
  Wq,Wk,Wv,Wo.

Cells are mean ± std over seeds (no std with one seed; n is given), with the trainable LoRA
parameters per cell and the paper's GPT-3 numbers beside (``analysis/paper_tables.json``). Reads
run directories only, through :mod:`lora_repro.runs`; never trains.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.tables import write_table
from lora_repro import runs
from lora_repro.budget import auto_budget, rank_for_budget

PAPER = json.loads((Path(__file__).with_name("paper_tables.json")).read_text())
TABLE5_SETS = ["q", "k", "v", "o", "q,k", "q,v", "q,k,v,o"]
TABLE6_SETS = ["q", "q,v", "q,k,v,o"]
TABLE6_RANKS = [1, 2, 4, 8, 64]
TYPE_ORDER = "qkvo"


def _targets_key(targets) -> str:
    return ",".join(t for t in TYPE_ORDER if t in targets)


def build_index(results: str | Path) -> pd.DataFrame:
    """One row per finished run below ``results``.

    Columns: task, model, targets (``"q,v"``), r, alpha, seed, seed_init, seed_data, init, lr,
    max_steps, group, every summary metric, and ``path`` (relative to ``results``).
    """
    rows = []
    root = Path(results)
    for run_dir, cfg in runs.iter_finished(root):
        summary = runs.read_json(run_dir / runs.SUMMARY_FILE)
        a, t = cfg["adapter"], cfg["train"]
        seed = cfg["seed"]
        row = {
            "task": cfg["task"]["name"],
            "model": cfg["model"]["name"],
            "targets": _targets_key(a["targets"]),
            "r": int(a["r"]),
            "alpha": float(a["alpha"]),
            "seed": int(seed),
            "seed_init": int(seed if cfg.get("seed_init") is None else cfg["seed_init"]),
            "seed_data": int(seed if cfg.get("seed_data") is None else cfg["seed_data"]),
            "init": a["init"],
            "scaling_rule": a["scaling"],
            "layers": None if a.get("layers") is None else ",".join(map(str, a["layers"])),
            "lr": float(t["lr"]),
            "max_steps": int(t["max_steps"]),
            "group": cfg.get("group"),
        }
        for k, v in summary.items():
            if k not in row and not isinstance(v, (list, dict)):
                row[k] = v
        row["path"] = str(run_dir.relative_to(root))
        rows.append(row)
    cols = ["task", "model", "targets", "r", "alpha", "seed", "path"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=cols)
    return df.sort_values(["task", "model", "targets", "r", "seed"]).reset_index(drop=True)


def _shape_sums(results: Path, model: str) -> dict[str, list[tuple[int, int]]] | None:
    try:
        _, infos = runs.load_base_weights(runs.base_weights_path(results, model))
    except FileNotFoundError:
        return None
    shapes: dict[str, list[tuple[int, int]]] = {t: [] for t in TYPE_ORDER}
    for info in infos.values():
        shapes[info.type].append((info.d, info.k))
    return shapes


def budget_ranks(
    results: str | Path, model: str, budget: int | None = None
) -> dict[str, int] | None:
    """Rank per Table 5 weight-type set under the budget rule (``None`` budget = auto).

    Uses the pretrained-weight shapes saved with the runs; ``None`` when they are absent.
    """
    shapes = _shape_sums(Path(results), model)
    if shapes is None:
        return None
    budget = auto_budget(shapes["q"]) if budget is None else budget
    return {
        s: rank_for_budget([sh for t in s.split(",") for sh in shapes[t]], budget)
        for s in TABLE5_SETS
    }


def _cell(g: pd.DataFrame) -> dict:
    acc = g["val_accuracy"].to_numpy(float) * 100
    return {
        "mean": float(acc.mean()),
        "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,  # undefined for one seed
        "n": int(len(acc)),
        "params": int(g["n_lora_params"].iloc[0]),
    }


def _fmt(c: dict | None) -> str:
    if c is None:
        return "–"
    if c["std"] is None:
        return f"{c['mean']:.1f} (n=1)"
    return f"{c['mean']:.1f} ± {c['std']:.1f} (n={c['n']})"


def _cell_columns(sel: pd.DataFrame) -> dict:
    """The columns of one table cell: params, mean, std, seeds and the formatted cell ("–" if empty)."""
    c = _cell(sel) if len(sel) else None
    return {
        "params": c["params"] if c else None,
        "val_acc_mean": c["mean"] if c else None,
        "val_acc_std": c["std"] if c else None,
        "n_seeds": c["n"] if c else 0,
        "cell": _fmt(c),
    }


def _groups(index: pd.DataFrame):
    # Tables are per (task, model); runs with non-default layer selection are left out.
    base = index[index["layers"].isna()] if "layers" in index else index
    yield from base.groupby(["task", "model"], sort=True)


def table5(index: pd.DataFrame, results: str | Path, budget: int | None = None) -> pd.DataFrame:
    """Table 5: one row per (task, model) and weight-type set at the budget rank.

    Columns: task, model, targets, r, params, val_acc_mean, val_acc_std, n_seeds, cell,
    paper_WikiSQL, paper_MultiNLI.
    """
    rows = []
    for (task, model), g in _groups(index):
        ranks = budget_ranks(results, model, budget)
        if ranks is None:
            continue
        for i, s in enumerate(TABLE5_SETS):
            sel = g[(g["targets"] == s) & (g["r"] == ranks[s])]
            rows.append(
                {
                    "task": task,
                    "model": model,
                    "targets": s,
                    "r": ranks[s],
                    **_cell_columns(sel),
                    "paper_r": PAPER["table5"]["r"][i],
                    "paper_WikiSQL": PAPER["table5"]["WikiSQL"][i],
                    "paper_MultiNLI": PAPER["table5"]["MultiNLI"][i],
                }
            )
    return pd.DataFrame(rows)


def table6(index: pd.DataFrame) -> pd.DataFrame:
    """Table 6: one row per (task, model), weight-type set and rank r ∈ {1, 2, 4, 8, 64}."""
    rows = []
    for (task, model), g in _groups(index):
        for s in TABLE6_SETS:
            for j, r in enumerate(TABLE6_RANKS):
                sel = g[(g["targets"] == s) & (g["r"] == r)]
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "targets": s,
                        "r": r,
                        **_cell_columns(sel),
                        "paper_WikiSQL": PAPER["table6"]["WikiSQL"][s][j],
                        "paper_MultiNLI": PAPER["table6"]["MultiNLI"][s][j],
                    }
                )
    return pd.DataFrame(rows)


def write_index(index: pd.DataFrame, results: str | Path) -> list[Path]:
    """Atomically write ``index.parquet`` and ``index.csv`` under ``results``."""
    results = Path(results)
    pq = io.BytesIO()
    index.to_parquet(pq, index=False)
    buf = io.StringIO()
    index.to_csv(buf, index=False)
    return [
        runs.atomic_write_bytes(results / "index.parquet", pq.getvalue()),
        runs.atomic_write_text(results / "index.csv", buf.getvalue()),
    ]


def unfinished_runs(results: str | Path) -> list[tuple[Path, str | None]]:
    """Run directories below ``results`` whose status is not success: ``(path, status)``."""
    out = []
    for run_dir in runs.find_runs(results, finished_only=False):
        status = runs.run_status(run_dir)
        if status != "success":
            out.append((run_dir, status))
    return out


def collect(results: str | Path, budget: int | None = None) -> dict[str, pd.DataFrame]:
    """Write the index and Tables 5 and 6 for every finished run below ``results``."""
    results = Path(results)
    index = build_index(results)
    write_index(index, results)
    out = {"index": index}
    if index.empty:
        return out
    t5, t6 = table5(index, results, budget), table6(index)
    note = (
        "Ours: validation accuracy (%) mean ± std over seeds (n = seeds). Paper: GPT-3 175B "
        "(arXiv 2106.09685 v2), for reference only — another model and other tasks."
    )
    tables = results / "tables"
    if not t5.empty:
        write_table(
            t5, tables / "table5", PAPER["table5"]["caption"] + " — reproduction", preamble=note
        )
    if not t6.empty:
        write_table(
            t6, tables / "table6", PAPER["table6"]["caption"] + " — reproduction", preamble=note
        )
    out.update(table5=t5, table6=t6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (paths.results)")
    p.add_argument(
        "--budget", type=int, default=None, help="Table 5 budget (default: r=8 on Wq alone)"
    )
    args = p.parse_args(argv)
    out = collect(args.results, args.budget)
    n = len(out["index"])
    print(f"collected {n} finished run(s) into {Path(args.results) / 'index.parquet'}")
    for name in ("table5", "table6"):
        if name in out and not out[name].empty:
            filled = int((out[name]["n_seeds"] > 0).sum())
            print(
                f"{name}: {filled}/{len(out[name])} cells -> {Path(args.results) / 'tables' / name}.md"
            )
    bad = unfinished_runs(args.results)
    for run_dir, status in bad:
        print(f"not finished ({status or 'no status'}): {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
