"""Full fine-tuning analyses (analysis.fullft) on matrices with known answers, and the intruder
count against peft's own implementation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import fullft


def test_energy_rank_counts_the_directions_that_explain_the_share():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14: 64%, 93%, 100%
    assert fullft.energy_rank(s, 0.5) == 1
    assert fullft.energy_rank(s, 0.9) == 2
    assert fullft.energy_rank(s, 1.0) == 3
    assert fullft.energy_rank(np.zeros(3)) == 0
    with pytest.raises(ValueError, match="fraction in"):
        fullft.energy_rank(s, 1.5)


def test_stable_and_entropy_rank_of_known_spectra():
    assert fullft.stable_rank(np.array([3.0, 2.0, 1.0])) == pytest.approx(14 / 9)
    assert fullft.entropy_rank(np.ones(7)) == pytest.approx(7.0)
    assert fullft.entropy_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, so exp(H) = 2^1.5
    assert fullft.entropy_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(2**1.5)


def test_rank_measures_of_a_rank_r_matrix_built_from_random_factors():
    rng = np.random.default_rng(0)
    dW = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    m = fullft.rank_measures(fullft.singular_values(dW), share=1.0)
    assert m["n"] == 30
    assert m["energy_rank"] == 3
    assert 1 <= m["stable_rank"] <= 3
    assert m["frobenius"] == pytest.approx(np.linalg.norm(dW))


def test_a_gaussian_matrix_is_far_from_low_rank():
    # Marchenko-Pastur law at aspect ratio 1: the top 51.0% of the directions hold 90% of ‖·‖F²
    r90 = fullft.gaussian_energy_rank(384, 384)
    assert abs(r90 / 384 - 0.510) < 0.02


def _diag_w0(d: int, k: int) -> np.ndarray:
    w0 = np.zeros((d, k))
    w0[np.arange(min(d, k)), np.arange(min(d, k))] = np.linspace(10, 1, min(d, k))
    return w0  # left singular vectors: the coordinate axes


def test_an_update_along_a_spread_direction_is_an_intruder_and_an_axis_is_not():
    d, k = 12, 10
    w0 = _diag_w0(d, k)
    spread = np.zeros(d)
    spread[:5] = 1 / np.sqrt(5)  # |cos| with every axis = 0.447 < 0.5
    dW = 50 * np.outer(spread, np.eye(k)[k - 1])  # on the input where W0 is smallest (σ = 1)
    out = fullft.intruders(w0, dW, top_k=3)
    assert out["count"] == 1 and out["indices"] == [0]
    assert out["max_cos"][0] == pytest.approx(1 / np.sqrt(5), abs=0.01)  # W0 tilts it a little
    # the same size along an axis of W0 only re-weights an existing direction
    along = fullft.intruders(w0, 50 * np.outer(np.eye(d)[3], np.eye(k)[3]), top_k=3)
    assert along["count"] == 0
    assert along["max_cos"] == pytest.approx(np.ones(3))


def test_random_like_keeps_the_spectrum():
    rng = np.random.default_rng(1)
    dW = rng.standard_normal((20, 4)) @ rng.standard_normal((4, 16))
    rnd = fullft.random_like(dW, seed=3)
    np.testing.assert_allclose(
        fullft.singular_values(rnd)[:4], fullft.singular_values(dW)[:4], rtol=1e-10
    )
    assert not np.allclose(rnd, dW)


def test_full_table7_on_the_top_directions_matches_a_dense_computation():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((24, 18))
    dW = rng.standard_normal((24, 18)) * 0.1
    out = fullft.full_table7(W, dW, 4, n_random=4)
    u, s, vt = np.linalg.svd(dW)
    assert out["proj_dW"] == pytest.approx(np.linalg.norm(u[:, :4].T @ W @ vt[:4].T))
    assert out["norm_dW"] == pytest.approx(np.sqrt(np.sum(s[:4] ** 2)))
    assert out["norm_dW_total"] == pytest.approx(np.linalg.norm(dW))
    assert out["energy_share"] == pytest.approx(np.sum(s[:4] ** 2) / np.sum(s**2))
    with pytest.raises(ValueError, match="r=19 is invalid"):
        fullft.full_table7(W, dW, 19)


def test_lora_vs_full_phi_is_one_when_lora_finds_the_top_direction():
    rng = np.random.default_rng(4)
    u_full = np.linalg.qr(rng.standard_normal((30, 6)))[0]
    u_lora = np.linalg.qr(np.column_stack([u_full[:, 0], rng.standard_normal((30, 2))]))[0]
    grid = fullft.lora_vs_full_phi(u_lora, u_full)
    assert grid.shape == (3, 6)
    assert grid[0, 0] == pytest.approx(1.0)


def test_intruder_counts_agree_with_peft():
    """peft's reduce_intruder_dimension on a PeftModel holding the same factors."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query = torch.nn.Linear(24, 20)
            self.value = torch.nn.Linear(24, 20)

        def forward(self, x):
            return self.query(x) + self.value(x)

    torch.manual_seed(0)
    model = peft.get_peft_model(
        Block(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    )
    ours = {}
    for scale, name in ((3.0, "query"), (0.01, "value")):  # many intruders / none
        layer = model.base_model.model.get_submodule(name)
        A = torch.randn(4, 24, dtype=torch.float64) * scale
        B = torch.randn(20, 4, dtype=torch.float64) * scale
        layer.lora_A["default"].weight.data = A.float()
        layer.lora_B["default"].weight.data = B.float()
        W0 = layer.base_layer.weight.detach().double().numpy()
        dW = layer.scaling["default"] * (B.float().double() @ A.float().double()).numpy()
        ours[name] = fullft.intruders(W0, dW)["count"]
    lines: list[str] = []
    reduce_intruder_dimension(model, logging_sink=lines.append)
    theirs = {}
    for line in lines:
        if ": " in line and "Enabling" not in line:
            module, what = line.split(": ", 1)
            theirs[module.rsplit(".", 1)[-1]] = (
                0 if what == "No intruders" else int(what.split()[-1])
            )
    assert ours["query"] > 0 and ours["value"] == 0
    assert theirs == ours


def test_figures_table_and_claims_from_fixture_runs(tmp_path):
    from analysis import claims
    from analysis.figures import fullft as figures
    from tests.helpers.fixtures_analysis import make_results, write_full_run

    results = make_results(tmp_path / "results", ranks=(1, 8, 32), seed1_ranks=(8,), d=48, k=48)
    for seed in (0, 1):
        write_full_run(results, seed=seed)
    out = figures.write_all(results)
    names = {p.name for p in out["written"]}
    for stem in ("fullft_spectra", "fullft_phi", "fullft_intruders"):
        assert {f"{stem}.png", f"{stem}.pdf", f"{stem}.csv"} <= names
    assert {"fullft.md", "fullft.csv", "fullft.tex"} <= names
    table = pd.read_csv(results / "tables" / "fullft.csv")
    full_q = table[(table["type"] == "q") & (table["method"] == "full")].iloc[0]
    assert full_q["n_seeds"] == 2
    # full-rank noise on a rank-1 plant: the 90%-energy rank is far above LoRA's
    lora_q = table[(table["type"] == "q") & (table["r"] == 8)].iloc[0]
    assert full_q["energy_rank"] > 10 * lora_q["energy_rank"]
    # LoRA plants the same top direction: φ(1, 8) against full fine-tuning is near 1
    assert lora_q["phi_top1_full"] > 0.9
    m = out["measured"][("rotten_tomatoes", "minilm")]
    by_id = {c.id: c for c in claims.fullft_claims(m.frame(), m.d)}
    assert set(by_id) == {"FT-1", "FT-2", "FT-3"}
    ft2 = by_id["FT-2"].parts[0]  # ΔWq: one value per seed, each against that seed's full run
    assert ft2.seeds == [0, 1] and np.mean(ft2.values) == pytest.approx(lora_q["phi_top1_full"])
    assert ft2.verdict == "holds" and ft2.random == pytest.approx(8 / 48)
    assert claims.fullft_claims(None, None)[0].missing


def test_no_full_runs_draw_nothing_and_say_so(tmp_path, capsys):
    from analysis.figures import fullft as figures
    from tests.helpers.fixtures_analysis import make_results

    results = make_results(tmp_path / "results", ranks=(8,), seed1_ranks=(), d=48, k=48)
    assert figures.main(["--results", str(results)]) == 0
    assert "no finished adapter.method=full runs" in capsys.readouterr().out
    assert not (results / "tables" / "fullft.md").exists()
