"""Collect finished runs into an index and the paper's Tables 5 and 6 (§7.1, §7.2).

``python -m analysis.index --results results`` writes

* ``results/index.parquet`` and ``results/index.csv``: one row per successful run (config
  columns, metrics, parameter counts, path relative to the results folder);
* ``results/tables/table5.{md,csv,tex}``: validation accuracy per adapted weight-type set at the
  rank the budget rule gives (budget = r=8 on Wq alone, as in the paper);
* ``results/tables/table6.{md,csv,tex}``: validation accuracy against r for Wq; Wq,Wv;
  Wq,Wk,Wv,Wo.

Cells are mean ± std over seeds (no std with one seed; n is given), with the trainable LoRA
parameters per cell and the paper's GPT-3 numbers beside (``analysis/paper_values.json``).
Where full fine-tuning runs of a weight-type set exist (``adapter.method=full``), each table gets
a reference row for it (``method`` full, r empty, its trained parameters). Only
runs whose settings agree apart from their seeds are pooled: when the index holds runs of one
cell with other settings (another ``group``, lr, α, batch size, ...), the cell gets one row per
setting, with the settings that differ as columns. Reads run directories only, through
:mod:`lora_repro.runs`; never trains.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.tables import is_missing, paper_values, write_table
from lora_repro import grids, runs
from lora_repro.budget import auto_budget, rank_for_budget
from lora_repro.config import NON_IDENTITY
from lora_repro.errors import LoraReproError

PAPER = paper_values()
# The cells of Tables 5 and 6: their grids' definitions (conf/sweep/table5.yaml, table6.yaml).
TABLE5_SETS = [",".join(t) for t in grids.load("table5").targets]
TABLE6_SETS = [",".join(t) for t in grids.load("table6").targets]
TABLE6_RANKS = list(grids.load("table6").ranks)
TYPE_ORDER = runs.WEIGHT_TYPES


# A run's setting is its resolved config apart from what names its table cell, its seeds, and the
# keys that never change what a run computes (lora_repro.config.NON_IDENTITY, less `group`: runs
# a user put in another group are another experiment). Runs of one cell are pooled as seeds only
# when every other key agrees.
NOT_SETTINGS = (
    "task.name",
    "model.name",
    "adapter.method",
    "adapter.targets",
    "adapter.r",
    "adapter.layers",  # runs on a subset of layers are left out of the tables
    "seed",
    "seed_init",
    "seed_data",
    *sorted(".".join(k) for k in NON_IDENTITY if k != ("group",)),
)
# Settings that the index always has a column for: config key -> column.
SETTING_COLUMNS = {
    "group": "group",
    "train.lr": "lr",
    "train.max_steps": "max_steps",
    "adapter.alpha": "alpha",
    "adapter.init": "init",
    "adapter.scaling": "scaling_rule",
}


def _targets_key(targets) -> str:
    return ",".join(t for t in TYPE_ORDER if t in targets)


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _is_setting(key: str) -> bool:
    return not any(key == n or key.startswith(n + ".") for n in NOT_SETTINGS)


def _cell_value(v: Any) -> Any:
    """A config value as an index cell: lists and mappings as JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, Mapping)) else v


def _canon(v: Any) -> str:
    """A config value as comparable text (8 and 8.0 are one value)."""

    def num(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: num(y) for k, y in x.items()}
        if isinstance(x, (list, tuple)):
            return [num(y) for y in x]
        return float(x) if isinstance(x, int) and not isinstance(x, bool) else x

    return json.dumps(num(v), sort_keys=True)


def _varying_settings(rows: list[dict], configs: list[dict[str, Any]]) -> list[str]:
    """Add to ``rows`` (in place) the config keys whose values differ within a (task, model).

    Keys of :data:`SETTING_COLUMNS` have their own columns and are skipped. Only keys that every
    run of the (task, model) has are compared: a key added to the schema after a run was saved
    is not held against it (its default reproduces what the code did then).

    Returns:
        The keys added, sorted.
    """
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row["task"], row["model"], row["method"]), []).append(i)
    added: set[str] = set()
    for members in groups.values():
        common = set.intersection(*(set(configs[i]) for i in members))
        for key in sorted(common):
            if key in SETTING_COLUMNS or not _is_setting(key):
                continue
            values = {_canon(configs[i][key]) for i in members}
            if len(values) > 1:
                added.add(key)
                for i in members:
                    rows[i][key] = _cell_value(configs[i][key])
    return sorted(added)


def build_index(results: str | Path, damaged: list | None = None) -> pd.DataFrame:
    """One row per usable finished run below ``results``; runs left out for a damaged file are
    appended to ``damaged`` when it is given (:func:`lora_repro.runs.find_runs`).

    Columns: task, model, targets (``"q,v"``), r, alpha, seed, seed_init, seed_data, init, lr,
    max_steps, group, precision, method (``lora`` or ``full``; r and alpha empty for full), then
    one column per other config key (dotted, e.g. ``train.batch_size``) whose value differs
    between runs of one (task, model, method) (none when they all agree), every summary metric,
    and ``path`` (relative to ``results``).
    """
    rows, configs = [], []
    root = Path(results)
    for run_dir, cfg in runs.iter_finished(root, damaged):
        summary = runs.read_object(run_dir / runs.SUMMARY_FILE)
        a, t = cfg["adapter"], cfg["train"]
        seed = cfg["seed"]
        lora = a.get("method", "lora") == "lora"
        row = {
            "task": cfg["task"]["name"],
            "model": cfg["model"]["name"],
            "targets": _targets_key(a["targets"]),
            "r": int(a["r"]) if lora else None,
            "alpha": float(a["alpha"]) if lora else None,
            "seed": int(seed),
            "seed_init": int(seed if cfg.get("seed_init") is None else cfg["seed_init"]),
            "seed_data": int(seed if cfg.get("seed_data") is None else cfg["seed_data"]),
            "init": a["init"],
            "scaling_rule": a["scaling"],
            "layers": None if a.get("layers") is None else ",".join(map(str, a["layers"])),
            "lr": float(t["lr"]),
            "max_steps": int(t["max_steps"]),
            "group": cfg.get("group"),
            # the precision that ran (summary.json since it was recorded; the config before)
            "precision": summary.get("precision", t.get("precision")),
            "method": a.get("method", "lora"),
        }
        rows.append((row, summary, str(run_dir.relative_to(root))))
        configs.append({k: v for k, v in _flatten(cfg) if _is_setting(k)})
    heads = [row for row, _, _ in rows]
    fixed = list(heads[0]) if heads else []
    added = _varying_settings(heads, configs)
    for row, summary, path in rows:
        for k, v in summary.items():
            if k not in row and not isinstance(v, (list, dict)):
                row[k] = v
        row["path"] = path
    cols = ["task", "model", "targets", "r", "alpha", "seed", "path"]
    df = pd.DataFrame(heads)
    if df.empty:
        return pd.DataFrame(columns=cols)
    first = fixed + added
    df = df[first + [c for c in df.columns if c not in first]]
    df["r"] = df["r"].astype("Int64")  # empty for full fine-tuning
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
    full = (g["method"] == "full").all()
    return {
        "mean": float(acc.mean()),
        "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,  # undefined for one seed
        "n": int(len(acc)),
        "params": int(g["n_trained_params" if full else "n_lora_params"].iloc[0]),
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


def _base(index: pd.DataFrame) -> pd.DataFrame:
    # Runs with a non-default layer selection are left out of the tables.
    return index[index["layers"].isna()] if "layers" in index else index


def _groups(index: pd.DataFrame, lora_only: bool = True):
    """The LoRA runs of the tables per (task, model); with ``lora_only=False`` every (task,
    model) with any run, each with its LoRA runs (possibly none)."""
    base = _base(index)
    lora = base[base["method"] == "lora"]
    if lora_only:
        yield from lora.groupby(["task", "model"], sort=True)
        return
    for key, _ in base.groupby(["task", "model"], sort=True):
        yield key, lora[(lora["task"] == key[0]) & (lora["model"] == key[1])]


def _reference_rows(index: pd.DataFrame, task: str, model: str, sets: list[str], cols) -> list:
    """Full fine-tuning reference rows of a table: one per weight-type set that has such runs
    (``method`` full, r empty, the setting columns empty)."""
    base = _base(index)
    g = base[(base["method"] == "full") & (base["task"] == task) & (base["model"] == model)]
    rows = []
    for s in sets:
        sel = g[g["targets"] == s]
        if len(sel):
            rows.append(
                {"task": task, "model": model, "targets": s, "r": None, "method": "full"}
                | dict.fromkeys(cols)
                | _cell_columns(sel)
            )
    return rows


def _norm(v: Any) -> Any:
    return None if is_missing(v) else v


def setting_columns(index: pd.DataFrame) -> list[str]:
    """Index columns that tell settings apart: :data:`SETTING_COLUMNS` and the dotted config
    columns, those whose values differ between runs of one (task, model) of the tables.

    Empty when every (task, model) holds one setting (then each cell pools all its runs as seeds).
    """
    dotted = sorted(c for c in index.columns if "." in c)
    candidates = [c for c in SETTING_COLUMNS.values() if c in index] + dotted
    out = set()
    for _, g in _groups(index):
        for c in candidates:
            if len({json.dumps(_norm(v), default=str) for v in g[c]}) > 1:
                out.add(c)
    return [c for c in candidates if c in out]


def _settings(g: pd.DataFrame, cols: list[str]) -> list[tuple]:
    """The distinct settings of ``g`` over ``cols``, the most frequent first (ties by value)."""
    counts: dict[tuple, int] = {}
    for key in _setting_keys(g, cols):
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], [str(x) for x in k]))


def _setting_keys(g: pd.DataFrame, cols: list[str]) -> list[tuple]:
    return [tuple(_norm(v) for v in row) for row in g[cols].itertuples(index=False, name=None)]


def _cell_rows(sel: pd.DataFrame, cols: list[str], order: list[tuple]) -> Iterator[dict]:
    """One table row per setting among the runs ``sel`` of one cell (one "–" row when none).

    Each row: the setting's values in ``cols``, then :func:`_cell_columns` of its runs.
    """
    if not cols:
        yield _cell_columns(sel)
        return
    keys = _setting_keys(sel, cols)
    present = [k for k in order if k in set(keys)]
    if not present:
        yield {**dict.fromkeys(cols), **_cell_columns(sel)}
        return
    for key in present:
        mask = [k == key for k in keys]
        yield {**dict(zip(cols, key, strict=True)), **_cell_columns(sel[mask])}


def table5(index: pd.DataFrame, results: str | Path, budget: int | None = None) -> pd.DataFrame:
    """Table 5: one row per (task, model) and weight-type set at the budget rank.

    Columns: task, model, targets, r, method (only with a full fine-tuning row), the setting
    columns (:func:`setting_columns`; none when the runs hold one setting), params, val_acc_mean, val_acc_std, n_seeds, cell, paper_r,
    paper_WikiSQL, paper_MultiNLI. A cell with runs of several settings has one row per setting;
    full fine-tuning reference rows (:func:`_reference_rows`) come after a (task, model)'s cells.
    """
    rows = []
    cols = setting_columns(index)
    for (task, model), g in _groups(index, lora_only=False):
        ranks = budget_ranks(results, model, budget)
        if ranks is None:
            continue
        order = _settings(g, cols)
        for i, s in enumerate(TABLE5_SETS if len(g) else []):
            sel = g[(g["targets"] == s) & (g["r"] == ranks[s])]
            for cell in _cell_rows(sel, cols, order):
                rows.append(
                    {
                        "task": task,
                        "model": model,
                        "targets": s,
                        "r": ranks[s],
                        "method": "lora",
                        **cell,
                        "paper_r": PAPER["table5"]["r"][i],
                        "paper_WikiSQL": PAPER["table5"]["WikiSQL"][i],
                        "paper_MultiNLI": PAPER["table5"]["MultiNLI"][i],
                    }
                )
        rows += _reference_rows(index, task, model, TABLE5_SETS, cols)
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The table's rows; the ``method`` column only where a full fine-tuning row is present."""
    df = pd.DataFrame(rows)
    if "r" in df:
        df["r"] = df["r"].astype("Int64")
    if "method" in df and (df["method"] == "lora").all():
        df = df.drop(columns="method")
    return df


def table6(index: pd.DataFrame) -> pd.DataFrame:
    """Table 6: one row per (task, model), weight-type set and rank r ∈ {1, 2, 4, 8, 64}.

    Columns as :func:`table5` (without paper_r); one row per setting where a cell has several.
    """
    rows = []
    cols = setting_columns(index)
    for (task, model), g in _groups(index, lora_only=False):
        order = _settings(g, cols)
        for s in TABLE6_SETS if len(g) else []:
            for j, r in enumerate(TABLE6_RANKS):
                sel = g[(g["targets"] == s) & (g["r"] == r)]
                for cell in _cell_rows(sel, cols, order):
                    rows.append(
                        {
                            "task": task,
                            "model": model,
                            "targets": s,
                            "r": r,
                            "method": "lora",
                            **cell,
                            "paper_WikiSQL": PAPER["table6"]["WikiSQL"][s][j],
                            "paper_MultiNLI": PAPER["table6"]["MultiNLI"][s][j],
                        }
                    )
        rows += _reference_rows(index, task, model, TABLE6_SETS, cols)
    return _frame(rows)


def write_index(index: pd.DataFrame, results: str | Path) -> list[Path]:
    """Atomically write ``index.parquet`` and ``index.csv`` under ``results``."""
    results = Path(results)
    pq = io.BytesIO()
    index.to_parquet(pq, index=False)
    buf = io.StringIO()
    index.to_csv(buf, index=False, float_format=runs.CSV_FLOAT_FORMAT)
    return [
        runs.atomic_write_bytes(results / "index.parquet", pq.getvalue()),
        runs.atomic_write_text(results / "index.csv", buf.getvalue()),
    ]


def unfinished_runs(results: str | Path) -> list[tuple[Path, str | None]]:
    """Run directories below ``results`` that are not usable: ``(path, status)``.

    ``status`` is ``running``, ``failed``, ``None`` (no status) or ``"damaged: <file>: <why>"``.
    """
    out = []
    for run_dir in runs.find_runs(results, finished_only=False):
        state = runs.run_state(run_dir)
        if state.problem is not None:
            out.append((run_dir, f"damaged: {state.problem}"))
        elif state.status != "success":
            out.append((run_dir, state.status))
    return out


def describe_unfinished(run_dir: str | Path, status: str | None) -> str:
    """One line on an unfinished run, e.g. ``not finished (running): <dir>``.

    A ``running`` status that records the pid and host of its training process (lora_repro.train
    writes both) is checked: on this host, a pid that is no longer alive means the process was
    killed (kill -9, out of memory, a lost node) and the run will never finish by itself.
    """
    what = status or "no status"
    if status == "running":
        try:
            info = runs.read_object(Path(run_dir) / runs.STATUS_FILE)
        except (OSError, ValueError):
            info = {}
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and host:
            if host == socket.gethostname():
                if not runs.pid_alive(pid):
                    what = f"running, but its process {pid} is gone: rerun to redo it"
            else:
                what = f"running on host {host}, pid {pid}"
    if what.startswith("damaged"):
        return f"not usable ({what}); the next sweep trains it again: {run_dir}"
    return f"not finished ({what}): {run_dir}"


def collect(results: str | Path, budget: int | None = None) -> dict[str, pd.DataFrame]:
    """Write the index and Tables 5 and 6 for every finished run below ``results``.

    Returns:
        ``{"index": ..., "table5": ..., "table6": ...}`` (only the index when it is empty).

    Raises:
        FileNotFoundError: when ``results`` is not an existing folder (nothing is created).
    """
    problem = runs.results_read_problem(results)
    if problem:
        raise FileNotFoundError(problem)
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
    cols = setting_columns(index)
    if cols:
        note += (
            " The runs differ in more than their seeds; runs are pooled only within one setting "
            f"(one row per setting, columns {', '.join(cols)})."
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
    """``python -m analysis.index``: write the index and Tables 5 and 6; list unfinished runs.

    Returns:
        0, or 2 (one line on stderr) when ``--results`` is not an existing folder.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results folder (paths.results)")
    p.add_argument(
        "--budget", type=int, default=None, help="Table 5 budget (default: r=8 on Wq alone)"
    )
    args = p.parse_args(argv)
    problem = runs.results_read_problem(args.results)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        out = collect(args.results, args.budget)
    except LoraReproError as e:  # a results file that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
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
        print(describe_unfinished(run_dir, status), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
