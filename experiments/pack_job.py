"""One job of a packed sweep: a pack of LoRA runs (or one full fine-tuning run) of a manifest.

    python -m experiments.pack_job -m manifest=<manifest.yaml> job=0,1,2 hydra/launcher=slurm

``experiments.sweep --pack`` plans the packs, writes their resolved run configs to a manifest
(:func:`write_manifest`) and launches this app as a Hydra multirun over the jobs with the sweep's
launcher: in turn in one process (``local``, the base model loaded once), in parallel processes,
or one Slurm job per pack. Job i trains ``jobs[i]`` with :func:`lora_repro.pack.fit_pack`, or a
full fine-tuning run alone with :func:`lora_repro.train.fit` (it is never packed). A failed run
is recorded in its run directory and in the sweep's failure log (``experiments.sweep`` then exits
1 and lists it); the other runs of the pack and the other jobs go on. Run by hand, a job logs
its failures in one line each, and the multirun still exits 0, as Hydra's multiruns do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.sweep import FAILURE_LOG_ENV
from lora_repro import runs
from lora_repro.errors import LoraReproError

log = logging.getLogger("lora_repro")


def write_manifest(path: Path, jobs: list[list[Any]]) -> Path:
    """Write ``jobs`` (per job, its run configs) atomically as YAML, every value resolved."""
    resolved = [[OmegaConf.to_container(c, resolve=True) for c in job] for job in jobs]
    return runs.atomic_write_yaml(path, {"jobs": resolved})


REQUIRED = ("model", "task", "adapter", "train", "paths", "seed")


def read_job(manifest: str | Path, job: Any) -> list[DictConfig]:
    """The run configs of job ``job`` of ``manifest``, each checked against the run schema.

    Raises:
        LoraReproError: the manifest is missing or damaged, or has no job ``job``.
    """
    from omegaconf.errors import OmegaConfBaseException

    import experiments.train  # noqa: F401  (registers the structured-config schema)
    from lora_repro.config import RunConfig

    def bad(why: str) -> LoraReproError:
        return LoraReproError(
            f"cannot read job {job} of the pack manifest {manifest}: {why}; "
            "rerun experiments.sweep --pack, which writes a new one"
        )

    try:
        index = int(job)
        jobs = OmegaConf.load(manifest).get("jobs")
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:
        raise bad(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    count = len(jobs) if isinstance(jobs, ListConfig) else 0
    if not 0 <= index < count:
        raise bad(f"it holds {count} job(s), numbered from 0")
    if not isinstance(jobs[index], ListConfig):
        raise bad("the job is not a list of run configs")
    out = []
    for c in jobs[index]:
        missing = [k for k in REQUIRED if not isinstance(c, DictConfig) or k not in c]
        if missing:
            raise bad(f"a run config lacks {', '.join(missing)}")
        try:
            out.append(OmegaConf.merge(OmegaConf.structured(RunConfig), c))
        except OmegaConfBaseException as e:
            raise bad(f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    return out


def describe(cfg: Any) -> str:
    """One run as the sweep prints it: grid, weight types, rank (or budget, or full), seed."""
    a = cfg.adapter
    r = "full" if a.method == "full" else f"r={a.r}" if a.budget is None else f"budget={a.budget}"
    return f"sweep={cfg.sweep} targets=[{','.join(a.targets)}] {r} seed={cfg.seed}"


def train_job(cfgs: list[DictConfig]) -> list[tuple[str, str]]:
    """Train one job; returns the failed runs as ``(describe(run), error)``.

    Raises:
        lifecycle.Interrupted, KeyboardInterrupt: a stop signal (the unfinished runs are marked
            failed by the training code).
    """
    from lora_repro.pack import fit_pack
    from lora_repro.train import fit

    log.info("job of %d run(s): %s", len(cfgs), "; ".join(describe(c) for c in cfgs))
    try:
        if len(cfgs) == 1 and cfgs[0].adapter.method == "full":
            fit(cfgs[0])
            return []
        errors: dict[int, str] = {}
        done = fit_pack(cfgs, errors)
    except LoraReproError as e:  # the pack as a whole (a bad config, runs that cannot share)
        return [(describe(c), f"{type(e).__name__}: {e}") for c in cfgs]
    return [
        (describe(c), errors.get(i, "failed (see its status.json)"))
        for i, (c, summary) in enumerate(zip(cfgs, done, strict=True))
        if summary is None
    ]


@hydra.main(version_base="1.3", config_path="../conf", config_name="pack_job")
def main(cfg: DictConfig) -> int:
    from experiments.train import exit_when_stopped

    try:
        with exit_when_stopped("unfinished runs are marked failed; rerun the sweep to redo them"):
            failed = train_job(read_job(cfg.manifest, cfg.job))
    except LoraReproError as e:  # a damaged manifest
        failed = [(f"job {cfg.job}", f"{type(e).__name__}: {e}")]
    for run, error in failed:
        log.error("run failed: %s: %s", run, error)
        if os.environ.get(FAILURE_LOG_ENV):
            runs.append_jsonl(os.environ[FAILURE_LOG_ENV], {"overrides": [run], "error": error})
    return len(failed)


if __name__ == "__main__":
    main()
