"""The statistics of the claims report: Student-t intervals over seeds, one-sided tests, power.

Per-seed values (or seed pairs) of one quantity are summarized by their mean and a Student-t
interval (n − 1 degrees of freedom). A claim's verdict comes from one-sided t-tests at
:data:`ALPHA` = 5%:

* **directional** ("mean > level"): ``holds`` when the one-sided 95% lower bound exceeds the
  level, ``fails`` when the upper bound is below it;
* **equivalence** (TOST, "|mean| < δ"): ``holds`` when the 90% interval lies within ±δ, ``fails``
  when it lies wholly outside;
* **non-inferiority** ("mean > −δ") and **non-superiority** ("mean < δ"): its two halves;
* anything else is ``inconclusive``, with the seeds that would resolve it at :data:`POWER` = 80%
  (noncentral t, the observed mean taken as the true one).

Pure functions of float sequences; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

ALPHA = 0.05  # one-sided level of every test
POWER = 0.8  # the power the seeds-needed estimate aims for
MAX_SEEDS = 1000  # "seeds needed" above this is reported as None (practically unresolvable)

VERDICTS = ("holds", "fails", "inconclusive")


@dataclass(frozen=True)
class Summary:
    """Mean and Student-t interval of per-seed values.

    Attributes:
        n: number of values.
        mean: their mean.
        sd: sample standard deviation (ddof 1); ``None`` for n = 1.
        lo, hi: the 95% two-sided interval; ``None`` for n = 1.
    """

    n: int
    mean: float
    sd: float | None
    lo: float | None
    hi: float | None


def summarize(values: Sequence[float], conf: float = 0.95) -> Summary:
    """Mean and two-sided ``conf`` Student-t interval (n − 1 degrees of freedom).

    Raises:
        ValueError: for no values.
    """
    x = np.asarray(values, float)
    if x.size == 0:
        raise ValueError("no values to summarize")
    m = float(x.mean())
    if x.size == 1:
        return Summary(1, m, None, None, None)
    sd = float(x.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + conf / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return Summary(int(x.size), m, sd, m - half, m + half)


def one_sided_bounds(values: Sequence[float], alpha: float = ALPHA) -> tuple[float, float] | None:
    """(lower, upper) one-sided 1 − ``alpha`` bounds of the mean; ``None`` for n = 1."""
    s = summarize(values, 1 - 2 * alpha)
    return None if s.lo is None else (s.lo, s.hi)


def power_one_sided(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a one-sided one-sample t-test of mean > 0 at true mean ``effect``, spread ``sd``."""
    if n < 2 or sd <= 0:
        return 0.0
    crit = scipy.stats.t.ppf(1 - alpha, n - 1)
    return float(scipy.stats.nct.sf(crit, n - 1, effect * math.sqrt(n) / sd))


def seeds_for_power(effect: float, sd: float, power: float = POWER) -> int | None:
    """Smallest n ≥ 2 whose one-sided test at 5% detects ``effect`` with ``power``.

    ``None`` when the effect is 0 (no n resolves it) or more than :data:`MAX_SEEDS` are needed.
    """
    effect = abs(effect)
    if effect == 0 or not math.isfinite(effect):
        return None
    if sd <= 0:
        return 2
    # normal approximation as a start, then the exact noncentral t
    z = scipy.stats.norm.ppf(1 - ALPHA) + scipy.stats.norm.ppf(power)
    n = max(2, int((z * sd / effect) ** 2) - 2)
    while n <= MAX_SEEDS:
        if power_one_sided(effect, sd, n) >= power:
            return n
        n += 1
    return None


def directional(values: Sequence[float], level: float = 0.0) -> tuple[str, Summary]:
    """Verdict of "mean > level" (one-sided, 5%) and the 95% summary of ``values``."""
    s = summarize(values)
    b = one_sided_bounds(values)
    if b is None:
        return "inconclusive", s
    lo, hi = b
    if lo > level:
        return "holds", s
    if hi < level:
        return "fails", s
    return "inconclusive", s


def equivalence(values: Sequence[float], delta: float) -> tuple[str, Summary]:
    """TOST verdict of "|mean| < delta": the 90% interval within ±δ holds, wholly outside fails."""
    s = summarize(values)
    b = one_sided_bounds(values)
    if b is None:
        return "inconclusive", s
    lo, hi = b
    if -delta < lo and hi < delta:
        return "holds", s
    if lo >= delta or hi <= -delta:
        return "fails", s
    return "inconclusive", s


def non_inferiority(values: Sequence[float], delta: float) -> tuple[str, Summary]:
    """Verdict of "mean > −δ" (A at least as good as B when values are A − B)."""
    return directional(values, -delta)


def non_superiority(values: Sequence[float], delta: float) -> tuple[str, Summary]:
    """Verdict of "mean < δ" (A no better than B by δ when values are A − B)."""
    verdict, _ = directional([-v for v in values], -delta)
    return verdict, summarize(values)


def seeds_needed(
    kind: str, values: Sequence[float], level: float, prior_sd: float | None
) -> int | None:
    """Seeds at which an inconclusive verdict would resolve (80% power), at the observed spread
    (or ``prior_sd`` with one value), assuming the observed mean is the true one.

    ``kind`` is ``directional`` (distance of the mean from ``level``), ``equivalence`` (from the
    nearer margin ±``level``), ``noninferiority`` (from −``level``) or ``nonsuperiority`` (from
    +``level``).
    """
    x = np.asarray(values, float)
    m = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else prior_sd
    if sd is None:
        return None
    if kind == "directional":
        effect = m - level
    elif kind == "equivalence":
        effect = level - abs(m)
    elif kind == "noninferiority":
        effect = m + level
    elif kind == "nonsuperiority":
        effect = level - m
    else:
        raise ValueError(f"unknown test kind {kind!r}")
    return seeds_for_power(effect, sd)


TESTS: dict[str, Callable[[Sequence[float], float], tuple[str, Summary]]] = {
    "directional": directional,
    "equivalence": equivalence,
    "noninferiority": non_inferiority,
    "nonsuperiority": non_superiority,
}
