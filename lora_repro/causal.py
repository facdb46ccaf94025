"""The causal-LM track: prompt → target formatting, loss on target tokens, label-word scoring,
decoding.

GPT-3's experiments in the paper (Tables 5-7) fine-tune a decoder on text: each example is a
prompt followed by a target, and the loss is the language-model loss on the target tokens only.

* Classification (MNLI, SST-2, Rotten Tomatoes) as a causal LM, GPT-3 style: the target is the
  label word of the example's class (``task.label_words``, e.g. " negative" / " positive"); at
  evaluation every label word is scored by its log-likelihood after the prompt (the sum over its
  tokens) and the best-scoring one is the prediction (:func:`label_scores`).
* Generation (WikiSQL, SAMSum, E2E): the target is the reference text followed by EOS; at
  evaluation the model decodes greedily or with beam search (:func:`generate`).

Sequences are ``prompt ids + target ids``, at most ``task.max_length`` tokens: a target is cut to
``task.max_target_length`` tokens, and a prompt that does not fit loses tokens from its start
(the template's cue, "Sentiment:" or "SQL:", stays next to the target; a leading BOS is kept).
Batches are right-padded (so absolute positions are unchanged) for the loss and the scoring, and
left-padded for decoding.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lora_repro.models import eval_mode
from lora_repro.precision import autocast

IGNORE = -100


@dataclass
class Example:
    """One tokenised example: ``ids = prompt + target``, the loss on ``ids[n_prompt:]``."""

    ids: list[int]
    n_prompt: int


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens (BOS for LLaMA), unpadded."""
    enc = tokenizer(list(prompts), add_special_tokens=True, padding=False, truncation=False)
    return [list(x) for x in enc["input_ids"]]


def encode_targets(
    tokenizer: Any, targets: Sequence[str], max_tokens: int | None = None, eos: bool = True
) -> list[list[int]]:
    """Token ids of each target, no special tokens, cut to ``max_tokens``, then EOS if ``eos``.

    Raises:
        ValueError: when ``eos`` is asked for and the tokenizer has no EOS token.
    """
    enc = tokenizer(list(targets), add_special_tokens=False, padding=False, truncation=False)
    out = []
    for ids in enc["input_ids"]:
        ids = list(ids)[:max_tokens] if max_tokens else list(ids)
        if eos:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no EOS token to end generation targets with")
            ids.append(int(tokenizer.eos_token_id))
        out.append(ids)
    return out


def join(
    prompt: Sequence[int], target: Sequence[int], max_length: int, bos_id: int | None = None
) -> Example:
    """``prompt + target`` in at most ``max_length`` tokens: the prompt loses tokens from its
    start (after a leading ``bos_id``, which is kept).

    Raises:
        ValueError: when the target alone does not fit (raise ``task.max_length`` or lower
            ``task.max_target_length``).
    """
    room = max_length - len(target)
    keep_bos = bos_id is not None and len(prompt) > 0 and prompt[0] == bos_id
    if room < 1 + int(keep_bos):
        raise ValueError(
            f"a target of {len(target)} tokens leaves no room for the prompt in task.max_length="
            f"{max_length}; raise task.max_length or lower task.max_target_length"
        )
    p = list(prompt)
    if len(p) > room:
        p = [p[0], *p[len(p) - room + 1 :]] if keep_bos else p[len(p) - room :]
    return Example(p + list(target), len(p))


def encode_examples(
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    max_length: int,
    max_target_tokens: int | None = None,
    eos: bool = True,
) -> list[Example]:
    """Tokenise (prompt, target) pairs into :class:`Example` s (see :func:`join`)."""
    p_ids = encode_prompts(tokenizer, prompts)
    t_ids = encode_targets(tokenizer, targets, max_target_tokens, eos)
    bos = tokenizer.bos_token_id
    return [join(p, t, max_length, bos) for p, t in zip(p_ids, t_ids, strict=True)]


def lm_batch(
    examples: Sequence[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)``, each (b, L); ``labels`` is the
    target token at target positions and -100 on prompt and padding."""
    L = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, e.n_prompt : n] = ids[i, e.n_prompt : n]
    return ids, mask, labels


_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    cls = type(model)
    if cls not in _KEEP:
        _KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _KEEP[cls]


def forward_logits(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, first: int = 0
) -> torch.Tensor:
    """Logits at positions ``first .. L-1`` only, ``(b, L - first, V)``.

    The LM head (vocabulary × d_model) is a large part of a small model's compute; positions
    before ``first`` predict nothing that is scored, so their logits are skipped with
    transformers' ``logits_to_keep`` where the model supports it (and sliced off otherwise).
    """
    L = input_ids.shape[1]
    if first > 0 and _accepts_logits_to_keep(model):
        return model(input_ids=input_ids, attention_mask=mask, logits_to_keep=L - first).logits
    return model(input_ids=input_ids, attention_mask=mask).logits[:, first:]


def token_logits(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each labelled token, ``(n_tokens, V)`` in float32, and those tokens
    ``(n_tokens,)``: position t predicts token t + 1."""
    shifted = labels[:, 1:]
    sel = shifted != IGNORE  # (b, L-1): position t predicts a target token
    first = int(sel.any(0).nonzero().min()) if sel.any() else 0
    logits = forward_logits(model, input_ids, mask, first)[:, :-1]  # positions first .. L-2
    sel = sel[:, first:]
    return logits[sel].float(), shifted[:, first:][sel]


def lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of a batch (the training loss).

    Shapes: ``input_ids, mask, labels`` (b, L) from :func:`lm_batch`; returns a scalar.
    """
    logits, targets = token_logits(model, input_ids, mask, labels)
    return nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)


@torch.no_grad()
def sequence_logprobs(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    copies: int | None = None,
) -> torch.Tensor:
    """log p(target | prompt) of each example: the sum over its target tokens, ``(n,)``.

    ``copies``: each batch is given to the model that many times, stacked along the batch axis
    (the K adapters of a pack, :mod:`lora_repro.pack`, one per copy); the result is then
    ``(copies, n)``, row j from copy j.
    """
    c = copies or 1
    out = torch.empty(c, len(examples), dtype=torch.float64)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        ids, mask, labels = lm_batch([examples[i] for i in b], pad_id)
        first = min(examples[i].n_prompt for i in b) - 1
        with autocast(device, precision):
            logits = forward_logits(model, _stack(ids, c, device), _stack(mask, c, device), first)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tgt = _stack(labels[:, first + 1 :], c, device)
        tok = logp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        tok = tok.masked_fill(tgt == IGNORE, 0.0)
        out[:, b] = tok.sum(-1).double().cpu().view(c, len(b))
    return out if copies else out[0]


def _stack(t: torch.Tensor, copies: int, device: torch.device) -> torch.Tensor:
    """``copies`` copies of the batch ``t`` (b, ...) stacked along the batch axis, on ``device``."""
    return (t.repeat(copies, *([1] * (t.dim() - 1))) if copies > 1 else t).to(device)


@torch.no_grad()
def label_scores(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    max_length: int | None = None,
    bos_id: int | None = None,
    copies: int | None = None,
) -> torch.Tensor:
    """Score every label word after every prompt: ``(n, K)`` of log p(label word | prompt).

    GPT-3-style classification: the prediction is the argmax over the K label words. When every
    label word is one token, one forward pass per prompt gives all K scores (the next-token
    distribution after the prompt); otherwise each (prompt, label word) pair is scored with
    :func:`sequence_logprobs`. The two agree where both apply (a test).

    Args:
        prompts: token ids of each prompt (from :func:`encode_prompts`).
        label_ids: token ids of each label word (no special tokens).
        max_length: truncate prompt + label word as in training (:func:`join`); None: no limit.
        bos_id: the BOS id kept when a prompt is truncated.
        copies: as in :func:`sequence_logprobs`; the result is then ``(copies, n, K)``.
    """
    n, k, c = len(prompts), len(label_ids), copies or 1
    limit = max_length or 10**9
    if all(len(w) == 1 for w in label_ids):
        room = max(len(w) for w in label_ids)
        ex = [join(p, [0] * room, limit, bos_id) for p in prompts]
        heads = torch.tensor([w[0] for w in label_ids])
        out = torch.empty(c, n, k, dtype=torch.float64)
        order = sorted(range(n), key=lambda i: ex[i].n_prompt)
        for s in range(0, n, batch_size):
            b = order[s : s + batch_size]
            rows = [Example(ex[i].ids[: ex[i].n_prompt], ex[i].n_prompt) for i in b]
            ids, mask, _ = lm_batch(rows, pad_id)
            first = min(r.n_prompt for r in rows) - 1
            with autocast(device, precision):
                logits = forward_logits(
                    model, _stack(ids, c, device), _stack(mask, c, device), first
                )
            last = torch.tensor([r.n_prompt - 1 - first for r in rows], device=logits.device)
            nxt = logits[torch.arange(c * len(b), device=logits.device), last.repeat(c)].float()
            scores = torch.log_softmax(nxt, dim=-1)[:, heads.to(nxt.device)].double().cpu()
            out[:, b] = scores.view(c, len(b), k)
        return out if copies else out[0]
    pairs = [join(p, w, limit, bos_id) for p in prompts for w in label_ids]
    logp = sequence_logprobs(model, pairs, pad_id, batch_size, device, precision, c)
    return logp.view(c, n, k) if copies else logp.view(n, k)


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    copies: int | None = None,
) -> list[str] | list[list[str]]:
    """Decode a continuation of each prompt (greedy when ``num_beams`` is 1), as text.

    Prompts are left-padded into batches of similar length; decoding stops at EOS or after
    ``max_new_tokens``; the text is the decoded new tokens without special tokens, stripped.
    ``copies``: as in :func:`sequence_logprobs` (beam search keeps each copy's rows together);
    the result is then one list of texts per copy.
    """
    import transformers

    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    c = copies or 1
    with eval_mode(model):
        out: list[list[str]] = [[""] * len(prompts) for _ in range(c)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            L = max(len(prompts[i]) for i in b)
            ids = torch.full((len(b), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(b), L), dtype=torch.long)
            for j, i in enumerate(b):
                p = prompts[i]
                ids[j, L - len(p) :] = torch.tensor(list(p), dtype=torch.long)
                mask[j, L - len(p) :] = 1
            with autocast(device, precision):
                seqs = model.generate(
                    input_ids=_stack(ids, c, device),
                    attention_mask=_stack(mask, c, device),
                    generation_config=gen_cfg,
                )
            for copy in range(c):
                for j, i in enumerate(b):
                    new = seqs[copy * len(b) + j, L:]
                    out[copy][i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return out if copies else out[0]
