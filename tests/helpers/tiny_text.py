"""A tiny word-level tokenizer and tiny models saved to a folder, for fast tests of the task paths.

The tokenizer splits on whitespace and punctuation and knows :data:`WORDS` (anything else is
``[UNK]``); ``[PAD]`` = 0, ``[BOS]`` = 1, ``[EOS]`` = 2, as in ``tiny_models``. A sentence pair is
encoded ``[BOS] a [EOS] b [EOS]``. :func:`save_tiny` writes a model and this tokenizer with
``save_pretrained``, so the training code loads them as ``model.source=path`` (no hub).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import tiny_models

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
WORDS = (
    "review sentiment negative positive premise hypothesis does the entail yes maybe no or answer "
    "sentence table columns question sql select from where and = name player team score what is "
    "who summarize dialogue summary meaning representation description a an it was good bad great "
    "terrible movie film food pub near city centre price cheap high you me we : ? . , | [ ] "
    "hi hello thanks ok see tomorrow at 5 anna tom eattype area restaurant coffee shop"
).split()
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}


def tokenizer():
    """The tiny tokenizer as a ``PreTrainedTokenizerFast`` (lower-cases its input)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single="$A",
        pair="[BOS] $A [EOS] $B:1 [EOS]:1",
        special_tokens=[("[BOS]", 1), ("[EOS]", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
    )


def save_tiny(folder: Path, family: str = "llama", head: str = "lm", seed: int = 0) -> Path:
    """Save a tiny ``family`` model with the tiny tokenizer: ``head="lm"`` a causal LM, ``"base"``
    the bare encoder (a classification head of any size is added when it is loaded)."""
    import transformers as tf

    cfg = tiny_models.config(family)
    cfg.vocab_size = len(VOCAB)
    cfg._attn_implementation = "eager"
    auto = tf.AutoModelForCausalLM if head == "lm" else tf.AutoModel
    torch.manual_seed(seed)
    model = auto.from_config(cfg, attn_implementation="eager")
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
