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

Every function takes numpy arrays, computes in float64 and returns plain numbers or arrays.
Matrices are oriented (d, k) = (out, in), like W0 and LoRA's ΔW.
"""

from __future__ import annotations

import numpy as np

from analysis.amplification import check_orientation, table7_stats
from analysis.subspace import _matrix, phi_grid

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
