"""Paired verdicts: arms that share a warm-up per seed, compared seed by seed.

Two arms of a reproduction that start from the same warmed-up (or pre-trained) model of a seed
differ, seed by seed, by the method alone; their per-seed differences d_s = a_s - b_s are the
evidence (the seeds' spread of each arm, which the shared start inflates alike, cancels). A claim
"a > b" (direction +1) or "a < b" (direction -1) is read off the differences:

    mean d = (1/n) sum_s d_s,   90% interval: mean d ± t_{0.95, n-1} * sd(d) / sqrt(n)   (sd with ddof=1)

- **shown**: the interval excludes 0 on the claimed side;
- **contradicted**: it excludes 0 on the other side;
- **not decided (n seeds)**: it holds 0, or there is one seed (no interval). A comparison that
  3 seeds do not decide is to be rerun with `SEEDS_FOR_A_COMPARISON` (5).

The t interval decides. For n <= `SIGN_TEST_MAX_N` seeds the exact one-sided sign test's p-value
in the claimed direction is reported beside it, as a check that assumes nothing about the
differences' distribution; it does not decide, because with n seeds its smallest p-value is
2^-n (0.125 at 3 seeds, 0.0625 at 4), so below 5 seeds it could never reach the 0.05 that a 90%
two-sided interval's side corresponds to.

A method that trades reward against distance from the reference is compared at matched distance:
`pareto_front` of each arm's (log-ratio, reward) settings of a seed, `frontier_value` interpolates
it, and `matched_gap` is the mean gap between two arms' frontiers over the log-ratios both reach.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.90
SEEDS_FOR_A_COMPARISON = 5
SIGN_TEST_MAX_N = 5


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
  """Two-sided Student-t interval of the mean of `values` (n - 1 dof); None for fewer than 2 values."""
  x = np.asarray(values, dtype=np.float64)
  if x.size < 2:
    return None
  half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * float(np.std(x, ddof=1)) / math.sqrt(x.size)
  mean = float(np.mean(x))
  return mean - half, mean + half


def sign_test_p(values: Sequence[float], direction: int) -> float | None:
  """Exact one-sided sign test: P(at least k of the m nonzero values have the claimed sign) when
  each sign is a fair coin (k: the number that do). Zeros are dropped; None when all are zero."""
  _check_direction(direction)
  signs = [np.sign(v) for v in values if v != 0]
  m, k = len(signs), sum(s == direction for s in signs)
  if m == 0:
    return None
  return sum(math.comb(m, i) for i in range(k, m + 1)) / 2 ** m


def _check_direction(direction: int) -> None:
  if direction not in (1, -1):
    raise ValueError(f"direction must be +1 (claimed a > b) or -1 (claimed a < b), got {direction}")


@dataclasses.dataclass(frozen=True)
class Paired:
  """Per-seed differences of two arms, their summary and the verdict on a claimed direction.

  Attributes:
    differences: seed -> a - b (seeds both arms have), in seed order.
    direction: +1 when the claim is a > b, -1 when it is a < b.
    mean: the mean difference.
    interval: the `confidence` t interval of the mean, or None for one seed.
    sign_p: the exact one-sided sign test's p-value in the claimed direction, for at most
      `SIGN_TEST_MAX_N` seeds (reported, not deciding), else None.
    confidence: the interval's two-sided coverage.
  """
  differences: Mapping[int, float]
  direction: int
  mean: float
  interval: tuple[float, float] | None
  sign_p: float | None
  confidence: float = CONFIDENCE

  @property
  def n(self) -> int:
    return len(self.differences)

  @property
  def side(self) -> int:
    """+1 when the interval lies above 0, -1 when below, 0 when it holds 0 (or there is none)."""
    if self.interval is None:
      return 0
    low, high = self.interval
    return 1 if low > 0 else -1 if high < 0 else 0

  @property
  def verdict(self) -> str:
    """"shown", "contradicted" or "not decided"."""
    return ("not decided" if self.side == 0 else "shown" if self.side == self.direction else "contradicted")


def paired_differences(a: Mapping[int, float], b: Mapping[int, float] | None = None) -> dict[int, float]:
  """seed -> a[seed] - b[seed] over the seeds both have (b None: a itself, a one-sample claim)."""
  if b is None:
    return {s: float(a[s]) for s in sorted(a)}
  return {s: float(a[s]) - float(b[s]) for s in sorted(set(a) & set(b))}


def paired(a: Mapping[int, float], b: Mapping[int, float] | None = None, *, direction: int = 1,
           confidence: float = CONFIDENCE) -> Paired | None:
  """The paired comparison of `a` and `b` (seed -> value; b None: `a` holds the differences
  already, e.g. each seed's change from its start); None when no seed has both."""
  _check_direction(direction)
  d = paired_differences(a, b)
  if not d:
    return None
  values = list(d.values())
  return Paired(differences=d, direction=direction, mean=float(np.mean(values)),
                interval=t_interval(values, confidence),
                sign_p=sign_test_p(values, direction) if len(values) <= SIGN_TEST_MAX_N else None,
                confidence=confidence)


def observed(a: Mapping[int, float], b: Mapping[int, float] | None = None, *,
             confidence: float = CONFIDENCE) -> Paired | None:
  """`paired` with no claimed direction: the side the mean difference lies on (its sign test is
  that side's), for differences reported beside a claim rather than deciding one."""
  result = paired(a, b, confidence=confidence)
  return result if result is None or result.mean >= 0 else paired(a, b, direction=-1, confidence=confidence)


def _signed(x: float, digits: int) -> str:
  return f"{x:+.{digits}f}"


def describe(result: Paired, what: str, digits: int = 3) -> str:
  """`what` per seed (0: -0.082, 1: -0.105, 2: -0.055), mean -0.081, 90% interval [-0.123, -0.039]
  (t, 2 dof), one-sided sign test p = 0.125: every number of the verdict, from the differences."""
  per_seed = ", ".join(f"{s}: {_signed(v, digits)}" for s, v in result.differences.items())
  text = f"{what} per seed ({per_seed}), mean {_signed(result.mean, digits)}"
  if result.interval is None:
    return text + " (one seed: no interval)"
  low, high = result.interval
  text += (f", {result.confidence:.0%} interval [{_signed(low, digits)}, {_signed(high, digits)}] "
           f"(t, {result.n - 1} dof)")
  if result.sign_p is not None:
    text += f", one-sided sign test p = {result.sign_p:.3f}"
  return text


def verdict_text(result: Paired | None, *, comparison: bool = True) -> str:
  """"shown", "contradicted" or "not decided (n seeds)", the last followed, for a comparison that
  fewer than `SEEDS_FOR_A_COMPARISON` seeds leave open, by the number of seeds it needs."""
  if result is None:
    return "not decided (no seed has both arms)"
  if result.verdict != "not decided":
    return result.verdict
  text = f"not decided ({result.n} seed{'s' if result.n != 1 else ''})"
  if comparison and result.n < SEEDS_FOR_A_COMPARISON:
    text += (f"; a comparison that {result.n} seed{'s do' if result.n != 1 else ' does'} not decide needs "
             f"{SEEDS_FOR_A_COMPARISON} seeds (a later rerun with `--seeds={SEEDS_FOR_A_COMPARISON}`)")
  return text


def combine(results: Sequence[Paired | None], *, comparison: bool = True) -> str:
  """The verdict text of a claim made of several paired comparisons that must all hold: "shown"
  when every one is shown, "contradicted" when any is contradicted, else the `verdict_text` of
  the first one left open."""
  if results and all(r is not None and r.verdict == "shown" for r in results):
    return "shown"
  if any(r is not None and r.verdict == "contradicted" for r in results):
    return "contradicted"
  return next((verdict_text(r, comparison=comparison) for r in results if r is None or r.verdict == "not decided"),
              "not decided (no comparison)")


# -- frontiers: reward at matched distance from the reference ---------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
  """The settings no other setting beats: sorted by x (a distance, e.g. the log-ratio), each with
  a larger y (the reward) than every setting of smaller or equal x."""
  front: list[tuple[float, float]] = []
  for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
    if not front or y > front[-1][1]:  # a tie in x: the first, the largest y, is kept
      front.append((float(x), float(y)))
  return front


def frontier_value(front: Sequence[tuple[float, float]], x: float) -> float | None:
  """The front's reward at distance `x`, linear between its points; None outside its range (no
  extrapolation)."""
  if not front or x < front[0][0] or x > front[-1][0]:
    return None
  xs, ys = zip(*front)
  return float(np.interp(x, xs, ys))


def matched_gap(points_a: Sequence[tuple[float, float]], points_b: Sequence[tuple[float, float]], *,
                min_settings: int = 2, num: int = 201) -> float | None:
  """Mean over the distances both fronts reach of front_a(x) - front_b(x) (x on `num` evenly
  spaced points of the overlap; at its one point when the overlap is a point).

  None when an arm has fewer than `min_settings` settings (one setting is no frontier) or the
  two fronts' ranges do not overlap.
  """
  if len(points_a) < min_settings or len(points_b) < min_settings:
    return None
  front_a, front_b = pareto_front(points_a), pareto_front(points_b)
  low, high = max(front_a[0][0], front_b[0][0]), min(front_a[-1][0], front_b[-1][0])
  if low > high:
    return None
  xs = np.linspace(low, high, num) if high > low else np.array([low])
  return float(np.mean([frontier_value(front_a, x) - frontier_value(front_b, x) for x in xs]))
