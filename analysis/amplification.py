"""How ΔW relates to the pretrained W: projections and amplification (paper §7.3, Table 7).

The paper projects W onto ΔW's top-r singular directions, ‖Uᵀ W V‖F with U (d, r) and V (k, r)
the left / right singular vectors of ΔW (the paper writes UᵀWVᵀ with V's rows as directions), and
compares it with W's own top-r directions and with random directions. The "amplification factor"
is ‖ΔW‖F / ‖Uᵀ W V‖F (21.5 for ΔWq at r = 4 in GPT-3).

The random level grows with r (≈ r·‖W‖F/√(dk) for a W with a flat spectrum), so the amplification
shrinks with r mechanically; :func:`table7_stats` therefore also reports ΔW's projection relative
to the random one and ΔW's leading singular values.

W must be oriented (d, k) = (out, in), like ΔW = B·A with B (d, r) and A (r, k). GPT-2's Conv1D
stores (in, out); lora_repro's writer transposes it before saving base weights.
"""

from __future__ import annotations

import numpy as np

from analysis.subspace import (
    FactoredSVD,
    _matrix,
    factored_svd,
    left_singular_vectors,
    phi_grid,
)

N_SIGMA = 4
"""How many leading singular values of ΔW Table 7 reports."""


def check_orientation(W: np.ndarray, d: int, k: int) -> np.ndarray:
    """W as float64 after checking it is (d, k) = (out, in), the orientation of ΔW = B·A.

    Raises:
        ValueError: when W is (k, d) (a GPT-2 Conv1D weight not transposed) or any other shape.
    """
    w = _matrix(W, "W")
    if w.shape == (d, k):
        return w
    if w.shape == (k, d):
        raise ValueError(
            f"W is {w.shape} = (in, out) but ΔW is ({d}, {k}) = (out, in); a GPT-2 Conv1D weight "
            "must be transposed to (d, k) before analysis (lora_repro.runs.save_base_weights does)"
        )
    raise ValueError(f"W is {w.shape} but ΔW is ({d}, {k}); they must be the same matrix")


def projection_norm(W: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """‖Uᵀ W V‖F: how much of W lies in the span of U on the left and V on the right.

    Args:
        W: (d, k) pretrained weight, (out, in).
        U: (d, r) orthonormal columns.
        V: (k, r) orthonormal columns.

    Returns:
        The Frobenius norm of the (r, r) matrix Uᵀ W V.

    Raises:
        ValueError: when the shapes do not chain.
    """
    w, u, v = _matrix(W, "W"), _matrix(U, "U"), _matrix(V, "V")
    if u.shape[0] != w.shape[0] or v.shape[0] != w.shape[1]:
        raise ValueError(
            f"W is {w.shape} but U is {u.shape} and V is {v.shape}; expected W (d, k), U (d, r), "
            "V (k, r) (is W transposed? GPT-2 Conv1D stores (in, out))"
        )
    return float(np.linalg.norm(u.T @ w @ v))


def top_singular(W: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-r singular triplets of W.

    Args:
        W: (d, k) matrix.
        r: how many directions.

    Returns:
        ``(U (d, r), S (r,), V (k, r))``.
    """
    w = _matrix(W, "W")
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return u[:, :r], s[:r], vt[:r].T


def random_orthonormal(n: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random (Haar) (n, r) matrix with orthonormal columns (QR of a Gaussian).

    Raises:
        ValueError: when r > n.
    """
    if r > n:
        raise ValueError(f"cannot draw {r} orthonormal directions in R^{n}")
    q, rr = np.linalg.qr(rng.standard_normal((n, r)))
    return q * np.sign(np.diag(rr))


def random_projection_norms(W: np.ndarray, r: int, n_draws: int = 10, seed: int = 0) -> np.ndarray:
    """‖Uᵀ W V‖F for ``n_draws`` seeded random orthonormal pairs U (d, r), V (k, r).

    Returns:
        (n_draws,) array.
    """
    w = _matrix(W, "W")
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    rng = np.random.default_rng(seed)
    d, k = w.shape
    return np.array(
        [
            projection_norm(w, random_orthonormal(d, r, rng), random_orthonormal(k, r, rng))
            for _ in range(n_draws)
        ]
    )


def amplification_factor(W: np.ndarray, svd: FactoredSVD) -> float:
    """Amplification factor ‖ΔW‖F / ‖Uᵀ W V‖F with U, V the singular vectors of ΔW (§7.3).

    Args:
        W: (d, k) pretrained weight, (out, in).
        svd: the SVD of ΔW (its S carries whatever scaling ΔW has).

    Returns:
        The factor (inf when W has nothing in ΔW's directions).
    """
    proj = projection_norm(W, svd.U, svd.V)
    return float(svd.frobenius / proj) if proj > 0 else float("inf")


def table7_stats(
    W: np.ndarray,
    B: np.ndarray,
    A: np.ndarray,
    scaling: float,
    *,
    n_random: int = 10,
    seed: int = 0,
    n_sigma: int = N_SIGMA,
) -> dict[str, float]:
    """Every Table 7 quantity for one module (paper §7.3), plus the honest comparisons.

    Args:
        W: (d, k) pretrained weight, (out, in) — GPT-2 Conv1D weights transposed.
        B: (d, r) LoRA factor.
        A: (r, k) LoRA factor.
        scaling: s of ΔW = s·B·A (``Adapter.scaling``, α/r).
        n_random: how many random orthonormal pairs to average for the random level.
        seed: seed of the random pairs.
        n_sigma: how many leading singular values of ΔW to report.

    Returns:
        A dict with ``r``; ``proj_dW`` ‖UᵀWV‖F for ΔW's top-r directions; ``proj_W`` for W's own
        top-r; ``proj_random`` (mean over draws) and ``proj_random_std``; ``norm_W`` ‖W‖F;
        ``norm_dW`` ‖ΔW‖F with the scaling and ``norm_dW_unscaled`` without; ``amplification``
        = norm_dW / proj_dW and ``amplification_unscaled``; ``ratio_to_random`` = proj_dW /
        proj_random; ``sigma1``..``sigma<n>`` of the scaled ΔW (NaN past its rank) and
        ``sigma2_over_sigma1``.

    Raises:
        ValueError: when W is not oriented (d, k) like B·A, or the factors do not chain.
    """
    b, a = _matrix(B, "B"), _matrix(A, "A")
    w = check_orientation(W, b.shape[0], a.shape[1])
    svd = factored_svd(b, a, scaling)
    r = svd.S.shape[0]
    proj_dw = projection_norm(w, svd.U, svd.V)
    s_w = np.linalg.svd(w, compute_uv=False)
    proj_w = float(np.sqrt(np.sum(s_w[:r] ** 2)))  # ‖U_Wᵀ W V_W‖F = ‖diag(σ_1..σ_r)‖F
    rand = random_projection_norms(w, r, n_random, seed)
    norm_dw = svd.frobenius
    norm_dw_unscaled = norm_dw / float(scaling)
    out: dict[str, float] = {
        "r": float(a.shape[0]),
        "proj_dW": proj_dw,
        "proj_W": proj_w,
        "proj_random": float(rand.mean()),
        "proj_random_std": float(rand.std(ddof=1)) if rand.size > 1 else 0.0,
        "norm_W": float(np.linalg.norm(w)),
        "norm_dW": norm_dw,
        "norm_dW_unscaled": norm_dw_unscaled,
        "scaling": float(scaling),
        "amplification": norm_dw / proj_dw if proj_dw > 0 else float("inf"),
        "amplification_unscaled": norm_dw_unscaled / proj_dw if proj_dw > 0 else float("inf"),
        "ratio_to_random": proj_dw / float(rand.mean()) if rand.mean() > 0 else float("inf"),
    }
    for i in range(n_sigma):
        out[f"sigma{i + 1}"] = float(svd.S[i]) if i < r else float("nan")
    out["sigma2_over_sigma1"] = (
        float(svd.S[1] / svd.S[0]) if r > 1 and svd.S[0] > 0 else float("nan")
    )
    return out


def w_vs_dw_phi(W: np.ndarray, dW_left: np.ndarray, top: int | None = None) -> np.ndarray:
    """φ between W's top-i left-singular directions and ΔW's top-j ones (paper App. H.3, Fig. 8).

    Args:
        W: (d, k) pretrained weight, (out, in).
        dW_left: (d, r) left-singular vectors of ΔW (or any orthonormal (d, r) basis).
        top: how many of W's directions to use (rows of the grid); default all min(d, k).

    Returns:
        (top, r) grid; entry ``[i - 1, j - 1]`` = ‖U_W[:, :i]ᵀ U_ΔW[:, :j]‖F² / min(i, j).

    Raises:
        ValueError: when W's rows and the basis disagree in dimension.
    """
    u_w = left_singular_vectors(W)
    if top is not None:
        u_w = u_w[:, :top]
    return phi_grid(u_w, dW_left)
