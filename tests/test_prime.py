"""Tests for objectives.prime: PRIME advantages vs a loop port of the official algebra."""
import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import prime


def np_prime(process, outcome, mask, *, k, process_coef=5.0, outcome_coef=5.0, process_gamma=1.0,
             outcome_gamma=1.0, whiten=True):
  """Loop port of PRIME's compute_rloo_returns (right-padded rows, none empty), float64."""
  mask = np.asarray(mask) > 0
  b, t = mask.shape
  sources = []
  if process is not None:
    sources.append((np.float64(process) * process_coef, mask, process_gamma))
  if outcome is not None:
    lengths = mask.sum(-1)
    reward_mask = np.zeros((b, t), bool)
    values = np.zeros((b, t))
    for i in range(b):
      reward_mask[i, lengths[i] - 1] = True
      values[i, lengths[i] - 1] = outcome[i] * outcome_coef
    sources.append((values, reward_mask, outcome_gamma))
  returns = np.zeros((b, t))
  for values, reward_mask, gamma in sources:
    r = np.where(reward_mask, values, 0.0)
    for start in range(0, b, k):
      means = [r[p][reward_mask[p]].mean() for p in range(start, start + k)]
      baseline = sum(means) / (k - 1)
      for p in range(start, start + k):
        r[p][reward_mask[p]] = r[p][reward_mask[p]] * k / (k - 1) - baseline
    disc = np.zeros_like(r)
    for step in reversed(range(t)):
      disc[:, step] = r[:, step] + (gamma * disc[:, step + 1] if step < t - 1 else 0.0)
    returns += disc
  returns = returns * mask
  if not whiten:
    return returns, returns
  mean = returns[mask].mean()
  var = ((returns[mask] - mean) ** 2).mean() * mask.sum() / (mask.sum() - 1)  # verl: unbiased
  return (returns - mean) / np.sqrt(var + 1e-8) * mask, returns


def make_inputs(seed, b=6, t=5):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, size=b)
  lengths[0] = t
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  process = (rng.normal(size=(b, t)) * mask).astype(np.float32)
  outcome = rng.integers(0, 2, size=b).astype(np.float32)
  return process, outcome, mask


class PrimeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      dict(testcase_name="both", use_process=True, use_outcome=True, gammas=(1.0, 1.0), whiten=True),
      dict(testcase_name="process_only", use_process=True, use_outcome=False, gammas=(1.0, 1.0), whiten=True),
      dict(testcase_name="outcome_only", use_process=False, use_outcome=True, gammas=(1.0, 1.0), whiten=True),
      dict(testcase_name="discounted_raw", use_process=True, use_outcome=True, gammas=(0.9, 0.5), whiten=False),
  )
  def test_matches_official_algebra(self, use_process, use_outcome, gammas, whiten):
    process, outcome, mask = make_inputs(0)
    process = process if use_process else None
    outcome = outcome if use_outcome else None
    kwargs = dict(process_coef=2.0, outcome_coef=3.0, process_gamma=gammas[0], outcome_gamma=gammas[1],
                  whiten=whiten)
    fn = self.variant(functools.partial(prime.prime_advantages, group_size=3, **kwargs))
    adv, ret = fn(process, outcome, mask)
    adv_ref, ret_ref = np_prime(process, outcome, mask, k=3, **kwargs)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_process_transform_has_the_extra_term(self):
    process, _, mask = make_inputs(1)
    k = 3
    out = self.variant(functools.partial(prime.rloo_token_rewards, group_size=k))(process, mask)
    p = np.float64(process)
    row_mean = (p * mask).sum(-1) / mask.sum(-1)
    for i in range(6):
      group = range(i - i % k, i - i % k + k)
      loo = np.mean([row_mean[j] for j in group if j != i])
      expected = (p[i] - loo + (p[i] - row_mean[i]) / (k - 1)) * mask[i]
      np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_outcome_is_rloo_at_the_last_token(self):
    _, outcome, mask = make_inputs(2)
    _, ret = self.variant(functools.partial(prime.prime_advantages, group_size=2, outcome_coef=1.0, whiten=False))(
        None, outcome, mask)
    groups = outcome.reshape(-1, 2)
    rloo = (groups - groups[:, ::-1]).reshape(-1)  # r_i - (mean of the other one)
    # gamma = 1: the return at every token of a row is its RLOO outcome advantage.
    np.testing.assert_allclose(ret, rloo[:, None] * mask, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_accuracy_filter(self):
    correct = jnp.array([1, 0, 0, 0, 0,   1, 1, 1, 1, 0,   1, 1, 1, 1, 1,   0, 0, 0, 0, 0,   1, 1, 0, 0, 0])
    keep = self.variant(functools.partial(prime.accuracy_filter, group_size=5))(correct)
    # group accuracies 0.2, 0.8, 1.0, 0.0, 0.4: the bounds are inclusive.
    np.testing.assert_array_equal(keep, np.repeat([True, True, False, False, True], 5))


@functools.partial(jax.jit, static_argnames=("k",))
def _prime(process, outcome, mask, k):
  return prime.prime_advantages(process, outcome, mask, group_size=k)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(groups=st.integers(1, 3), k=st.integers(2, 3), t=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_invariants(groups, k, t, seed):
  rng = np.random.default_rng(seed)
  b = groups * k
  lengths = rng.integers(0, t + 1, size=b)
  lengths[0] = 0  # a fully masked row
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  process = rng.normal(size=(b, t)).astype(np.float32)
  outcome = rng.integers(0, 2, size=b).astype(np.float32)
  adv, ret = (np.asarray(x) for x in _prime(process, outcome, mask, k))
  assert np.all(np.isfinite(adv)) and np.all(np.isfinite(ret))
  np.testing.assert_array_equal(adv[mask == 0], 0.0)
  np.testing.assert_array_equal(ret[mask == 0], 0.0)
  on = mask > 0
  if on.sum() > 1 and np.std(ret[on]) > 1e-3:
    np.testing.assert_allclose(adv[on].mean(), 0.0, atol=1e-4)
    np.testing.assert_allclose(adv[on].std(ddof=1), 1.0, rtol=1e-3)
  # Padding values of the process rewards are ignored.
  noisy = np.where(mask > 0, process, 1e3).astype(np.float32)
  np.testing.assert_allclose(_prime(noisy, outcome, mask, k)[0], adv, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
  process, outcome, mask = make_inputs(3)
  with pytest.raises(ValueError, match="group_size"):
    prime.prime_advantages(process, outcome, mask, group_size=4)
  with pytest.raises(ValueError, match="group_size"):
    prime.prime_advantages(process, outcome, mask, group_size=1)
  with pytest.raises(ValueError, match="process_rewards"):
    prime.prime_advantages(process[:, :2], outcome, mask, group_size=3)
  with pytest.raises(ValueError, match="outcome_rewards"):
    prime.prime_advantages(process, outcome[:2], mask, group_size=3)
  with pytest.raises(ValueError, match="neither"):
    prime.prime_advantages(None, None, mask, group_size=3)
  with pytest.raises(ValueError, match="mask must have rank 2"):
    prime.prime_advantages(None, outcome, mask[0], group_size=3)
  with pytest.raises(ValueError, match="correct must have rank 1"):
    prime.accuracy_filter(mask, group_size=3)
  with pytest.raises(ValueError, match="low=0.9"):
    prime.accuracy_filter(outcome, group_size=3, low=0.9, high=0.1)
