"""Run discovery by config, run selection (analysis.selection), layer choice and a layer's
factors (analysis.factors), missing-run messages."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import factors, selection
from lora_repro import runs
from tests.helpers.fixtures_analysis import N_LAYERS, base_weights, make_results, write_run


def _cfg(targets=("v", "q"), r=8, seed=0, alpha=8.0, init="gaussian"):
    return {
        "model": {"name": "minilm"},
        "task": {"name": "rotten_tomatoes"},
        "adapter": {"targets": list(targets), "r": r, "alpha": alpha, "init": init},
        "seed": seed,
    }


def test_record_from_config_canonicalises_targets():
    rec = selection.record_from_config("x", _cfg())
    assert rec.spec == selection.RunSpec("rotten_tomatoes", "minilm", ("q", "v"), 8, 0)
    assert rec.alpha == 8.0 and rec.init == "gaussian"
    assert selection.record_from_config("x", {"model": {"name": "m"}}) is None  # not a LoRA run


def test_select_run_warns_on_duplicates_and_where_narrows(tmp_path):
    recs = [
        selection.record_from_config(tmp_path / "a", _cfg(init="gaussian")),
        selection.record_from_config(tmp_path / "b", _cfg(init="kaiming_uniform")),
    ]
    with pytest.warns(UserWarning, match="2 runs match"):
        assert selection.select_run(recs, recs[0].spec).path == tmp_path / "a"
    assert (
        selection.select_run(recs, selection.RunSpec("rotten_tomatoes", "minilm", ("q",), 8, 0))
        is None
    )


def test_index_runs_reads_configs_and_filters(tmp_path):
    write_run(tmp_path, r=8)
    write_run(tmp_path, r=32, seed=1)
    # an unfinished run is never read
    bad = write_run(tmp_path, r=4)
    runs.atomic_write_json(bad / runs.STATUS_FILE, {"status": "running"})
    recs = selection.index_runs(tmp_path)
    assert sorted((r.spec.r, r.spec.seed) for r in recs) == [(8, 0), (32, 1)]
    assert selection.ranks_available(
        recs, task="rotten_tomatoes", model="minilm", targets=["v", "q"], seed=0
    ) == [8]
    assert len(selection.index_runs(tmp_path, {"adapter.r": "32"})) == 1
    assert selection.index_runs(tmp_path, {"adapter.init": "kaiming_uniform"}) == []


def test_layer_factors_and_base_weights(tmp_path):
    make_results(tmp_path, ranks=(8,), seed1_ranks=())
    rec = selection.index_runs(tmp_path)[0]
    adapter = factors.AdapterCache().get(rec)
    f = factors.layer_factors(adapter, "v", 1)
    assert (f.r, f.d, f.k) == (8, 48, 48) and f.A_init is not None
    assert f.scaling == pytest.approx(1.0)
    W = factors.BaseWeights(tmp_path, "minilm").matrix(f.key)
    np.testing.assert_allclose(W, base_weights()[f.key], rtol=1e-6)
    with pytest.raises(KeyError, match="no ΔWk at layer 1"):
        factors.layer_factors(adapter, "k", 1)
    assert factors.n_layers_of(adapter) == N_LAYERS


def test_layers():
    assert factors.default_layer(96) == 48 and factors.default_layer(6) == 3
    assert factors.spread_layers(96) == [0, 24, 48, 72, 95]
    assert factors.spread_layers(6) == [0, 1, 3, 4, 5]
    assert factors.spread_layers(1) == [0]
    with pytest.raises(ValueError, match="blocks 0..5"):
        factors.check_layer(6, 6)


def test_missing_messages_name_the_sweep():
    spec = selection.RunSpec("rotten_tomatoes", "minilm", ("q", "v"), 64, 1)
    assert spec.sweeps() == ["seeds"]
    assert "`seeds` sweep" in spec.missing_message()
    assert selection.RunSpec("t", "m", ("q", "v"), 4, 0).sweeps() == ["subspace", "table6"]
    assert selection.RunSpec("t", "m", ("q",), 64, 0).sweeps() == ["table6"]
    assert "no predefined sweep" in selection.RunSpec("t", "m", ("k",), 3, 0).missing_message()
    with pytest.raises(ValueError, match="unknown weight type"):
        selection.known_targets(["q", "x"])


def test_any_adapter_object_can_be_analysed():
    """An in-memory Adapter (what a peft import yields) goes through the same analysis."""
    rng = np.random.default_rng(0)
    d = k = 16

    def adapter(r: int) -> runs.Adapter:
        info = runs.ModuleInfo("m.q", "m.q", "q", 0, d, k)
        return runs.Adapter(
            r=r,
            alpha=r,
            scaling=1.0,
            init="peft",
            targets=["q"],
            base_model="x",
            modules={"m.q": info},
            A={"m.q": rng.standard_normal((r, k))},
            B={"m.q": rng.standard_normal((d, r))},
        )

    a2, a4 = adapter(2), adapter(4)
    g = factors.adapter_phi(a2, a4, "q", 0, view="dW_left")
    assert g.shape == (2, 4) and 0 <= g.min() and g.max() <= 1
    np.testing.assert_allclose(factors.adapter_phi(a2, a2, "q", 0), 1.0, atol=1e-12)
    t = factors.adapter_table7(a4, rng.standard_normal((d, k)), "q", 0, n_random=2)
    assert t["r"] == 4 and t["amplification"] > 0
    with pytest.raises(ValueError, match="A at initialisation"):
        factors.adapter_phi(a2, a4, "q", 0, view="dA")


@pytest.mark.parametrize(
    ("have", "pair", "noted"),
    [
        ((1, 2, 4, 8, 64), (8, 64), False),  # the committed results: Table 6 ranks too
        ((4, 8, 32), (8, 32), True),
        ((1, 2, 4, 64), (4, 64), True),
        ((1, 64), (1, 64), True),
        ((8, 16, 64, 128), (8, 64), False),
    ],
)
def test_default_rank_pair_is_the_papers_or_the_nearest(have, pair, noted):
    recs = [selection.record_from_config(f"r{r}", _cfg(r=r)) for r in have]
    pick = selection.pick_rank_pair(
        recs, task="rotten_tomatoes", model="minilm", targets=("q", "v"), seed=0
    )
    assert (pick.small.spec.r, pick.large.spec.r) == pair
    assert (pick.note is not None) == noted
    if noted:
        assert f"using r={pair[0]} vs r={pair[1]}" in pick.note


def test_asked_rank_pair_is_exact_and_a_missing_rank_names_its_sweep():
    recs = [selection.record_from_config(f"r{r}", _cfg(r=r)) for r in (1, 8, 64)]
    kw = dict(task="rotten_tomatoes", model="minilm", targets=("q", "v"), seed=0)
    pick = selection.pick_rank_pair(recs, ranks=(1, 8), **kw)
    assert (pick.small.spec.r, pick.large.spec.r) == (1, 8) and pick.note is None
    with pytest.raises(
        selection.MissingRuns, match=r"r=8 vs r=32 was asked for: missing run .*r=32"
    ) as e:
        selection.pick_rank_pair(recs, ranks=(8, 32), **kw)
    assert [s.r for s in e.value.specs] == [32] and "\n" not in str(e.value)
    with pytest.raises(selection.MissingRuns, match="`subspace` or `table6` sweep"):
        selection.pick_rank_pair(recs, ranks=(4, 64), **kw)
    with pytest.raises(selection.MissingRuns, match="two ranks"):
        selection.pick_rank_pair(recs[:1], **kw)


def test_layer_data_re_exports_selection_and_factors():
    from analysis import layer_data

    for name in layer_data.__all__:
        home = selection if hasattr(selection, name) else factors
        assert getattr(layer_data, name) is getattr(home, name), name
    assert {"RunSpec", "pick_rank_pair", "layer_factors", "BaseWeights"} <= set(layer_data.__all__)
