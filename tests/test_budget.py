"""The parameter-budget -> rank rule of Table 5 (lora_repro.budget), with hand-computed values."""

from __future__ import annotations

import pytest

from lora_repro.budget import (
    AUTO_RANK,
    BudgetError,
    auto_budget,
    lora_param_count,
    params_per_rank,
    rank_for_budget,
    resolve_budget,
)
from lora_repro.lora import LoraConfig, count_lora_parameters, inject_lora
from lora_repro.targets import find_targets
from tests.helpers.tiny_models import build

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)

# GPT-3 175B: 96 blocks, d_model 12288, every attention projection square.
GPT3_LAYERS, GPT3_D = 96, 12288
GPT3_AUTO = 8 * 96 * 24576  # r = 8 on Wq alone
# The paper's "18M" budget is this auto value, 18,874,368 = 18 * 2**20 exactly.
GPT3_18M = 18 * 2**20

# SmolLM2-135M: 30 blocks, Wq, Wo 576 -> 576, Wk, Wv 576 -> 192 (grouped-query attention)
SMOL = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576)}


def gpt3(types: str) -> list[tuple[int, int]]:
    return [(GPT3_D, GPT3_D) for _ in range(GPT3_LAYERS) for _ in types]


def smol(types: str) -> list[tuple[int, int]]:
    return [SMOL[t] for _ in range(30) for t in types]


def test_gpt3_auto_budget():
    assert GPT3_AUTO == 18_874_368 == GPT3_18M
    assert auto_budget(gpt3("q")) == GPT3_AUTO
    assert AUTO_RANK == 8


@pytest.mark.parametrize(
    ("types", "r"), [("q", 8), ("k", 8), ("v", 8), ("o", 8), ("qk", 4), ("qv", 4), ("qkvo", 2)]
)
def test_gpt3_table5_ranks(types, r):
    """Table 5: the 18M budget gives r = 8 for one type, 4 for two, 2 for four."""
    assert rank_for_budget(gpt3(types), GPT3_18M) == r
    assert resolve_budget("auto", gpt3(types), gpt3("q")) == (GPT3_AUTO, r)
    assert lora_param_count(gpt3(types), r) == GPT3_18M  # the whole budget is used


@pytest.mark.parametrize(("types", "r"), [("q", 7), ("qv", 3), ("qkvo", 1)])
def test_gpt3_decimal_18_million_rounds_down(types, r):
    """A literal 18,000,000 is below 8 * 96 * 24576, so the largest rank that fits is one less."""
    assert rank_for_budget(gpt3(types), 18_000_000) == r


def test_param_count_formula():
    assert params_per_rank([(576, 576), (192, 576)]) == 1152 + 768
    assert lora_param_count([(576, 576), (192, 576)], 4) == 4 * 1920
    # paper §4.2: |Θ| = 2 · L̂ · d_model · r for square W
    assert lora_param_count(gpt3("qv"), 4) == 2 * (2 * 96) * 12288 * 4


def test_smollm2_auto_budget():
    assert auto_budget(smol("q")) == 8 * 30 * 1152 == 276_480


@pytest.mark.parametrize(
    ("types", "r"),
    [
        ("q", 8),  # 276480 / (30·1152 = 34560) = 8
        ("o", 8),
        ("k", 12),  # 276480 / (30·768 = 23040) = 12: the smaller Wk gets a larger rank
        ("v", 12),
        ("kv", 6),  # 276480 / 46080 = 6
        ("qk", 4),  # 276480 / (30·1920 = 57600) = 4.8
        ("qv", 4),
        ("qkvo", 2),  # 276480 / (30·3840 = 115200) = 2.4
    ],
)
def test_smollm2_non_square_ranks(types, r):
    assert resolve_budget("auto", smol(types), smol("q")) == (276_480, r)
    used = lora_param_count(smol(types), r)
    assert used <= 276_480 < lora_param_count(smol(types), r + 1)


def test_budget_on_an_injected_model():
    model = build("llama")  # Wq 32->32, Wk, Wv 32->16 (GQA), 2 blocks
    shapes = [(t.d, t.k) for t in find_targets(model, "qkvo")]
    q_shapes = [(t.d, t.k) for t in find_targets(model, "q")]
    budget, r = resolve_budget("auto", shapes, q_shapes)
    assert budget == 8 * 2 * 64 == 1024
    assert r == 1024 // (2 * (64 + 48 + 48 + 64)) == 2
    inject_lora(model, LoraConfig(r=r, alpha=r, targets="qkvo"))
    assert count_lora_parameters(model) == 896 <= budget


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_budget_too_small_states_the_minimum():
    with pytest.raises(
        BudgetError,
        match=r"adapter.budget=100000 is too small: rank 1 on these 120 "
        r"matrices already needs 115200 parameters; set "
        r"adapter.budget >= 115200 \(or 'auto'\)",
    ):
        rank_for_budget(smol("qkvo"), 100_000)
    assert rank_for_budget(smol("qkvo"), 115_200) == 1


@pytest.mark.parametrize("bad", [1.5e6, 18874368.0, "18M", "1e6", True, 0, -5, [1]])
def test_budget_must_be_a_positive_integer(bad):
    with pytest.raises(
        BudgetError,
        match=r"adapter.budget must be a positive integer or 'auto', "
        rf"got {bad!r}".replace("[", r"\[").replace("(", r"\("),
    ):
        resolve_budget(bad, smol("q"), smol("q"))


def test_budget_string_forms():
    assert resolve_budget(None, smol("q"), smol("q")) == (None, None)
    assert resolve_budget(" AUTO ", smol("q"), smol("q")) == (276_480, 8)
    assert resolve_budget("69120", smol("q"), smol("q")) == (69_120, 2)  # digits from a CLI


def test_empty_shapes():
    with pytest.raises(BudgetError, match="no matrices to adapt"):
        rank_for_budget([], 1000)
    with pytest.raises(BudgetError, match="budget=auto needs the model's Wq shapes"):
        auto_budget([])
