"""Train one LoRA run (or a Hydra multirun of them): ``python -m experiments.train [overrides]``.

Examples::

    python -m experiments.train                                  # MiniLM on Rotten Tomatoes, Wq,Wv r=8
    python -m experiments.train adapter.targets=[q,k,v,o] adapter.budget=auto
    python -m experiments.train -m +sweep=table6 hydra/launcher=slurm

All logic lives in :func:`lora_repro.train.fit`; this file only composes the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.sweep import FAILURE_LOG_ENV, results_dir
from lora_repro import runs
from lora_repro.config import RunConfig
from lora_repro.errors import LoraReproError

ConfigStore.instance().store(name="run_schema", node=RunConfig)
log = logging.getLogger("lora_repro")


@contextlib.contextmanager
def exit_when_stopped(marked: str) -> Iterator[None]:
    """Ctrl-C or a stop signal inside: log it in one line (``marked``: what the training code
    marked failed, and how to redo it) and exit 130, or 128 + N after signal N."""
    from lora_repro.lifecycle import Interrupted, exit_code

    try:
        yield
    except KeyboardInterrupt:
        log.error("interrupted: %s", marked)
        sys.exit(130)
    except Interrupted as e:
        log.error("%s: %s", e, marked)
        sys.exit(exit_code(e.signum))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lora_repro.train import fit

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with exit_when_stopped("the run is marked failed; rerun the same command to redo it"):
            summary = fit(cfg)
    except LoraReproError as e:  # bad input: one line; the status file says failed
        if multirun:  # keep the sweep going; experiments.sweep reports failed runs at the end
            log.error("run failed: %s: %s", type(e).__name__, e)
            if os.environ.get(FAILURE_LOG_ENV):
                runs.append_jsonl(
                    os.environ[FAILURE_LOG_ENV],
                    {
                        "overrides": list(HydraConfig.get().overrides.task),
                        "error": f"{type(e).__name__}: {e}",
                    },
                )
            return None
        sys.exit(f"error: {e}")
    return summary.get("val_metric")  # the sweep objective: accuracy, exact match, ROUGE or BLEU


def check_results_dir(argv: list[str]) -> None:
    """Exit with one line when the results folder of ``argv``'s overrides cannot hold results.

    Hydra creates its log folder below ``paths.results`` before the run starts, so a results path
    that is a file or not writable is caught here, not inside the run.
    """
    results = results_dir([a for a in argv if not a.startswith("-")])
    problem = None if "," in results else runs.results_write_problem(results)
    if problem:
        sys.exit(f"error: {problem}")


if __name__ == "__main__":
    check_results_dir(sys.argv[1:])
    main()
