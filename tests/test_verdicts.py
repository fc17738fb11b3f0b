"""Paired verdicts and matched-KL frontiers on hand-made per-seed numbers."""
import math

import numpy as np
import pytest
from scipy import stats

from experiments import verdicts

# Log-prob reward minus verifier, seed by seed, in the likelihood_rewards records: below in every seed.
CONSISTENT = {0: -0.082, 1: -0.105, 2: -0.055}
NOISY = {0: 0.90, 1: -0.60, 2: 0.50}  # a larger mean difference, but of either sign


def test_consistent_small_difference_is_shown_in_its_direction_and_contradicts_the_other():
  below = verdicts.paired(CONSISTENT, direction=-1)
  assert below.verdict == "shown" and below.side == -1
  assert verdicts.paired(CONSISTENT, direction=1).verdict == "contradicted"  # the direction matters
  # As two arms: a - b gives the same differences.
  a = {0: 0.816, 1: 0.746, 2: 0.855}
  b = {s: a[s] - CONSISTENT[s] for s in a}
  result = verdicts.paired(a, b, direction=1)
  np.testing.assert_allclose(list(result.differences.values()), list(CONSISTENT.values()))
  assert result.verdict == "contradicted"
  assert verdicts.verdict_text(result) == "contradicted"


def test_noisy_large_difference_is_not_decided_and_asks_for_five_seeds():
  result = verdicts.paired(NOISY, direction=1)
  assert abs(result.mean) > abs(np.mean(list(CONSISTENT.values())))
  assert result.verdict == "not decided" and result.side == 0
  text = verdicts.verdict_text(result)
  assert text.startswith("not decided (3 seeds)") and "needs 5 seeds" in text and "--seeds=5" in text
  assert "needs" not in verdicts.verdict_text(result, comparison=False)
  five = verdicts.paired({**NOISY, 3: 0.4, 4: -0.2}, direction=1)
  assert five.verdict == "not decided" and verdicts.verdict_text(five) == "not decided (5 seeds)"


@pytest.mark.parametrize("values", [list(CONSISTENT.values()), list(NOISY.values()), [0.3, 0.1, 0.25, 0.4, 0.05]])
def test_interval_matches_scipy(values):
  low, high = verdicts.t_interval(values)
  n = len(values)
  half = stats.t.ppf(0.95, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
  np.testing.assert_allclose([low, high], [np.mean(values) - half, np.mean(values) + half], rtol=1e-12)
  ref = stats.t.interval(0.90, n - 1, loc=np.mean(values), scale=stats.sem(values))
  np.testing.assert_allclose([low, high], ref, rtol=1e-12)
  assert verdicts.paired(dict(enumerate(values))).interval == (low, high)
  # By hand for the consistent differences: t_{0.95, 2} = 2.919986.
  if values == list(CONSISTENT.values()):
    np.testing.assert_allclose([low, high], [-0.1229, -0.0385], atol=1e-4)


def test_sign_test_is_exact_and_reported_not_deciding():
  assert verdicts.sign_test_p([-1, -2, -3], -1) == pytest.approx(0.125)  # 2^-3: the best 3 seeds can do
  assert verdicts.sign_test_p([-1, -2, -3], 1) == pytest.approx(1.0)
  assert verdicts.sign_test_p([1, -2, 3, 0], 1) == pytest.approx(0.5)  # the zero is dropped: 2 of 3
  for k, m in ((4, 5), (5, 5), (2, 4)):
    values = [1.0] * k + [-1.0] * (m - k)
    assert verdicts.sign_test_p(values, 1) == pytest.approx(stats.binomtest(k, m, 0.5, alternative="greater").pvalue)
  assert verdicts.sign_test_p([0.0, 0.0], 1) is None
  assert verdicts.paired(CONSISTENT, direction=-1).sign_p == pytest.approx(0.125)
  assert verdicts.paired({s: 1.0 + s for s in range(6)}).sign_p is None  # more than 5 seeds: not reported


def test_one_seed_and_missing_seeds():
  one = verdicts.paired({0: 0.5}, {0: 0.1})
  assert one.interval is None and one.verdict == "not decided"
  assert "one seed: no interval" in verdicts.describe(one, "d")
  assert verdicts.verdict_text(one).startswith("not decided (1 seed);")
  assert verdicts.paired({0: 1.0}, {1: 2.0}) is None  # no seed has both arms
  assert verdicts.verdict_text(None).startswith("not decided")
  assert list(verdicts.paired({0: 1.0, 1: 2.0, 2: 3.0}, {1: 0.5, 2: 0.5}).differences) == [1, 2]
  with pytest.raises(ValueError, match="direction"):
    verdicts.paired(CONSISTENT, direction=0)


def test_describe_lists_each_seed_the_mean_and_the_interval():
  text = verdicts.describe(verdicts.paired(CONSISTENT, direction=-1), "log-prob minus verifier")
  assert text.startswith("log-prob minus verifier per seed (0: -0.082, 1: -0.105, 2: -0.055), mean -0.081")
  assert "90% interval [-0.123, -0.038] (t, 2 dof)" in text and "sign test p = 0.125" in text


def test_combine_needs_every_part():
  shown, noisy = verdicts.paired(CONSISTENT, direction=-1), verdicts.paired(NOISY)
  assert verdicts.combine([shown, shown]) == "shown"
  assert verdicts.combine([shown, verdicts.paired(CONSISTENT, direction=1)]) == "contradicted"
  assert verdicts.combine([shown, noisy]).startswith("not decided (3 seeds)")
  observed = verdicts.observed(CONSISTENT)
  assert observed.direction == -1 and observed.verdict == "shown"


def test_frontier_interpolates_the_pareto_front():
  # Arm A: reward x at log-ratio x; a dominated setting (more log-ratio, less reward) is dropped.
  a = [(3.0, 3.0), (1.0, 1.0), (4.0, 2.0)]
  assert verdicts.pareto_front(a) == [(1.0, 1.0), (3.0, 3.0)]
  front = verdicts.pareto_front(a)
  assert verdicts.frontier_value(front, 2.5) == pytest.approx(2.5)
  assert verdicts.frontier_value(front, 0.5) is None and verdicts.frontier_value(front, 3.5) is None
  # Arm B: 1 + (x - 2) / 2 on [2, 4]. Overlap [2, 3]: A - B = x / 2, mean 1.25 over it.
  b = [(2.0, 1.0), (4.0, 2.0)]
  assert verdicts.matched_gap(a, b) == pytest.approx(1.25)
  assert verdicts.matched_gap(b, a) == pytest.approx(-1.25)
  # At one setting a method has no frontier; disjoint ranges have no matched log-ratio.
  assert verdicts.matched_gap(a, [(2.0, 1.0)]) is None
  assert verdicts.matched_gap([(0.0, 0.0), (1.0, 1.0)], [(2.0, 0.0), (3.0, 5.0)]) is None
  # Higher reward at one setting is not a win at matched log-ratio: B' beats A only by moving further.
  assert verdicts.matched_gap([(1.0, 1.0), (2.0, 2.0)], [(1.0, 0.5), (4.0, 3.5)]) > 0
