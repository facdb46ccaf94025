"""One import for code that both chooses runs and reads their factors (e.g. a notebook).

Run selection lives in :mod:`analysis.selection` (RunSpec, RunRecord, index_runs, select_run,
ranks_available, pick_rank_pair, MissingRuns, SWEEPS, ...), factor extraction in
:mod:`analysis.factors` (AdapterCache, LayerFactors, layer_factors, phi_between, adapter_phi,
adapter_table7, BaseWeights, n_layers_of, check_layer, ...); this module re-exports both.
"""

from analysis.factors import (
    AdapterCache,
    BaseWeights,
    LayerFactors,
    adapter_phi,
    adapter_table7,
    check_layer,
    default_layer,
    layer_factors,
    n_layers_of,
    phi_between,
    spread_layers,
)
from analysis.selection import (
    PAPER_RANK_PAIR,
    SWEEPS,
    WEIGHT_TYPES,
    MissingRuns,
    RankPair,
    RunRecord,
    RunSpec,
    config_get,
    has_adapter,
    index_runs,
    known_targets,
    pick_rank_pair,
    ranks_available,
    record_from_config,
    select_run,
    task_models,
)

__all__ = [
    "PAPER_RANK_PAIR",
    "SWEEPS",
    "WEIGHT_TYPES",
    "AdapterCache",
    "BaseWeights",
    "LayerFactors",
    "MissingRuns",
    "RankPair",
    "RunRecord",
    "RunSpec",
    "adapter_phi",
    "adapter_table7",
    "check_layer",
    "config_get",
    "default_layer",
    "has_adapter",
    "index_runs",
    "known_targets",
    "layer_factors",
    "n_layers_of",
    "phi_between",
    "pick_rank_pair",
    "ranks_available",
    "record_from_config",
    "select_run",
    "spread_layers",
    "task_models",
]
