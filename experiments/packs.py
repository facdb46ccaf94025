"""``experiments.sweep --pack``: the grids' pending LoRA runs trained in packs over one base pass.

Every grid's Hydra sweeper params (``conf/sweep/<grid>.yaml``) are expanded with the command-line
overrides (an override of a swept key replaces the grid's values, as in a Hydra multirun), each
combination composed as ``python -m experiments.train +sweep=<grid> <combination>`` would compose
it. Runs already finished are left out (Table 5's r resolved from its budget first); the others
are split by :func:`lora_repro.pack.plan` and each pack is trained by
:func:`lora_repro.pack.fit_pack`, one pack after another in this process. Full fine-tuning runs
(``adapter.method=full``) are never packed: they train one by one with :func:`lora_repro.train.fit`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("lora_repro")

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
    """The composed run configs of ``grids`` (a run two grids share appears once)."""
    from hydra import compose, initialize_config_dir

    import experiments.train  # noqa: F401  (registers the structured-config schema)
    from lora_repro import lifecycle
    from lora_repro.train import _canonicalize

    out, seen = [], set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for grid in grids:
            for combo in combinations(grid, overrides):
                cfg = compose(config_name="train", overrides=[f"+sweep={grid}", *combo])
                _canonicalize(cfg)
                a = cfg.adapter
                key = (str(cfg.paths.results), str(lifecycle.run_dir_for(cfg, a.r)), a.budget)
                if key not in seen:
                    seen.add(key)
                    out.append(cfg)
    return out


def run(
    grids: list[str], overrides: list[str], pack_size: int, max_tokens: int | None
) -> list[dict[str, str]]:
    """Train the pending runs of ``grids`` packed; returns the failures (``run``, ``error``)."""
    from lora_repro import pack
    from lora_repro.errors import LoraReproError
    from lora_repro.train import fit

    cfgs = configs(grids, overrides)
    lora = [c for c in cfgs if c.adapter.method != "full"]
    full = [c for c in cfgs if c.adapter.method == "full"]
    todo = pack.pending(lora)
    packs = pack.plan(todo, pack_size, max_tokens)
    print(
        f"== pack: {len(lora)} LoRA config(s), {len(todo)} run(s) to train (finished runs and "
        f"runs two grids share left out), in {len(packs)} pack(s) "
        f"of at most {pack_size}; {len(full)} full fine-tuning run(s) one by one",
        flush=True,
    )
    failures = []
    for n, p in enumerate(packs, 1):
        names = "; ".join(_describe(c) for c in p)
        print(f"== pack {n}/{len(packs)}: {len(p)} run(s): {names}", flush=True)
        try:
            for cfg, summary in zip(p, pack.fit_pack(p), strict=True):
                if summary is None:
                    failures.append(
                        {"run": _describe(cfg), "error": "failed (see its status.json)"}
                    )
        except LoraReproError as e:
            log.error("pack failed: %s: %s", type(e).__name__, e)
            failures += [{"run": _describe(c), "error": f"{type(e).__name__}: {e}"} for c in p]
    for cfg in full:
        try:
            fit(cfg)
        except LoraReproError as e:
            failures.append({"run": _describe(cfg), "error": f"{type(e).__name__}: {e}"})
    return failures


def _describe(cfg: Any) -> str:
    a = cfg.adapter
    r = "full" if a.method == "full" else f"r={a.r}" if a.budget is None else f"budget={a.budget}"
    return f"sweep={cfg.sweep} targets=[{','.join(a.targets)}] {r} seed={cfg.seed}"
