"""Run one of the paper's ablation grids as Hydra multiruns, then collect the index and tables.

    python -m experiments.sweep --sweep paper --launcher local [hydra overrides ...]

``--sweep`` is a file in ``conf/sweep/`` (table5, table6, subspace, seeds, full, full_qv),
``paper`` (the union of the first four and full_qv), or a comma list of them. A run is
identified by its config, not by the grid that asked for it: a run that two grids share is
trained once, and every run that already finished is skipped, so rerunning a sweep
trains nothing and a killed sweep resumes where it stopped. ``--launcher`` is a file in
``conf/hydra/launcher/`` (local, parallel, slurm) or hydra-submitit-launcher's own
``submitit_local``: the run code never knows it.

``--pack`` trains the pending LoRA runs of all the grids in packs over one frozen base pass
(:mod:`lora_repro.pack`, at most ``--pack-size`` runs and ``--pack-tokens`` padded tokens per
step), each pack one job of ``experiments.pack_job`` under the same launcher (one Slurm job per
pack with ``--launcher slurm``); full fine-tuning runs are jobs of their own, never packed.

``--plan`` trains nothing: it lists every run the sweep would launch (the grids' values, seeds and
other sweeps from the overrides, Table 5's ranks resolved from the budget) with its rank,
trainable parameters and planned peak memory (:mod:`lora_repro.plan`: base, adapters, optimizer
state, activations at the configured batch and length), marks the runs already finished (they
would be skipped), and prints the total.

Exit status: 0 when every run of the grid finished, 1 when some failed (they are listed), 2 on a
bad argument.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from lora_repro import grids, runs

# Set for each grid: experiments.train appends a JSON line per failed run, so that failures that
# happen before a run directory exists (a conflict, a bad rank) are reported too.
FAILURE_LOG_ENV = "LORA_REPRO_FAILURE_LOG"

CONF = Path(__file__).resolve().parent.parent / "conf"
PAPER = list(grids.PAPER)
# Launcher configs that hydra-submitit-launcher itself provides (a file of the same name in
# conf/hydra/launcher/ would shadow it and recurse).
PLUGIN_LAUNCHERS = {"submitit_local"}


def grids(name: str) -> list[str] | None:
    """The grid files a sweep name stands for (``paper``, one grid, or a comma list of grids,
    each once, in the given order); ``None`` when a name is unknown."""
    known = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
    out: list[str] = []
    for part in name.split(","):
        part = part.strip()
        if part == "paper":
            out += PAPER
        elif part in known:
            out.append(part)
        else:
            return None
    return list(dict.fromkeys(out)) or None


def launchers() -> list[str]:
    """Launcher names: the files of conf/hydra/launcher/ and the plugin's submitit_local."""
    return sorted({q.stem for q in (CONF / "hydra" / "launcher").glob("*.yaml")} | PLUGIN_LAUNCHERS)


def results_dir(overrides: list[str]) -> str:
    """``paths.results`` as the runs will see it (override, else $LORA_RESULTS, else results).

    The text as given (``""`` stays empty, where ``Path("")`` would read as the current folder).
    """
    for o in overrides:
        if o.startswith("paths.results="):
            return o.split("=", 1)[1]
    default = OmegaConf.load(CONF / "paths" / "default.yaml")
    return str(OmegaConf.to_container(default, resolve=True)["results"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sweep",
        default="paper",
        help="paper, a grid of conf/sweep/ (table5, table6, subspace, seeds, full, full_qv), "
        "or a comma list of them",
    )
    p.add_argument("--launcher", default="local", help="local | parallel | submitit_local | slurm")
    p.add_argument("--no-collect", action="store_true", help="skip writing the index and tables")
    p.add_argument(
        "--pack",
        action="store_true",
        help="train the pending LoRA runs of all the grids in packs over one base pass "
        "(lora_repro.pack), one launcher job per pack (experiments.pack_job)",
    )
    p.add_argument("--pack-size", type=int, default=8, help="at most this many runs per pack")
    p.add_argument(
        "--pack-tokens",
        type=int,
        default=None,
        help="at most this many padded tokens per step: K × train.batch_size × task.max_length",
    )
    p.add_argument(
        "--plan", action="store_true", help="list the runs, their ranks and memory; train nothing"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=minilm seed=0,1,2")
    args = p.parse_args(argv)
    if args.launcher not in launchers():
        return _bad(f"unknown launcher {args.launcher!r}; choose one of {launchers()}")
    names = grids(args.sweep)
    if names is None:
        known = ["paper", *sorted(q.stem for q in (CONF / "sweep").glob("*.yaml"))]
        return _bad(f"unknown sweep {args.sweep!r}; choose one of {known}, or a comma list of them")
    given = results_dir(args.overrides)
    if args.plan:
        from lora_repro.errors import LoraReproError

        try:
            print(render_plan(plan(names, args.overrides)))
        except LoraReproError as e:
            return _bad(str(e))
        return 0
    problem = runs.results_write_problem(given)
    if problem:
        return _bad(problem)
    results = Path(given)
    results.mkdir(parents=True, exist_ok=True)
    failure_log = (
        results / ".hydra" / f"failures-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
    )
    failure_log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, FAILURE_LOG_ENV: str(failure_log.resolve())}
    failed_grids = []
    if args.pack:
        packed = _packed_command(names, args, results, failure_log)
        if packed is None:
            return 2
        commands = [("packed", packed)] if packed else []
    else:
        commands = [
            (name, ["-m", "experiments.train", "-m", f"+sweep={name}",
                    f"hydra/launcher={args.launcher}", *args.overrides])
            for name in names
        ]  # fmt: skip
    for name, argv in commands:
        cmd = [sys.executable, *argv]
        print(f"== sweep {name}: {' '.join(cmd[1:])}", flush=True)
        rc = _call(cmd, env)
        if rc in (-2, 130) or rc > 128:  # Ctrl-C or a stop signal: finished runs are kept
            print(
                "interrupted; finished runs are kept: rerun the same command to resume",
                file=sys.stderr,
            )
            return 130 if rc in (-2, 130) else rc
        if rc != 0:
            failed_grids.append(name)

    if not args.no_collect:
        from analysis.index import main as collect_main

        collect_main(["--results", str(results)])

    from analysis.index import unfinished_runs

    failures = runs.read_jsonl(failure_log) if failure_log.exists() else []
    for f in failures:
        print(f"failed: {' '.join(f['overrides'])}: {f['error']}", file=sys.stderr)
    bad = unfinished_runs(results)
    if failed_grids or bad or failures:
        parts = [f"{len(failures)} run(s) failed"] if failures else []
        if bad:
            parts.append(f"{len(bad)} run director(ies) did not finish")
        if failed_grids:
            parts.append(f"grid(s) {failed_grids} exited with an error (see above)")
        print(
            f"error: {'; '.join(parts)}; fix what is reported above and rerun "
            "(finished runs are skipped)",
            file=sys.stderr,
        )
        return 1
    return 0


def _packed_command(
    names: list[str], args: argparse.Namespace, results: Path, failure_log: Path
) -> list[str] | None:
    """Plan the packed jobs (experiments.packs), write their manifest under ``results``/.hydra and
    return the ``experiments.pack_job`` multirun that trains them with the sweep's launcher: ``[]``
    when nothing is left to train, ``None`` after bad input (reported in one line). Runs not
    trained for a conflict go to ``failure_log``."""
    from experiments.pack_job import describe, write_manifest
    from experiments.packs import jobs
    from lora_repro.errors import LoraReproError

    if args.pack_size < 1 or (args.pack_tokens is not None and args.pack_tokens < 1):
        _bad("--pack-size and --pack-tokens must be >= 1")
        return None
    from hydra.errors import HydraException

    run_overrides = [o for o in args.overrides if not o.startswith(("hydra.", "hydra/"))]
    try:
        todo, conflicts = jobs(names, run_overrides, args.pack_size, args.pack_tokens)
    except (LoraReproError, HydraException) as e:  # bad --pack-tokens, override or config
        _bad(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return None
    for cfg, error in conflicts:  # reported with the failed runs at the end (exit 1)
        runs.append_jsonl(failure_log, {"overrides": [describe(cfg)], "error": error})
    n_packs = sum(c.adapter.method != "full" for job in todo for c in job[:1])
    n_runs = sum(len(job) for job in todo)
    print(
        f"== sweep {','.join(names)} packed: {n_runs} run(s) to train (finished runs and runs "
        f"two grids share left out) in {n_packs} pack(s) of at most {args.pack_size}, and "
        f"{len(todo) - n_packs} full fine-tuning run(s) alone; launcher {args.launcher}"
        + (f"; {len(conflicts)} run(s) in conflict, not trained" if conflicts else ""),
        flush=True,
    )
    for n, job in enumerate(todo):
        print(f"   job {n}: {'; '.join(describe(c) for c in job)}", flush=True)
    if not todo:
        return []
    folder = results / ".hydra" / "packed" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{os.getpid()}"
    manifest = write_manifest(folder / "manifest.yaml", todo)
    launcher_overrides = [o for o in args.overrides if o.startswith(("hydra.", "hydra/"))]
    return [
        "-m", "experiments.pack_job", "-m", f"manifest={manifest}",
        f"job={','.join(str(i) for i in range(len(todo)))}",
        f"hydra/launcher={args.launcher}", f"hydra.sweep.dir={folder}", *launcher_overrides,
    ]  # fmt: skip


def plan(names: list[str], overrides: list[str]) -> list[dict]:
    """One row per distinct run of the grids ``names``: run folder, rank, trainable parameters,
    planned memory (MiB, :func:`lora_repro.plan.estimate`) and whether it is finished.

    Raises:
        LoraReproError: a bad config, or a model without architecture numbers.
    """
    from hydra import compose, initialize_config_dir

    import experiments.train  # noqa: F401  (registers the structured-config schema)
    from experiments.packs import combinations
    from lora_repro import lifecycle
    from lora_repro import plan as planner
    from lora_repro.config import recorded, resolve_method, validate
    from lora_repro.precision import base_dtype, dtype_name
    from lora_repro.precision import resolve as resolve_precision
    from lora_repro.train import _canonicalize, device_for

    rows, seen, archs = [], set(), {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in names:
            for job in combinations(name, overrides):
                cfg = compose(config_name="train", overrides=[f"+sweep={name}", *job])
                validate(cfg)
                _canonicalize(cfg)
                resolve_method(cfg)
                device, prec = _planned_device(cfg, device_for, resolve_precision)
                dtype = base_dtype(cfg.model.dtype, prec, device, cfg.adapter.method)
                labels = len(cfg.task.label_names) or 2
                key = (cfg.model.name, cfg.model.kind, labels)
                if key not in archs:
                    archs[key] = planner.arch_for(cfg.model, labels)
                arch, head = archs[key]
                a = cfg.adapter
                est = planner.estimate(
                    arch, list(a.targets), a.r, a.budget, cfg.train.batch_size,
                    cfg.task.max_length, dtype_name(dtype), prec.name, a.method,
                    list(a.layers) if a.layers is not None else None, head,
                    bool(cfg.train.gradient_checkpointing), cfg.model.attn_implementation,
                )  # fmt: skip
                resolved = OmegaConf.to_container(cfg, resolve=True)
                resolved["adapter"]["r"] = est.r
                recorded(resolved)
                run_dir = lifecycle.run_dir_for(resolved, est.r)
                if run_dir in seen:
                    continue  # two grids share the run: it is trained once
                seen.add(run_dir)
                done = runs.run_status(run_dir) == "success" and not lifecycle.diff(
                    lifecycle.identity(runs.read_config(run_dir)), lifecycle.identity(resolved)
                )
                rows.append({"grid": name, "run": str(run_dir), "finished": done,
                             "precision": prec.name, "base_dtype": dtype_name(dtype),
                             **est.record()})  # fmt: skip
    return rows


def _planned_device(cfg, device_for, resolve_precision):
    """The device and precision a run would get; ``train.device=cuda`` is planned as a CUDA
    device with native bf16 even where this machine has none (a login node)."""
    import torch

    from lora_repro.precision import Precision

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        name = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
        return torch.device("cuda"), Precision(name, cfg.train.precision, "planned for CUDA")
    device = device_for(cfg)
    return device, resolve_precision(cfg.train.precision, device)


def render_plan(rows: list[dict]) -> str:
    """The printed plan: one line per run, then the totals."""
    head = f"{'grid':<9} {'run':<58} {'r':>4} {'trainable':>11} {'base':>8} {'adapt+opt':>9} "
    head += f"{'activ.':>8} {'peak MiB':>9}  status"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['grid']:<9} {r['run']:<58} {r['r'] if r['r'] is not None else '-':>4} "
            f"{r['trainable_params']:>11,} {r['base_mb']:>8.0f} "
            f"{r['adapters_mb'] + r['optimizer_mb']:>9.1f} {r['activations_mb']:>8.0f} "
            f"{r['total_mb']:>9.0f}  {'finished (skipped)' if r['finished'] else 'to train'}"
        )
    todo = [r for r in rows if not r["finished"]]
    peak = max((r["total_mb"] for r in todo), default=0.0)
    lines.append(
        f"total: {len(rows)} runs, {len(rows) - len(todo)} finished (skipped), {len(todo)} to "
        f"train; largest planned peak of those {peak:,.0f} MiB (one run at a time per device; "
        "a process's first run on a CPU also holds its cached copy of the base)"
    )
    return "\n".join(lines)


def _bad(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


class _Stopped(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _call(cmd: list[str], env: dict[str, str]) -> int:
    """Run one grid; pass Ctrl-C, SIGTERM and SIGUSR2 on to it, so its run is marked failed.

    Returns the grid's exit status; 130 after Ctrl-C, 128 + N after signal N.
    """
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):
        raise _Stopped(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        return proc.wait()
    except _Stopped as e:
        proc.send_signal(e.signum)  # the training process records "interrupted by signal N"
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 128 + e.signum
    except KeyboardInterrupt:
        try:
            try:
                return proc.wait(timeout=2)  # a terminal's Ctrl-C reached the grid too
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        return 130
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev)


if __name__ == "__main__":
    sys.exit(main())
