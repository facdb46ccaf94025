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

from collections.abc import Sequence

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
    problem = orientation_problem(w.shape, d, k)
    if problem:
        raise ValueError(problem)
    return w


def orientation_problem(shape: tuple[int, ...], d: int, k: int) -> str | None:
    """Why a W of ``shape`` is not the (d, k) = (out, in) of ΔW (one line), or ``None``."""
    shape = tuple(shape)
    if shape == (d, k):
        return None
    if shape == (k, d):
        return (
            f"W is {shape} = (in, out) but ΔW is ({d}, {k}) = (out, in); a GPT-2 Conv1D weight "
            "must be transposed to (d, k) before analysis (lora_repro.runs.save_base_weights does)"
        )
    return f"W is {shape} but ΔW is ({d}, {k}); they must be the same matrix"


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
    rand = random_projection_norms(w, r, n_random, seed)
    return table7_from_parts(
        r=int(a.shape[0]),
        svd=svd,
        scaling=scaling,
        proj_dW=proj_dw,
        w_sigma=s_w[:r],
        norm_W=float(np.linalg.norm(w)),
        proj_random=float(rand.mean()),
        proj_random_std=float(rand.std(ddof=1)) if rand.size > 1 else 0.0,
        n_sigma=n_sigma,
    )


def table7_from_parts(
    *,
    r: int,
    svd: FactoredSVD,
    scaling: float,
    proj_dW: float,
    w_sigma: np.ndarray,
    norm_W: float,
    proj_random: float,
    proj_random_std: float,
    n_sigma: int = N_SIGMA,
) -> dict[str, float]:
    """Table 7's row dict (keys as :func:`table7_stats`) from its computed ingredients (§7.3).

    Args:
        r: rank of the adapter.
        svd: the SVD of ΔW, scaling included.
        scaling: s of ΔW = s·B·A.
        proj_dW: ‖UᵀWV‖F for ΔW's top directions.
        w_sigma: (≥ m,) W's top singular values, m = rank of ΔW (its first m are used).
        norm_W: ‖W‖F.
        proj_random: the random level (mean of draws, or :func:`random_projection_expected`).
        proj_random_std: its spread over draws (NaN for the closed form).
        n_sigma: how many leading singular values of ΔW to report.
    """
    m = svd.S.shape[0]
    proj_w = float(np.sqrt(np.sum(np.asarray(w_sigma)[:m] ** 2)))  # ‖U_Wᵀ W V_W‖F = ‖σ_1..σ_m‖
    norm_dw = svd.frobenius
    norm_dw_unscaled = norm_dw / float(scaling)
    out: dict[str, float] = {
        "r": float(r),
        "proj_dW": proj_dW,
        "proj_W": proj_w,
        "proj_random": proj_random,
        "proj_random_std": proj_random_std,
        "norm_W": norm_W,
        "norm_dW": norm_dw,
        "norm_dW_unscaled": norm_dw_unscaled,
        "scaling": float(scaling),
        "amplification": norm_dw / proj_dW if proj_dW > 0 else float("inf"),
        "amplification_unscaled": norm_dw_unscaled / proj_dW if proj_dW > 0 else float("inf"),
        "ratio_to_random": proj_dW / proj_random if proj_random > 0 else float("inf"),
    }
    for i in range(n_sigma):
        out[f"sigma{i + 1}"] = float(svd.S[i]) if i < m else float("nan")
    out["sigma2_over_sigma1"] = (
        float(svd.S[1] / svd.S[0]) if m > 1 and svd.S[0] > 0 else float("nan")
    )
    return out


def random_projection_expected(norm_W: float, d: int, k: int, r: int) -> float:
    """The random level of Table 7 in closed form: √E‖UᵀWV‖F² = r·‖W‖F / √(d·k).

    For Haar-random orthonormal U (d, r) and V (k, r), independent, E[UUᵀ] = (r/d)·I and
    E[VVᵀ] = (r/k)·I, so E‖UᵀWV‖F² = tr(E[UUᵀ]·W·E[VVᵀ]·Wᵀ) = (r² / (d·k))·‖W‖F² exactly.
    GPT-3's Wq (d = k = 12288, ‖Wq‖F = 61.95): 0.020 at r = 4 and 0.32 at r = 64 (the paper
    prints 0.02 and 0.33 from draws). The mean of ‖UᵀWV‖F over draws is slightly below this
    root-mean-square (by its relative spread squared over two, O(1/r²) at these sizes).

    Args:
        norm_W: ‖W‖F.
        d: rows of W.
        k: columns of W.
        r: number of random directions on each side.
    """
    return float(r) * float(norm_W) / float(np.sqrt(float(d) * float(k)))


def projection_norms(
    W: np.ndarray, svds: Sequence[FactoredSVD], dtype: type = np.float32
) -> list[float]:
    """‖U_iᵀ W V_i‖F for several ΔW's in one pass over W: W·[V_1 | V_2 | …] (§7.3).

    The only GEMM that touches W, W (d, k) · [V_1 | …] (k, Σr), runs in ``dtype``; the small
    products U_iᵀ·(W·V_i) (r_i × d × r_i) run in float64. In float32 the norms agree with a float64
    computation to 1e-6 relative (``tests/test_analysis_inspect.py``, and ``bench.analysis_scale``
    at GPT-3's shape): W holds at most fp32's precision already when it comes from an fp32 / fp16 /
    bf16 checkpoint, and rounding V to fp32 and summing k products in blocks leaves ~1e-7.

    Args:
        W: (d, k) pretrained weight, (out, in); not copied when already of ``dtype``.
        svds: the SVDs of the ΔW's (U (d, r_i), V (k, r_i)).
        dtype: ``numpy.float32`` (the default) or ``numpy.float64``.

    Returns:
        One norm per SVD, in order.

    Raises:
        ValueError: when a U or V does not chain with W.
    """
    w = np.asarray(W)
    if w.ndim != 2:
        raise ValueError(f"W must be a 2-D matrix, got shape {w.shape}")
    d, k = w.shape
    for s in svds:
        if s.U.shape[0] != d or s.V.shape[0] != k:
            raise ValueError(
                f"W is {w.shape} but ΔW's U is {s.U.shape} and V is {s.V.shape}; expected "
                "U (d, r), V (k, r) (is W transposed? GPT-2 Conv1D stores (in, out))"
            )
    if not svds:
        return []
    w = w.astype(dtype, copy=False)
    v_all = np.hstack([s.V for s in svds]).astype(dtype)  # (k, Σr)
    wv = (w @ v_all).astype(np.float64)  # (d, Σr): the one pass over W
    out, c = [], 0
    for s in svds:
        m = s.V.shape[1]
        out.append(float(np.linalg.norm(s.U.T @ wv[:, c : c + m])))
        c += m
    return out


def checked_norm(W: np.ndarray, rows: int = 1024) -> float:
    """‖W‖F accumulated in float64, ``rows`` rows at a time, after checking W is finite.

    One pass over W without a float64 copy of it (a 12288² float32 W would need 1.2 GB more).

    Raises:
        ValueError: when W has NaN or inf entries.
    """
    w = np.asarray(W)
    acc = 0.0
    for i in range(0, w.shape[0], rows):
        blk = w[i : i + rows].astype(np.float64)
        sq = float(np.sum(blk * blk))
        if not np.isfinite(sq):
            raise ValueError("W has NaN or inf entries; is the base checkpoint torn?")
        acc += sq
    return float(np.sqrt(acc))


def table7_many(
    W: np.ndarray,
    modules: Sequence[tuple[np.ndarray, np.ndarray, float]],
    *,
    w_sigma: np.ndarray | None = None,
    n_random: int = 0,
    seed: int = 0,
    n_sigma: int = N_SIGMA,
    dtype: type = np.float32,
    norm_W: float | None = None,
) -> list[dict[str, float]]:
    """Table 7 (§7.3) for several adapters of one W, with one pass over W for all their ranks.

    The scalable form of :func:`table7_stats`: W is never copied to float64 (one GEMM in
    ``dtype``, :func:`projection_norms`), W's σ come from the caller (e.g. a cached randomized
    SVD, :mod:`analysis.rsvd`), and the random level is the closed form
    :func:`random_projection_expected` unless ``n_random`` > 0 asks for seeded draws.

    Args:
        W: (d, k) pretrained weight, (out, in).
        modules: ``(B (d, r), A (r, k), scaling)`` per adapter.
        w_sigma: W's top singular values, at least max r of them; ``None``: a dense SVD of W.
        n_random: 0 for the closed-form random level, else the number of random pairs drawn.
        seed: seed of the draws.
        n_sigma: how many leading singular values of ΔW to report.
        dtype: dtype of the pass over W.
        norm_W: ‖W‖F when already known from :func:`checked_norm` (which also checked that W
            is finite); default computed here.

    Returns:
        One dict per module with the keys of :func:`table7_stats` (``proj_random_std`` is NaN
        for the closed form).

    Raises:
        ValueError: when W is not (d, k) like B·A, the factors do not chain, or ``w_sigma`` is
            shorter than a rank.
    """
    w = np.asarray(W)
    svds = []
    for b, a, s in modules:
        bb, aa = _matrix(b, "B"), _matrix(a, "A")
        problem = orientation_problem(w.shape, bb.shape[0], aa.shape[1])
        if problem:
            raise ValueError(problem)
        svds.append(factored_svd(bb, aa, s))
    norm_w = checked_norm(w) if norm_W is None else float(norm_W)
    projs = projection_norms(w, svds, dtype)
    if w_sigma is None:
        w_sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    w_sigma = np.asarray(w_sigma, np.float64)
    d, k = w.shape
    out = []
    for (_, a, s), svd, p in zip(modules, svds, projs, strict=True):
        m = svd.S.shape[0]
        if w_sigma.shape[0] < m:
            raise ValueError(f"{w_sigma.shape[0]} singular values of W given, rank {m} needs {m}")
        if n_random > 0:
            rand = random_projection_norms(w.astype(np.float64), m, n_random, seed)
            mean, std = float(rand.mean()), float(rand.std(ddof=1)) if rand.size > 1 else 0.0
        else:
            mean, std = random_projection_expected(norm_w, d, k, m), float("nan")
        out.append(
            table7_from_parts(
                r=int(np.asarray(a).shape[0]),
                svd=svd,
                scaling=s,
                proj_dW=p,
                w_sigma=w_sigma,
                norm_W=norm_w,
                proj_random=mean,
                proj_random_std=std,
                n_sigma=n_sigma,
            )
        )
    return out


def w_vs_dw_phi(
    W: np.ndarray | None,
    dW_left: np.ndarray,
    top: int | None = None,
    *,
    W_left: np.ndarray | None = None,
) -> np.ndarray:
    """φ between W's top-i left-singular directions and ΔW's top-j ones (paper App. H.3, Fig. 8).

    Args:
        W: (d, k) pretrained weight, (out, in); may be ``None`` when ``W_left`` is given.
        dW_left: (d, r) left-singular vectors of ΔW (or any orthonormal (d, r) basis).
        top: how many of W's directions to use (rows of the grid); default all min(d, k).
        W_left: (d, m) W's top-m left-singular vectors when already computed (e.g. by
            :func:`analysis.rsvd.top_singular` on a large W); default a dense SVD of W.

    Returns:
        (top, r) grid; entry ``[i - 1, j - 1]`` = ‖U_W[:, :i]ᵀ U_ΔW[:, :j]‖F² / min(i, j).

    Raises:
        ValueError: when W's rows and the basis disagree in dimension.
    """
    u_w = left_singular_vectors(W) if W_left is None else W_left
    if top is not None:
        u_w = u_w[:, :top]
    return phi_grid(u_w, dW_left)
