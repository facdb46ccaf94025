"""Run one of the paper's ablation grids as Hydra multiruns, then collect the index and tables.

    python -m experiments.sweep --sweep paper --launcher local [hydra overrides ...]

``--sweep`` is a file in ``conf/sweep/`` (table5, table6, subspace, seeds) or ``paper``, the union
of the four. A run is identified by its config, not by the grid that asked for it: a run that two
grids share is trained once, and every run that already finished is skipped, so rerunning a sweep
trains nothing and a killed sweep resumes where it stopped. ``--launcher`` is a file in
``conf/hydra/launcher/`` (local, parallel, submitit_local, slurm): the run code never knows it.

Exit status: 0 when every run of the grid finished, 1 when some failed (they are listed), 2 on a
bad argument.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"
PAPER = ["table5", "table6", "subspace", "seeds"]


def grids(name: str) -> list[str]:
    """The grid files a sweep name stands for.

    Raises:
        SystemExit: for an unknown name (lists the known ones).
    """
    known = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
    if name == "paper":
        return PAPER
    if name not in known:
        raise SystemExit(f"error: unknown sweep {name!r}; choose one of {['paper', *known]}")
    return [name]


def results_dir(overrides: list[str]) -> Path:
    """``paths.results`` as the runs will see it (override, else $LORA_RESULTS, else results)."""
    for o in overrides:
        if o.startswith("paths.results="):
            return Path(o.split("=", 1)[1])
    default = OmegaConf.load(CONF / "paths" / "default.yaml")
    return Path(OmegaConf.to_container(default, resolve=True)["results"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="paper", help="paper | table5 | table6 | subspace | seeds")
    p.add_argument("--launcher", default="local", help="local | parallel | submitit_local | slurm")
    p.add_argument("--no-collect", action="store_true", help="skip writing the index and tables")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=minilm seed=0,1,2")
    args = p.parse_args(argv)
    launchers = sorted(q.stem for q in (CONF / "hydra" / "launcher").glob("*.yaml"))
    if args.launcher not in launchers:
        print(
            f"error: unknown launcher {args.launcher!r}; choose one of {launchers}", file=sys.stderr
        )
        return 2
    names = grids(args.sweep)
    failed_grids = []
    for name in names:
        cmd = [
            sys.executable,
            "-m",
            "experiments.train",
            "-m",
            f"+sweep={name}",
            f"hydra/launcher={args.launcher}",
            *args.overrides,
        ]
        print(f"== sweep {name}: {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            failed_grids.append(name)
            if rc in (-2, 130):  # Ctrl-C: stop here; finished runs are kept
                print("interrupted; rerun the same command to resume", file=sys.stderr)
                return 130

    results = results_dir(args.overrides)
    if not args.no_collect:
        from analysis.index import main as collect_main

        collect_main(["--results", str(results)])

    from analysis.index import unfinished_runs

    bad = unfinished_runs(results)
    if failed_grids or bad:
        print(
            f"error: {len(bad)} run(s) did not finish (grids with errors: {failed_grids}); "
            "see each run's status.json, fix, and rerun the same command",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
