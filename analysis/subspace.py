"""Subspace similarity φ between LoRA factors (paper §7.2, Eq. 4) and the factored SVD of ΔW.

All functions take numpy arrays, compute in float64 and return numpy arrays. Bases are matrices
whose *columns* are orthonormal directions ordered by decreasing singular value, so that the
top-i subspace is ``U[:, :i]``.

The paper (arXiv 2106.09685 v2, Eq. 4) defines, for A1 (r1, k) and A2 (r2, k) with right-singular
matrices U1 (k, r1) and U2 (k, r2)::

    φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖F² / min(i, j)  ∈ [0, 1]

It is 1 when one top subspace contains the other and 0 when they are orthogonal. Besides the
paper's view (right-singular vectors of A) this module provides the same measure on B's
left-singular vectors, on ΔW = B·A's left and right singular vectors, and on the learned part
A − A_init (see :data:`VIEWS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIEWS: tuple[str, ...] = ("A", "B", "dW_left", "dW_right", "dA")
"""Names of the subspace views, the paper's default first."""

VIEW_DESCRIPTIONS: dict[str, str] = {
    "A": "right-singular vectors of A (paper Eq. 4)",
    "B": "left-singular vectors of B",
    "dW_left": "left-singular vectors of ΔW = B·A (output side)",
    "dW_right": "right-singular vectors of ΔW = B·A (input side)",
    "dA": "right-singular vectors of the learned part A − A_init",
}

_ORTHO_TOL = 1e-6


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite 2-D float64 array, or a one-line ValueError."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or inf entries; was the run diverged or the file torn?")
    return a


TALL_QR_ROWS = 4096
"""Rows from which a tall-skinny QR uses CholeskyQR2 (:func:`tall_qr`) instead of Householder."""
_CQR_MAX_COND = 1e7


def tall_qr(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR, X = Q·R, of an (n, m) matrix with n ≥ m.

    For n ≥ :data:`TALL_QR_ROWS` and m ≤ n / 8 (a LoRA factor at GPT-3's size, 12288 × 64) it is
    CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa & Yamamoto 2014): R₁ = chol(XᵀX), Q₁ = X·R₁⁻¹,
    repeated once on Q₁; two BLAS-3 passes, 3-4× faster than Householder there, and orthogonal
    to machine precision when cond(X) ≤ 1e7 (checked on R₁; above it, or when the Gram matrix is
    singular, e.g. B = 0 at initialisation, Householder is used). Smaller matrices always take
    ``numpy.linalg.qr`` (Householder), so results on small models keep their bits.

    Returns:
        ``(Q (n, m), R (m, m))``.
    """
    n, m = X.shape
    if n >= TALL_QR_ROWS and 8 * m <= n:
        from scipy.linalg import solve_triangular

        try:
            q, r = X, np.eye(m)
            for _ in range(2):
                r1 = np.linalg.cholesky(q.T @ q).T
                if not np.linalg.cond(r1) <= _CQR_MAX_COND:
                    raise np.linalg.LinAlgError("ill-conditioned")
                q = solve_triangular(r1, q.T, trans="T", check_finite=False).T
                r = r1 @ r
            return q, r
        except np.linalg.LinAlgError:
            pass
    return np.linalg.qr(X)


def right_singular_vectors(A: np.ndarray) -> np.ndarray:
    """Right-singular vectors of A as columns, by decreasing singular value.

    Args:
        A: (r, k) matrix, e.g. the LoRA factor A.

    Returns:
        (k, min(r, k)) float64 matrix with orthonormal columns.

    Raises:
        ValueError: when A is not a finite 2-D matrix.
    """
    a = _matrix(A, "A")
    if a.shape[1] >= TALL_QR_ROWS and 8 * a.shape[0] <= a.shape[1]:
        q, rr = tall_qr(a.T)  # A = Rᵀ·Qᵀ: the SVD of the small Rᵀ gives A's
        _, _, vt = np.linalg.svd(rr.T)
        return q @ vt.T
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    return vt.T


def left_singular_vectors(B: np.ndarray) -> np.ndarray:
    """Left-singular vectors of B as columns, by decreasing singular value.

    Args:
        B: (d, r) matrix, e.g. the LoRA factor B.

    Returns:
        (d, min(d, r)) float64 matrix with orthonormal columns.

    Raises:
        ValueError: when B is not a finite 2-D matrix.
    """
    b = _matrix(B, "B")
    if b.shape[0] >= TALL_QR_ROWS and 8 * b.shape[1] <= b.shape[0]:
        q, rr = tall_qr(b)  # B = Q·R: the SVD of the small R gives B's
        u, _, _ = np.linalg.svd(rr)
        return q @ u
    u, _, _ = np.linalg.svd(b, full_matrices=False)
    return u


@dataclass(frozen=True)
class FactoredSVD:
    """Thin SVD ΔW = U · diag(S) · Vᵀ of a product of LoRA factors.

    Attributes:
        U: (d, m) left-singular vectors (columns), m = min(d, r, k).
        S: (m,) singular values, decreasing, including the scaling.
        V: (k, m) right-singular vectors (columns).
    """

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray

    def dense(self) -> np.ndarray:
        """The (d, k) matrix U·diag(S)·Vᵀ (for tests and small models)."""
        return (self.U * self.S) @ self.V.T

    @property
    def frobenius(self) -> float:
        """‖ΔW‖F = sqrt(Σ σ²)."""
        return float(np.sqrt(np.sum(self.S**2)))


def factored_svd(B: np.ndarray, A: np.ndarray, scaling: float = 1.0) -> FactoredSVD:
    """Exact thin SVD of ΔW = scaling · B · A without forming the (d, k) product.

    QR of B = Q_B R_B and of Aᵀ = Q_A R_A give ΔW = Q_B (R_B R_Aᵀ) Q_Aᵀ; the SVD of the small
    core R_B R_Aᵀ = Uc S Vcᵀ then gives ΔW = (Q_B Uc) S (Q_A Vc)ᵀ. Cost O((d + k) r²); the QRs
    are :func:`tall_qr` (Householder on small models, CholeskyQR2 on GPT-3-size factors).

    Args:
        B: (d, r) factor.
        A: (r, k) factor.
        scaling: s in ΔW = s·B·A (α/r for LoRA, paper §4.1); must be positive.

    Returns:
        :class:`FactoredSVD` with U (d, m), S (m,), V (k, m), m = min(d, r, k).

    Raises:
        ValueError: when the shapes do not chain (B (d, r), A (r, k)) or scaling ≤ 0.
    """
    b, a = _matrix(B, "B"), _matrix(A, "A")
    if b.shape[1] != a.shape[0]:
        raise ValueError(
            f"B is {b.shape} and A is {a.shape}; expected B (d, r) and A (r, k) with the same r"
        )
    if not scaling > 0:
        raise ValueError(f"scaling must be positive, got {scaling}")
    qb, rb = tall_qr(b)  # (d, p), (p, r)
    qa, ra = tall_qr(a.T)  # (k, q), (q, r)
    uc, s, vct = np.linalg.svd(rb @ ra.T, full_matrices=False)  # (p, m), (m,), (m, q)
    return FactoredSVD(U=qb @ uc, S=s * float(scaling), V=qa @ vct.T)


def factor_spectra(A: np.ndarray, B: np.ndarray, scaling: float) -> dict[str, np.ndarray]:
    """Singular values of A, B and ΔW = scaling·B·A (§7.2: how concentrated each factor is).

    Args:
        A: (r, k) factor.
        B: (d, r) factor.
        scaling: s of ΔW = s·B·A (α/r).

    Returns:
        ``{"A": (min(r, k),), "B": (min(d, r),), "ΔW (scaled)": (min(d, r, k),)}``, decreasing.

    Raises:
        ValueError: when the factors do not chain or scaling ≤ 0.
    """
    return {
        "A": np.linalg.svd(_matrix(A, "A"), compute_uv=False),
        "B": np.linalg.svd(_matrix(B, "B"), compute_uv=False),
        "ΔW (scaled)": factored_svd(B, A, scaling).S,
    }


def check_orthonormal(U: np.ndarray, name: str = "U", tol: float = _ORTHO_TOL) -> np.ndarray:
    """``U`` as float64 after checking its columns are orthonormal.

    Raises:
        ValueError: when UᵀU differs from the identity by more than ``tol``.
    """
    u = _matrix(U, name)
    if u.shape[1] > u.shape[0]:
        raise ValueError(f"{name} is {u.shape}: more columns than rows cannot be orthonormal")
    err = np.max(np.abs(u.T @ u - np.eye(u.shape[1])))
    if err > tol:
        raise ValueError(
            f"{name} columns are not orthonormal (max |UᵀU − I| = {err:.2e}); pass singular "
            "vectors, e.g. right_singular_vectors(A), not the factor itself"
        )
    return u


def phi_grid(U1: np.ndarray, U2: np.ndarray, check: bool = True) -> np.ndarray:
    """Normalised subspace similarity φ(i, j) for every pair of top-i / top-j subspaces (Eq. 4).

    Every cell comes from one product M = U1ᵀ U2: ‖U1[:, :i]ᵀ U2[:, :j]‖F² is the (i, j) partial
    sum of M², so the whole grid is two cumulative sums (no SVD per cell).

    Args:
        U1: (n, m1) orthonormal columns ordered by decreasing singular value.
        U2: (n, m2) orthonormal columns ordered the same way.
        check: verify orthonormality (cheap; turn off only for bases you just computed).

    Returns:
        (m1, m2) float64 grid; entry ``[i - 1, j - 1]`` is φ(i, j) ∈ [0, 1] (round-off clipped).

    Raises:
        ValueError: when the bases live in spaces of different dimension or are not orthonormal.
    """
    u1 = check_orthonormal(U1, "U1") if check else _matrix(U1, "U1")
    u2 = check_orthonormal(U2, "U2") if check else _matrix(U2, "U2")
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(
            f"U1 is {u1.shape} and U2 is {u2.shape}: the subspaces live in R^{u1.shape[0]} and "
            f"R^{u2.shape[0]}; compare matrices of the same weight type (same d or k)"
        )
    m = u1.T @ u2
    cum = np.cumsum(np.cumsum(m * m, axis=0), axis=1)
    i = np.arange(1, u1.shape[1] + 1)
    j = np.arange(1, u2.shape[1] + 1)
    return np.clip(cum / np.minimum.outer(i, j), 0.0, 1.0)


def phi(A1: np.ndarray, A2: np.ndarray) -> np.ndarray:
    """φ(A1, A2, i, j) of paper Eq. 4 on two A factors (right-singular vectors).

    Args:
        A1: (r1, k) factor.
        A2: (r2, k) factor.

    Returns:
        (min(r1, k), min(r2, k)) grid, entry ``[i - 1, j - 1]`` = φ(A1, A2, i, j).

    Raises:
        ValueError: when the factors have different k.
    """
    a1, a2 = _matrix(A1, "A1"), _matrix(A2, "A2")
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"A1 is {a1.shape} and A2 is {a2.shape}; both must be (r, k), same k")
    return phi_grid(right_singular_vectors(a1), right_singular_vectors(a2), check=False)


def basis_dim(view: str, d: int, k: int) -> int:
    """Dimension of the space a view's directions live in: k (input side) or d (output side).

    Raises:
        ValueError: for an unknown view.
    """
    _check_view(view)
    return d if view in ("B", "dW_left") else k


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")


def view_basis(
    view: str, A: np.ndarray, B: np.ndarray, A_init: np.ndarray | None = None
) -> np.ndarray:
    """Ordered orthonormal directions of one LoRA module under a subspace view.

    Args:
        view: one of :data:`VIEWS`: ``"A"`` right-singular vectors of A (paper default),
            ``"B"`` left-singular vectors of B, ``"dW_left"`` / ``"dW_right"`` left / right
            singular vectors of ΔW = B·A (factored SVD), ``"dA"`` right-singular vectors of
            A − A_init (the learned part).
        A: (r, k) factor.
        B: (d, r) factor.
        A_init: (r, k) A at initialisation; needed for ``"dA"`` only.

    Returns:
        (k, m) for input-side views (A, dW_right, dA), (d, m) for output-side views (B, dW_left).

    Raises:
        ValueError: for an unknown view, a missing or mis-shaped A_init, or bad factors.
    """
    _check_view(view)
    if view == "A":
        return right_singular_vectors(A)
    if view == "B":
        return left_singular_vectors(B)
    if view in ("dW_left", "dW_right"):
        svd = factored_svd(B, A)
        return svd.U if view == "dW_left" else svd.V
    if A_init is None:
        raise ValueError(
            "view 'dA' needs A at initialisation (adapter_init.safetensors) and this run has none"
        )
    a, a0 = _matrix(A, "A"), _matrix(A_init, "A_init")
    if a.shape != a0.shape:
        raise ValueError(f"A is {a.shape} but A_init is {a0.shape}; they must match")
    return right_singular_vectors(a - a0)


def random_gaussian_basis(n: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """Right-singular vectors of an (r, n) standard Gaussian matrix (uniformly random subspace).

    Returns:
        (n, min(r, n)) orthonormal columns.
    """
    return right_singular_vectors(rng.standard_normal((r, n)))


def random_phi_grid(n: int, r1: int, r2: int, seed: int = 0) -> np.ndarray:
    """φ grid between two seeded random Gaussian matrices of ranks r1 and r2 in R^n (Fig. 4 right).

    Two independent Gaussian matrices share no direction: E[φ(i, j)] = max(i, j) / n.

    Args:
        n: dimension of the space (k for input-side views, d for output-side views).
        r1: rows of the first matrix.
        r2: rows of the second matrix.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        (min(r1, n), min(r2, n)) grid.

    Raises:
        ValueError: when a size is not positive.
    """
    if min(n, r1, r2) < 1:
        raise ValueError(f"sizes must be positive, got n={n}, r1={r1}, r2={r2}")
    rng = np.random.default_rng(seed)
    return phi_grid(random_gaussian_basis(n, r1, rng), random_gaussian_basis(n, r2, rng))


def random_phi_expected(n: int, r1: int, r2: int) -> np.ndarray:
    """E[φ(i, j)] = max(i, j) / n for independent uniformly random subspaces of R^n.

    Returns:
        (r1, r2) grid of expectations.
    """
    i = np.arange(1, r1 + 1)
    j = np.arange(1, r2 + 1)
    return np.maximum.outer(i, j) / float(n)
