"""Tests for objectives.rdp: golden values and gradients vs numpy, tabular optimum, invariants."""
import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from objectives import rdp, registry
from numeric import fd_grad


# ----------------------------------------------------------------------------- numpy reference


def np_rdp(logp, ref, rewards, mask, *, beta, reduce_steps="mean", pairs="all", old=None, eps=None):
  """Loop-based reference of the (P)RDP loss, float64."""
  logp, ref, rewards, mask = (np.asarray(x, np.float64) for x in (logp, ref, rewards, mask))
  n_prompts, b, _ = logp.shape

  def rhat(ratios, n, i):
    m = mask[n, i]
    s = float(np.sum(ratios[n, i] * m))
    return s / m.sum() if reduce_steps == "mean" else s

  lr = logp - ref
  if old is not None:
    old_r = np.asarray(old, np.float64) - ref
    clipped = np.clip(lr, old_r - eps, old_r + eps)
  total, count = 0.0, 0
  for n in range(n_prompts):
    for i in range(b):
      for j in range(b):
        if mask[n, i].sum() == 0 or mask[n, j].sum() == 0:
          continue
        if pairs == "all" and not i < j:
          continue
        if pairs == "reward_diff_positive" and not rewards[n, i] - rewards[n, j] > 0:
          continue
        target = (rewards[n, i] - rewards[n, j]) / beta
        loss = (rhat(lr, n, i) - rhat(lr, n, j) - target) ** 2
        if old is not None:
          loss_c = (rhat(clipped, n, i) - rhat(clipped, n, j) - target) ** 2
          loss = max(loss, loss_c)
        total += loss
        count += 1
  return total / count if count else 0.0




def make_inputs(seed, n=2, b=3, t=4, masked_row=True):
  rng = np.random.default_rng(seed)
  logp = rng.normal(size=(n, b, t)).astype(np.float32) * 0.5 - 1.0
  ref = logp + rng.normal(size=(n, b, t)).astype(np.float32) * 0.3
  old = logp + rng.normal(size=(n, b, t)).astype(np.float32) * 0.3
  rewards = rng.normal(size=(n, b)).astype(np.float32)
  mask = np.ones((n, b, t), np.float32)
  mask[0, 1, 3:] = 0
  mask[1, 0, 2:] = 0
  if masked_row:
    mask[1, 2] = 0  # an absent trajectory
  return logp, ref, old, rewards, mask


class RdpGoldenTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed(self):
    # One pair: d = 0.5 - 0 = 0.5, target = (1 - 0) / 1 = 1, l = 0.25.
    logp = jnp.array([[[0.5], [0.0]]])
    fn = self.variant(functools.partial(rdp.rdp_loss, beta=1.0, reduce_steps="sum"))
    loss, metrics = fn(logp, jnp.zeros_like(logp), jnp.array([[1.0, 0.0]]), jnp.ones_like(logp))
    np.testing.assert_allclose(loss, 0.25, rtol=1e-6)
    np.testing.assert_allclose(metrics["stats/num_pairs"], 1.0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(reduce_steps=("mean", "sum"), pairs=("all", "reward_diff_positive"))
  def test_rdp_value_and_grad(self, reduce_steps, pairs):
    logp, ref, _, rewards, mask = make_inputs(0)
    beta = 0.7
    fn = functools.partial(rdp.rdp_loss, beta=beta, reduce_steps=reduce_steps, pairs=pairs)
    (loss, metrics), grad = self.variant(jax.value_and_grad(fn, has_aux=True))(logp, ref, rewards, mask)
    ref_fn = lambda x: np_rdp(x, ref, rewards, mask, beta=beta, reduce_steps=reduce_steps, pairs=pairs)  # noqa: E731
    np.testing.assert_allclose(loss, ref_fn(logp), rtol=1e-5)
    np.testing.assert_allclose(grad, fd_grad(ref_fn, logp), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(metrics["loss/rdp"], loss)
    # 2 prompts: C(3, 2) = 3 pairs, and 1 pair after dropping the absent trajectory.
    self.assertEqual(float(metrics["stats/num_pairs"]), 4.0)
    np.testing.assert_array_equal(grad[mask == 0], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(reduce_steps=("mean", "sum"), pairs=("all", "reward_diff_positive"))
  def test_prdp_value_and_grad(self, reduce_steps, pairs):
    logp, ref, old, rewards, mask = make_inputs(1)
    beta, eps = 0.5, 0.2
    fn = functools.partial(rdp.prdp_loss, beta=beta, clip_eps=eps, reduce_steps=reduce_steps, pairs=pairs)
    (loss, metrics), grad = self.variant(jax.value_and_grad(fn, has_aux=True))(logp, old, ref, rewards, mask)
    ref_fn = lambda x: np_rdp(x, ref, rewards, mask, beta=beta, reduce_steps=reduce_steps, pairs=pairs,  # noqa: E731
                              old=old, eps=eps)
    np.testing.assert_allclose(loss, ref_fn(logp), rtol=1e-5)
    np.testing.assert_allclose(grad, fd_grad(ref_fn, logp), rtol=1e-3, atol=1e-4)
    # The clip is active somewhere, so PRDP differs from RDP here.
    self.assertGreater(float(metrics["stats/step_clip_frac"]), 0.0)
    rdp_value = np_rdp(logp, ref, rewards, mask, beta=beta, reduce_steps=reduce_steps, pairs=pairs)
    self.assertGreater(abs(float(loss) - rdp_value), 1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_prdp_equals_rdp_on_policy(self):
    logp, ref, _, rewards, mask = make_inputs(2)
    prdp_fn = functools.partial(rdp.prdp_loss, beta=0.3, clip_eps=1e-4)
    rdp_fn = functools.partial(rdp.rdp_loss, beta=0.3)
    (a, _), ga = self.variant(jax.value_and_grad(lambda x: prdp_fn(x, x, ref, rewards, mask), has_aux=True))(logp)
    (b, _), gb = jax.value_and_grad(lambda x: rdp_fn(x, ref, rewards, mask), has_aux=True)(logp)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # old_logp is the same array here but is stop-gradiented inside prdp: the gradient is RDP's.
    np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-7)


def test_pairs_options_agree_with_distinct_rewards_and_differ_on_ties():
  logp, ref, _, rewards, mask = make_inputs(3, masked_row=False)
  all_pairs, _ = rdp.rdp_loss(logp, ref, rewards, mask, beta=0.5, pairs="all")
  positive, _ = rdp.rdp_loss(logp, ref, rewards, mask, beta=0.5, pairs="reward_diff_positive")
  np.testing.assert_allclose(all_pairs, positive, rtol=1e-6)
  tied = rewards.copy()
  tied[0, 1] = tied[0, 0]
  all_pairs, m_all = rdp.rdp_loss(logp, ref, tied, mask, beta=0.5, pairs="all")
  positive, m_pos = rdp.rdp_loss(logp, ref, tied, mask, beta=0.5, pairs="reward_diff_positive")
  assert float(m_all["stats/num_pairs"]) == 6.0 and float(m_pos["stats/num_pairs"]) == 5.0
  assert abs(float(all_pairs) - float(positive)) > 1e-6


# ----------------------------------------------------------------------------- tabular optimum


def _tabular_logps(theta):
  """Two-step binary tree policy -> per-step log-probs of its 4 trajectories, [1, 4, 2]."""
  first = jax.nn.log_softmax(theta[:2])  # [2]
  second = jax.nn.log_softmax(theta[2:].reshape(2, 2), axis=-1)  # [first action, second action]
  a, c = jnp.array([0, 0, 1, 1]), jnp.array([0, 1, 0, 1])  # the 4 trajectories (a, c)
  return jnp.stack([first[a], second[a, c]], axis=-1)[None]


def _trajectory_logp(theta):
  return jnp.sum(_tabular_logps(theta)[0], axis=-1)  # [4]


@pytest.mark.parametrize("reduce_steps", ["sum", "mean"])
def test_tabular_rdp_reaches_the_kl_regularised_optimum(reduce_steps):
  beta = 0.5
  rewards = jnp.array([[1.0, 0.5, 0.0, -0.5]])
  theta_ref = jnp.array([0.3, -0.2, 0.5, 0.0, -0.4, 0.1])
  ref_steps = _tabular_logps(theta_ref)  # [1, 4, 2]
  mask = jnp.ones_like(ref_steps)

  def loss_fn(theta):
    return rdp.rdp_loss(_tabular_logps(theta), ref_steps, rewards, mask, beta=beta, reduce_steps=reduce_steps)[0]

  opt = optax.adam(0.05)

  @jax.jit
  def train(theta):
    def body(carry, _):
      theta, state = carry
      g = jax.grad(loss_fn)(theta)
      updates, state = opt.update(g, state)
      return (optax.apply_updates(theta, updates), state), None
    (theta, _), _ = jax.lax.scan(body, (theta, opt.init(theta)), None, length=1500)
    return theta

  theta = train(jnp.zeros(6))
  assert float(loss_fn(theta)) < 1e-8
  # "mean" over T = 2 equal steps is "sum" with beta / 2.
  effective_beta = beta if reduce_steps == "sum" else beta / 2
  target = np.exp(np.asarray(_trajectory_logp(theta_ref), np.float64) + np.asarray(rewards[0]) / effective_beta)
  target /= target.sum()
  np.testing.assert_allclose(np.exp(_trajectory_logp(theta)), target, atol=1e-4)


def test_rdp_loss_is_zero_exactly_at_the_optimum_and_positive_elsewhere():
  beta = 0.5
  rewards = np.array([[1.0, 0.5, 0.0, -0.5]])
  log_ref = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
  ref = log_ref[None, :, None]
  mask = np.ones_like(ref)
  log_opt = log_ref + rewards[0] / beta
  log_opt -= np.log(np.exp(log_opt).sum())
  at_opt, _ = rdp.rdp_loss(jnp.asarray(log_opt[None, :, None]), ref, rewards, mask, beta=beta, reduce_steps="sum")
  assert float(at_opt) < 1e-10
  rng = np.random.default_rng(0)
  for _ in range(5):
    other = log_opt + rng.normal(size=4) * 0.1
    other -= np.log(np.exp(other).sum())
    value, _ = rdp.rdp_loss(jnp.asarray(other[None, :, None]), ref, rewards, mask, beta=beta, reduce_steps="sum")
    assert float(value) > 1e-4


# ----------------------------------------------------------------------------- invariants


@functools.partial(jax.jit, static_argnames=("reduce_steps", "pairs"))
def _prdp_value_and_grad(logp, old, ref, rewards, mask, reduce_steps, pairs):
  fn = lambda x: rdp.prdp_loss(x, old, ref, rewards, mask, beta=0.5, clip_eps=0.05,  # noqa: E731
                               reduce_steps=reduce_steps, pairs=pairs)
  return jax.value_and_grad(fn, has_aux=True)(logp)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(n=st.integers(1, 2), b=st.integers(2, 4), t=st.integers(1, 3), seed=st.integers(0, 2**16),
                  reduce_steps=st.sampled_from(rdp.REDUCE_STEPS), pairs=st.sampled_from(rdp.PAIRS))
def test_invariants(n, b, t, seed, reduce_steps, pairs):
  rng = np.random.default_rng(seed)
  logp = rng.normal(size=(n, b, t)).astype(np.float32)
  ref = rng.normal(size=(n, b, t)).astype(np.float32)
  old = logp + rng.normal(size=(n, b, t)).astype(np.float32) * 0.1
  rewards = rng.normal(size=(n, b)).astype(np.float32)
  mask = (rng.uniform(size=(n, b, t)) < 0.6).astype(np.float32)
  mask[0, 0] = 0  # at least one fully masked row
  (loss, _), grad = _prdp_value_and_grad(logp, old, ref, rewards, mask, reduce_steps, pairs)
  assert np.isfinite(loss) and float(loss) >= 0
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)
  np.testing.assert_allclose(loss, np_rdp(logp, ref, rewards, mask, beta=0.5, reduce_steps=reduce_steps,
                                          pairs=pairs, old=old, eps=0.05), rtol=1e-4, atol=1e-5)
  # Permuting the samples of each prompt (jointly) leaves the "all"-pairs loss unchanged.
  perm = rng.permutation(b)
  if pairs == "all":
    (permuted, _), _ = _prdp_value_and_grad(logp[:, perm], old[:, perm], ref[:, perm], rewards[:, perm],
                                            mask[:, perm], reduce_steps, pairs)
    np.testing.assert_allclose(permuted, loss, rtol=1e-5, atol=1e-6)
  # Everything masked: zero loss, zero gradient.
  (loss0, m0), grad0 = _prdp_value_and_grad(logp, old, ref, rewards, np.zeros_like(mask), reduce_steps, pairs)
  assert float(loss0) == 0.0 and float(m0["stats/num_pairs"]) == 0.0
  np.testing.assert_array_equal(grad0, 0.0)


# ----------------------------------------------------------------------------- registry


def test_registered_objective_matches_and_accepts_any_row_order():
  logp, ref, old, rewards, mask = make_inputs(4, n=2, b=3, t=4)
  expected, _ = rdp.prdp_loss(logp, old, ref, rewards, mask, beta=0.5, clip_eps=0.1)
  flat = lambda x: x.reshape((6,) + x.shape[2:])  # noqa: E731
  batch = {"ref_logp": flat(ref), "old_logp": flat(old), "rewards": flat(rewards), "mask": flat(mask),
           "group_ids": np.arange(6) // 3}
  fn = registry.get("prdp")
  total, den, _ = fn(flat(logp), batch, beta=0.5, clip_eps=0.1)
  np.testing.assert_allclose(total / den, expected, rtol=1e-6)
  perm = np.random.default_rng(0).permutation(6)
  shuffled = {k: v[perm] for k, v in batch.items()}
  total_s, den_s, _ = fn(flat(logp)[perm], shuffled, beta=0.5, clip_eps=0.1)
  np.testing.assert_allclose(total_s / den_s, expected, rtol=1e-6)
  total_r, den_r, _ = registry.get("rdp")(flat(logp), batch, beta=0.5)
  np.testing.assert_allclose(total_r / den_r, rdp.rdp_loss(logp, ref, rewards, mask, beta=0.5)[0], rtol=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
  logp, ref, old, rewards, mask = make_inputs(5)
  with pytest.raises(ValueError, match="logp must have rank 3"):
    rdp.rdp_loss(logp[0], ref[0], rewards[0], mask[0], beta=0.5)
  with pytest.raises(ValueError, match="ref_logp"):
    rdp.rdp_loss(logp, ref[:, :, :2], rewards, mask, beta=0.5)
  with pytest.raises(ValueError, match="rewards"):
    rdp.rdp_loss(logp, ref, rewards[:, :2], mask, beta=0.5)
  with pytest.raises(ValueError, match="mask"):
    rdp.rdp_loss(logp, ref, rewards, mask[:1], beta=0.5)
  with pytest.raises(ValueError, match="old_logp"):
    rdp.prdp_loss(logp, old[:1], ref, rewards, mask, beta=0.5, clip_eps=0.1)
  with pytest.raises(ValueError, match="reduce_steps='avg'"):
    rdp.rdp_loss(logp, ref, rewards, mask, beta=0.5, reduce_steps="avg")
  with pytest.raises(ValueError, match="pairs='some'"):
    rdp.rdp_loss(logp, ref, rewards, mask, beta=0.5, pairs="some")
  with pytest.raises(ValueError, match="beta must be > 0"):
    rdp.rdp_loss(logp, ref, rewards, mask, beta=0.0)
  with pytest.raises(ValueError, match="clip_eps"):
    rdp.prdp_loss(logp, old, ref, rewards, mask, beta=0.5, clip_eps=-1.0)
  flat = {"ref_logp": ref.reshape(6, 4), "rewards": rewards.reshape(6), "mask": mask.reshape(6, 4)}
  with pytest.raises(KeyError, match="group_ids"):
    registry.get("rdp")(logp.reshape(6, 4), flat, beta=0.5)
  with pytest.raises(ValueError, match="group_ids"):
    registry.get("rdp")(logp.reshape(6, 4), {**flat, "group_ids": np.zeros(4, np.int32)}, beta=0.5)
  with pytest.raises(KeyError, match="ref_logp"):
    registry.get("rdp")(logp.reshape(6, 4), {"rewards": flat["rewards"], "mask": flat["mask"],
                                             "group_ids": np.zeros(6, np.int32)}, beta=0.5)
