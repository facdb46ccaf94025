"""Wq/Wk/Wv/Wo -> module names per family, fused slices, and every error (lora_repro.targets)."""

from __future__ import annotations

import pytest
import torch

from lora_repro.config import ConfigError
from lora_repro.lora import LoraConfig, count_lora_parameters, inject_lora
from lora_repro.targets import (
    MODEL_TYPE_FAMILY,
    TargetError,
    family_of,
    find_targets,
    linear_module_names,
    num_layers,
)
from tests.helpers.tiny_models import (
    EXPECTED,
    FAMILIES,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    LAYERS,
    build,
    forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)

# family -> weight type -> module name in block 1 of the bare model (written from the model code)
NAMES = {
    "bert": {
        "q": "encoder.layer.1.attention.self.query",
        "k": "encoder.layer.1.attention.self.key",
        "v": "encoder.layer.1.attention.self.value",
        "o": "encoder.layer.1.attention.output.dense",
    },
    "deberta-v2": {
        "q": "encoder.layer.1.attention.self.query_proj",
        "k": "encoder.layer.1.attention.self.key_proj",
        "v": "encoder.layer.1.attention.self.value_proj",
        "o": "encoder.layer.1.attention.output.dense",
    },
    "gpt2": {
        "q": "h.1.attn.c_attn",
        "k": "h.1.attn.c_attn",
        "v": "h.1.attn.c_attn",
        "o": "h.1.attn.c_proj",
    },
    "llama": {t: f"layers.1.self_attn.{t}_proj" for t in "qkvo"},
    "opt": {
        "q": "decoder.layers.1.self_attn.q_proj",
        "k": "decoder.layers.1.self_attn.k_proj",
        "v": "decoder.layers.1.self_attn.v_proj",
        "o": "decoder.layers.1.self_attn.out_proj",
    },
    "gpt_neox": {
        "q": "layers.1.attention.query_key_value",
        "k": "layers.1.attention.query_key_value",
        "v": "layers.1.attention.query_key_value",
        "o": "layers.1.attention.dense",
    },
}
NAMES["roberta"] = NAMES["bert"]
NAMES["mistral"] = NAMES["qwen2"] = NAMES["llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_per_family(family):
    model = build(family)
    targets = find_targets(model, ["v", "q", "o", "k"])  # returned in (layer, q, k, v, o) order
    assert [(t.layer, t.type) for t in targets] == [(i, t) for i in range(LAYERS) for t in "qkvo"]
    for t in targets[4:]:
        assert t.module == NAMES[family][t.type]
        assert (t.d, t.k) == EXPECTED[family][t.type]
        fused = family in ("gpt2", "gpt_neox") and t.type != "o"
        assert t.fused == ({"gpt2": "gpt2", "gpt_neox": "neox"}[family] if fused else None)
        assert (t.index is not None) == fused
        assert t.key == (f"{t.module}.{t.type}" if fused else t.module)
    assert num_layers(model) == LAYERS


def test_prefixed_names_match_too():
    model = build("llama", head="lm")  # modules live under "model."
    assert [t.module for t in find_targets(model, ["q"])] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    cls = build("bert", head="cls")
    assert find_targets(cls, ["o"])[0].module == "bert.encoder.layer.0.attention.output.dense"


def test_gpt2_fused_indices_are_contiguous_blocks():
    model = build("gpt2")
    idx = {t.type: t.index for t in find_targets(model, "qkv", layers=[0])}
    assert idx["q"] == tuple(range(0, 32))
    assert idx["k"] == tuple(range(32, 64))
    assert idx["v"] == tuple(range(64, 96))


def test_neox_fused_indices_interleave_per_head():
    model = build("gpt_neox")
    idx = {t.type: t.index for t in find_targets(model, "qkv", layers=[0])}
    hd = HEAD_DIM  # 8; the output is [h0: q(8) k(8) v(8)][h1: q k v]...
    assert idx["q"][:10] == (0, 1, 2, 3, 4, 5, 6, 7, 24, 25)
    assert idx["k"][:hd] == tuple(range(8, 16)) and idx["k"][-1] == 3 * 24 + 15
    assert idx["v"][hd : 2 * hd] == tuple(range(24 + 16, 24 + 24))
    all_rows = sorted(idx["q"] + idx["k"] + idx["v"])
    assert all_rows == list(range(3 * HIDDEN))  # a partition of the 96 rows
    assert all(len(i) == HEADS * hd for i in idx.values())


def test_layer_selection():
    model = build("opt")
    assert [t.layer for t in find_targets(model, "qv", layers=[1])] == [1, 1]
    assert [t.layer for t in find_targets(model, "q", layers=[1, 0, 1])] == [0, 1]
    with pytest.raises(ConfigError, match=r"adapter.layers=\[-1\] is invalid"):
        find_targets(model, "q", layers=[-1])  # the config's message, everywhere
    with pytest.raises(ConfigError, match="non-empty list"):
        find_targets(model, "q", layers=[])


def test_duplicate_types_collapse():
    model = build("bert")
    assert len(find_targets(model, ["q", "q", "v"])) == 2 * LAYERS


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("types", [["x"], ["q", "query"], [], ["Q"]])
def test_unknown_weight_type(types):
    model = build("llama")
    with pytest.raises(
        TargetError,
        match=r"unknown weight type\(s\) .*adapter.targets takes a "
        r"non-empty subset of \['q', 'k', 'v', 'o'\]",
    ):
        find_targets(model, types)


def test_unknown_weight_type_through_inject():
    model = build("llama")
    with pytest.raises(TargetError, match=r"unknown weight type\(s\) \['mlp'\]"):
        inject_lora(model, LoraConfig(targets=("q", "mlp")))
    assert count_lora_parameters(model) == 0
    assert all(p.requires_grad for p in model.parameters())  # nothing was touched


def test_unknown_architecture_lists_linear_modules():
    model = build("llama")
    model.config.model_type = "weird"
    msg = (
        r"no Wq/Wk/Wv/Wo mapping for model_type='weird' \(known: .*Add one in config, e.g. "
        r"adapter.target_modules=.*Linear modules of this model: layers\.\*\.self_attn\.q_proj, "
        r"layers\.\*\.self_attn\.k_proj, .*layers\.\*\.mlp\.down_proj"
    )
    with pytest.raises(TargetError, match=msg):
        find_targets(model, ["q"])
    with pytest.raises(TargetError, match="model_type='weird'"):
        family_of(model)
    assert "layers.0.mlp.gate_proj" in linear_module_names(model)


def test_model_without_config():
    with pytest.raises(TargetError, match=r"model_type=None .*Linear modules of this model: 0, 1"):
        find_targets(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), ["q"])


def test_custom_target_modules_for_unmapped_architecture():
    model = build("llama")
    model.config.model_type = "weird"
    y0 = forward(model)
    tm = {"q": r"layers\.(\d+)\.self_attn\.q_proj$", "v": r"layers\.(\d+)\.self_attn\.v_proj$"}
    cfg = LoraConfig(r=2, alpha=2, targets=("q", "v"), target_modules=tm)
    targets = inject_lora(model, cfg)
    assert [(t.module, t.type, t.layer, t.d, t.k) for t in targets] == [
        ("layers.0.self_attn.q_proj", "q", 0, 32, 32),
        ("layers.0.self_attn.v_proj", "v", 0, 16, 32),
        ("layers.1.self_attn.q_proj", "q", 1, 32, 32),
        ("layers.1.self_attn.v_proj", "v", 1, 16, 32),
    ]
    assert count_lora_parameters(model) == 2 * 2 * (64 + 48)
    assert torch.equal(forward(model), y0)


def test_custom_map_lacking_a_type():
    model = build("llama")
    model.config.model_type = "weird"
    tm = {"q": r"layers\.(\d+)\.self_attn\.q_proj$"}
    with pytest.raises(
        TargetError,
        match=r"weight type 'k' has no pattern for family 'custom'; "
        r"known: \['q'\]",
    ):
        find_targets(model, ["q", "k"], target_modules=tm)


def test_custom_map_matching_nothing_lists_linear_modules():
    model = build("bert")
    tm = {"q": r"layers\.(\d+)\.self_attn\.q_proj$"}  # LLaMA names on a BERT
    with pytest.raises(
        TargetError,
        match=r"model \(family 'custom'\) has no module for weight type "
        r"'q' .*Its linear modules: encoder\.layer\.\*\.attention"
        r"\.self\.query.*Map it with adapter.target_modules=\{q:",
    ):
        find_targets(model, ["q"], target_modules=tm)


def test_custom_map_must_match_linear_modules_only():
    model = build("llama")
    tm = {"q": r"layers\.(\d+)\.self_attn$"}  # the attention block itself is not Linear
    with pytest.raises(TargetError, match="has no module for weight type 'q'"):
        find_targets(model, ["q"], target_modules=tm)


@pytest.mark.parametrize("layers", [[2], [7, 0], [0, 7]])
def test_layer_out_of_range(layers):
    model = build("gpt2")
    bad = [i for i in layers if not 0 <= i < LAYERS][0]
    with pytest.raises(
        TargetError, match=rf"layer {bad} out of range: the model has 2 blocks \(0..1\)"
    ):
        find_targets(model, ["q"], layers=layers)


def _tiny_from_model_type(model_type: str):
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        embedding_size=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return AutoModel.from_config(cfg)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPE_FAMILY))
def test_every_mapped_model_type_has_all_four_types(model_type):
    """Each built-in mapping finds Wq, Wk, Wv, Wo in every block of a tiny model of that type."""
    targets = find_targets(_tiny_from_model_type(model_type), "qkvo")
    assert [(t.layer, t.type) for t in targets] == [(i, t) for i in range(2) for t in "qkvo"]
    assert {(t.type, t.k) for t in targets} == {(t, 32) for t in "qkvo"}


@pytest.mark.parametrize("model_type", ["deberta", "phi3"])
def test_fused_architectures_of_other_layouts_are_not_mapped(model_type):
    """DeBERTa v1 (``in_proj``) and Phi-3 (``qkv_proj``) fuse q|k|v their own way: unknown."""
    with pytest.raises(TargetError, match=rf"no Wq/Wk/Wv/Wo mapping for model_type='{model_type}'"):
        find_targets(_tiny_from_model_type(model_type), ["q"])
