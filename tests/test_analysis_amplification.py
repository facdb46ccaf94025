"""Table 7 quantities (paper §7.3) on constructed W and ΔW with known singular vectors."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import amplification, subspace


def _constructed(d: int = 12, k: int = 9, idx=(4, 6), s=(3.0, 0.5), seed: int = 0):
    """W = Qd diag(w) Qkᵀ and ΔW's factors aligned with W's singular pairs ``idx``."""
    rng = np.random.default_rng(seed)
    qd, _ = np.linalg.qr(rng.standard_normal((d, d)))
    qk, _ = np.linalg.qr(rng.standard_normal((k, k)))
    m = min(d, k)
    w = np.linspace(10.0, 1.0, m)  # distinct, decreasing
    W = qd[:, :m] @ np.diag(w) @ qk[:, :m].T
    idx = list(idx)
    B = qd[:, idx] * np.asarray(s)  # (d, r)
    A = qk[:, idx].T  # (r, k)
    return W, B, A, w, idx, np.asarray(s)


def test_amplification_exact_on_constructed_matrices():
    W, B, A, w, idx, s = _constructed()
    scaling = 2.0
    svd = subspace.factored_svd(B, A, scaling)
    proj = np.sqrt(np.sum(w[idx] ** 2))  # UᵀWV = diag(w[idx]) up to signs and order
    assert amplification.projection_norm(W, svd.U, svd.V) == pytest.approx(proj, rel=1e-12)
    norm_dw = scaling * np.sqrt(np.sum(s**2))
    assert amplification.amplification_factor(W, svd) == pytest.approx(norm_dw / proj, rel=1e-12)

    t = amplification.table7_stats(W, B, A, scaling, n_random=5, seed=1)
    assert t["r"] == 2
    assert t["proj_dW"] == pytest.approx(proj, rel=1e-12)
    assert t["proj_W"] == pytest.approx(np.sqrt(w[0] ** 2 + w[1] ** 2), rel=1e-12)
    assert t["norm_W"] == pytest.approx(np.sqrt(np.sum(w**2)), rel=1e-12)
    assert t["norm_dW"] == pytest.approx(norm_dw, rel=1e-12)
    assert t["norm_dW_unscaled"] == pytest.approx(norm_dw / scaling, rel=1e-12)
    assert t["amplification"] == pytest.approx(norm_dw / proj, rel=1e-12)
    assert t["amplification_unscaled"] == pytest.approx(norm_dw / scaling / proj, rel=1e-12)
    assert t["sigma1"] == pytest.approx(scaling * 3.0) and t["sigma2"] == pytest.approx(1.0)
    assert np.isnan(t["sigma3"]) and np.isnan(t["sigma4"])
    assert t["sigma2_over_sigma1"] == pytest.approx(0.5 / 3.0)
    assert t["ratio_to_random"] == pytest.approx(proj / t["proj_random"], rel=1e-12)


def test_mismatched_left_right_directions_project_to_zero():
    W, _, _, _, _, _ = _constructed()
    rng = np.random.default_rng(0)
    qd, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    qk, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    # U = W's 3rd left vector, V = W's 5th right vector: UᵀWV = 0 exactly
    assert amplification.projection_norm(W, qd[:, [2]], qk[:, [4]]) == pytest.approx(0.0, abs=1e-12)


def test_conv1d_orientation_must_be_transposed():
    """GPT-2 Conv1D stores W as (in, out) = (k, d); analysis needs (d, k), as the writer saves it."""
    W, B, A, w, idx, _ = _constructed(d=12, k=9)
    conv1d_weight = W.T  # what GPT-2 holds
    with pytest.raises(ValueError, match="Conv1D"):
        amplification.table7_stats(conv1d_weight, B, A, 1.0)
    right = amplification.table7_stats(
        conv1d_weight.T, B, A, 1.0, n_random=2
    )  # the writer's convention
    assert right["proj_dW"] == pytest.approx(np.sqrt(np.sum(w[idx] ** 2)), rel=1e-12)


def test_square_transposed_weight_gives_a_different_wrong_answer():
    """With d = k the shape check cannot catch a transposed W; the numbers then differ."""
    W, B, A, w, idx, _ = _constructed(d=10, k=10)
    right = amplification.table7_stats(W, B, A, 1.0, n_random=2)
    wrong = amplification.table7_stats(W.T, B, A, 1.0, n_random=2)
    exact = np.sqrt(np.sum(w[idx] ** 2))
    assert right["proj_dW"] == pytest.approx(exact, rel=1e-12)
    assert abs(wrong["proj_dW"] - exact) > 0.1 * exact
    # ‖W‖F and W's own top-r are transpose-invariant; only the ΔW projection reveals the error
    assert wrong["proj_W"] == pytest.approx(right["proj_W"])


def test_random_level_grows_with_r():
    rng = np.random.default_rng(3)
    d, k = 60, 50
    W = rng.standard_normal((d, k))
    for r in (2, 8):
        level = amplification.random_projection_norms(W, r, n_draws=100, seed=r).mean()
        # E‖UᵀWV‖F² = r²‖W‖F²/(dk) for Haar U, V
        assert level == pytest.approx(r * np.linalg.norm(W) / np.sqrt(d * k), rel=0.2)


def test_random_orthonormal_is_orthonormal():
    q = amplification.random_orthonormal(20, 6, np.random.default_rng(0))
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-12)
    with pytest.raises(ValueError, match="cannot draw"):
        amplification.random_orthonormal(3, 4, np.random.default_rng(0))


def test_w_vs_dw_phi_steps_at_the_shared_direction():
    """Fig. 8: ΔW's left direction = W's 5th left vector -> φ(i, 1) = 0 for i < 5, 1 from i = 5."""
    W, B, A, _, _, _ = _constructed(d=12, k=9, idx=(4,), s=(1.0,))
    g = amplification.w_vs_dw_phi(W, subspace.factored_svd(B, A).U)
    assert g.shape == (9, 1)
    np.testing.assert_allclose(g[:4, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(g[4:, 0], 1.0, atol=1e-12)
    assert amplification.w_vs_dw_phi(W, subspace.factored_svd(B, A).U, top=3).shape == (3, 1)


def test_projection_norm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="transposed"):
        amplification.projection_norm(np.ones((4, 3)), np.eye(3)[:, :1], np.eye(4)[:, :1])
