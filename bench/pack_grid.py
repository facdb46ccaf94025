"""A grid's wall time packed against sequential, end to end, and its metrics both ways, in one run.

    python -m bench.pack_grid --results results [--sweep table5,table6,subspace,seeds]
        [--pack-size 8] [--sweep-args "train.max_steps=200"]

Trains the grid twice into fresh temporary folders with ``experiments.sweep`` (never into
``--results``): once as today's sequential sweep (``--launcher local``: one process per grid, one
run after another) and once packed (``--pack``: :mod:`lora_repro.pack`, K runs per base pass),
the order given by ``--first``. The ratio is packed ÷ sequential wall time, each from the
command's start to its end (process starts, model loading, training, evaluation, the index).
Each run's validation accuracy and loss are then compared run by run: a packed run is the same
experiment, not the same bytes (the base model's dropout draws one stream for the pack), so
the differences are to be read against seed noise, which the report gives beside them when the
``--noise-from`` folder holds several seeds of the same runs (the committed results do).

The default grid is the paper sweep without its full fine-tuning run (never packed, so the same
either way). Writes ``<results>/bench/pack_grid.json``.
"""

from __future__ import annotations

import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.sweep_time import run_rows, run_sweep

NAME = "pack_grid"
DEFAULT_SWEEP = "table5,table6,subspace,seeds"
METRICS = ("val_accuracy", "val_loss")


def metrics_by_run(results: Path) -> dict[str, dict[str, float]]:
    """Run path (below ``runs/``) -> its validation metrics, for each finished run."""
    from lora_repro import runs

    out = {}
    for d in runs.find_runs(results):
        s = runs.read_json(d / runs.SUMMARY_FILE)
        out[str(d.relative_to(results))] = {m: s.get(m) for m in METRICS}
    return out


def seed_noise(folder: Path) -> dict[str, float] | None:
    """Median over run configurations (≥ 2 seeds) of the seeds' standard deviation per metric."""
    by_cfg: dict[str, list[dict[str, float]]] = {}
    for path, m in metrics_by_run(folder).items():
        by_cfg.setdefault(str(Path(path).parent), []).append(m)
    sds = {m: [] for m in METRICS}
    for ms in by_cfg.values():
        if len(ms) >= 2:
            for m in METRICS:
                vals = [x[m] for x in ms if x[m] is not None]
                if len(vals) >= 2:
                    sds[m].append(statistics.stdev(vals))
    return {m: statistics.median(v) for m, v in sds.items() if v} or None


def compare(seq: dict[str, dict[str, float]], packed: dict[str, dict[str, float]]) -> dict:
    """Per metric: the runs both trained, and the median and largest |packed − sequential|."""
    both = sorted(set(seq) & set(packed))
    out: dict[str, Any] = {
        "runs_compared": len(both),
        "only_one_way": sorted(set(seq) ^ set(packed)),
    }
    for m in METRICS:
        diffs = [
            abs(packed[p][m] - seq[p][m]) for p in both if None not in (packed[p][m], seq[p][m])
        ]
        out[m] = {
            "median_abs_diff": statistics.median(diffs) if diffs else None,
            "max_abs_diff": max(diffs) if diffs else None,
        }
    out["rows"] = [{"run": p, **{f"{m}_sequential": seq[p][m] for m in METRICS},
                    **{f"{m}_packed": packed[p][m] for m in METRICS}} for p in both]  # fmt: skip
    return out


def process_times(results: Path) -> dict[str, float]:
    """Training and evaluation seconds of the runs below ``results``, each pack counted once (a
    packed run records its pack's times: runs listed in each other's ``packed_with`` share them)."""
    from lora_repro import runs

    seen: set[frozenset[str]] = set()
    out = {"train_s": 0.0, "eval_s": 0.0}
    for d in runs.find_runs(results):
        group = frozenset([str(d), *runs.read_json(d / runs.META_FILE).get("packed_with", [])])
        if group in seen:
            continue
        seen.add(group)
        s = runs.read_json(d / runs.SUMMARY_FILE)
        out["train_s"] += float(s.get("train_time_s") or 0.0)
        out["eval_s"] += float(s.get("eval_time_s") or 0.0)
    return out


def index_columns(results: Path) -> list[str] | None:
    """The columns of ``results``/index.csv (what the tables are built from), or ``None``."""
    path = results / "index.csv"
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8").splitlines()[0].split(",")


def main(argv: list[str] | None = None) -> int:
    """Run both sweeps, print the table, write ``<results>/bench/pack_grid.json``."""
    p = common.parser(__doc__)
    p.add_argument("--sweep", default=DEFAULT_SWEEP, help="sweep name(s) for experiments.sweep")
    p.add_argument("--pack-size", type=int, default=8)
    p.add_argument("--sweep-args", default="", help="extra Hydra overrides, one string")
    p.add_argument("--first", choices=("sequential", "packed"), default="sequential")
    p.add_argument(
        "--noise-from", default=None, help="results folder with several seeds (default: none)"
    )
    p.add_argument("--keep", action="store_true", help="keep the two results folders")
    args = p.parse_args(argv)
    info = common.machine_info()
    extra = shlex.split(args.sweep_args)
    variants = {"sequential": (), "packed": ("--pack", "--pack-size", str(args.pack_size))}
    order = [args.first, *(v for v in variants if v != args.first)]
    timed, metrics, folders = {}, {}, {}
    for name in order:
        folder = Path(tempfile.mkdtemp(prefix=f"lora-bench-{name}-"))
        folders[name] = folder
        timed[name] = run_sweep(args.sweep, "local", extra, folder, variants[name])
        timed[name]["runs"] = len(run_rows(folder))
        times = process_times(folder)
        timed[name]["sum_train_s"], timed[name]["sum_eval_s"] = times["train_s"], times["eval_s"]
        metrics[name] = metrics_by_run(folder)
        timed[name]["index_columns"] = index_columns(folder)
    seq, packed = timed["sequential"], timed["packed"]
    payload = {
        "bench": NAME,
        "machine": info,
        "settings": {
            "sweep": args.sweep,
            "pack_size": args.pack_size,
            "sweep_args": args.sweep_args,
            "order": order,
        },  # fmt: skip
        "sequential": seq,
        "packed": packed,
        "ratio_wall_packed_over_sequential": packed["wall_s"] / seq["wall_s"],
        "metrics": compare(metrics["sequential"], metrics["packed"]),
        "same_index_columns": (
            seq["index_columns"] is not None and seq["index_columns"] == packed["index_columns"]
        ),
        "seed_noise": seed_noise(Path(args.noise_from)) if args.noise_from else None,
        "targets": {"wall_ratio": common.target(packed["wall_s"] / seq["wall_s"], 1.0)},
    }
    path = common.write_result(args.results, NAME, payload)
    if not args.keep:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    print(render(payload))
    print(f"wrote {path}")
    bad = [n for n in order if timed[n]["returncode"] != 0]
    for n in bad:
        print(f"error: the {n} sweep exited with {timed[n]['returncode']}: "
              + " / ".join(timed[n]["stderr_tail"]), file=sys.stderr)  # fmt: skip
    return 1 if bad else 0


def render(payload: dict[str, Any]) -> str:
    """The benchmark's printed report."""
    seq, packed, cmp_ = payload["sequential"], payload["packed"], payload["metrics"]
    noise = payload.get("seed_noise") or {}
    rows = [
        [name, v["runs"], v["wall_s"], v["sum_train_s"], v["sum_eval_s"]]
        for name, v in (
            ("sequential", seq),
            (f"packed (K ≤ {payload['settings']['pack_size']})", packed),
        )
    ]
    lines = [
        f"Grid {payload['settings']['sweep']} ({payload['settings']['sweep_args'] or 'defaults'}) "
        f"on {payload['machine'].get('cpu')}, load {payload['machine'].get('load_avg')}",
        common.table(["variant", "runs", "wall s", "Σ train s (packs once)", "Σ eval s"], rows),
        f"packed ÷ sequential wall time: {payload['ratio_wall_packed_over_sequential']:.3f} "
        "(target <= 1: not slower)",
    ]
    for m in METRICS:
        c = cmp_[m]
        if c["max_abs_diff"] is None:
            continue
        sd = f"; seed sd (median) {noise[m]:.4f}" if m in noise else ""
        lines.append(
            f"{m}, |packed − sequential| over {cmp_['runs_compared']} runs: median "
            f"{c['median_abs_diff']:.4f}, max {c['max_abs_diff']:.4f}{sd}"
        )
    lines.append(
        "index columns: "
        + ("the same both ways" if payload.get("same_index_columns") else "DIFFERENT")
    )
    if cmp_["only_one_way"]:
        lines.append(f"runs finished one way only: {cmp_['only_one_way']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
