"""Full fine-tuning as the reference for LoRA's ΔW: rank, shared directions, intruder dimensions.

Section 7 studies LoRA's own ΔW = s·B·A only. These functions put it beside the dense ΔW that
full fine-tuning of the same matrices learns (``adapter.method=full``, ``delta.safetensors``),
with the measures the literature after the paper uses:

* how far ΔW is from low rank: its singular values, the rank that explains 90% of ‖ΔW‖F²
  (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"), the stable rank ‖ΔW‖F² / σ1², and
  the entropy effective rank exp(H(σ / Σσ)) (Roy & Vetterli 2007);
* whether LoRA finds the directions full fine-tuning moves most: φ (paper Eq. 4) between the top-i
  left singular vectors of LoRA's ΔW and the top-j of full fine-tuning's;
* intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence"; the same definition as ``peft.tuners.lora.intruders``): among the top-k left
  singular vectors of the fine-tuned W0 + ΔW, those whose largest |cosine| with every left
  singular vector of W0 is below ε (k = 10, ε = 0.5);
* Table 7's projection ‖UᵀWV‖F on full fine-tuning's top-r directions.

Every measure takes numpy arrays, computes in float64 and returns plain numbers or arrays.
Matrices are oriented (d, k) = (out, in), like W0 and LoRA's ΔW. :func:`find` and :func:`measure`
apply them to the run directories of a results folder (Wq and Wv of every layer, every seed),
for the figures (``analysis.figures.fullft``) and the claims report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analysis.amplification import check_orientation, table7_stats
from analysis.subspace import _matrix, factored_svd, phi_grid
from lora_repro import runs

TYPES = ("q", "v")  # the weight types compared (Section 7's Wq and Wv)
SPECTRA_RANKS = (1, 8, 64)  # LoRA ranks drawn against full fine-tuning
PHI_RANKS = (8, 64)  # LoRA ranks whose φ grid against full fine-tuning is kept
PHI_TOP = 64  # full fine-tuning directions in that grid
SHARED_TOP = 8  # LoRA's top direction is compared with full fine-tuning's top-8
PROJ_RANKS = (4, 64)  # Table 7's ranks
ENERGY_SHARE = 0.9
"""Share of ‖ΔW‖F² that :func:`energy_rank` explains (Biderman et al. 2024: 90%)."""
INTRUDER_TOP_K = 10
"""Top singular vectors of W0 + ΔW screened for intruders (Shuttleworth et al.; peft's top_k)."""
INTRUDER_EPSILON = 0.5
"""An intruder's largest |cosine| with W0's singular vectors is below this (peft's threshold)."""


def singular_values(dW: np.ndarray) -> np.ndarray:
    """Singular values of ΔW (d, k), decreasing, float64, length min(d, k).

    Raises:
        ValueError: not a finite 2-D matrix.
    """
    return np.linalg.svd(_matrix(dW, "ΔW"), compute_uv=False)


def _spectrum(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"expected a non-empty vector of singular values >= 0, got {s.shape}")
    return s


def energy_rank(s: np.ndarray, share: float = ENERGY_SHARE) -> int:
    """Smallest k with σ1² + … + σk² ≥ share · Σσ² (0 for ΔW = 0).

    Args:
        s: singular values, decreasing (:func:`singular_values`).
        share: in (0, 1].

    Raises:
        ValueError: ``share`` outside (0, 1] or ``s`` not a vector of non-negative numbers.
    """
    s = _spectrum(s)
    if not 0 < share <= 1:
        raise ValueError(f"share={share} is invalid: expected a fraction in (0, 1]")
    e = s**2
    total = e.sum()
    if total == 0:
        return 0
    # a relative tolerance, so that share=1 of a rank-r matrix is r despite round-off
    return int(np.searchsorted(np.cumsum(e), share * total * (1 - 1e-12)) + 1)


def stable_rank(s: np.ndarray) -> float:
    """‖ΔW‖F² / σ1² ∈ [1, rank] (NaN for ΔW = 0)."""
    s = _spectrum(s)
    return float(np.sum(s**2) / s[0] ** 2) if s[0] > 0 else float("nan")


def entropy_rank(s: np.ndarray) -> float:
    """Entropy effective rank exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σσ (Roy & Vetterli 2007), in
    [1, rank] (NaN for ΔW = 0)."""
    s = _spectrum(s)
    total = s.sum()
    if total == 0:
        return float("nan")
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def rank_measures(s: np.ndarray, share: float = ENERGY_SHARE) -> dict[str, float]:
    """``n`` (min(d, k)), ``energy_rank``, ``stable_rank``, ``entropy_rank``, ``sigma1`` and
    ``frobenius`` of one spectrum."""
    s = _spectrum(s)
    return {
        "n": float(s.size),
        "energy_rank": float(energy_rank(s, share)),
        "stable_rank": stable_rank(s),
        "entropy_rank": entropy_rank(s),
        "sigma1": float(s[0]),
        "frobenius": float(np.sqrt(np.sum(s**2))),
    }


def left_vectors(M: np.ndarray, top: int | None = None) -> np.ndarray:
    """Left singular vectors of M (d, k) as columns, by decreasing σ: (d, top or min(d, k))."""
    u, _, _ = np.linalg.svd(_matrix(M, "M"), full_matrices=False)
    return u if top is None else u[:, :top]


def lora_vs_full_phi(U_lora: np.ndarray, U_full: np.ndarray) -> np.ndarray:
    """φ(i, j) between LoRA's top-i and full fine-tuning's top-j directions (paper Eq. 4).

    Args:
        U_lora: (n, i_max) orthonormal directions of LoRA's ΔW (e.g. its left singular vectors).
        U_full: (n, j_max) the same view of full fine-tuning's ΔW.

    Returns:
        (i_max, j_max) grid; the random level is max(i, j) / n
        (:func:`analysis.subspace.random_phi_expected`).
    """
    return phi_grid(U_lora, U_full)


def intruders(
    W0: np.ndarray,
    dW: np.ndarray,
    top_k: int = INTRUDER_TOP_K,
    epsilon: float = INTRUDER_EPSILON,
    U0: np.ndarray | None = None,
) -> dict[str, object]:
    """Intruder dimensions of the fine-tuned W0 + ΔW (Shuttleworth et al. 2024).

    For each of the top-k left singular vectors u of W0 + ΔW, c(u) = maxⱼ |uᵀ u0ⱼ| over all
    left singular vectors u0ⱼ of W0; u is an intruder when c(u) < ε. The same computation as
    ``peft.tuners.lora.intruders.reduce_intruder_dimension``.

    Args:
        W0: (d, k) pretrained weight.
        dW: (d, k) update (LoRA's s·B·A or full fine-tuning's W_ft − W0).
        top_k: how many leading directions to screen.
        epsilon: the cosine threshold.
        U0: W0's left singular vectors (d, min(d, k)) when already computed (cache per W0).

    Returns:
        ``count`` (int), ``max_cos`` (top_k,) float64 array, ``indices`` of the intruders.

    Raises:
        ValueError: W0 and ΔW of different shapes, or a bad ``top_k`` / ``epsilon``.
    """
    w0 = _matrix(W0, "W0")
    dw = check_orientation(dW, *w0.shape)
    if top_k < 1 or not 0 < epsilon <= 1:
        raise ValueError(f"top_k={top_k}, epsilon={epsilon}: expected top_k >= 1, 0 < ε <= 1")
    u0 = left_vectors(w0) if U0 is None else np.asarray(U0, dtype=np.float64)
    u1 = left_vectors(w0 + dw, top_k)
    max_cos = np.abs(u1.T @ u0).max(axis=1)
    idx = np.flatnonzero(max_cos < epsilon)
    return {"count": int(idx.size), "max_cos": max_cos, "indices": idx.tolist()}


def random_like(dW: np.ndarray, seed: int = 0, s: np.ndarray | None = None) -> np.ndarray:
    """An update with ΔW's singular values on Haar-random singular vectors: the random level
    of :func:`intruders` (same size and spectrum, no learned direction).

    Args:
        dW: (d, k) update.
        seed: seed of the random singular vectors.
        s: ΔW's singular values when already computed.

    Returns:
        (d, k) float64.
    """
    dw = _matrix(dW, "ΔW")
    d, k = dw.shape
    s = singular_values(dw) if s is None else np.asarray(s, np.float64)
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d, s.size)))
    v, _ = np.linalg.qr(rng.standard_normal((k, s.size)))
    return (u * s) @ v.T


def gaussian_energy_rank(d: int, k: int, share: float = ENERGY_SHARE, seed: int = 0) -> int:
    """:func:`energy_rank` of a (d, k) standard Gaussian matrix: the level of an update with no
    structure at all (a seeded draw; it varies by at most a few units between seeds)."""
    rng = np.random.default_rng(seed)
    return energy_rank(singular_values(rng.standard_normal((d, k))), share)


def full_table7(W: np.ndarray, dW: np.ndarray, r: int, **kwargs) -> dict[str, float]:
    """Table 7's quantities (:func:`analysis.amplification.table7_stats`) for full fine-tuning's
    ΔW truncated to its top-r directions, plus ``energy_share`` = ‖ΔW_r‖F² / ‖ΔW‖F² and
    ``norm_dW_total`` = ‖ΔW‖F.

    Args:
        W: (d, k) pretrained weight.
        dW: (d, k) full fine-tuning update.
        r: how many leading directions of ΔW to project W on.
        kwargs: passed to ``table7_stats`` (``n_random``, ``seed``).

    Raises:
        ValueError: shapes that differ, or r outside 1 … min(d, k).
    """
    w = _matrix(W, "W")
    dw = check_orientation(dW, *w.shape)
    if not 1 <= r <= min(dw.shape):
        raise ValueError(f"r={r} is invalid: expected 1 … {min(dw.shape)}")
    u, s, vt = np.linalg.svd(dw, full_matrices=False)
    out = table7_stats(w, u[:, :r] * s[:r], vt[:r], 1.0, **kwargs)
    out["energy_share"] = float(np.sum(s[:r] ** 2) / np.sum(s**2)) if s[0] > 0 else float("nan")
    out["norm_dW_total"] = float(np.sqrt(np.sum(s**2)))
    return out


# ---------------------------------------------------------------------------------------------
# From run directories
# ---------------------------------------------------------------------------------------------
@dataclass
class Runs:
    """The runs of one (task, model) that the comparison reads.

    Attributes:
        full: ``seed -> run directory`` of full fine-tuning of Wq,Wv (or of a superset of them).
        lora: ``(r, seed) -> run directory`` of LoRA on Wq,Wv.
    """

    full: dict[int, Path] = field(default_factory=dict)
    lora: dict[tuple[int, int], Path] = field(default_factory=dict)

    def add(self, method: str, targets: list[str], seed: int, r: Any, path: Path) -> None:
        """Keep run ``path`` if the comparison reads it: full fine-tuning of a superset of Wq,Wv
        ({q,v} preferred for a seed), or LoRA on exactly Wq,Wv (the first by path for a rank)."""
        if method == "full" and set(TYPES) <= set(targets):
            if seed not in self.full or list(targets) == list(TYPES):
                self.full[seed] = path
        elif method == "lora" and list(targets) == list(TYPES):
            self.lora.setdefault((int(r), seed), path)


def _default_settings(cfg: dict[str, Any]) -> bool:
    a = cfg.get("adapter") or {}
    return a.get("layers") is None and not a.get("target_modules") and cfg.get("group") == "runs"


def find(results: str | Path, damaged: list | None = None) -> dict[tuple[str, str], Runs]:
    """Full fine-tuning and LoRA runs of Wq,Wv per (task, model), default settings only
    (group ``runs``, every layer). Full fine-tuning of {q,v} is preferred over {q,k,v,o} for a
    seed; both adapt every layer's Wq and Wv."""
    out: dict[tuple[str, str], Runs] = {}
    for run_dir, cfg in sorted(runs.iter_finished(results, damaged)):
        if not _default_settings(cfg):
            continue
        a = cfg["adapter"]
        targets = [t for t in runs.WEIGHT_TYPES if t in a.get("targets", [])]
        key = (cfg["task"]["name"], cfg["model"]["name"])
        out.setdefault(key, Runs()).add(
            a.get("method", "lora"), targets, int(cfg["seed"]), a.get("r"), run_dir
        )
    return {k: v for k, v in out.items() if v.full}


def runs_from_index(results: str | Path, index: pd.DataFrame) -> Runs:
    """:class:`Runs` from the rows of an index (``analysis.index.build_index``) of one (task,
    model, group), with the same choice as :func:`find`: every layer, full fine-tuning of {q,v}
    preferred over a superset for a seed."""
    out = Runs()
    sel = index[index["layers"].isna()] if "layers" in index else index
    for _, row in sel.sort_values("path").iterrows():
        out.add(row["method"], row["targets"].split(","), int(row["seed"]), row["r"],
                Path(results) / row["path"])  # fmt: skip
    return out


@dataclass
class Measured:
    """Per-matrix measurements of one (task, model).

    Attributes:
        rows: one dict per (method, r, seed, type, layer): the rank measures, ``intruders``,
            ``intruders_random``, ``proj_ratio_<r>`` (‖UᵀWV‖F on ΔW's top-r over the random level
            r·‖W‖F/√(dk)), and for LoRA ``phi_top1_full`` (φ(1, 8) against the same seed's full
            fine-tuning).
        spectra: ``(method label, seed, type, layer) -> singular values``.
        phi: ``(r, seed, type, layer) -> (r, PHI_TOP) grid`` of LoRA vs full fine-tuning.
        n_layers: blocks of the model.
        d: rows of Wq (the dimension of the left singular vectors).
        problems: runs or matrices that could not be read, one line each.
    """

    rows: list[dict[str, Any]]
    spectra: dict[tuple[str, int, str, int], np.ndarray]
    phi: dict[tuple[int, int, str, int], np.ndarray]
    n_layers: int
    d: int
    problems: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """:attr:`rows` as a DataFrame."""
        return pd.DataFrame(self.rows)


def _proj_ratio(W: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """‖UᵀWV‖F over the random level r·‖W‖F/√(dk) = √E‖UᵀWV‖F² for Haar-random U, V."""
    d, k = W.shape
    r = U.shape[1]
    return float(np.linalg.norm(U.T @ W @ V) / (r * np.linalg.norm(W) / np.sqrt(d * k)))


def _measure_matrix(W0, U0, dW_u, dW_s, dW_vt, seed: int) -> dict[str, float]:
    dense = (dW_u * dW_s) @ dW_vt
    row = rank_measures(dW_s)
    row["intruders"] = intruders(W0, dense, U0=U0)["count"]
    row["intruders_random"] = intruders(W0, random_like(dense, seed, dW_s), U0=U0)["count"]
    for r in PROJ_RANKS:
        if np.count_nonzero(dW_s > dW_s[0] * 1e-9) >= r:
            row[f"proj_ratio_{r}"] = _proj_ratio(W0, dW_u[:, :r], dW_vt[:r].T)
    return row


def measure(results: str | Path, model: str, found: Runs) -> Measured:
    """Measure every Wq and Wv of the runs ``found`` (see :class:`Measured`).

    Raises:
        FileNotFoundError: no saved pretrained weights for ``model`` (with a hint).
    """
    # Hundreds of SVDs of d×d matrices: one BLAS thread each. On a loaded 2-core machine a 384²
    # SVD took 0.33 s with two OpenBLAS threads and 0.05 s with one (their hand-off dominates).
    with threadpool_limits(1, user_api="blas"):
        return _measure(results, model, found)


def _measure(results: str | Path, model: str, found: Runs) -> Measured:
    W, infos = runs.load_base_weights(runs.base_weights_path(results, model))
    base = {(i.type, i.layer): np.asarray(W[k], np.float64) for k, i in infos.items()}
    n_layers = 1 + max(i.layer for i in infos.values())
    u0 = {key: left_vectors(w) for key, w in base.items() if key[0] in TYPES}
    rows, spectra, phi, problems = [], {}, {}, []
    full_u: dict[tuple[int, str, int], np.ndarray] = {}
    for seed, path in sorted(found.full.items()):
        try:
            delta = runs.load_delta(path)
        except (OSError, ValueError) as e:
            problems.append(f"skipped {path}: {e}")
            continue
        for t in TYPES:
            for layer in range(n_layers):
                dw = np.asarray(delta.dW[delta.key_for(t, layer)], np.float64)
                u, s, vt = np.linalg.svd(dw, full_matrices=False)
                full_u[(seed, t, layer)] = u[:, :PHI_TOP]
                spectra[("full", seed, t, layer)] = s
                row = _measure_matrix(base[(t, layer)], u0[(t, layer)], u, s, vt, seed)
                rows.append({"method": "full", "r": None, "seed": seed, "type": t,
                             "layer": layer, **row})  # fmt: skip
    for (r, seed), path in sorted(found.lora.items()):
        try:
            adapter = runs.load_adapter(path)
        except (OSError, ValueError) as e:
            problems.append(f"skipped {path}: {e}")
            continue
        for t in TYPES:
            for layer in range(n_layers):
                key = adapter.key_for(t, layer)
                svd = factored_svd(adapter.B[key], adapter.A[key], adapter.scaling)
                spectra[(f"LoRA r={r}", seed, t, layer)] = svd.S
                row = _measure_matrix(base[(t, layer)], u0[(t, layer)], svd.U, svd.S, svd.V.T, seed)
                fu = full_u.get((seed, t, layer))
                if fu is not None:
                    grid = lora_vs_full_phi(svd.U, fu)
                    row["phi_top1_full"] = float(grid[0, SHARED_TOP - 1])
                    if r in PHI_RANKS:
                        phi[(r, seed, t, layer)] = grid
                rows.append({"method": "lora", "r": r, "seed": seed, "type": t,
                             "layer": layer, **row})  # fmt: skip
    d = base[("q", 0)].shape[0]
    return Measured(rows, spectra, phi, n_layers, d, problems)
