"""Run the benchmarks with quick defaults and print their tables (``make bench``).

    python -m bench.run_all --results results [--only train_step,analysis_scale]
    python -m bench.run_all --results /tmp/r --train-args "--reps 9" --analysis-args "--layers 96"

Each benchmark runs in its own process (so one's threads, BLAS pools and freed memory do not
touch the next) and writes ``<results>/bench/<name>.json``; the tables are printed again together
at the end. Quick defaults, a few minutes on a 2-core machine:

* ``train_step``: 5 repetitions × 6 steps per variant, interleaved; memory in fresh processes.
* ``pack_step``: one step of a pack of K = 4 mixed LoRA runs against the K steps alone
  (``lora_repro.pack``), and the padding it costs.
* ``pack_grid``: the paper's LoRA grids (20 runs) trained sequentially and packed, end to end,
  at 4 steps on 5 % validation / test splits (``--pack-grid-args "--sweep-args
  train.max_steps=200"`` for full length, about an hour each way on a 2-core CPU).
* ``analysis_scale``: dense SVD at n = 1024 and 2048 (at 12288 only with ``--dense-full`` in
  ``--analysis-args``); the report timed on 16 layers × 4 types and scaled to 96 × 4 (every
  module has the same shape; ``--analysis-args "--layers 96"`` times all 384). BLAS uses all
  cores, or one thread when the machine is already busy (``--blas-threads auto``).
* ``sweep_time``: reads the runs already under ``--results`` (``--sweep-args --run`` times a
  whole ``make sweep`` instead, ~20 min).
* ``gpu``: runs only when a GPU is present, else says it was not run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

from bench import common

BENCHES: tuple[str, ...] = (
    "train_step", "pack_step", "pack_grid", "analysis_scale", "sweep_time", "gpu",
)  # fmt: skip
QUICK: dict[str, list[str]] = {
    "train_step": [],
    "pack_step": [],
    "pack_grid": [
        "--sweep-args",
        "train.max_steps=4 task.val_fraction=0.05 task.test_fraction=0.05",
    ],
    "analysis_scale": ["--layers", "16"],
    "sweep_time": [],
    "gpu": [],
}


def render(name: str, payload: dict) -> str:
    """The table a benchmark prints, from its JSON."""
    import importlib

    return importlib.import_module(f"bench.{name}").render(payload)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks one after another; exit 1 if any failed."""
    p = common.parser(__doc__)
    p.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ",".join(BENCHES))
    for name, flag in (
        ("train_step", "--train-args"),
        ("pack_step", "--pack-args"),
        ("pack_grid", "--pack-grid-args"),
        ("analysis_scale", "--analysis-args"),
        ("sweep_time", "--sweep-args"),
        ("gpu", "--gpu-args"),
    ):
        p.add_argument(flag, default="", help=f"extra arguments for bench.{name} (one string)")
    args = p.parse_args(argv)
    extra = {
        "train_step": args.train_args,
        "pack_step": args.pack_args,
        "pack_grid": args.pack_grid_args,
        "analysis_scale": args.analysis_args,
        "sweep_time": args.sweep_args,
        "gpu": args.gpu_args,
    }
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        print(f"error: unknown benchmark(s) {bad}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed, took = [], {}
    t_all = time.perf_counter()
    for name in names:
        cmd = common.python_cmd(
            f"bench.{name}", "--results", args.results, *QUICK[name], *shlex.split(extra[name])
        )
        print(f"\n== bench.{name}: {' '.join(shlex.quote(c) for c in cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=common.REPO)
        took[name] = time.perf_counter() - t0
        if rc != 0:
            failed.append(name)

    print(
        f"\n== Summary ({time.perf_counter() - t_all:.0f} s; machine load at the end "
        f"{common.machine_info()['load_avg'][0]:.1f})"
    )
    for name in names:
        payload = common.read_result(args.results, name)
        if payload is None or name in failed:
            print(f"\n{name}: FAILED (no result)")
            continue
        print(f"\n{render(name, payload)}\n({name}: {took[name]:.0f} s)")
    if failed:
        print(f"\nerror: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
