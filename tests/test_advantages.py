"""Tests for objectives.advantages: numpy goldens for every estimator, invariances, edge cases."""
import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import advantages as adv

SETTINGS = hypothesis.settings(max_examples=20, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- numpy references


def np_group(rewards, group_size, scale="group", eps=1e-4, valid=None, mask=None):
  """Loop-based reference: statistics over the valid (and unmasked) entries of each group."""
  r = np.asarray(rewards, np.float64)
  b = r.shape[0]
  v = np.ones(b, bool) if valid is None else np.asarray(valid, bool)
  w = v if r.ndim == 1 else v[:, None] & (np.asarray(mask) > 0)
  out = np.zeros_like(r)
  batch_std = np.std(r[w], ddof=1) if w.sum() > 1 else 0.0
  for g in range(b // group_size):
    sl = slice(g * group_size, (g + 1) * group_size)
    rg, wg = r[sl], w[sl]
    if wg.sum() == 0:
      continue
    mean = rg[wg].mean()
    std = np.std(rg[wg], ddof=1) if wg.sum() > 1 else 0.0
    std = batch_std if scale == "batch" else std
    a = rg - mean
    if scale != "none":
      a = a / (std + eps)
    out[sl] = np.where(wg, a, 0.0)
  return out


def np_masked_whiten(values, mask):
  m = mask > 0
  mean = values[m].mean()
  var = ((values[m] - mean) ** 2).sum() / max(m.sum() - 1, 1)  # unbiased, as verl's masked_whiten
  return np.where(m, (values - mean) / np.sqrt(var + 1e-8), 0.0)


def np_last_token(rewards, mask):
  out = np.zeros(mask.shape)
  for i in range(mask.shape[0]):
    idx = np.nonzero(mask[i])[0]
    if len(idx):
      out[i, idx[-1]] = rewards[i]
  return out


def np_rfpp(token_rewards, mask, gamma):
  """verl compute_reinforce_plus_plus_outcome_advantage (loop)."""
  returns = np.zeros_like(token_rewards)
  running = np.zeros(token_rewards.shape[0])
  for t in reversed(range(token_rewards.shape[1])):
    running = token_rewards[:, t] + gamma * running
    returns[:, t] = running
    running = running * mask[:, t]
  return np_masked_whiten(returns, mask), returns * mask


def np_gae(rewards, values, mask, gamma, lam):
  """verl compute_gae_advantage_return, before whitening (loop)."""
  b, t_len = rewards.shape
  next_values, last = np.zeros(b), np.zeros(b)
  out = np.zeros_like(rewards)
  for t in reversed(range(t_len)):
    delta = rewards[:, t] + gamma * next_values - values[:, t]
    last_ = delta + gamma * lam * last
    next_values = values[:, t] * mask[:, t] + (1 - mask[:, t]) * next_values
    last = last_ * mask[:, t] + (1 - mask[:, t]) * last
    out[:, t] = last
  return out * mask, (out + values) * mask


def np_discounted(rewards, mask, gamma):
  out = np.zeros_like(rewards)
  for i in range(rewards.shape[0]):
    g = 0.0
    for t in reversed(range(rewards.shape[1])):
      if mask[i, t]:
        g = rewards[i, t] + gamma * g
        out[i, t] = g
  return out


def _rewards(seed, b=8):
  rng = np.random.default_rng(seed)
  return rng.normal(0.0, 1.0, b).astype(np.float32)


def _mask(seed, b, t):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, t + 1, b)
  lengths[0] = t
  return (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- group advantages


class GroupAdvantagesTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("group", "batch", "none")
  def test_matches_numpy(self, scale):
    r = _rewards(0)
    valid = np.array([1, 1, 0, 1, 1, 1, 1, 1], bool)
    fn = self.variant(functools.partial(adv.group_advantages, group_size=4, scale_rewards=scale))
    np.testing.assert_allclose(fn(r), np_group(r, 4, scale), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(r, valid=valid), np_group(r, 4, scale, valid=valid), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters("group", "batch", "none")
  def test_token_level_matches_numpy(self, scale):
    rng = np.random.default_rng(1)
    r = rng.normal(0, 1, (6, 5)).astype(np.float32)
    mask = _mask(2, 6, 5)
    valid = np.array([1, 1, 1, 0, 1, 1], bool)
    fn = self.variant(functools.partial(adv.group_advantages, group_size=3, scale_rewards=scale))
    np.testing.assert_allclose(fn(r, mask=mask, valid=valid), np_group(r, 3, scale, valid=valid, mask=mask),
                               rtol=1e-5, atol=1e-6)

  def test_equal_rewards_and_missing_rewards_give_zero(self):
    r = jnp.array([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 1.0])
    valid = jnp.array([1, 1, 1, 1, 1, 0, 1, 1], bool)
    for scale in ("group", "batch", "none"):
      a = np.asarray(adv.group_advantages(r, group_size=4, scale_rewards=scale, valid=valid))
      np.testing.assert_allclose(a[:4], 0.0, atol=1e-6)
      np.testing.assert_allclose(a[4:], 0.0, atol=1e-6)  # the valid three are all equal to 1
      a0 = adv.group_advantages(r, group_size=4, scale_rewards=scale, eps=0.0, valid=valid)
      assert np.all(np.isfinite(a0))

  def test_scaling_behaviour(self):
    r = _rewards(3)
    a_none = adv.group_advantages(r, group_size=4, scale_rewards="none")
    a_group = adv.group_advantages(r, group_size=4, scale_rewards="group", eps=0.0)
    a_batch = adv.group_advantages(r, group_size=4, scale_rewards="batch", eps=0.0)
    # group: unit (ddof=1) std inside each group; batch: one common factor
    np.testing.assert_allclose(np.std(np.asarray(a_group).reshape(2, 4), axis=1, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a_batch * np.std(r, ddof=1), a_none, rtol=1e-5, atol=1e-6)
    # rescaling the rewards rescales "none" and leaves the normalised ones unchanged
    np.testing.assert_allclose(adv.group_advantages(3 * r, group_size=4, scale_rewards="none"), 3 * a_none,
                               rtol=1e-5, atol=1e-6)
    for scale, ref in (("group", a_group), ("batch", a_batch)):
      np.testing.assert_allclose(adv.group_advantages(3 * r, group_size=4, scale_rewards=scale, eps=0.0), ref,
                                 rtol=1e-5, atol=1e-6)
    # legacy booleans
    np.testing.assert_allclose(adv.group_advantages(r, group_size=4, scale_rewards=False), a_none)

  def test_errors(self):
    r = jnp.zeros(8)
    with self.assertRaisesRegex(ValueError, "group_size"):
      adv.group_advantages(r, group_size=1)
    with self.assertRaisesRegex(ValueError, "group_size"):
      adv.group_advantages(r, group_size=3)
    with self.assertRaisesRegex(ValueError, "scale_rewards"):
      adv.group_advantages(r, group_size=4, scale_rewards="global")
    with self.assertRaisesRegex(ValueError, "mask"):
      adv.group_advantages(jnp.zeros((8, 3)), group_size=4)
    with self.assertRaisesRegex(ValueError, "valid"):
      adv.group_advantages(r, group_size=4, valid=jnp.ones(7, bool))
    with self.assertRaisesRegex(ValueError, "rewards"):
      adv.group_advantages(jnp.zeros((8, 3, 2)), group_size=4)
    with self.assertRaisesRegex(ValueError, "group_size"):
      adv.rloo(r, group_size=1)


@SETTINGS
@hypothesis.given(
    groups=st.integers(1, 3), group_size=st.integers(2, 4), t=st.integers(1, 4), seed=st.integers(0, 2**16),
    scale=st.sampled_from(("group", "batch", "none")), token_level=st.booleans())
def test_group_invariants(groups, group_size, t, seed, scale, token_level):
  """Zero group mean, invariance to a per-group constant, zeros where masked/invalid, no NaN."""
  rng = np.random.default_rng(seed)
  b = groups * group_size
  shape = (b, t) if token_level else (b,)
  r = rng.normal(0, 1, shape).astype(np.float32)
  r[:group_size] = np.round(r[:group_size])  # ties and, sometimes, equal groups
  valid = rng.random(b) > 0.25
  mask = (rng.random((b, t)) > 0.3).astype(np.float32) if token_level else None
  kw = dict(group_size=group_size, scale_rewards=scale, valid=valid, mask=mask)
  a = np.asarray(adv.group_advantages(r, **kw))
  assert np.all(np.isfinite(a))
  w = valid if not token_level else valid[:, None] & (mask > 0)
  assert np.all(a[~w] == 0)
  group_sums = np.where(w, a, 0).reshape(groups, -1).sum(1)
  np.testing.assert_allclose(group_sums, 0.0, atol=1e-4)
  shift = np.repeat(rng.normal(0, 3, groups), group_size).astype(np.float32)
  shift = shift[:, None] if token_level else shift
  if scale != "batch":  # the batch std changes when groups move apart
    np.testing.assert_allclose(adv.group_advantages(r + shift, **kw), a, atol=2e-4)
  np.testing.assert_allclose(a, np_group(r, group_size, scale, valid=valid, mask=mask), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- rloo, combine


def test_rloo_matches_formula_and_valid_mask():
  r = _rewards(4)
  g = 4
  ref = np.concatenate([rg * g / (g - 1) - rg.sum() / (g - 1) for rg in r.reshape(2, 4)])
  np.testing.assert_allclose(adv.rloo(r, group_size=g), ref, rtol=1e-5, atol=1e-6)
  # a missing sample: the group behaves as a group of the other three
  valid = np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)
  a = np.asarray(adv.rloo(r, group_size=g, valid=valid))
  sub = r[[0, 2, 3]]
  np.testing.assert_allclose(a[[0, 2, 3]], sub * 3 / 2 - sub.sum() / 2, rtol=1e-5, atol=1e-6)
  assert a[1] == 0.0
  # one valid sample left: no baseline, advantage 0
  valid1 = np.array([1, 0, 0, 0, 1, 1, 1, 1], bool)
  np.testing.assert_allclose(adv.rloo(r, group_size=g, valid=valid1)[:4], 0.0)


def test_combine_rewards_nansum_and_all_missing():
  nan = np.nan
  r = np.array([[1.0, 0.5], [nan, 2.0], [nan, nan], [0.0, nan]], np.float32)
  combined, missing = adv.combine_rewards(r, np.array([2.0, -1.0], np.float32))
  np.testing.assert_allclose(combined, [1.5, -2.0, 0.0, 0.0])
  np.testing.assert_array_equal(missing, [False, False, True, False])
  combined, _ = adv.combine_rewards(r)
  np.testing.assert_allclose(combined, [1.5, 2.0, 0.0, 0.0])
  # missing rows get advantage 0 downstream
  rewards = np.array([1.0, 0.0, 5.0, 1.0], np.float32)
  a = adv.group_advantages(rewards, group_size=4, valid=np.array([1, 1, 0, 1], bool))
  assert a[2] == 0.0
  with pytest.raises(ValueError, match="weights"):
    adv.combine_rewards(r, np.ones(3))
  with pytest.raises(ValueError, match="rewards"):
    adv.combine_rewards(np.ones(3))


# ----------------------------------------------------------------------------- other estimators


def test_reinforce_plus_plus_matches_verl_loop():
  rng = np.random.default_rng(5)
  mask = _mask(6, 5, 7)
  token_r = (rng.normal(0, 1, (5, 7)) * (rng.random((5, 7)) > 0.5)).astype(np.float32)
  a, ret = adv.reinforce_plus_plus(token_r, mask, gamma=0.9)
  np_a, np_ret = np_rfpp(np.float64(token_r), np.float64(mask), 0.9)
  np.testing.assert_allclose(ret, np_ret, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, np_a, rtol=1e-4, atol=1e-5)
  # outcome rewards go to each row's last unmasked token
  outcome = rng.normal(0, 1, 5).astype(np.float32)
  a, ret = adv.reinforce_plus_plus(outcome, mask, gamma=1.0)
  np_a, np_ret = np_rfpp(np_last_token(outcome, mask), np.float64(mask), 1.0)
  np.testing.assert_allclose(ret, np_ret, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, np_a, rtol=1e-4, atol=1e-5)


def test_reinforce_plus_plus_baseline_matches_numpy():
  rng = np.random.default_rng(7)
  mask = _mask(8, 6, 4)
  mask[:, 0] = 1.0  # no empty rows, so [B] and [B, T] inputs give the same scores
  r = rng.normal(0, 1, 6).astype(np.float32)
  scores = r - np.repeat(r.reshape(2, 3).mean(1), 3)
  expected = np_masked_whiten(scores[:, None] * mask, mask)
  np.testing.assert_allclose(adv.reinforce_plus_plus_baseline(r, mask, group_size=3), expected,
                             rtol=1e-4, atol=1e-5)
  token_r = np_last_token(r, mask).astype(np.float32)
  np.testing.assert_allclose(adv.reinforce_plus_plus_baseline(token_r, mask, group_size=3), expected,
                             rtol=1e-4, atol=1e-5)


def test_remax_matches_numpy():
  rng = np.random.default_rng(9)
  mask = _mask(10, 4, 5)
  token_r = rng.normal(0, 1, (4, 5)).astype(np.float32)
  base = rng.normal(0, 1, 4).astype(np.float32)
  a, ret = adv.remax(token_r, base, mask)
  np_ret = np.flip(np.cumsum(np.flip(token_r * mask, 1), 1), 1) * mask
  np.testing.assert_allclose(ret, np_ret, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, (np_ret - base[:, None]) * mask, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="baseline_rewards"):
    adv.remax(token_r, base[:3], mask)


def test_opo_matches_numpy():
  r = _rewards(11, 6)
  lengths = np.array([3, 1, 5, 2, 2, 0], np.float32)
  expected = []
  for g in range(2):
    rg, lg = r[3 * g:3 * g + 3], lengths[3 * g:3 * g + 3]
    expected.append(rg - (lg * rg).sum() / lg.sum())
  np.testing.assert_allclose(adv.opo(r, lengths, group_size=3), np.concatenate(expected), rtol=1e-5, atol=1e-6)
  valid = np.array([1, 0, 1, 1, 1, 1], bool)
  a = np.asarray(adv.opo(r, lengths, group_size=3, valid=valid))
  np.testing.assert_allclose(a[[0, 2]], r[[0, 2]] - (3 * r[0] + 5 * r[2]) / 8, rtol=1e-5, atol=1e-6)
  assert a[1] == 0.0


def test_gpg_matches_verl():
  r = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], np.float32)
  alpha = 8 / 3  # B / #non-zero rewards
  expected = alpha * (r - np.repeat(r.reshape(2, 4).mean(1), 4))
  np.testing.assert_allclose(adv.gpg(r, group_size=4), expected, rtol=1e-6)
  np.testing.assert_allclose(adv.gpg(r, group_size=4, f_norm=2.0), expected / 2, rtol=1e-6)
  np.testing.assert_allclose(adv.gpg(np.zeros(8), group_size=4), 0.0)


def test_pass_at_k_matches_verl():
  r = np.array([0.2, 0.9, 0.5, 0.1, 1.0, 1.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3], np.float32)
  a = np.asarray(adv.pass_at_k(r, group_size=4))
  g0 = r[:4]
  np.testing.assert_allclose(a[:4], [0.0, (0.9 - 0.5) / (np.std(g0, ddof=1) + 1e-6), 0.0, 0.0], rtol=1e-5)
  np.testing.assert_allclose(a[4:], 0.0)  # tie for the max, and an all-equal group
  a = np.asarray(adv.pass_at_k(r, group_size=4, norm_adv_by_std=False))
  np.testing.assert_allclose(a[:4], [0.0, 0.4, 0.0, 0.0], rtol=1e-5)
  # the best sample is missing: the best valid one gets the gap to the next valid one
  valid = np.array([1, 0, 1, 1] + [1] * 8, bool)
  a = np.asarray(adv.pass_at_k(r, group_size=4, norm_adv_by_std=False, valid=valid))
  np.testing.assert_allclose(a[:4], [0.0, 0.0, 0.3, 0.0], rtol=1e-5)
  assert np.all(np.isfinite(adv.pass_at_k(r, group_size=4, valid=np.zeros(12, bool))))


# ----------------------------------------------------------------------------- returns


class ReturnsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gae_matches_verl_loop(self):
    rng = np.random.default_rng(12)
    mask = _mask(13, 4, 6)
    mask[1, 2] = 0.0  # an interior gap (e.g. tool output)
    r = rng.normal(0, 1, (4, 6)).astype(np.float32)
    v = rng.normal(0, 1, (4, 6)).astype(np.float32)
    a, ret = self.variant(functools.partial(adv.gae, gamma=0.95, lam=0.9))(r, v, mask)
    np_a, np_ret = np_gae(np.float64(r), np.float64(v), np.float64(mask), 0.95, 0.9)
    np.testing.assert_allclose(a, np_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, np_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv.whiten(a, mask), np_masked_whiten(np_a, mask), rtol=1e-4, atol=1e-4)
    # lam = 1, V = 0: advantages are the discounted returns
    a1, _ = adv.gae(r, np.zeros_like(v), mask, gamma=0.95, lam=1.0)
    np.testing.assert_allclose(a1, np_discounted(np.float64(r), mask, 0.95), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_discounted_returns_matches_numpy(self):
    rng = np.random.default_rng(14)
    mask = _mask(15, 5, 6)
    mask[0, 3] = 0.0
    r = rng.normal(0, 1, (5, 6)).astype(np.float32)
    out = self.variant(functools.partial(adv.discounted_returns, gamma=0.8))(r, mask)
    np.testing.assert_allclose(out, np_discounted(np.float64(r), mask, 0.8), rtol=1e-5, atol=1e-6)


def np_min_form(r, mask, temperature):
  out = np.zeros_like(r)
  for i in range(r.shape[0]):
    idx = np.nonzero(mask[i])[0]
    if not len(idx):
      continue
    z = -r[i, idx] / temperature
    w = np.exp(z - z.max())
    w /= w.sum()
    out[i, idx] = np.cumsum((w * r[i, idx])[::-1])[::-1]
  return out


def test_min_form_returns_golden_and_limit():
  r = np.array([[0.5, -0.2, 0.9, 0.3, 0.0], [0.8, 0.1, 0.7, 0.0, 0.0], [0.0] * 5], np.float32)
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0] * 5], np.float32)
  out = adv.min_form_returns(r, mask, temperature=0.1)
  np.testing.assert_allclose(out, np_min_form(np.float64(r), mask, 0.1), rtol=1e-5, atol=1e-6)
  # temperature -> 0: return at step k is min_j r_j for k <= argmin, 0 after it
  cold = np.asarray(adv.min_form_returns(r, mask, temperature=1e-3))
  np.testing.assert_allclose(cold[0], [-0.2, -0.2, 0.0, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(cold[1], [0.1, 0.1, 0.0, 0.0, 0.0], atol=1e-6)
  np.testing.assert_array_equal(cold[2], 0.0)
  with pytest.raises(ValueError, match="temperature"):
    adv.min_form_returns(r, mask, temperature=0.0)


@SETTINGS
@hypothesis.given(
    r=hnp.arrays(np.float32, (3, 5), elements=st.floats(-1, 1, width=32)),
    m=hnp.arrays(np.bool_, (3, 5)),
    temperature=st.sampled_from((0.05, 0.1, 0.5)))
def test_min_form_soft_minimum_bounds(r, m, temperature):
  """min r <= return at the first step <= min(mean r, min r + T log n), per row."""
  mask = m.astype(np.float32)
  out = np.asarray(adv.min_form_returns(r, mask, temperature=temperature))
  assert np.all(np.isfinite(out)) and np.all(out[~m] == 0)
  for i in range(3):
    steps = r[i][m[i]]
    if not len(steps):
      continue
    first = out[i][np.argmax(m[i])]
    n = len(steps)
    assert steps.min() - 1e-5 <= first <= min(steps.mean(), steps.min() + temperature * np.log(n)) + 1e-5


@SETTINGS
@hypothesis.given(shape=st.sampled_from([(1, 1), (2, 3), (4, 5)]), seed=st.integers(0, 2**16))
def test_returns_no_nan_and_masked_zero(shape, seed):
  b, t = shape
  rng = np.random.default_rng(seed)
  r = rng.normal(0, 1, (b, t)).astype(np.float32)
  v = rng.normal(0, 1, (b, t)).astype(np.float32)
  mask = (rng.random((b, t)) > 0.4).astype(np.float32)
  mask[0] = 0.0  # a fully masked row
  outputs = [*adv.gae(r, v, mask, gamma=0.9, lam=0.95), *adv.reinforce_plus_plus(r, mask, gamma=0.9),
             adv.discounted_returns(r, mask, gamma=0.9), *adv.remax(r, np.zeros(b, np.float32), mask)]
  for out in outputs:
    out = np.asarray(out)
    assert np.all(np.isfinite(out)) and np.all(out[mask == 0] == 0)
  np.testing.assert_allclose(outputs[1], np_gae(np.float64(r), np.float64(v), np.float64(mask), 0.9, 0.95)[1],
                             rtol=1e-4, atol=1e-4)
