"""Task tracks: what a batch's loss is and how a split is evaluated, per (model kind, task type).

* ``seq_cls``: encoder + classification head, cross-entropy on the head's logits.
* ``causal_lm`` on a classification task: prompt → label word, LM loss on the label word's
  tokens, evaluation by label-word likelihood (GPT-3 style).
* ``causal_lm`` on a generation task: prompt → target, LM loss on the target tokens, evaluation
  by greedy or beam decoding and the task's metrics (see ``lora_repro.causal``).

Every track computes under one autocast helper (:func:`lora_repro.precision.autocast`) and
evaluates under :func:`lora_repro.models.eval_mode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lora_repro import causal
from lora_repro.config import ConfigError
from lora_repro.data import (
    ClassificationData,
    GenerationData,
    TaskData,
    format_prompt,
    pad_batch,
    tokenize,
)
from lora_repro.metrics import generation_metrics
from lora_repro.models import eval_mode
from lora_repro.precision import autocast


@torch.no_grad()
def evaluate(
    model,
    ids: list[list[int]],
    labels: list[int],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    copies: int | None = None,
) -> dict[str, float] | list[dict[str, float]]:
    """Accuracy and mean cross-entropy of a sequence-classification model on one split.

    Batches are sorted by length (dynamic padding); the model is put in eval mode and back.
    ``copies``: each batch is given to the model that many times, stacked along the batch axis
    (the K adapters of a pack, :mod:`lora_repro.pack`); one metrics dict per copy is returned.
    """
    c = copies or 1
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    correct, loss_sum = [0] * c, [0.0] * c
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in b], pad_id)
            y = torch.tensor([labels[i] for i in b], device=device)
            if c > 1:
                input_ids, mask = input_ids.repeat(c, 1), mask.repeat(c, 1)
            with autocast(device, precision):
                out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            for j, logits in enumerate(out.logits.float().split(len(b))):
                ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
                loss_sum[j] += ce.item()
                correct[j] += (logits.argmax(-1) == y).sum().item()
    n = len(ids)
    metrics = [{"accuracy": k / n, "loss": x / n} for k, x in zip(correct, loss_sum, strict=True)]
    return metrics if copies else metrics[0]


@dataclass
class Track:
    """What the loop needs from a (model kind, task type) pair.

    Attributes:
        lengths: token count of each training example (for length-grouped batches).
        batch_loss: ``(model, indices) -> loss`` of a batch of training examples (a scalar).
        evaluate: ``(model, split) -> (metrics, predictions)``; metrics hold ``loss`` and the
            task's metrics; predictions are the decoded texts of a generation task, else None.
        splits: the evaluation splits the data set has (``validation``, and ``test`` if present).
        packed_loss: ``(model, [indices of run 1, ..., of run K]) -> [loss of run 1, ...]``: the K
            batches stacked along the batch axis (padded to the longest), one forward, each run's
            loss from its own rows (:mod:`lora_repro.pack`); each equals ``batch_loss`` of that
            run's batch.
        packed_evaluate: ``(model, split, K) -> [(metrics, predictions) of copy 1, ...]``: every
            evaluation batch given to the model K times, stacked (a pack's K adapters, one per
            copy); each equals ``evaluate`` of that copy's adapter.
    """

    lengths: list[int]
    batch_loss: Callable[[Any, list[int]], torch.Tensor]
    evaluate: Callable[[Any, str], tuple[dict[str, float], list[str] | None]]
    splits: list[str]
    packed_loss: Callable[[Any, list[list[int]]], list[torch.Tensor]]
    packed_evaluate: Callable[[Any, str, int], list[tuple[dict[str, float], list[str] | None]]]

    @classmethod
    def of(cls, lengths, batch_loss, evaluate_copies, splits, packed_loss) -> Track:
        """A track whose ``evaluate_copies(model, split, copies)`` serves both ``evaluate``
        (one copy) and ``packed_evaluate``."""

        def evaluate(model, split: str):
            return evaluate_copies(model, split, 1)[0]

        return cls(lengths, batch_loss, evaluate, splits, packed_loss, evaluate_copies)


def make_track(cfg: Any, data: TaskData, tok: Any, device: torch.device, prec: str) -> Track:
    """The loss and evaluation functions of ``cfg.model.kind`` on ``cfg.task.type``.

    ``prec`` is the resolved precision (``bf16``, ``fp16`` or ``fp32``; see lora_repro.precision).

    Raises:
        ConfigError: a generation task with an encoder, or data of the wrong type.
    """
    tc, task = cfg.train, cfg.task
    ls = float(tc.get("label_smoothing", 0.0) or 0.0)
    evals = [s for s in ("validation", "test") if s in data.splits]
    if cfg.model.kind == "seq_cls":
        if not isinstance(data, ClassificationData):
            raise ConfigError(
                f"task {task.name!r} is not a classification task; model.kind=seq_cls"
            )
        return _seq_cls_track(cfg, data, tok, device, prec, ls, evals)
    if isinstance(data, ClassificationData):
        return _causal_cls_track(cfg, data, tok, device, prec, ls, evals)
    return _causal_gen_track(cfg, data, tok, device, prec, ls, evals)


def _seq_cls_track(
    cfg, data: ClassificationData, tok, device, prec: str, ls: float, evals
) -> Track:
    tc = cfg.train
    split_ids = {
        s: tokenize(tok, texts, cfg.task.max_length) for s, (texts, _) in data.splits.items()
    }
    labels = {s: y for s, (_, y) in data.splits.items()}
    pad_id = tok.pad_token_id
    train_ids, train_y = split_ids["train"], labels["train"]

    def batch_loss(model, b: list[int]) -> torch.Tensor:
        input_ids, mask = pad_batch([train_ids[i] for i in b], pad_id)
        y = torch.tensor([train_y[i] for i in b], device=device)
        with autocast(device, prec):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        if ls:
            return torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=ls)
        return torch.nn.functional.cross_entropy(logits.float(), y)

    def packed_loss(model, bs: list[list[int]]) -> list[torch.Tensor]:
        flat = [i for b in bs for i in b]
        input_ids, mask = pad_batch([train_ids[i] for i in flat], pad_id)
        y = torch.tensor([train_y[i] for i in flat], device=device)
        with autocast(device, prec):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        out, o = [], 0
        for b in bs:
            lg, yb = logits[o : o + len(b)].float(), y[o : o + len(b)]
            ce = torch.nn.functional.cross_entropy
            out.append(ce(lg, yb, label_smoothing=ls) if ls else ce(lg, yb))
            o += len(b)
        return out

    def ev(model, split: str, copies: int):
        metrics = evaluate(
            model, split_ids[split], labels[split], pad_id, tc.eval_batch_size, device, prec,
            copies,
        )  # fmt: skip
        return [(m, None) for m in metrics]

    return Track.of([len(x) for x in train_ids], batch_loss, ev, evals, packed_loss)


def _lm_batch_loss(train: list, pad_id: int, device: torch.device, precision: str, ls: float):
    """Causal-LM loss of a batch of training examples (indices into ``train``), targets only."""

    def batch_loss(model, b: list[int]) -> torch.Tensor:
        ids, mask, lab = causal.lm_batch([train[i] for i in b], pad_id)
        with autocast(device, precision):
            return causal.lm_loss(model, ids.to(device), mask.to(device), lab.to(device), ls)

    return batch_loss


def _lm_packed_loss(train: list, pad_id: int, device: torch.device, precision: str, ls: float):
    """:func:`_lm_batch_loss` of K runs' batches stacked: each run's mean over its own targets."""

    def packed_loss(model, bs: list[list[int]]) -> list[torch.Tensor]:
        ids, mask, lab = causal.lm_batch([train[i] for b in bs for i in b], pad_id)
        ids, mask, lab = ids.to(device), mask.to(device), lab.to(device)
        shifted = lab[:, 1:]
        sel = shifted != causal.IGNORE
        first = int(sel.any(0).nonzero().min()) if sel.any() else 0
        with autocast(device, precision):
            logits = causal.forward_logits(model, ids, mask, first)[:, :-1]
        sel, shifted = sel[:, first:], shifted[:, first:]
        out, o = [], 0
        for b in bs:
            rows = slice(o, o + len(b))
            lg, tg = logits[rows][sel[rows]].float(), shifted[rows][sel[rows]]
            out.append(torch.nn.functional.cross_entropy(lg, tg, label_smoothing=ls))
            o += len(b)
        return out

    return packed_loss


def _causal_cls_track(
    cfg, data: ClassificationData, tok, device, prec: str, ls: float, evals
) -> Track:
    """Prompt → label word (GPT-3 style): LM loss on the label word, evaluation by likelihood."""
    tc, task = cfg.train, cfg.task
    pad_id, bos = tok.pad_token_id, tok.bos_token_id
    label_ids = causal.encode_targets(tok, list(task.label_words), eos=False)
    prompt_ids = {
        s: causal.encode_prompts(
            tok, [format_prompt(task.prompt, f, task.name) for f in data.fields(s)]
        )
        for s in data.splits
    }
    labels = {s: y for s, (_, y) in data.splits.items()}
    train = [
        causal.join(p, label_ids[y], task.max_length, bos)
        for p, y in zip(prompt_ids["train"], labels["train"], strict=True)
    ]

    batch_loss = _lm_batch_loss(train, pad_id, device, prec, ls)

    def ev(model, split: str, copies: int):
        with eval_mode(model):
            scores = causal.label_scores(
                model, prompt_ids[split], label_ids, pad_id, tc.eval_batch_size, device,
                prec, task.max_length, bos, copies,
            )  # fmt: skip
        y = torch.tensor(labels[split])
        out = []
        for s in scores:
            acc = (s.argmax(-1) == y).double().mean().item()
            loss = -s[torch.arange(len(y)), y].mean().item()  # -log p(gold label word | prompt)
            out.append(({"accuracy": acc, "loss": loss}, None))
        return out

    packed = _lm_packed_loss(train, pad_id, device, prec, ls)
    return Track.of([len(e.ids) for e in train], batch_loss, ev, evals, packed)


def _causal_gen_track(cfg, data: GenerationData, tok, device, prec: str, ls: float, evals) -> Track:
    """Prompt → target: LM loss on the target tokens; evaluation by decoding and the metrics."""
    tc, task = cfg.train, cfg.task
    pad_id, bos = tok.pad_token_id, tok.bos_token_id

    def examples(split: str) -> list[causal.Example]:
        prompts, targets = data.pairs(split)
        targets = [task.target_prefix + t for t in targets]
        return causal.encode_examples(
            tok, prompts, targets, task.max_length, task.max_target_length, eos=True
        )

    train = examples("train")
    loss_examples = {s: examples(s) for s in evals}
    room = [0] * (task.max_target_length + 1)  # prompts truncated as in training
    gen_prompts = {
        s: [
            (e := causal.join(p, room, task.max_length, bos)).ids[: e.n_prompt]
            for p in causal.encode_prompts(tok, data.splits[s][0])
        ]
        for s in evals
    }

    batch_loss = _lm_batch_loss(train, pad_id, device, prec, ls)

    def ev(model, split: str, copies: int):
        ex = loss_examples[split]
        n_tok = sum(len(e.ids) - e.n_prompt for e in ex)
        bs = tc.eval_batch_size
        with eval_mode(model):
            logp = causal.sequence_logprobs(model, ex, pad_id, bs, device, prec, copies)
            preds = causal.generate(
                model, tok, gen_prompts[split], task.max_new_tokens, bs, device, prec,
                task.num_beams, task.length_penalty, task.no_repeat_ngram_size, copies,
            )  # fmt: skip
        out = []
        for lp, pr in zip(logp, preds, strict=True):
            metrics = generation_metrics(list(task.metrics), pr, data.splits[split][1])
            out.append(({**metrics, "loss": -lp.sum().item() / n_tok}, pr))
        return out

    packed = _lm_packed_loss(train, pad_id, device, prec, ls)
    return Track.of([len(e.ids) for e in train], batch_loss, ev, evals, packed)
