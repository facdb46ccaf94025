"""φ (paper Eq. 4), the factored SVD of ΔW = B·A and the subspace views: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import subspace


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _brute_phi(U1: np.ndarray, U2: np.ndarray) -> np.ndarray:
    """Per-cell φ from the singular values of U1_iᵀ U2_j (App. G's form of Eq. 4)."""
    out = np.zeros((U1.shape[1], U2.shape[1]))
    for i in range(1, U1.shape[1] + 1):
        for j in range(1, U2.shape[1] + 1):
            s = np.linalg.svd(U1[:, :i].T @ U2[:, :j], compute_uv=False)
            out[i - 1, j - 1] = np.sum(s**2) / min(i, j)
    return out


def test_phi_of_a_matrix_with_itself_is_one_on_the_diagonal():
    A = _rng().standard_normal((8, 40))
    g = subspace.phi(A, A)
    assert g.shape == (8, 8)
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
    # nested subspaces: the smaller top subspace lies inside the larger one
    np.testing.assert_allclose(g, 1.0, atol=1e-12)


def test_phi_is_in_unit_interval_and_matches_per_cell_svd():
    rng = _rng(1)
    A1, A2 = rng.standard_normal((6, 30)), rng.standard_normal((11, 30))
    g = subspace.phi(A1, A2)
    assert g.shape == (6, 11)
    assert g.min() >= 0.0 and g.max() <= 1.0
    U1, U2 = subspace.right_singular_vectors(A1), subspace.right_singular_vectors(A2)
    np.testing.assert_allclose(g, _brute_phi(U1, U2), atol=1e-12)
    np.testing.assert_allclose(subspace.phi(A2, A1), g.T, atol=1e-12)


def test_orthogonal_row_spaces_give_zero():
    Q, _ = np.linalg.qr(_rng(2).standard_normal((20, 20)))
    A1 = _rng(3).standard_normal((4, 4)) @ Q[:, :4].T  # row space = span(Q[:, :4])
    A2 = _rng(4).standard_normal((6, 6)) @ Q[:, 4:10].T  # orthogonal to it
    np.testing.assert_allclose(subspace.phi(A1, A2), 0.0, atol=1e-12)


def test_random_subspaces_have_mean_phi_max_ij_over_k():
    k, r1, r2, trials = 40, 4, 8, 300
    grids = np.mean([subspace.random_phi_grid(k, r1, r2, seed=s) for s in range(trials)], axis=0)
    expected = subspace.random_phi_expected(k, r1, r2)
    np.testing.assert_allclose(grids, expected, atol=0.02, rtol=0.12)


def test_random_phi_grid_is_seeded():
    a, b = subspace.random_phi_grid(30, 4, 6, seed=5), subspace.random_phi_grid(30, 4, 6, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, subspace.random_phi_grid(30, 4, 6, seed=6))


@pytest.mark.parametrize(("d", "r", "k"), [(30, 5, 20), (12, 12, 40), (8, 10, 9)])
def test_factored_svd_equals_dense_svd(d, r, k):
    rng = _rng(d + r + k)
    B, A = rng.standard_normal((d, r)), rng.standard_normal((r, k))
    s = 0.37
    svd = subspace.factored_svd(B, A, scaling=s)
    dense = s * B @ A
    u, sv, vt = np.linalg.svd(dense, full_matrices=False)
    m = min(d, r, k)
    assert svd.S.shape == (m,)
    np.testing.assert_allclose(svd.S, sv[:m], atol=1e-10 * sv[0])
    np.testing.assert_allclose(svd.dense(), dense, atol=1e-10)
    np.testing.assert_allclose(svd.U.T @ svd.U, np.eye(m), atol=1e-12)
    np.testing.assert_allclose(svd.V.T @ svd.V, np.eye(m), atol=1e-12)
    # subspaces via projector equality, for every top-p (singular values are distinct here)
    for p in range(1, m + 1):
        np.testing.assert_allclose(svd.U[:, :p] @ svd.U[:, :p].T, u[:, :p] @ u[:, :p].T, atol=1e-9)
        np.testing.assert_allclose(svd.V[:, :p] @ svd.V[:, :p].T, vt[:p].T @ vt[:p], atol=1e-9)
    assert svd.frobenius == pytest.approx(np.linalg.norm(dense), rel=1e-12)


def test_views_span_the_expected_spaces():
    rng = _rng(7)
    d, r, k = 25, 4, 30
    A, B, A0 = rng.standard_normal((r, k)), rng.standard_normal((d, r)), rng.standard_normal((r, k))
    proj = lambda X: X @ np.linalg.pinv(X)  # noqa: E731  projector onto the column space of X
    for view, n, space in [
        ("A", k, proj(A.T)),
        ("dW_right", k, proj(A.T)),
        ("B", d, proj(B)),
        ("dW_left", d, proj(B)),
        ("dA", k, proj((A - A0).T)),
    ]:
        U = subspace.view_basis(view, A, B, A0)
        assert U.shape == (n, r), view
        assert subspace.basis_dim(view, d, k) == n
        np.testing.assert_allclose(U @ U.T, space, atol=1e-10, err_msg=view)


def test_phi_grid_agrees_with_phi_on_A_view():
    rng = _rng(8)
    A1, A2 = rng.standard_normal((3, 15)), rng.standard_normal((5, 15))
    B = rng.standard_normal((10, 3)), rng.standard_normal((10, 5))
    g = subspace.phi_grid(subspace.view_basis("A", A1, B[0]), subspace.view_basis("A", A2, B[1]))
    np.testing.assert_allclose(g, subspace.phi(A1, A2), atol=1e-14)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: subspace.view_basis("C", np.ones((2, 3)), np.ones((3, 2))), "unknown view"),
        (
            lambda: subspace.view_basis("dA", np.ones((2, 3)), np.ones((3, 2))),
            "A at initialisation",
        ),
        (lambda: subspace.phi_grid(np.ones((4, 2)), np.eye(4)[:, :2]), "not orthonormal"),
        (lambda: subspace.phi_grid(np.eye(4)[:, :2], np.eye(5)[:, :2]), "R\\^4 and R\\^5"),
        (lambda: subspace.phi(np.ones((2, 3)), np.ones((2, 4))), "same k"),
        (lambda: subspace.factored_svd(np.ones((3, 2)), np.ones((3, 4))), "same r"),
        (lambda: subspace.factored_svd(np.ones((3, 2)), np.ones((2, 4)), 0.0), "positive"),
        (lambda: subspace.phi(np.full((2, 3), np.nan), np.ones((2, 3))), "NaN"),
        (lambda: subspace.phi(np.ones(3), np.ones((2, 3))), "2-D"),
    ],
)
def test_bad_input_gives_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
