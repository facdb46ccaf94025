"""The claims report's statistics (analysis/stats.py) against scipy and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from analysis import stats


def test_interval_is_scipys_student_t():
    x = [0.8, 1.3, 0.2, 0.9]
    s = stats.summarize(x)
    lo, hi = scipy.stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy.stats.sem(x))
    assert (s.n, s.mean) == (4, pytest.approx(0.8)) and (s.lo, s.hi) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    assert stats.summarize([3.0]) == stats.Summary(1, 3.0, None, None, None)


def test_one_sided_bounds_are_the_90_percent_interval():
    x = [1.0, 2.0, 4.0]
    lo, hi = stats.one_sided_bounds(x)
    assert (lo, hi) == pytest.approx(
        scipy.stats.t.interval(0.90, 2, loc=np.mean(x), scale=scipy.stats.sem(x))
    )


def test_power_and_seeds_needed_hand_case():
    # one-sided one-sample t at 5%, effect = 1 sd: the textbook n for 80% power is 8
    assert stats.seeds_for_power(1.0, 1.0) == 8
    assert stats.power_one_sided(1.0, 1.0, 7) < 0.8 <= stats.power_one_sided(1.0, 1.0, 8)
    # power equals a direct noncentral-t computation
    n, d = 5, 0.7
    crit = scipy.stats.t.ppf(0.95, n - 1)
    assert stats.power_one_sided(d, 1.0, n) == pytest.approx(
        scipy.stats.nct.sf(crit, n - 1, d * math.sqrt(n))
    )
    assert stats.seeds_for_power(0.0, 1.0) is None and stats.seeds_for_power(1e-3, 1.0) is None


@pytest.mark.parametrize(
    ("values", "level", "verdict"),
    [([1.0, 1.2, 0.9], 0.0, "holds"), ([-1.0, -1.2, -0.9], 0.0, "fails"),
     ([1.0, -1.0, 0.5], 0.0, "inconclusive"), ([2.0], 0.0, "inconclusive"),
     ([0.6, 0.7, 0.65], 0.5, "holds")],
)  # fmt: skip
def test_directional(values, level, verdict):
    assert stats.directional(values, level)[0] == verdict


@pytest.mark.parametrize(
    ("values", "verdict"),
    [([0.1, -0.1, 0.05], "holds"), ([5.0, 5.2, 4.9], "fails"), ([-5.0, -5.2, -4.9], "fails"),
     ([0.9, -0.9, 2.5], "inconclusive"), ([0.0], "inconclusive")],
)  # fmt: skip
def test_equivalence_tost(values, verdict):
    assert stats.equivalence(values, 1.0)[0] == verdict


def test_non_inferiority_and_non_superiority():
    assert stats.non_inferiority([-0.2, 0.1, -0.1], 1.0)[0] == "holds"
    assert stats.non_inferiority([-3.0, -3.2, -2.9], 1.0)[0] == "fails"
    assert stats.non_superiority([-2.0, -1.5, -1.8], 1.0)[0] == "holds"  # worse is "does not help"
    assert stats.non_superiority([3.0, 3.2, 2.9], 1.0)[0] == "fails"
