"""Evaluation metrics of a process reward model (PRM): Best-of-N reranking and step-error localisation.

Pure numpy (numpy arrays in, floats / numpy arrays out); nothing here needs JAX.

Best-of-N (Yuan et al., "Free Process Rewards without Process Labels", arXiv 2412.01981; code
PRIME-RL/ImplicitPRM). Every problem p has M sampled solutions with outcome labels
`correct [P, M]` and PRM scores `scores [P, M]`; a solution's score aggregates its step scores
(`aggregate_steps`, "min" over the steps by default). Best-of-n draws n of the M solutions
uniformly without replacement, keeps the highest-scored one (ties broken uniformly at random)
and is right when that one is correct. `best_of_n` returns the expectation of that accuracy
over the draws, computed exactly (`selection_probabilities`), not by sampling. The baselines:

- `pass_at_n`: an oracle that picks a correct solution whenever the n drawn hold one: the
  unbiased pass@n estimator 1 - C(M - c, n) / C(M, n) of Chen et al. (arXiv 2107.03374), c the
  number of correct solutions of the problem. `best_of_n` with an oracle score equals it.
- `majority_vote`: the most frequent final answer among the n drawn (self-consistency).
- `random_choice`: one of the n drawn at random: the mean accuracy (pass@1), whatever n.

All are averaged over the P problems with equal weight.

Exact Best-of-N. For one problem, let b_i be the number of its M solutions scored strictly
below solution i and t_i the number scored exactly as i (i included). The best score of a
uniform n-subset lies in i's tie group when the subset is drawn from the b_i + t_i solutions
scored <= s_i but not from the b_i scored < s_i alone: probability
(C(b_i + t_i, n) - C(b_i, n)) / C(M, n). The uniform tie break splits it equally over the t_i
tied solutions (they are exchangeable), so

    P(i is picked) = (C(b_i + t_i, n) - C(b_i, n)) / (t_i C(M, n)),

which is C(b_i, n - 1) / C(M, n) without ties (t_i = 1). The ratios C(k, n) / C(M, n) come
from exact integers (`math.comb`) and one correctly rounded division each.

ProcessBench (Zheng et al., arXiv 2412.06559): a solution with steps 0..L-1 is labelled with
the index of its earliest wrong step, or -1 when every step is right (the convention of
`jaxrl_reward.data.chain_sums.first_error`). A model predicts that index; the metrics
(`localisation_scores`) are the accuracy on the erroneous solutions (prediction == label), the
accuracy on the correct ones (prediction == -1) and F1, their harmonic mean. A PRM predicts
the first step whose score is below a threshold (`predict_first_error`); the threshold is the
one that maximises F1 on a separate split (`choose_threshold`), then applied unchanged to the
test split (ImplicitPRM's `eval/process_eval.sh` chooses it on ProcessBench's GSM8K subset and
passes it to the other subsets).

Shapes: `[P, M]` problems x sampled solutions; `[M, S]` solutions x step slots, with
`num_steps [M]` real steps per solution (slots from `num_steps[m]` on are padding and may hold
anything, NaN included).
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

# Names of `objectives.implicit_prm.AGGREGATES` ("min", "min_q", "sum", "last") plus "mean" and
# "prod" (the product of step probabilities, common for classifier PRMs).
AGGREGATES = ("min", "min_q", "sum", "last", "mean", "prod")


# ----------------------------------------------------------------------------- checks


def _check_n(n, num_samples: int) -> int:
  if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
    raise ValueError(f"n must be an int, got n={n!r}")
  if not 1 <= n <= num_samples:
    raise ValueError(f"n must be in [1, M] with M={num_samples} samples per problem, got n={int(n)}"
                     + (" (n > M: cannot draw n distinct samples)" if n > num_samples else ""))
  return int(n)


def _as_2d(name: str, x, what: str, dtype=None) -> np.ndarray:
  x = np.asarray(x, dtype=dtype)
  if x.ndim != 2:
    raise ValueError(f"{name} must be {what}, got shape {x.shape}")
  if x.shape[1] == 0:
    raise ValueError(f"{name} must hold at least one sample per problem (M >= 1), got shape {x.shape}")
  return x


def _check_correct(correct, shape: tuple[int, ...] | None = None, *, binary: bool = False) -> np.ndarray:
  """`correct` as float64: bool or numbers in [0, 1] (exactly 0 / 1 when `binary`)."""
  c = _as_2d("correct", correct, "[P, M] (problems x samples)")
  if shape is not None and c.shape != shape:
    raise ValueError(f"correct must have the shape of scores [P, M] = {shape}, got {c.shape}")
  if not (c.dtype == bool or np.issubdtype(c.dtype, np.number)):
    raise ValueError(f"correct must be bool or numeric, got dtype {c.dtype}")
  c = c.astype(np.float64)
  if binary and not np.all((c == 0) | (c == 1)):
    raise ValueError("correct must be bool or 0/1")
  if not np.all((c >= 0) & (c <= 1)):
    raise ValueError("correct must be bool or numbers in [0, 1]")
  return c


def _rng(rng) -> np.random.Generator:
  return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _step_mask(name: str, step_scores, num_steps, *, leading_any: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores float64 [..., S], num_steps int [...], mask [..., S] of the real steps)."""
  x = np.asarray(step_scores, dtype=np.float64)
  if leading_any:
    if x.ndim < 1:
      raise ValueError(f"{name} must be [..., S] (solutions x step slots), got shape {x.shape}")
  elif x.ndim != 2:
    raise ValueError(f"{name} must be [M, S] (solutions x step slots), got shape {x.shape}")
  s = x.shape[-1]
  if num_steps is None:
    num = np.full(x.shape[:-1], s, np.int64)
  else:
    num = np.asarray(num_steps)
    if num.shape != x.shape[:-1]:
      raise ValueError(f"num_steps must have shape {x.shape[:-1]} ({name} without its last axis), "
                       f"got {num.shape}")
    if num.dtype == bool or not (np.issubdtype(num.dtype, np.integer) or (
        np.issubdtype(num.dtype, np.floating) and np.all(num == np.round(num)))):
      raise ValueError(f"num_steps must be integers, got dtype {num.dtype}")
    num = num.astype(np.int64)
    if num.size and (num.min() < 0 or num.max() > s):
      raise ValueError(f"num_steps must be in [0, S={s}], got values in [{num.min()}, {num.max()}]")
  mask = np.arange(s) < num[..., None]
  if np.any(np.isnan(x) & mask):
    raise ValueError(f"{name} holds NaN within the first num_steps entries of a row (only padding may be NaN)")
  return x, num, mask


# ----------------------------------------------------------------------------- aggregation


def aggregate_steps(step_scores, num_steps=None, how: str = "min") -> np.ndarray:
  """One score per solution from its step scores.

  With x_0..x_{L-1} the first L = num_steps[m] entries of a row:
  - "min" (default): min_k x_k (the Implicit PRM's Best-of-N score for step rewards r^k);
  - "min_q": min_k (x_0 + ... + x_k), the minimum of the prefix sums;
  - "sum": x_0 + ... + x_{L-1};
  - "last": x_{L-1};
  - "mean": the mean of the L entries;
  - "prod": their product (for step probabilities).

  Relation to `objectives.implicit_prm.step_scores(..., aggregate=)`: given its step rewards r^k
  (`implicit_prm.step_rewards`), "min", "min_q" and "sum" here give the numbers of the same
  names there, and its "last" (q at the last step end, which is the sum of the r^k) is "sum"
  here. Given the cumulative q^k (the first output of `step_scores`), "last" here is its
  "last" / "sum" and "min" here is its "min_q".

  A solution with no step (num_steps 0) scores -inf whatever `how` (implicit_prm gives it 0),
  so Best-of-N picks it only when every drawn solution has no step (then uniformly among them).

  Args:
    step_scores: `[M, S]` step scores (any leading shape `[..., S]`, e.g. `[P, M, S]`);
      entries from `num_steps` on are padding and ignored, whatever they hold (NaN included).
      A NaN among the real steps is a ValueError.
    num_steps: `[M]` (the leading shape of step_scores) ints in [0, S], or None for all S.
    how: one of `AGGREGATES`.

  Returns:
    `[M]` float64 (the leading shape of step_scores).
  """
  if how not in AGGREGATES:
    raise ValueError(f"how={how!r} is not a known aggregation; known: {AGGREGATES}")
  x, num, mask = _step_mask("step_scores", step_scores, num_steps, leading_any=True)
  zeros = np.where(mask, x, 0.0)
  with np.errstate(invalid="ignore", over="ignore"):
    if how == "min":
      out = np.min(np.where(mask, x, np.inf), axis=-1, initial=np.inf)
    elif how == "min_q":
      out = np.min(np.where(mask, np.cumsum(zeros, axis=-1), np.inf), axis=-1, initial=np.inf)
    elif how == "sum":
      out = np.sum(zeros, axis=-1)
    elif how == "mean":
      out = np.sum(zeros, axis=-1) / np.maximum(num, 1)
    elif how == "prod":
      out = np.prod(np.where(mask, x, 1.0), axis=-1)
    else:  # "last"
      if x.shape[-1] == 0:
        out = np.zeros(num.shape)
      else:
        out = np.take_along_axis(x, np.maximum(num - 1, 0)[..., None], axis=-1)[..., 0]
  return np.where(num > 0, out, -np.inf)


# ----------------------------------------------------------------------------- Best-of-N


@functools.lru_cache(maxsize=64)
def _comb_ratios(num_samples: int, n: int) -> np.ndarray:
  """`[M + 1]` float64: C(k, n) / C(M, n) for k = 0..M, each from exact integers."""
  total = math.comb(num_samples, n)
  out = np.array([math.comb(k, n) / total for k in range(num_samples + 1)], np.float64)
  out.setflags(write=False)
  return out


def selection_probabilities(scores, n: int) -> np.ndarray:
  """Probability that each solution is the one Best-of-n picks.

  For each problem, n of its M solutions are drawn uniformly without replacement and the
  highest-scored one is picked, ties broken uniformly at random. Exact: solution i is picked
  with probability (C(b_i + t_i, n) - C(b_i, n)) / (t_i C(M, n)), b_i the number of solutions
  of its problem scored strictly below it, t_i the number scored equal to it (itself included);
  see the module docstring for the derivation.

  Args:
    scores: `[P, M]` solution scores (e.g. `aggregate_steps`); +-inf allowed, NaN is a ValueError.
    n: 1 <= n <= M.

  Returns:
    `[P, M]` float64; each row sums to 1.
  """
  s = _as_2d("scores", scores, "[P, M] (problems x samples)", np.float64)
  if np.any(np.isnan(s)):
    raise ValueError("scores holds NaN; give every solution a score (e.g. -inf for none)")
  p, m = s.shape
  n = _check_n(n, m)
  ratios = _comb_ratios(m, n)
  order = np.argsort(s, axis=1, kind="stable")
  ordered = np.take_along_axis(s, order, axis=1)
  j = np.broadcast_to(np.arange(m), (p, m))
  starts = np.ones((p, m), bool)
  starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # -inf == -inf: equal infinities tie
  ends = np.ones((p, m), bool)
  ends[:, :-1] = starts[:, 1:]
  below = np.maximum.accumulate(np.where(starts, j, 0), axis=1)  # b: first index of the tie group
  upto = np.minimum.accumulate(np.where(ends, j, m)[:, ::-1], axis=1)[:, ::-1] + 1  # b + t
  probs_sorted = (ratios[upto] - ratios[below]) / (upto - below)
  probs = np.empty_like(probs_sorted)
  np.put_along_axis(probs, order, probs_sorted, axis=1)
  return probs


def best_of_n(scores, correct, n: int, *, method: str = "exact", draws: int = 1000, rng=0) -> float:
  """Expected Best-of-n accuracy, averaged over problems.

  Args:
    scores: `[P, M]` solution scores (e.g. `aggregate_steps(step_scores, num_steps, "min")`
      reshaped to `[P, M]`); NaN is a ValueError.
    correct: `[P, M]` bool outcome labels (numbers in [0, 1] count as partial credit).
    n: solutions drawn per problem, 1 <= n <= M (n > M is a ValueError).
    method: "exact" (default; `selection_probabilities`) or "sample": Monte Carlo over `draws`
      random n-subsets per problem (ties broken at random), for checking the exact value.
    draws: number of random subsets per problem for "sample".
    rng: int seed or `np.random.Generator` for "sample" (unused by "exact").

  Returns:
    Mean over problems of the probability that the picked solution is correct.
  """
  s = _as_2d("scores", scores, "[P, M] (problems x samples)", np.float64)
  c = _check_correct(correct, s.shape)
  n = _check_n(n, s.shape[1])
  if method == "exact":
    return float(np.mean(np.sum(selection_probabilities(s, n) * c, axis=1)))
  if method != "sample":
    raise ValueError(f"method={method!r} is not one of ('exact', 'sample')")
  if np.any(np.isnan(s)):
    raise ValueError("scores holds NaN; give every solution a score (e.g. -inf for none)")
  draws = _check_draws(draws)
  gen = _rng(rng)
  per_problem = []
  for row_s, row_c in zip(s, c):
    # Each row of argsort(uniforms) is a uniformly random order; its first n entries are a
    # uniform n-subset in random order, so argmax (first of the maxima) breaks ties uniformly.
    subsets = np.argsort(gen.random((draws, s.shape[1])), axis=1)[:, :n]
    picked = subsets[np.arange(draws), np.argmax(row_s[subsets], axis=1)]
    per_problem.append(np.mean(row_c[picked]))
  return float(np.mean(per_problem))


def _check_draws(draws) -> int:
  if isinstance(draws, (bool, np.bool_)) or not isinstance(draws, (int, np.integer)) or draws < 1:
    raise ValueError(f"draws must be an int >= 1, got draws={draws!r}")
  return int(draws)


def pass_at_n(correct, n: int) -> float:
  """Unbiased pass@n (Chen et al., arXiv 2107.03374): mean over problems of 1 - C(M - c, n) / C(M, n).

  The probability that n solutions drawn without replacement from the M of a problem hold at
  least one of its c correct ones: the accuracy of Best-of-n with an oracle score.

  Args:
    correct: `[P, M]` bool (or 0/1) outcome labels.
    n: 1 <= n <= M.
  """
  c = _check_correct(correct, binary=True)
  m = c.shape[1]
  n = _check_n(n, m)
  num_correct = np.sum(c, axis=1).astype(np.int64)
  return float(np.mean(1.0 - _comb_ratios(m, n)[m - num_correct]))


def random_choice(correct, n: int = 1) -> float:
  """Accuracy of picking one of n drawn solutions uniformly: the mean accuracy (pass@1) for every n.

  Args:
    correct: `[P, M]` bool outcome labels (numbers in [0, 1] count as partial credit).
    n: checked (1 <= n <= M) but without effect: a uniform pick from a uniform subset is a
      uniform pick from all M.
  """
  c = _check_correct(correct)
  _check_n(n, c.shape[1])
  return float(np.mean(c))


def best_of_n_subset(scores, correct, keep, n: int) -> dict[str, float]:
  """Best-of-n among the kept samples of each problem only (e.g. the well-formed ones: a
  length-controlled Best-of-N), with the baselines on the same samples.

  Problem p keeps M_p = sum_m keep[p, m] of its M samples; Best-of-n_p draws n_p = min(n, M_p) of
  them (`best_of_n` on that row alone, exact). Problems with no kept sample are left out of every
  mean (their number is returned), so the baselines below are over the same problems and samples.

  Args:
    scores: `[P, M]` solution scores (NaN only where not kept).
    correct: `[P, M]` 0/1 outcome labels.
    keep: `[P, M]` bool, the samples taken into account.
    n: 1 <= n <= M.

  Returns:
    {"best_of_n": mean over kept problems of Best-of-n_p, "random": mean correctness of the kept
     samples per problem (averaged over problems), "pass_at_n": pass@n_p likewise,
     "num_problems": problems with a kept sample, "frac_kept": kept samples / all samples}; the
     three accuracies are NaN when no problem keeps a sample.
  """
  s = _as_2d("scores", scores, "[P, M] (problems x samples)", np.float64)
  c = _check_correct(correct, s.shape, binary=True)
  k = np.asarray(keep)
  if k.shape != s.shape or k.dtype != bool:
    raise ValueError(f"keep must be a bool array of the shape of scores {s.shape}, got {k.dtype} {k.shape}")
  n = _check_n(n, s.shape[1])
  if np.any(np.isnan(s) & k):
    raise ValueError("scores holds NaN on a kept sample")
  best, rand, oracle = [], [], []
  for row_s, row_c, row_k in zip(s, c, k):
    if not row_k.any():
      continue
    rs, rc = row_s[row_k][None], row_c[row_k][None]
    n_p = min(n, rs.shape[1])
    best.append(best_of_n(rs, rc, n_p))
    rand.append(float(rc.mean()))
    oracle.append(pass_at_n(rc, n_p))
  mean = lambda x: float(np.mean(x)) if x else float("nan")  # noqa: E731
  return {"best_of_n": mean(best), "random": mean(rand), "pass_at_n": mean(oracle), "num_problems": len(best),
          "frac_kept": float(k.mean())}


def pearson(x, y) -> float:
  """Pearson correlation of two `[N]` arrays (any shape, flattened) over the entries where both are
  finite (a solution without steps scores -inf under `aggregate_steps`: left out); NaN when fewer
  than two entries remain or either is constant there (e.g. an untrained implicit PRM, whose
  scores are all 0)."""
  x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"pearson needs two arrays of one size, got {x.size} and {y.size} entries")
  kept = np.isfinite(x) & np.isfinite(y)
  if kept.sum() < 2:
    return float("nan")
  dx, dy = x[kept] - x[kept].mean(), y[kept] - y[kept].mean()
  den = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
  return float(np.sum(dx * dy) / den) if den > 0 else float("nan")


# ----------------------------------------------------------------------------- majority vote


def _answer_rows(answers) -> list[list[Any]]:
  if isinstance(answers, np.ndarray):
    if answers.ndim != 2:
      raise ValueError(f"answers must be [P, M] (problems x samples), got shape {answers.shape}")
    rows = answers.tolist()
  else:
    rows = [list(r) if isinstance(r, (list, tuple, np.ndarray)) else r for r in answers]
    if any(not isinstance(r, list) for r in rows):
      raise ValueError("answers must be [P, M] (problems x samples): a sequence of rows")
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
      raise ValueError(f"answers must be [P, M]: every row must hold M answers, got row lengths {sorted(lengths)}")
  if not rows or not rows[0]:
    raise ValueError("answers must hold at least one problem and one sample per problem")
  return rows


def majority_vote(answers, correct_answer: Sequence[Hashable], n: int, *, exact_limit: int = 20_000,
                  draws: int = 1000, rng=0) -> float:
  """Expected accuracy of majority voting over n drawn answers (self-consistency), averaged over problems.

  For each problem, n of its M final answers are drawn uniformly without replacement; the most
  frequent answer wins (ties broken uniformly at random) and is right when it equals
  `correct_answer[p]`. None is no answer: it never wins; a subset of None only is wrong.
  A subset therefore counts 1 / k when the right answer is one of k tied winners: the exact
  expectation over the tie break (no random tie break is drawn).

  Exact when C(M, n) <= `exact_limit`: every n-subset is enumerated (the same subsets for
  every problem). Otherwise Monte Carlo: `draws` uniform random n-subsets per problem from
  `rng`; the estimate of a problem then has standard deviation <= 0.5 / sqrt(draws).

  Args:
    answers: `[P, M]` hashable answers (str, int, ...) or None, as an array or a sequence of
      rows; answers compare with `==` (and hash): "3" and 3 are different answers.
    correct_answer: `[P]` the reference answer of each problem (not None).
    n: 1 <= n <= M.
    exact_limit: the largest number of subsets enumerated exactly.
    draws: random subsets per problem when not exact.
    rng: int seed or `np.random.Generator` (used only when not exact).
  """
  rows = _answer_rows(answers)
  p, m = len(rows), len(rows[0])
  refs = list(correct_answer)
  if len(refs) != p:
    raise ValueError(f"correct_answer must have one answer per problem (P={p}), got {len(refs)}")
  n = _check_n(n, m)
  if any(r is None for r in refs):
    raise ValueError(f"correct_answer must not hold None (problems {[i for i, r in enumerate(refs) if r is None]})")
  exact = math.comb(m, n) <= exact_limit
  if exact:
    shared = np.array(list(itertools.combinations(range(m), n)), np.int64).reshape(-1, n)
  else:
    draws = _check_draws(draws)
    gen = _rng(rng)
  per_problem = []
  for row, ref in zip(rows, refs):
    codes: dict[Hashable, int] = {}
    try:
      coded = np.array([-1 if a is None else codes.setdefault(a, len(codes)) for a in row], np.int64)
      target = codes.get(ref, -2)
    except TypeError as err:
      raise TypeError(f"answers and correct_answer must be hashable: {err}") from None
    if target < 0:  # no sample gives the right answer
      per_problem.append(0.0)
      continue
    subsets = shared if exact else np.argsort(gen.random((draws, m)), axis=1)[:, :n]
    per_problem.append(float(np.mean(_vote_credit(coded[subsets], len(codes), target))))
  return float(np.mean(per_problem))


def _vote_credit(sub_codes: np.ndarray, num_codes: int, target: int) -> np.ndarray:
  """`[D]` credit of each subset `[D, n]` of answer codes (-1 = None): 1/k if target is one of k winners."""
  d = sub_codes.shape[0]
  valid = sub_codes >= 0
  flat = (np.arange(d)[:, None] * num_codes + sub_codes)[valid]
  counts = np.bincount(flat, minlength=d * num_codes).reshape(d, num_codes)
  top = counts.max(axis=1)
  winners = (counts == top[:, None]).sum(axis=1)
  hit = (counts[:, target] == top) & (top > 0)
  return np.where(hit, 1.0 / winners, 0.0)


# ----------------------------------------------------------------------------- ProcessBench


def predict_first_error(step_scores, num_steps, threshold: float) -> np.ndarray:
  """Index of the first real step scored strictly below `threshold`, -1 if none.

  Args:
    step_scores: `[M, S]`; entries from num_steps[m] on are padding (ignored, NaN allowed).
    num_steps: `[M]` ints in [0, S], or None for all S. A solution with no step predicts -1.
    threshold: a float (not NaN); -inf flags nothing, +inf flags every step scored below +inf.

  Returns:
    `[M]` int64 in [-1, num_steps).
  """
  x, _, mask = _step_mask("step_scores", step_scores, num_steps, leading_any=False)
  threshold = _check_threshold(threshold)
  flagged = mask & (x < threshold)
  if x.shape[1] == 0:
    return np.full(x.shape[0], -1, np.int64)
  return np.where(flagged.any(axis=1), np.argmax(flagged, axis=1), -1).astype(np.int64)


def _check_threshold(threshold) -> float:
  if np.ndim(threshold) != 0 or isinstance(threshold, (bool, np.bool_)) or np.isnan(float(threshold)):
    raise ValueError(f"threshold must be a float, not NaN, got threshold={threshold!r}")
  return float(threshold)


def _check_labels(name: str, x, shape=None) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name} must be [M] (one index per solution), got shape {a.shape}")
  if shape is not None and a.shape != shape:
    raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
  if a.size and not (np.issubdtype(a.dtype, np.integer) or (np.issubdtype(a.dtype, np.floating)
                                                           and np.all(a == np.round(a)))):
    raise ValueError(f"{name} must hold integer step indices (-1 = no error), got dtype {a.dtype}")
  a = a.astype(np.int64)
  if a.size and a.min() < -1:
    raise ValueError(f"{name} must hold step indices >= 0 or -1 (no error), got {a.min()}")
  return a


def _split_counts(truth: np.ndarray) -> tuple[int, int]:
  num_err, num_ok = int(np.sum(truth >= 0)), int(np.sum(truth == -1))
  if num_err == 0:
    raise ValueError("truth holds no erroneous solution (index >= 0): acc_erroneous is undefined")
  if num_ok == 0:
    raise ValueError("truth holds no correct solution (-1): acc_correct is undefined")
  return num_err, num_ok


def _f1(acc_err, acc_ok):
  acc_err, acc_ok = np.asarray(acc_err, np.float64), np.asarray(acc_ok, np.float64)
  den = acc_err + acc_ok
  return np.where(den > 0, 2.0 * acc_err * acc_ok / np.where(den > 0, den, 1.0), 0.0)


def localisation_scores(pred, truth) -> dict[str, float]:
  """ProcessBench metrics of predicted earliest-error indices.

  Args:
    pred: `[M]` predicted index of the earliest wrong step, -1 = "no error".
    truth: `[M]` labelled index, -1 for a correct solution (`chain_sums.first_error`). It must
      hold both erroneous and correct solutions (ValueError saying which is missing).

  Returns:
    {"acc_erroneous": mean of pred == truth over truth >= 0,
     "acc_correct": mean of pred == -1 over truth == -1,
     "f1": 2 a b / (a + b) of those two, 0 when both are 0}.
  """
  t = _check_labels("truth", truth)
  p = _check_labels("pred", pred, t.shape)
  num_err, num_ok = _split_counts(t)
  acc_err = np.sum((p == t) & (t >= 0)) / num_err
  acc_ok = np.sum((p == -1) & (t == -1)) / num_ok
  return {"acc_erroneous": float(acc_err), "acc_correct": float(acc_ok), "f1": float(_f1(acc_err, acc_ok))}


def threshold_candidates(step_scores, num_steps=None) -> np.ndarray:
  """Default thresholds of `choose_threshold`: one per distinct prediction, sorted ascending.

  With v_0 < ... < v_k the distinct finite scores of the real steps: -inf (flags nothing), the
  midpoints (v_j + v_{j+1}) / 2 (v_{j+1} when the midpoint rounds onto v_j), +inf (flags
  every step below +inf), and v_0 when some real step scores -inf (flags those alone). Every
  prediction that some threshold gives is given by one of these.
  """
  x, _, mask = _step_mask("step_scores", step_scores, num_steps, leading_any=False)
  real = x[mask]
  v = np.unique(real[np.isfinite(real)])
  mids = v[:-1] / 2 + v[1:] / 2
  mids = np.where((mids > v[:-1]) & (mids <= v[1:]), mids, v[1:])
  extra = v[:1] if (v.size and np.any(real == -np.inf)) else v[:0]
  return np.unique(np.concatenate([[-np.inf], extra, mids, [np.inf]]))


def choose_threshold(step_scores, num_steps, truth, candidates=None) -> tuple[float, float]:
  """The threshold of `predict_first_error` that maximises ProcessBench F1 on this split.

  Exact over the candidates without predicting once per candidate: with the prefix minima
  mu_k = min(x_0..x_k), the prediction at threshold tau is correct for a correct solution iff
  tau <= mu_{L-1}, and for one whose first error is e iff mu_e < tau <= mu_{e-1} (mu_{-1} =
  +inf), so each count is a difference of sorted-array searches.

  Ties: among the candidates reaching the highest F1 the smallest is returned (the most
  lenient: it flags the fewest steps).

  Args:
    step_scores: `[M, S]` step scores; entries from num_steps[m] on are padding (ignored).
    num_steps: `[M]` ints in [0, S], or None for all S.
    truth: `[M]` earliest wrong step, -1 = correct; each index must be < num_steps[m]. Both
      erroneous and correct solutions must be present.
    candidates: thresholds to try (1-D, not NaN), or None for `threshold_candidates`.

  Returns:
    (threshold, its F1 on this split).
  """
  x, num, mask = _step_mask("step_scores", step_scores, num_steps, leading_any=False)
  t = _check_labels("truth", truth, num.shape)
  if np.any(t >= num):
    bad = np.flatnonzero(t >= num)
    raise ValueError(f"truth must be < num_steps (the index of a real step); not so for solutions {bad[:10].tolist()}")
  num_err, num_ok = _split_counts(t)
  if candidates is None:
    cand = threshold_candidates(x, num)
  else:
    cand = np.asarray(candidates, np.float64).reshape(-1) if np.ndim(candidates) <= 1 else None
    if cand is None or cand.size == 0 or np.any(np.isnan(cand)):
      raise ValueError(f"candidates must be a non-empty 1-D array of thresholds without NaN, got {candidates!r}")
    cand = np.unique(cand)
  mu = np.minimum.accumulate(np.where(mask, x, np.inf), axis=1)  # [M, S], mu_k; +inf on padding
  mu_pad = np.concatenate([np.full((len(num), 1), np.inf), mu], axis=1)  # mu_pad[:, k + 1] = mu_k
  rows = np.arange(len(num))
  ok = t == -1
  full_min = np.sort(mu_pad[rows, num][ok])  # mu_{L-1} (+inf for L = 0)
  err = ~ok
  lo = np.sort(mu_pad[rows[err], t[err] + 1])  # mu_e
  hi = np.sort(mu_pad[rows[err], t[err]])  # mu_{e-1}
  right_ok = num_ok - np.searchsorted(full_min, cand, side="left")  # #{mu_{L-1} >= tau}
  right_err = np.searchsorted(lo, cand, side="left") - np.searchsorted(hi, cand, side="left")
  f1 = _f1(right_err / num_err, right_ok / num_ok)
  best = int(np.argmax(f1))  # first maximum: the smallest threshold
  return float(cand[best]), float(f1[best])
