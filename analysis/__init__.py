"""Analysis of saved LoRA factors: subspace similarity φ, factored SVD, Table 7 (paper §7).

Pure functions on arrays read from run directories through :mod:`lora_repro.runs`; this package
never imports torch, transformers or the training code.

Modules:
    subspace: φ (Eq. 4) on any view of the factors, factored SVD of ΔW = B·A, random baselines.
    amplification: ‖UᵀWV‖F, amplification factor and the rest of Table 7 (§7.3).
    selection: finding finished runs by config; which ranks and seeds an analysis uses.
    factors: one layer's factors and W from saved runs; φ and Table 7 on any adapter.
    layer_data: selection and factors under one import.
    index: the index of finished runs; Tables 5 and 6.
    claims: each Section 7 claim checked on the runs, with seeds, intervals and a verdict.
    stats: Student-t intervals, one-sided tests, TOST and power for the claims.
    tables: Table 7 as a DataFrame with the paper's values, md / csv / tex writers.
    figures: ``python -m analysis.figures`` (plots in ``figures.plots``).
    inspect: ``python -m analysis.inspect``: one layer of any adapter (run or peft folder).
    basemodel: W read from a base model's own files (safetensors, sharded, GGUF, hub).
    rsvd: W's top-r singular triplets, dense or randomized (Halko et al.).
"""

from analysis.amplification import (
    amplification_factor,
    check_orientation,
    projection_norm,
    random_orthonormal,
    table7_stats,
    w_vs_dw_phi,
)
from analysis.subspace import (
    VIEWS,
    FactoredSVD,
    factored_svd,
    left_singular_vectors,
    phi,
    phi_grid,
    random_phi_expected,
    random_phi_grid,
    right_singular_vectors,
    view_basis,
)

__all__ = [
    "VIEWS",
    "FactoredSVD",
    "amplification_factor",
    "check_orientation",
    "factored_svd",
    "left_singular_vectors",
    "phi",
    "phi_grid",
    "projection_norm",
    "random_orthonormal",
    "random_phi_expected",
    "random_phi_grid",
    "right_singular_vectors",
    "table7_stats",
    "view_basis",
    "w_vs_dw_phi",
]
