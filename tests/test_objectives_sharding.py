"""The reward objectives give the same values when their inputs are sharded over the batch.

Each function is jitted with every batch-leading input placed on an 8-device mesh
(`NamedSharding(mesh, P("data"))`) and compared with the unsharded computation.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from objectives import advantages, dpo, grpo, implicit_prm, kl, logprob_rewards, prime, rdp, registry


@pytest.fixture(scope="module")
def mesh():
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py sets 8 CPU devices"
  return Mesh(np.array(devices), ("data",))


def shard(mesh, tree):
  """Places every array leaf with its first axis split over the mesh axis "data"."""
  return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data"))), tree)


def assert_same_sharded(mesh, fn, *args):
  """fn(*args) unsharded vs jit(fn)(*sharded args): same pytree of values."""
  expected = jax.jit(fn)(*args)
  sharded_args = shard(mesh, args)
  leaf = jax.tree.leaves(sharded_args)[0]
  assert len(leaf.sharding.device_set) == 8
  actual = jax.jit(fn)(*sharded_args)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=2e-5, atol=1e-6),
               actual, expected)


def rng_inputs(seed, *shapes):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=s) - 1.0).astype(np.float32) for s in shapes]


def test_rdp_and_prdp(mesh):
  logp, ref, old, rewards = rng_inputs(0, (8, 3, 4), (8, 3, 4), (8, 3, 4), (8, 3))
  old = logp + 0.1 * old
  mask = np.ones((8, 3, 4), np.float32)
  mask[2, 1, 2:] = 0
  mask[5, 0] = 0

  def rdp_vg(logp, ref, rewards, mask):
    return jax.value_and_grad(lambda x: rdp.rdp_loss(x, ref, rewards, mask, beta=0.5)[0])(logp)

  def prdp_vg(logp, old, ref, rewards, mask):
    def fn(x):
      return rdp.prdp_loss(x, old, ref, rewards, mask, beta=0.5, clip_eps=0.05, pairs="reward_diff_positive")
    return jax.value_and_grad(fn, has_aux=True)(logp)

  assert_same_sharded(mesh, rdp_vg, logp, ref, rewards, mask)
  assert_same_sharded(mesh, prdp_vg, logp, old, ref, rewards, mask)


@pytest.mark.parametrize("group_size", [2, 4])  # 4: groups span two devices
def test_registered_rdp_on_a_flat_batch(mesh, group_size):
  logp, ref, old, rewards = rng_inputs(1, (16, 4), (16, 4), (16, 4), (16,))
  mask = np.ones((16, 4), np.float32)
  fn = registry.get("prdp")

  def terms(logp, ref, old, rewards, mask, group_ids):
    batch = {"ref_logp": ref, "old_logp": old, "rewards": rewards, "mask": mask, "group_ids": group_ids}
    return fn(logp, batch, beta=0.5, clip_eps=0.1)

  assert_same_sharded(mesh, terms, logp, ref, old, rewards, mask, np.arange(16) // group_size)


def test_dpo(mesh):
  args = rng_inputs(2, (8,), (8,), (8,), (8,))
  for loss_type in dpo.LOSS_TYPES:
    fn = functools.partial(dpo.loss, beta=0.2, loss_type=loss_type)
    assert_same_sharded(mesh, lambda *a: jax.value_and_grad(fn, argnums=(0, 2), has_aux=True)(*a), *args)  # noqa: B023


def test_implicit_prm(mesh):
  logp, ref, clog, cref = rng_inputs(3, (8, 6), (8, 6), (8, 5), (8, 5))
  mask = (np.arange(6)[None] < np.array([6, 3, 0, 6, 1, 4, 5, 2])[:, None]).astype(np.float32)
  ends = (np.random.default_rng(3).uniform(size=(8, 6)) < 0.4) & (mask > 0)
  labels = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)
  cmask = np.ones((8, 5), np.float32)

  def everything(logp, ref, mask, ends, labels, clog, cref, cmask):
    tok = implicit_prm.token_rewards(logp, ref, mask, beta=0.05)
    out = {"tok": tok, "rewards": implicit_prm.step_rewards(tok, ends, max_steps=4)}
    for aggregate in implicit_prm.AGGREGATES:
      out[aggregate] = implicit_prm.step_scores(tok, ends, aggregate=aggregate)
    out["ce"] = jax.value_and_grad(lambda x: implicit_prm.ce_loss(x, ref, mask, labels, beta=0.05)[0])(logp)
    out["dpo"] = jax.value_and_grad(
        lambda x: implicit_prm.dpo_loss(x, ref, mask, clog, cref, cmask, beta=0.05)[0])(logp)
    return out

  assert_same_sharded(mesh, everything, logp, ref, mask, ends, labels, clog, cref, cmask)


def test_prime(mesh):
  (process,) = rng_inputs(4, (16, 5))
  outcome = (np.arange(16) % 3 == 0).astype(np.float32)
  mask = (np.arange(5)[None] < (np.arange(16) % 5 + 1)[:, None]).astype(np.float32)

  def everything(process, outcome, mask):
    return (prime.prime_advantages(process, outcome, mask, group_size=4),
            prime.prime_advantages(process, outcome, mask, group_size=4, process_gamma=0.9, whiten=False),
            prime.accuracy_filter(outcome, group_size=4))

  assert_same_sharded(mesh, everything, process, outcome, mask)


def test_logprob_rewards(mesh):
  cot, ans, adv = rng_inputs(5, (8, 6), (8, 4), (8,))
  ans = -np.abs(ans)
  cot_mask = np.ones((8, 6), np.float32)
  ans_mask = (np.arange(4)[None] < (np.arange(8) % 5)[:, None]).astype(np.float32)
  score_b, score_a = np.random.default_rng(5).uniform(size=(2, 8)).astype(np.float32)
  group_logp = -np.abs(rng_inputs(6, (8, 4))[0]) * 5

  def everything(cot, cot_mask, ans, ans_mask, adv, score_b, score_a, group_logp):
    out = {kind: logprob_rewards.answer_reward(ans, ans_mask, kind=kind) for kind in logprob_rewards.KINDS}
    out["rlpr"] = logprob_rewards.rlpr_debiased(score_b, score_a)
    out["jepo"] = logprob_rewards.jepo_group_reward(group_logp)
    out["jepo_adv"] = logprob_rewards.jepo_advantages(group_logp)
    out["loss"] = jax.value_and_grad(
        lambda c, a: logprob_rewards.likelihood_loss(c, cot_mask, a, ans_mask, adv)[0], argnums=(0, 1))(cot, ans)
    state = logprob_rewards.std_filter_init()._replace(
        step=jnp.asarray(11, jnp.int32), ema=jnp.asarray(0.5), initialized=jnp.asarray(True),
        last_mean=jnp.asarray(0.4))
    out["filter"] = logprob_rewards.std_filter_update(state, score_b, beta_f=1.0)
    return out

  assert_same_sharded(mesh, everything, cot, cot_mask, ans, ans_mask, adv, score_b, score_a, group_logp)


def _mask(seed, shape):
  mask = (np.random.default_rng(seed).random(shape) > 0.3).astype(np.float32)
  mask[0] = 0.0  # a fully masked row
  return mask


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
def test_grpo(mesh, loss_type):
  logp, old_logp, ref_logp = rng_inputs(7, (8, 5), (8, 5), (8, 5))
  adv = rng_inputs(8, (8,))[0]
  fn = functools.partial(grpo.loss, loss_type=loss_type, epsilon_high=0.28, beta=0.04)
  grad_fn = lambda lp, *a: jax.value_and_grad(lambda x: fn(x, *a[:3], ref_logp=a[3])[0])(lp)  # noqa: E731
  assert_same_sharded(mesh, grad_fn, logp, old_logp, adv, _mask(9, (8, 5)), ref_logp)


def test_kl_estimators(mesh):
  logp, ref_logp = rng_inputs(10, (8, 5), (8, 5))
  for estimator in kl.ESTIMATORS:
    assert_same_sharded(mesh, functools.partial(kl.estimate, estimator=estimator), logp, ref_logp)


def test_advantage_estimators(mesh):
  rewards, values = rng_inputs(11, (8,), (8, 5))
  token_rewards = rng_inputs(12, (8, 5))[0]
  mask = _mask(13, (8, 5))
  mask[0, 0] = 1.0  # keep every group non-empty
  for scale in ("group", "batch", "none"):
    assert_same_sharded(mesh, functools.partial(advantages.group_advantages, group_size=4, scale_rewards=scale),
                        rewards)
  assert_same_sharded(mesh, functools.partial(advantages.rloo, group_size=4), rewards)
  assert_same_sharded(mesh, functools.partial(advantages.gae, gamma=0.9, lam=0.8), token_rewards, values, mask)
  assert_same_sharded(mesh, functools.partial(advantages.discounted_returns, gamma=0.9), token_rewards, mask)
  assert_same_sharded(mesh, functools.partial(advantages.min_form_returns, temperature=0.1), token_rewards, mask)
  assert_same_sharded(mesh, advantages.reinforce_plus_plus, token_rewards, mask)
