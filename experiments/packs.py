"""``experiments.sweep --pack``: the grids' pending LoRA runs trained in packs over one base pass.

Every grid's Hydra sweeper params (``conf/sweep/<grid>.yaml``) are expanded with the command-line
overrides (an override of a swept key replaces the grid's values, as in a Hydra multirun), each
combination composed as ``python -m experiments.train +sweep=<grid> <combination>`` would compose
it. Runs already finished are left out (Table 5's r resolved from its budget first); the others
are split by :func:`lora_repro.pack.plan` into packs, each one job of ``experiments.pack_job``
(:func:`lora_repro.pack.fit_pack`). Full fine-tuning runs (``adapter.method=full``) are never
packed: each is a job of its own (:func:`lora_repro.train.fit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parent.parent / "conf"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def combinations(grid: str, overrides: list[str]) -> list[list[str]]:
    """The override lists of every run of ``grid`` under the command-line ``overrides``, as Hydra's
    basic sweeper expands them (a command-line value replaces the grid's value of the same key;
    ``seed=0,1,2`` sweeps; Hydra's own keys are left out).

    Raises:
        hydra.errors.OverrideParseException: an override Hydra cannot parse.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    spec = yaml.safe_load((CONF / "sweep" / f"{grid}.yaml").read_text(encoding="utf-8"))
    params = (spec.get("hydra") or {}).get("sweeper", {}).get("params", {}) or {}
    runs_only = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]  # launcher keys
    given = {_key(o) for o in runs_only}
    merged = [f"{k}={v}" for k, v in params.items() if k not in given] + runs_only
    parsed = OverridesParser.create().parse_overrides(merged)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return [list(c) for c in batch]


def configs(grids: list[str], overrides: list[str]) -> list[Any]:
    """The composed run configs of ``grids``, grid after grid (a run two grids share appears in
    each: :func:`lora_repro.pack.pending` keeps it once, after Table 5's r is resolved)."""
    from hydra import compose, initialize_config_dir

    import experiments.train  # noqa: F401  (registers the structured-config schema)
    from lora_repro.train import _canonicalize

    out = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for grid in grids:
            for combo in combinations(grid, overrides):
                cfg = compose(config_name="train", overrides=[f"+sweep={grid}", *combo])
                _canonicalize(cfg)
                out.append(cfg)
    return out


def jobs(
    grids: list[str], overrides: list[str], pack_size: int, max_tokens: int | None
) -> tuple[list[list[Any]], list[tuple[Any, str]]]:
    """The jobs of a packed sweep: the packs of the pending LoRA runs (:func:`lora_repro.pack.plan`),
    then each pending full fine-tuning run alone; and the runs not trained for a conflict, each
    with its one-line error (:func:`lora_repro.pack.pending`).

    Raises:
        LoraReproError: a bad --pack-size / --pack-tokens, or a grid's bad config.
    """
    from lora_repro import pack

    cfgs = configs(grids, overrides)
    todo, conflicts = pack.pending(cfgs)
    lora = [c for c in todo if c.adapter.method != "full"]
    full = [[c] for c in todo if c.adapter.method == "full"]
    return pack.plan(lora, pack_size, max_tokens) + full, conflicts
