"""Benchmark 3: wall time of the default sweep and where each run's time goes.

    python -m bench.sweep_time --results results                # read the runs already there
    python -m bench.sweep_time --results results --run          # time `make sweep` end to end

Without ``--run`` it reads the finished runs below ``--from`` (default: ``--results``): each run's
``summary.json`` splits its wall time (from ``fit()`` being called to the summary being written)
into set-up (config check, data and model from the per-process cache or disk, base weights,
injection, tokenisation of all splits), training steps, evaluation (validation and test), and the
rest (adapter and file writes). The share outside training steps is 1 − train / wall. What a run's
wall time does not hold: the Python process start and Hydra's composition of the config, paid once
per grid by the sequential ``local`` launcher, and the index/table collection at the end; the sum
of the runs' wall times is therefore a lower bound on the sweep's.

With ``--run`` it runs ``python -m experiments.sweep --sweep <name> --launcher <launcher>`` into a
fresh temporary results folder (never into ``--results``), times it end to end, and attributes
the difference to the sum of run wall times to process starts, Hydra and collection.

The default sweep (``SWEEP=paper``) trains 20 runs; when a folder holds fewer, the table also
gives the sum scaled to 20 (labelled).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from lora_repro import runs

NAME = "sweep_time"
PAPER_RUNS = 20  # table5 ∪ table6 ∪ subspace ∪ seeds, each run once (README, "Sweeps")
TARGET_SWEEP_S = 20 * 60.0
TARGET_SETUP_SHARE = 0.10


def run_rows(results: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per finished run below ``results`` with its time split (seconds and shares)."""
    rows = []
    root = Path(results)
    for run_dir in runs.find_runs(root):
        p = run_dir / runs.SUMMARY_FILE
        if not p.exists():
            continue
        s = runs.read_json(p)
        cfg = runs.read_config(run_dir)
        wall = float(s.get("wall_time_s") or 0.0)
        if wall <= 0:
            continue
        setup = float(s.get("setup_time_s") or 0.0)
        train = float(s.get("train_time_s") or 0.0)
        ev = float(s.get("eval_time_s") or 0.0)
        rows.append(
            {
                "path": str(run_dir.relative_to(root)),
                "sweep": cfg.get("sweep"),
                "targets": ",".join(cfg.get("adapter", {}).get("targets", [])),
                "r": cfg.get("adapter", {}).get("r"),
                "seed": cfg.get("seed"),
                "steps": s.get("steps"),
                "wall_s": wall,
                "setup_s": setup,
                "train_s": train,
                "eval_s": ev,
                "other_s": wall - setup - train - ev,
                "setup_share": setup / wall,
                "eval_share": ev / wall,
                "outside_share": 1.0 - train / wall,
                "steps_per_s": s.get("steps_per_s"),
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and medians over ``rows``, overall and per grid (``config.sweep``)."""

    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "runs": len(rs),
            "sum_wall_s": sum(r["wall_s"] for r in rs),
            "median_wall_s": common.median([r["wall_s"] for r in rs]),
            "median_setup_share": common.median([r["setup_share"] for r in rs]),
            "max_setup_share": max(r["setup_share"] for r in rs),
            "median_eval_share": common.median([r["eval_share"] for r in rs]),
            "median_outside_share": common.median([r["outside_share"] for r in rs]),
            "max_outside_share": max(r["outside_share"] for r in rs),
            "median_steps_per_s": common.median([r["steps_per_s"] or 0.0 for r in rs]),
        }

    if not rows:
        return {"all": None, "by_sweep": {}}
    grids = sorted({str(r["sweep"]) for r in rows})
    return {
        "all": agg(rows),
        "by_sweep": {g: agg([r for r in rows if str(r["sweep"]) == g]) for g in grids},
    }


def run_sweep(
    sweep: str, launcher: str, extra: list[str], out_dir: Path, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run ``experiments.sweep`` (with ``flags``, e.g. ``--pack``) into ``out_dir`` and time it
    end to end."""
    cmd = common.python_cmd(
        "experiments.sweep",
        "--sweep",
        sweep,
        "--launcher",
        launcher,
        *flags,
        f"paths.results={out_dir}",
        "train.progress=false",
        *extra,
    )
    print("running:", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return {
        "command": cmd[1:],
        "returncode": proc.returncode,
        "wall_s": wall,
        "stderr_tail": proc.stderr.strip().splitlines()[-5:],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        help="results folder whose runs are read (default: --results)",
    )
    p.add_argument(
        "--run",
        action="store_true",
        help="run the sweep into a temporary folder and time it end to end",
    )
    p.add_argument("--sweep", default="paper", help="sweep name for --run (conf/sweep/ or paper)")
    p.add_argument("--launcher", default="local", help="launcher for --run")
    p.add_argument(
        "--sweep-args",
        default="",
        help="extra Hydra overrides for --run, one string (e.g. 'train.max_steps=20')",
    )
    p.add_argument("--keep", action="store_true", help="keep the --run results folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write ``<results>/bench/sweep_time.json``."""
    args = parse_args(argv)
    info = common.machine_info()
    note = common.busy_note(info)
    run_info = None
    source = Path(args.source or args.results)
    tmp = None
    if args.run:
        tmp = Path(tempfile.mkdtemp(prefix="lora-bench-sweep-"))
        run_info = run_sweep(args.sweep, args.launcher, shlex.split(args.sweep_args), tmp)
        run_info["results"] = str(tmp)
        source = tmp
    rows = run_rows(source)
    summ = summarise(rows)
    overall = summ["all"]
    sum_wall = overall["sum_wall_s"] if overall else None
    scaled = (
        sum_wall * PAPER_RUNS / overall["runs"]
        if overall and overall["runs"] < PAPER_RUNS and (not args.run or args.sweep == "paper")
        else None
    )
    if run_info and overall:
        run_info["outside_runs_s"] = run_info["wall_s"] - sum_wall
        run_info["outside_runs_per_run_s"] = run_info["outside_runs_s"] / overall["runs"]
    sweep_s = run_info["wall_s"] if run_info else (scaled or sum_wall)
    payload = {
        "bench": NAME,
        "machine": info,
        "source": str(source),
        "settings": {
            "run": args.run,
            "sweep": args.sweep if args.run else None,
            "launcher": args.launcher if args.run else None,
            "sweep_args": args.sweep_args if args.run else None,
            "paper_runs": PAPER_RUNS,
        },
        "run": run_info,
        "summary": summ,
        "sweep_wall_s": sweep_s,
        "sweep_wall_rule": (
            "measured end to end (--run)"
            if run_info
            else "sum of run wall times"
            + (f", scaled to {PAPER_RUNS} runs" if scaled else "")
            + "; excludes process starts and collection"
        ),
        "runs": rows,
        "targets": {
            "sweep_wall_s": common.target(sweep_s, TARGET_SWEEP_S),
            "median_setup_share": common.target(
                overall["median_setup_share"] if overall else None, TARGET_SETUP_SHARE
            ),
        },
    }
    path = common.write_result(args.results, NAME, payload)
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(payload))
    if note:
        print(note)
    print(f"wrote {path}")
    if run_info and run_info["returncode"] != 0:
        print(
            f"error: the sweep exited with {run_info['returncode']}: "
            + " / ".join(run_info["stderr_tail"]),
            file=sys.stderr,
        )
        return 1
    return 0


def render(payload: dict[str, Any]) -> str:
    """The printed table of a ``sweep_time.json`` payload."""
    summ = payload["summary"]
    if not summ["all"]:
        return (
            f"Sweep: no finished runs under {payload['source']}; run `make sweep` first, or "
            "pass --run to time one"
        )
    rows = []
    for name, a in [*summ["by_sweep"].items(), ("all", summ["all"])]:
        rows.append(
            [
                name,
                a["runs"],
                a["sum_wall_s"],
                a["median_wall_s"],
                100 * a["median_setup_share"],
                100 * a["max_setup_share"],
                100 * a["median_eval_share"],
                100 * a["median_outside_share"],
                a["median_steps_per_s"],
            ]
        )
    lines = [
        f"Sweep runs under {payload['source']} (shares of each run's wall time)",
        common.table(
            [
                "grid",
                "runs",
                "Σ wall s",
                "median wall s",
                "setup % (med)",
                "setup % (max)",
                "eval % (med)",
                "outside train % (med)",
                "steps/s",
            ],
            rows,
        ),
    ]
    run = payload.get("run")
    if run:
        lines.append(
            f"end to end: {run['wall_s']:.1f} s, of which {run.get('outside_runs_s', 0):.1f}"
            " s outside the runs (process starts, Hydra, collection)"
        )
    lines.append(f"sweep wall: {payload['sweep_wall_s']:.0f} s ({payload['sweep_wall_rule']})")
    lines += common.target_lines(payload, ("sweep_wall_s", "median_setup_share"), "g")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
