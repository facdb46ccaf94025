"""W's own top-r singular triplets (paper §7.3, Table 7's "Wq" row; App. H.3, Figure 8).

Table 7 compares ΔW's projection ‖UᵀWV‖F with W's own top-r one, √(σ1² + … + σr²), and Figure 8
compares W's top singular directions with ΔW's. At GPT-3's shape (12288 × 12288) a dense SVD of W
takes many minutes per matrix; only the top r are needed, so large matrices go through a
randomized SVD (Halko, Martinsson & Tropp 2011, Algorithm 4.4: randomized subspace iteration):

    Ω (k, l) Gaussian, l = r + p;   Q = qr(W·Ω)
    repeat q times:  Q = qr(W · qr(Wᵀ·Q))
    B = Qᵀ·W (l, k);  B = Ub·S·Vᵀ  ⇒  W ≈ (Q·Ub)·S·Vᵀ, keep the first r.

Defaults: oversampling p = max(10, r) and q = 6 power iterations, 2q + 2 = 14 passes over W with
l columns each. Agreement with the dense SVD (``tests/test_analysis_rsvd.py``): on matrices with a
decaying spectrum (σ_i = 0.9^i) the top-r σ agree to 1e-8 relative; on MiniLM's Wq (384 × 384,
a flat spectrum: σ1 / σ64 ≈ 2, σ1 − σ2 ≈ 4% of σ1, the hardest case for the method) every one of
the top-r σ agrees to 1e-2 relative and √(Σ σ_i²) to 5e-3. Matrices with min(d, k) ≤
:data:`DENSE_MAX` take the dense path (``numpy.linalg.svd``), exactly as before.

The passes run in W's dtype (float32 for fp32 / fp16 / bf16 checkpoints), the small l × k SVD in
float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DENSE_MAX = 2048
"""min(d, k) up to which :func:`top_singular` uses the dense SVD."""

N_ITER = 6
"""Power (subspace) iterations q of the randomized SVD."""


def oversampling(r: int) -> int:
    """Oversampling p of the randomized SVD for rank r: max(10, r)."""
    return max(10, int(r))


@dataclass(frozen=True)
class TopSVD:
    """Top-m singular triplets of W (d, k): W ≈ U·diag(S)·Vᵀ on those directions.

    Attributes:
        U: (d, m) left-singular vectors (columns), by decreasing σ.
        S: (m,) singular values, decreasing.
        V: (k, m) right-singular vectors (columns).
        method: ``"dense"`` or ``"randomized"``.
    """

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    method: str

    @property
    def m(self) -> int:
        """How many triplets are held."""
        return int(self.S.shape[0])

    def head(self, r: int) -> TopSVD:
        """The first r triplets.

        Raises:
            ValueError: when fewer than r are held.
        """
        if r > self.m:
            raise ValueError(f"{self.m} singular triplets held, {r} asked; recompute at r={r}")
        return TopSVD(self.U[:, :r], self.S[:r], self.V[:, :r], self.method)


def _check(W: np.ndarray, r: int) -> np.ndarray:
    w = np.asarray(W)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"W must be a non-empty 2-D matrix, got shape {w.shape}")
    if not 1 <= r <= min(w.shape):
        raise ValueError(f"r={r} must be in 1..min(d, k) = {min(w.shape)} for W {w.shape}")
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float64)
    return w


def randomized_svd(
    W: np.ndarray,
    r: int,
    *,
    oversample: int | None = None,
    n_iter: int = N_ITER,
    seed: int = 0,
) -> TopSVD:
    """Top-r singular triplets of W by randomized subspace iteration (see the module docstring).

    Args:
        W: (d, k) matrix, float32 or float64 (others are converted to float64).
        r: how many triplets, 1 ≤ r ≤ min(d, k).
        oversample: p, extra sampled directions [max(10, r)]; l = min(r + p, min(d, k)).
        n_iter: power iterations q [6].
        seed: seed of the Gaussian test matrix Ω.

    Returns:
        :class:`TopSVD` with U (d, r), S (r,) float64, V (k, r) float64.

    Raises:
        ValueError: for a non-matrix W or r out of range.
    """
    w = _check(W, r)
    d, k = w.shape
    p = oversampling(r) if oversample is None else int(oversample)
    n_cols = min(r + p, d, k)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((k, n_cols)).astype(w.dtype)
    q, _ = np.linalg.qr(w @ omega)
    for _ in range(n_iter):
        z, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ z)
    b = (q.T @ w).astype(np.float64)  # (l, k)
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    u = q.astype(np.float64) @ ub
    return TopSVD(u[:, :r], s[:r], vt[:r].T, "randomized")


def dense_svd(W: np.ndarray, r: int | None = None) -> TopSVD:
    """Top-r (default all min(d, k)) singular triplets of W from ``numpy.linalg.svd`` in float64."""
    w = np.asarray(W, np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    m = s.shape[0] if r is None else int(r)
    return TopSVD(u[:, :m], s[:m], vt[:m].T, "dense")


def top_singular(W: np.ndarray, r: int, *, seed: int = 0) -> TopSVD:
    """Top-r singular triplets of W: dense for min(d, k) ≤ :data:`DENSE_MAX`, else randomized.

    Args:
        W: (d, k) matrix.
        r: how many triplets.
        seed: seed of the randomized SVD's test matrix.

    Raises:
        ValueError: for a non-matrix W or r out of range.
    """
    w = _check(W, r)
    if min(w.shape) <= DENSE_MAX:
        return dense_svd(w, r)
    return randomized_svd(w, r, seed=seed)


class SVDCache:
    """W's top singular triplets per (base model, weight type, layer), computed once.

    A request for more triplets than held recomputes at the larger rank, so inspecting the r = 8
    and r = 64 adapters of one base computes W's SVD once when the larger is asked first (the
    inspector asks for the largest rank it needs).
    """

    def __init__(self) -> None:
        self._svd: dict[tuple, TopSVD] = {}

    def get(self, key: tuple, W: np.ndarray, r: int) -> TopSVD:
        """W's top-r triplets for cache key ``key`` (e.g. ``(base id, "q", 48)``)."""
        have = self._svd.get(key)
        if have is None or have.m < r:
            have = top_singular(W, r)
            self._svd[key] = have
        return have.head(r)

    def __len__(self) -> int:
        return len(self._svd)
