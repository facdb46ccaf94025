"""Tiny transformers models built from config in-process (no hub, no files), one per family.

Every model has hidden size 32, 2 blocks, 4 attention heads (head_dim 8) and a vocabulary of 50,
with bos/eos/pad ids inside the vocabulary. They are returned in ``eval()`` mode, in float32,
with eager attention (so ``output_attentions`` works and results do not depend on the SDPA
kernel chosen), and with weights drawn from a fixed torch seed, so two calls with the same seed
give identical models.

``FAMILIES`` lists the builder names; ``build(name)`` returns a fresh model. ``EXPECTED`` gives,
per family, the (d, k) = (out, in) shape of Wq, Wk, Wv, Wo in every block, written by hand from
the configs below (not read from the models), for parameter-count tests.
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # LLaMA / Mistral / Qwen2: grouped-query attention, so Wk, Wv are 32 -> 16
HEAD_DIM = HIDDEN // HEADS
VOCAB = 50
INTERMEDIATE = 64
MAX_POS = 64
SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

_KV = KV_HEADS * HEAD_DIM  # 16
_SQUARE = {t: (HIDDEN, HIDDEN) for t in "qkvo"}
_GQA = {"q": (HIDDEN, HIDDEN), "k": (_KV, HIDDEN), "v": (_KV, HIDDEN), "o": (HIDDEN, HIDDEN)}

# family -> weight type -> (d, k) of one block's W
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "bert": _SQUARE,
    "roberta": _SQUARE,
    "deberta-v2": _SQUARE,
    "gpt2": _SQUARE,
    "llama": _GQA,
    "mistral": _GQA,
    "qwen2": _GQA,
    "opt": _SQUARE,
    "gpt_neox": _SQUARE,
}

FAMILIES = tuple(EXPECTED)
# families whose q, k, v are separate nn.Linear modules (comparable with peft module by module)
PLAIN_LINEAR = ("bert", "roberta", "deberta-v2", "llama", "mistral", "qwen2", "opt")
FUSED = ("gpt2", "gpt_neox")


def _common() -> dict:
    return dict(vocab_size=VOCAB, **SPECIAL)


def config(name: str):
    """The transformers config of tiny model ``name`` (one of :data:`FAMILIES`)."""
    import transformers as tf

    enc = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **_common(),
    )
    dec = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POS,
        **_common(),
    )
    if name == "bert":
        return tf.BertConfig(**enc)
    if name == "roberta":
        # RoBERTa offsets positions by pad_token_id + 1, so it needs max_position > seq + 2.
        return tf.RobertaConfig(**enc)
    if name == "deberta-v2":
        return tf.DebertaV2Config(**enc, relative_attention=True, position_buckets=8)
    if name == "gpt2":
        return tf.GPT2Config(
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=INTERMEDIATE,
            n_positions=MAX_POS,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **_common(),
        )
    if name == "llama":
        return tf.LlamaConfig(**dec)
    if name == "mistral":
        return tf.MistralConfig(**dec, head_dim=HEAD_DIM, sliding_window=None)
    if name == "qwen2":
        return tf.Qwen2Config(**dec)
    if name == "opt":
        return tf.OPTConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            ffn_dim=INTERMEDIATE,
            max_position_embeddings=MAX_POS,
            word_embed_proj_dim=HIDDEN,
            dropout=0.0,
            attention_dropout=0.0,
            **_common(),
        )
    if name == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_POS,
            rotary_pct=0.5,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            **_common(),
        )
    raise KeyError(f"no tiny model {name!r}; choose one of {list(FAMILIES)}")


def build(name: str, seed: int = 0, head: str = "base") -> nn.Module:
    """A fresh tiny model of family ``name`` in eval mode.

    Args:
        name: one of :data:`FAMILIES`.
        seed: torch seed for the random weights (same seed, same weights).
        head: ``"base"`` (the bare model, ``AutoModel``), ``"lm"`` (``AutoModelForCausalLM``,
            decoders only) or ``"cls"`` (``AutoModelForSequenceClassification``, 2 labels).
    """
    import transformers as tf

    cfg = config(name)
    cfg._attn_implementation = "eager"
    if head == "cls":
        cfg.num_labels = 2
    auto = {
        "base": tf.AutoModel,
        "lm": tf.AutoModelForCausalLM,
        "cls": tf.AutoModelForSequenceClassification,
    }[head]
    torch.manual_seed(seed)
    model = auto.from_config(cfg, attn_implementation="eager")
    # from_config leaves some weights (biases, LayerNorms) at constant init: randomise every
    # parameter a little so biases and slices are distinguishable in the tests.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.float().eval()


def input_ids(batch: int = 2, seq: int = 7, seed: int = 0) -> torch.Tensor:
    """Random token ids (batch, seq) in [3, VOCAB), avoiding the special ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def output_tensor(out) -> torch.Tensor:
    """The main output tensor of a transformers model output (logits or last hidden state)."""
    for name in ("logits", "last_hidden_state"):
        t = getattr(out, name, None)
        if t is not None:
            return t
    raise TypeError(f"no logits or last_hidden_state in {type(out).__name__}")


def forward(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``model`` on ``ids`` (default :func:`input_ids`) without grad; return the main output."""
    ids = input_ids() if ids is None else ids
    with torch.no_grad():
        return output_tensor(model(input_ids=ids, attention_mask=torch.ones_like(ids)))


def set_random_B(model: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Overwrite every injected LoRA B (d, r) with N(0, std²) entries (B is zero after injection)."""
    from lora_repro.lora import iter_factors

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, factor in iter_factors(model):
            factor.lora_B.copy_(torch.randn(factor.lora_B.shape, generator=g) * std)
