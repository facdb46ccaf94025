"""Evaluation metrics of the paper's tasks, computed with maintained libraries.

* ``accuracy``: share of correct labels (MNLI, SST-2, Rotten Tomatoes).
* ``exact_match`` (WikiSQL, paper Tables 5 and 6): the generated SQL string equals the reference
  ``sql.human_readable`` string after :func:`normalize_text` (Unicode NFKC, case-folded,
  whitespace runs collapsed to one space, ends stripped). Nothing else is normalised: condition
  order, quoting and column-name spelling must match. This is stricter than WikiSQL's
  logical-form accuracy (which compares ``sel``/``agg``/``conds`` as a structure, conditions
  unordered) and is not execution accuracy (no query is run).
* ``rouge`` → ``rouge1``, ``rouge2``, ``rougeL`` (SAMSum, E2E): F1 from Google's ``rouge-score``
  (Porter stemming on, its default tokeniser), averaged over examples; with several references the
  best-scoring reference counts per example. In [0, 1].
* ``bleu``, ``chrf``, ``ter`` (E2E): corpus-level scores from ``sacrebleu`` (13a tokenisation,
  mixed case, any number of references per example). In [0, 100].

E2E's official scripts (``e2e-metrics``) compute BLEU and NIST with mteval-v13a and METEOR,
ROUGE-L and CIDEr with the MS-COCO caption code, after their own tokenisation. Here BLEU is
sacrebleu's corpus BLEU (its 13a tokeniser mirrors mteval-v13a; the two are not checked against
each other here), ROUGE-L is rouge-score's LCS F1 (β = 1, best reference per output) where COCO's
uses β = 1.2, and NIST, METEOR and CIDEr are not computed. Numbers are therefore close to, not
equal to, the paper's E2E table.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from lora_repro.errors import LoraReproError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


class MetricError(LoraReproError, ValueError):
    """Unknown metric name, or predictions and references that do not line up."""


def normalize_text(s: str) -> str:
    """The form compared by :func:`exact_match`: NFKC, case-folded, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Share of ``pred[i] == gold[i]``.

    Raises:
        MetricError: for different lengths or empty input.
    """
    _check(pred, gold)
    return sum(int(p == g) for p, g in zip(pred, gold, strict=True)) / len(gold)


def exact_match(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Share of predictions equal to one of their references after :func:`normalize_text`.

    Args:
        preds: one generated string per example.
        refs: the reference strings of each example (one or more).

    Raises:
        MetricError: for different lengths or empty input.
    """
    _check(preds, refs)
    hits = 0
    for p, rs in zip(preds, refs, strict=True):
        hits += int(normalize_text(p) in {normalize_text(r) for r in rs})
    return hits / len(preds)


def rouge(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (``rouge-score``, stemming on); best reference per example.

    Returns:
        ``{"rouge1", "rouge2", "rougeL"}`` in [0, 1]; identical strings give 1.

    Raises:
        MetricError: for different lengths or empty input.
    """
    from rouge_score import rouge_scorer

    _check(preds, refs)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for p, rs in zip(preds, refs, strict=True):
        scores = scorer.score_multi(list(rs), p)
        for k in ROUGE_KEYS:
            totals[k] += scores[k].fmeasure
    return {k: v / len(preds) for k, v in totals.items()}


def _ref_streams(refs: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference slot, ``None`` where an example has fewer."""
    n = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else None for r in refs] for i in range(n)]


def sacrebleu_scores(
    preds: Sequence[str], refs: Sequence[Sequence[str]], which: Sequence[str] = ("bleu",)
) -> dict[str, float]:
    """Corpus BLEU, chrF and/or TER from ``sacrebleu`` (multi-reference), in [0, 100].

    Raises:
        MetricError: for different lengths, empty input or an unknown name.
    """
    import sacrebleu

    _check(preds, refs)
    streams = _ref_streams(refs)
    out = {}
    for name in which:
        if name == "bleu":
            out["bleu"] = sacrebleu.corpus_bleu(list(preds), streams).score
        elif name == "chrf":
            out["chrf"] = sacrebleu.corpus_chrf(list(preds), streams).score
        elif name == "ter":
            out["ter"] = sacrebleu.corpus_ter(list(preds), streams).score
        else:
            raise MetricError(f"unknown sacrebleu metric {name!r}; known: bleu, chrf, ter")
    return out


def generation_metrics(
    names: Sequence[str], preds: Sequence[str], refs: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Every metric in ``names`` (``exact_match``, ``rouge``, ``bleu``, ``chrf``, ``ter``).

    Returns:
        Metric name → value; ``rouge`` expands to ``rouge1``, ``rouge2``, ``rougeL``.

    Raises:
        MetricError: for an unknown name.
    """
    out: dict[str, float] = {}
    sb = [n for n in names if n in ("bleu", "chrf", "ter")]
    for name in names:
        if name == "exact_match":
            out["exact_match"] = exact_match(preds, refs)
        elif name == "rouge":
            out.update(rouge(preds, refs))
        elif name in ("bleu", "chrf", "ter", "accuracy"):
            continue
        else:
            raise MetricError(
                f"unknown metric {name!r}; known: exact_match, rouge, bleu, chrf, ter"
            )
    if sb:
        out.update(sacrebleu_scores(preds, refs, sb))
    return out


def _check(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise MetricError(f"{len(a)} predictions but {len(b)} references")
    if not a:
        raise MetricError("no examples to score")
