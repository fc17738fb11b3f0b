"""Tests for jaxrl_reward.prm_eval: Best-of-N / majority vote vs brute-force enumeration, pass@n golden
values, step aggregation, ProcessBench localisation and threshold choice."""
import itertools
import math

import numpy as np
import pytest

from jaxrl_reward import prm_eval


# ----------------------------------------------------------------------------- brute force


def brute_best_of_n(scores, correct, n):
  """Mean over problems of the average, over all n-subsets, of the mean correctness of the tied top."""
  per_problem = []
  for s, c in zip(np.asarray(scores, float), np.asarray(correct, float)):
    credits = []
    for subset in itertools.combinations(range(len(s)), n):
      top = max(s[i] for i in subset)
      tied = [i for i in subset if s[i] == top]
      credits.append(np.mean([c[i] for i in tied]))
    per_problem.append(np.mean(credits))
  return float(np.mean(per_problem))


def brute_selection(scores, n):
  out = np.zeros(np.shape(scores))
  for p, s in enumerate(np.asarray(scores, float)):
    subsets = list(itertools.combinations(range(len(s)), n))
    for subset in subsets:
      top = max(s[i] for i in subset)
      tied = [i for i in subset if s[i] == top]
      for i in tied:
        out[p, i] += 1.0 / len(tied) / len(subsets)
  return out


def brute_majority(answers, refs, n):
  per_problem = []
  for row, ref in zip(answers, refs):
    credits = []
    for subset in itertools.combinations(range(len(row)), n):
      votes = {}
      for i in subset:
        if row[i] is not None:
          votes[row[i]] = votes.get(row[i], 0) + 1
      if not votes:
        credits.append(0.0)
        continue
      top = max(votes.values())
      winners = [a for a, v in votes.items() if v == top]
      credits.append((ref in winners) / len(winners))
    per_problem.append(np.mean(credits))
  return float(np.mean(per_problem))


def tied_scores(rng, shape, levels=3):
  """Scores with many ties (few distinct values), some infinite."""
  s = rng.integers(0, levels, size=shape).astype(float)
  s[rng.random(shape) < 0.1] = -np.inf
  return s


# ----------------------------------------------------------------------------- Best-of-N


@pytest.mark.parametrize("m", [1, 4, 6])
def test_best_of_n_exact_matches_brute_force_with_ties(m):
  rng = np.random.default_rng(m)
  scores = tied_scores(rng, (5, m))
  scores[0] = rng.normal(size=m)  # one problem without ties
  scores[1] = 2.0  # one problem all tied
  correct = rng.random((5, m)) < 0.5
  for n in range(1, m + 1):
    got = prm_eval.best_of_n(scores, correct, n)
    assert got == pytest.approx(brute_best_of_n(scores, correct, n), abs=1e-12), n
    probs = prm_eval.selection_probabilities(scores, n)
    np.testing.assert_allclose(probs, brute_selection(scores, n), atol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_selection_probability_without_ties_is_binomial_ratio():
  # Sample ranked with b others below it is the argmax with probability C(b, n - 1) / C(M, n).
  m, n = 7, 3
  scores = np.array([[3.0, -1.0, 0.5, 10.0, 2.0, 7.0, -4.0]])
  below = np.argsort(np.argsort(scores[0]))
  want = [math.comb(int(b), n - 1) / math.comb(m, n) for b in below]
  np.testing.assert_allclose(prm_eval.selection_probabilities(scores, n)[0], want, rtol=1e-14)


def test_oracle_score_gives_pass_at_n():
  rng = np.random.default_rng(0)
  correct = rng.random((20, 8)) < 0.3
  correct[0] = False
  correct[1] = True
  for n in range(1, 9):
    assert prm_eval.best_of_n(correct.astype(float), correct, n) == pytest.approx(prm_eval.pass_at_n(correct, n),
                                                                                  abs=1e-14)


def test_constant_score_gives_mean_accuracy_for_every_n():
  rng = np.random.default_rng(1)
  correct = rng.random((10, 6)) < 0.4
  mean = correct.mean()
  for n in range(1, 7):
    assert prm_eval.best_of_n(np.full((10, 6), 0.3), correct, n) == pytest.approx(mean, abs=1e-14)
    assert prm_eval.random_choice(correct, n) == pytest.approx(mean, abs=1e-15)


def test_n_equal_one_is_mean_accuracy():
  rng = np.random.default_rng(2)
  correct = rng.random((10, 5)) < 0.5
  assert prm_eval.best_of_n(rng.normal(size=(10, 5)), correct, 1) == pytest.approx(correct.mean(), abs=1e-14)


def test_n_equal_m_is_the_top_scored_with_ties_split():
  scores = np.array([[0.1, 0.9, 0.5, 0.9],  # tie at the top: one right, one wrong -> 1/2
                     [3.0, 1.0, 2.0, 0.0],  # unique top, wrong -> 0
                     [-np.inf, -np.inf, -np.inf, 5.0]])  # unique top, right -> 1
  correct = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 1]], bool)
  assert prm_eval.best_of_n(scores, correct, 4) == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-15)


def test_best_of_n_sampled_agrees_with_exact():
  rng = np.random.default_rng(3)
  scores = tied_scores(rng, (4, 10))
  correct = rng.random((4, 10)) < 0.5
  exact = prm_eval.best_of_n(scores, correct, 4)
  sampled = prm_eval.best_of_n(scores, correct, 4, method="sample", draws=4000, rng=0)
  assert sampled == pytest.approx(exact, abs=0.03)  # std <= 0.5 / sqrt(16000) ~ 0.004
  assert sampled == prm_eval.best_of_n(scores, correct, 4, method="sample", draws=4000, rng=0)


def test_best_of_n_bad_inputs():
  scores, correct = np.zeros((2, 3)), np.zeros((2, 3), bool)
  with pytest.raises(ValueError, match=r"n.*M=3.*n=4"):
    prm_eval.best_of_n(scores, correct, 4)
  with pytest.raises(ValueError, match=r"n=0"):
    prm_eval.best_of_n(scores, correct, 0)
  with pytest.raises(ValueError, match=r"n=5"):
    prm_eval.pass_at_n(correct, 5)
  with pytest.raises(ValueError, match=r"correct must have the shape of scores"):
    prm_eval.best_of_n(scores, np.zeros((2, 4), bool), 1)
  with pytest.raises(ValueError, match=r"scores must be \[P, M\]"):
    prm_eval.best_of_n(np.zeros(3), correct, 1)
  with pytest.raises(ValueError, match=r"NaN"):
    prm_eval.best_of_n(np.array([[0.0, np.nan, 1.0]]), np.zeros((1, 3), bool), 2)
  with pytest.raises(ValueError, match=r"method='mc'"):
    prm_eval.best_of_n(scores, correct, 1, method="mc")
  with pytest.raises(ValueError, match=r"correct must be bool or 0/1"):
    prm_eval.pass_at_n(np.full((1, 3), 0.5), 1)


# ----------------------------------------------------------------------------- pass@n, random choice


def test_pass_at_n_golden_values():
  def row(m, c):
    return np.array([[1] * c + [0] * (m - c)], bool)

  assert prm_eval.pass_at_n(row(4, 1), 2) == pytest.approx(0.5, abs=1e-15)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
  assert prm_eval.pass_at_n(row(5, 2), 2) == pytest.approx(0.7, abs=1e-15)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
  assert prm_eval.pass_at_n(row(4, 0), 3) == 0.0
  assert prm_eval.pass_at_n(row(4, 4), 1) == 1.0
  assert prm_eval.pass_at_n(row(4, 1), 4) == 1.0
  assert prm_eval.pass_at_n(row(4, 3), 1) == pytest.approx(0.75, abs=1e-15)
  both = np.concatenate([row(4, 1), row(4, 0)])
  assert prm_eval.pass_at_n(both, 2) == pytest.approx(0.25, abs=1e-15)  # averaged over problems


def test_pass_at_n_large_m_is_finite_and_exact():
  correct = np.zeros((1, 1200), bool)
  correct[0, :600] = True
  got = prm_eval.pass_at_n(correct, 600)  # C(1200, 600) overflows float64
  assert got == pytest.approx(1.0 - math.comb(600, 600) / math.comb(1200, 600), abs=1e-15)


# ----------------------------------------------------------------------------- majority vote


def test_majority_vote_matches_brute_force():
  rng = np.random.default_rng(4)
  pool = ["1", "2", "3", None]
  answers = [[pool[k] for k in rng.integers(0, 4, size=6)] for _ in range(6)]
  answers[0] = [None] * 6  # never right
  answers[1] = ["1", "2", "1", "2", None, "3"]  # ties
  refs = ["1", "1", "2", "3", "1", "2"]
  for n in range(1, 7):
    got = prm_eval.majority_vote(answers, refs, n)
    assert got == pytest.approx(brute_majority(answers, refs, n), abs=1e-12), n


def test_majority_vote_hand_values():
  # n = 3 of ["a", "a", "b", None]: subsets {a,a,b} {a,a,None} -> a; {a,b,None} x2 -> tie a/b.
  answers = np.array([["a", "a", "b", None]], dtype=object)
  assert prm_eval.majority_vote(answers, ["a"], 3) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
  assert prm_eval.majority_vote(answers, ["b"], 3) == pytest.approx((0.5 + 0.5) / 4)
  assert prm_eval.majority_vote(answers, ["c"], 3) == 0.0
  assert prm_eval.majority_vote([[None, None]], [0], 2) == 0.0
  assert prm_eval.majority_vote([[7, 7, 3]], [7], 3) == 1.0  # int answers


def test_majority_vote_monte_carlo_agrees_with_exact():
  rng = np.random.default_rng(5)
  answers = rng.integers(0, 3, size=(3, 9)).tolist()
  refs = [0, 1, 2]
  exact = prm_eval.majority_vote(answers, refs, 4)
  sampled = prm_eval.majority_vote(answers, refs, 4, exact_limit=0, draws=4000, rng=1)
  assert sampled == pytest.approx(exact, abs=0.03)


def test_majority_vote_bad_inputs():
  with pytest.raises(ValueError, match=r"n.*M=2.*n=3"):
    prm_eval.majority_vote([["a", "b"]], ["a"], 3)
  with pytest.raises(ValueError, match=r"correct_answer"):
    prm_eval.majority_vote([["a", "b"]], ["a", "b"], 1)
  with pytest.raises(ValueError, match=r"row lengths"):
    prm_eval.majority_vote([["a", "b"], ["a"]], ["a", "b"], 1)


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_steps_ignores_nan_padding():
  x = np.array([[0.5, 0.2, 0.9, np.nan],
                [0.4, np.nan, np.nan, np.nan],
                [1.0, -2.0, 3.0, 0.5],
                [np.nan, np.nan, np.nan, np.nan]])
  num = np.array([3, 1, 4, 0])
  want = {
      "min": [0.2, 0.4, -2.0, -np.inf],
      "last": [0.9, 0.4, 0.5, -np.inf],
      "sum": [1.6, 0.4, 2.5, -np.inf],
      "mean": [1.6 / 3, 0.4, 0.625, -np.inf],
      "prod": [0.09, 0.4, -3.0, -np.inf],
      "min_q": [0.5, 0.4, -1.0, -np.inf],  # prefix sums (0.5, 0.7, 1.6), (1, -1, 2, 2.5)
  }
  assert set(want) == set(prm_eval.AGGREGATES)
  for how, w in want.items():
    np.testing.assert_allclose(prm_eval.aggregate_steps(x, num, how), w, rtol=1e-12, err_msg=how)
  assert prm_eval.aggregate_steps(x[2:3], None, "min")[0] == -2.0  # None: every slot is a step
  batched = prm_eval.aggregate_steps(np.stack([x, x]), np.stack([num, num]))  # [P, M, S]
  np.testing.assert_allclose(batched, [want["min"]] * 2)


def test_aggregate_steps_errors_name_the_argument():
  x = np.zeros((2, 3))
  with pytest.raises(ValueError, match=r"how='max'.*'min'.*'last'"):
    prm_eval.aggregate_steps(x, [1, 2], "max")
  with pytest.raises(ValueError, match=r"num_steps must have shape \(2,\)"):
    prm_eval.aggregate_steps(x, [1, 2, 3])
  with pytest.raises(ValueError, match=r"num_steps must be in \[0, S=3\]"):
    prm_eval.aggregate_steps(x, [1, 4])
  with pytest.raises(ValueError, match=r"NaN"):
    prm_eval.aggregate_steps(np.array([[0.0, np.nan, 1.0]]), [2])


def test_zero_step_solution_is_picked_only_when_all_drawn_have_none():
  step_scores = np.array([[[0.3, 0.1], [0.0, 0.0], [-5.0, 1.0]]])  # [P=1, M=3, S=2]
  scores = prm_eval.aggregate_steps(step_scores, np.array([[2, 0, 1]]))  # [0.1, -inf, -5]
  probs = prm_eval.selection_probabilities(scores, 2)
  np.testing.assert_allclose(probs, [[2 / 3, 0.0, 1 / 3]], atol=1e-15)
  all_empty = prm_eval.selection_probabilities(np.full((1, 3), -np.inf), 2)
  np.testing.assert_allclose(all_empty, [[1 / 3] * 3], atol=1e-15)


def test_aggregate_steps_agrees_with_implicit_prm():
  jnp = pytest.importorskip("jax.numpy")
  from objectives import implicit_prm

  rng = np.random.default_rng(6)
  rewards = jnp.asarray(rng.normal(size=(4, 12)), jnp.float32)
  ends = np.zeros((4, 12), bool)
  ends[0, [2, 5, 11]] = True
  ends[1, [0]] = True
  ends[2, [3, 4, 7, 8, 10]] = True
  ends[3, [6, 9]] = True
  r, step_mask = implicit_prm.step_rewards(rewards, ends, max_steps=6)
  r = np.asarray(r, np.float64)
  num = np.asarray(step_mask).sum(axis=1)
  for how, ours in (("min", "min"), ("min_q", "min_q"), ("sum", "sum"), ("last", "sum")):
    q, want = implicit_prm.step_scores(rewards, ends, aggregate=how, max_steps=6)
    np.testing.assert_allclose(prm_eval.aggregate_steps(r, num, ours), np.asarray(want), atol=1e-5, err_msg=how)
  q = np.asarray(q, np.float64)
  _, want_last = implicit_prm.step_scores(rewards, ends, aggregate="last", max_steps=6)
  _, want_min_q = implicit_prm.step_scores(rewards, ends, aggregate="min_q", max_steps=6)
  np.testing.assert_allclose(prm_eval.aggregate_steps(q, num, "last"), np.asarray(want_last), atol=1e-5)
  np.testing.assert_allclose(prm_eval.aggregate_steps(q, num, "min"), np.asarray(want_min_q), atol=1e-5)


# ----------------------------------------------------------------------------- ProcessBench


STEPS = np.array([[0.9, 0.8, 0.2, 0.7],  # first below 0.5: step 2
                  [0.9, 0.9, 0.9, np.nan],  # none (padding NaN ignored)
                  [0.1, 0.9, np.nan, np.nan],  # step 0
                  [0.6, 0.4, 0.3, 0.9]])  # step 1
NUM = np.array([4, 3, 2, 4])


def test_predict_first_error_hand_made():
  np.testing.assert_array_equal(prm_eval.predict_first_error(STEPS, NUM, 0.5), [2, -1, 0, 1])
  np.testing.assert_array_equal(prm_eval.predict_first_error(STEPS, NUM, 0.15), [-1, -1, 0, -1])
  np.testing.assert_array_equal(prm_eval.predict_first_error(STEPS, NUM, -np.inf), [-1] * 4)
  np.testing.assert_array_equal(prm_eval.predict_first_error(STEPS, NUM, np.inf), [0] * 4)
  # A padded slot below the threshold is not a step.
  np.testing.assert_array_equal(prm_eval.predict_first_error([[0.9, 0.0]], [1], 0.5), [-1])
  np.testing.assert_array_equal(prm_eval.predict_first_error(STEPS, [0, 0, 0, 0], np.inf), [-1] * 4)
  with pytest.raises(ValueError, match=r"threshold"):
    prm_eval.predict_first_error(STEPS, NUM, np.nan)


def test_localisation_scores_known_f1():
  truth = np.array([2, -1, 0, 2, -1, -1])
  pred = np.array([2, -1, 1, -1, 3, -1])
  # erroneous (truth 2, 0, 2): right 1 of 3; correct (3 of them): right 2 of 3.
  got = prm_eval.localisation_scores(pred, truth)
  assert got["acc_erroneous"] == pytest.approx(1 / 3)
  assert got["acc_correct"] == pytest.approx(2 / 3)
  assert got["f1"] == pytest.approx(2 * (1 / 3) * (2 / 3) / (1 / 3 + 2 / 3))
  zero = prm_eval.localisation_scores([1, 0], [0, -1])
  assert zero == {"acc_erroneous": 0.0, "acc_correct": 0.0, "f1": 0.0}
  assert prm_eval.localisation_scores([0, -1], [0, -1])["f1"] == 1.0


def test_localisation_scores_bad_inputs():
  with pytest.raises(ValueError, match=r"no erroneous"):
    prm_eval.localisation_scores([-1, -1], [-1, -1])
  with pytest.raises(ValueError, match=r"no correct"):
    prm_eval.localisation_scores([0, 1], [0, 1])
  with pytest.raises(ValueError, match=r"pred must have shape \(2,\)"):
    prm_eval.localisation_scores([0, 1, 2], [0, -1])
  with pytest.raises(ValueError, match=r"truth must hold step indices >= 0 or -1"):
    prm_eval.localisation_scores([0, 1], [0, -2])


def make_split(rng, m, s=5):
  """Separable toy split: right steps score in (0.6, 1), wrong ones in (0, 0.4)."""
  num = rng.integers(1, s + 1, size=m)
  truth = np.where(rng.random(m) < 0.5, -1, (rng.random(m) * num).astype(int))
  x = rng.uniform(0.6, 1.0, size=(m, s))
  for i in range(m):
    if truth[i] >= 0:
      x[i, truth[i]:] = rng.uniform(0.0, 0.4, size=s - truth[i])
  truth[0], truth[1] = -1, 0  # both classes present
  x[0] = rng.uniform(0.6, 1.0, size=s)
  x[1] = rng.uniform(0.0, 0.4, size=s)
  x[np.arange(s) >= num[:, None]] = np.nan
  return x, num, truth


def test_choose_threshold_separable_and_applied_to_test_split():
  rng = np.random.default_rng(7)
  x, num, truth = make_split(rng, 40)
  threshold, f1 = prm_eval.choose_threshold(x, num, truth)
  assert f1 == 1.0
  assert 0.4 <= threshold <= 0.6  # a midpoint of the gap between wrong and right scores
  x_test, num_test, truth_test = make_split(rng, 30)
  pred = prm_eval.predict_first_error(x_test, num_test, threshold)
  assert prm_eval.localisation_scores(pred, truth_test)["f1"] == 1.0
  # A threshold chosen on the wrong side of the gap does worse on the test split.
  bad = prm_eval.predict_first_error(x_test, num_test, 0.95)
  assert prm_eval.localisation_scores(bad, truth_test)["f1"] < 1.0


def test_choose_threshold_matches_brute_force():
  rng = np.random.default_rng(8)
  m, s = 30, 6
  x = rng.integers(0, 5, size=(m, s)).astype(float)  # ties
  x[rng.random((m, s)) < 0.05] = -np.inf
  num = rng.integers(0, s + 1, size=m)
  truth = np.where(rng.random(m) < 0.5, -1, (rng.random(m) * num).astype(int))
  truth[num == 0] = -1
  truth[:2] = [-1, 0]
  num[1] = max(num[1], 1)
  x[np.arange(s) >= num[:, None]] = np.nan
  cands = prm_eval.threshold_candidates(x, num)
  assert cands[0] == -np.inf and cands[-1] == np.inf
  brute = [prm_eval.localisation_scores(prm_eval.predict_first_error(x, num, c), truth)["f1"] for c in cands]
  for c, want in zip(cands, brute):
    assert prm_eval.choose_threshold(x, num, truth, candidates=[c]) == (c, pytest.approx(want, abs=1e-12))
  threshold, f1 = prm_eval.choose_threshold(x, num, truth)
  assert f1 == pytest.approx(max(brute), abs=1e-12)
  assert threshold == cands[int(np.argmax(brute))]  # the smallest of the best
  # Every threshold gives a prediction that some candidate gives.
  preds = {tuple(prm_eval.predict_first_error(x, num, c)) for c in cands}
  for t in np.linspace(-1, 6, 57):
    assert tuple(prm_eval.predict_first_error(x, num, t)) in preds


def test_choose_threshold_ties_pick_the_smallest():
  x = np.array([[0.2], [0.8]])
  truth = np.array([0, -1])
  # F1 = 1 for every threshold in (0.2, 0.8].
  assert prm_eval.choose_threshold(x, [1, 1], truth, candidates=[0.7, 0.3, 0.5, 0.9]) == (0.3, 1.0)
  assert prm_eval.choose_threshold(x, [1, 1], truth) == (0.5, 1.0)


def test_choose_threshold_bad_inputs():
  x = np.array([[0.2, 0.3], [0.8, 0.9]])
  with pytest.raises(ValueError, match=r"truth must be < num_steps"):
    prm_eval.choose_threshold(x, [1, 2], [1, -1])
  with pytest.raises(ValueError, match=r"no correct"):
    prm_eval.choose_threshold(x, [2, 2], [0, 1])
  with pytest.raises(ValueError, match=r"truth must have shape \(2,\)"):
    prm_eval.choose_threshold(x, [2, 2], [0, -1, -1])
  with pytest.raises(ValueError, match=r"candidates"):
    prm_eval.choose_threshold(x, [2, 2], [0, -1], candidates=[np.nan])


# ----------------------------------------------------------------------------- issue 23 diagnostics


def test_pearson_matches_numpy_and_skips_non_finite_scores():
  scores = np.array([[0.5, -1.0, 2.0, -np.inf], [1.5, 0.0, -0.5, 3.0]])  # -inf: a solution without steps
  lengths = np.array([[10, 30, 5, 2], [8, 20, 25, 4]])
  kept = np.isfinite(scores)
  want = np.corrcoef(scores[kept], lengths[kept])[0, 1]
  assert prm_eval.pearson(scores, lengths) == pytest.approx(want, rel=1e-12)
  assert prm_eval.pearson(-scores, lengths) == pytest.approx(-want, rel=1e-12)
  assert want < -0.5  # short solutions scored high: the signature of a learned length penalty
  assert np.isnan(prm_eval.pearson(np.zeros(4), [1, 2, 3, 4]))  # an untrained implicit PRM: undefined
  assert np.isnan(prm_eval.pearson([1.0, -np.inf], [1, 2]))
  with pytest.raises(ValueError, match="one size"):
    prm_eval.pearson([1.0, 2.0], [1.0])


def _np_best_of_n_kept(scores, correct, keep, n):
  """Best-of-n among the kept samples by enumerating the subsets (`brute_best_of_n` per problem)."""
  per_problem = [brute_best_of_n(s[k][None], c[k][None], min(n, k.sum()))
                 for s, c, k in zip(scores, correct, keep) if k.any()]
  return float(np.mean(per_problem))


def test_best_of_n_over_well_formed_samples_matches_enumeration():
  # Problem 0: the malformed (short) samples 0 and 3 score highest and one of them is correct;
  # among the well-formed ones the scorer ranks the correct sample 1 first.
  scores = np.array([[5.0, 2.0, 1.0, 4.0], [0.3, 0.3, 0.1, 0.2], [1.0, 2.0, 3.0, 4.0]])
  correct = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]])
  keep = np.array([[False, True, True, False], [True, True, True, True], [False, False, False, False]])
  for n in (1, 2, 3, 4):
    out = prm_eval.best_of_n_subset(scores, correct, keep, n)
    assert out["best_of_n"] == pytest.approx(_np_best_of_n_kept(scores, correct, keep, n), abs=1e-12)
    assert out["num_problems"] == 2 and out["frac_kept"] == pytest.approx(6 / 12)
    assert out["random"] == pytest.approx(np.mean([0.5, 0.5]))
  # By hand, n = 2: problem 0 always picks sample 1 (1.0); problem 1's six pairs give 0.5 (the tie 0, 1),
  # 0, 0, 1, 1, 0: 2.5 / 6.
  assert prm_eval.best_of_n_subset(scores, correct, keep, 2)["best_of_n"] == pytest.approx((1.0 + 2.5 / 6) / 2)
  assert prm_eval.best_of_n_subset(scores, correct, keep, 4)["pass_at_n"] == pytest.approx(1.0)
  # Over all samples, n = 4: problem 0 picks its malformed sample 0, problem 1 the tie of samples 0 and 1.
  assert prm_eval.best_of_n(scores[:2], correct[:2], 4) == pytest.approx((1.0 + 0.5) / 2)
  assert prm_eval.best_of_n_subset(scores, correct, keep, 4)["best_of_n"] == pytest.approx((1.0 + 0.5) / 2)
  none = prm_eval.best_of_n_subset(scores, correct, np.zeros_like(keep), 1)
  assert np.isnan(none["best_of_n"]) and none["num_problems"] == 0
  with pytest.raises(ValueError, match="keep must be a bool array"):
    prm_eval.best_of_n_subset(scores, correct, keep.astype(int), 1)
