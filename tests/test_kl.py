"""Tests for objectives.kl: values, clamps, straight-through gradients, unbiasedness."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import kl


def np_kl(logp, ref, estimator):
  """Independent numpy reference for the estimator values (float64)."""
  logp = np.asarray(logp, np.float64)
  ref = np.asarray(ref, np.float64)
  base = estimator.rstrip("+")
  base = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}.get(base, base)
  x = logp - ref
  if base == "k1":
    return x
  if base == "k2":
    return 0.5 * x**2
  if base == "abs":
    return np.abs(x)
  u = np.clip(ref - logp, -20.0, 20.0)
  return np.clip(np.exp(u) - u - 1.0, -10.0, 10.0)


def np_kl_grad(logp, ref, estimator):
  """d estimate / d logp, derived by hand."""
  logp = np.asarray(logp, np.float64)
  ref = np.asarray(ref, np.float64)
  x = logp - ref
  if estimator.endswith("+") or estimator in ("k2", "mse"):
    return x
  if estimator in ("k1", "kl"):
    return np.ones_like(x)
  if estimator == "abs":
    return np.sign(x)
  u = ref - logp
  value = np.exp(u) - u - 1.0
  inside = (np.abs(u) < 20.0) & (value < 10.0)
  return np.where(inside, 1.0 - np.exp(u), 0.0)


def _inputs(seed=0, shape=(3, 5)):
  rng = np.random.default_rng(seed)
  logp = rng.normal(-1.5, 0.6, shape).astype(np.float32)
  ref = (logp + rng.normal(0.0, 0.7, shape)).astype(np.float32)
  # a few extreme entries exercise the k3 clamps
  logp[0, 0], ref[0, 0] = -1.0, 4.0   # ref >> logp: k3 value clamped to 10
  logp[1, 1], ref[1, 1] = -2.0, -40.0  # log-ratio clamp (|u| > 20)
  return logp, ref


ALL = ["k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl", "k1+", "k2+", "k3+", "abs+", "low_var_kl+"]


class KLTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*ALL)
  def test_values_match_numpy(self, estimator):
    logp, ref = _inputs()
    fn = self.variant(functools.partial(kl.estimate, estimator=estimator))
    np.testing.assert_allclose(fn(logp, ref), np_kl(logp, ref, estimator), rtol=2e-5, atol=2e-5)

  @parameterized.parameters(*ALL)
  def test_gradients_match_hand_derived(self, estimator):
    logp, ref = _inputs(seed=1)
    grad = jax.grad(lambda lp: jnp.sum(kl.estimate(lp, ref, estimator=estimator)))(jnp.asarray(logp))
    np.testing.assert_allclose(grad, np_kl_grad(logp, ref, estimator), rtol=2e-5, atol=2e-5)

  @parameterized.parameters("k1", "k3", "abs")
  def test_straight_through_variant_has_value_of_base_and_gradient_of_k2(self, base):
    logp, ref = _inputs(seed=2)
    f_plus = lambda lp: jnp.sum(kl.estimate(lp, ref, estimator=base + "+"))  # noqa: E731
    f_k2 = lambda lp: jnp.sum(kl.estimate(lp, ref, estimator="k2"))  # noqa: E731
    np.testing.assert_allclose(jax.grad(f_plus)(logp), jax.grad(f_k2)(logp), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        kl.estimate(logp, ref, estimator=base + "+"), kl.estimate(logp, ref, estimator=base), rtol=1e-6)
    # and the base estimator's own gradient differs (k1: constant 1)
    self.assertFalse(np.allclose(jax.grad(f_k2)(logp), jax.grad(
        lambda lp: jnp.sum(kl.estimate(lp, ref, estimator=base)))(logp)))

  def test_k3_is_nonnegative_and_finite_for_extremes(self):
    x = jnp.linspace(-60.0, 60.0, 241)
    value = kl.estimate(jnp.zeros_like(x), x, estimator="k3")
    self.assertTrue(bool(jnp.all(value >= 0.0)))
    self.assertTrue(bool(jnp.all(jnp.isfinite(value))))
    self.assertLessEqual(float(jnp.max(value)), 10.0)
    unclamped = kl.estimate(jnp.zeros_like(x), x, estimator="k3", clamp=None, log_ratio_clamp=None)
    self.assertGreater(float(jnp.max(unclamped)), 1e20)

  def test_unknown_estimator_and_shape_mismatch_raise(self):
    with self.assertRaisesRegex(ValueError, "estimator"):
      kl.estimate(jnp.zeros((2, 3)), jnp.zeros((2, 3)), estimator="k4")
    with self.assertRaisesRegex(ValueError, "estimator"):
      kl.estimate(jnp.zeros((2, 3)), jnp.zeros((2, 3)), estimator="k3++")
    with self.assertRaisesRegex(ValueError, "ref_logp shape"):
      kl.estimate(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


# ----------------------------------------------------------------------------- Monte Carlo

_V = 6
_N = 20000


def _categorical():
  theta = jnp.asarray([1.0, -0.8, 1.6, 0.0, -1.5, 0.5])
  ref_logits = jnp.asarray([-0.5, 0.8, 0.2, 1.0, 0.4, -1.2])
  ref_logprobs = jax.nn.log_softmax(ref_logits)
  samples = jax.random.categorical(jax.random.key(0), theta, shape=(_N,))
  return theta, ref_logprobs, samples


def _exact_kl(theta, ref_logprobs):
  logp = jax.nn.log_softmax(theta)
  return jnp.sum(jnp.exp(logp) * (logp - ref_logprobs))  # KL(pi || ref)


def _exact_forward_kl(theta, ref_logprobs):
  logp = jax.nn.log_softmax(theta)
  return jnp.sum(jnp.exp(ref_logprobs) * (ref_logprobs - logp))  # KL(ref || pi)


def _per_sample(theta, ref_logprobs, samples, estimator):
  def one(t, y):
    return kl.estimate(jax.nn.log_softmax(t)[y], ref_logprobs[y], estimator=estimator)
  values = jax.vmap(one, in_axes=(None, 0))(theta, samples)
  grads = jax.vmap(jax.grad(one), in_axes=(None, 0))(theta, samples)  # [N, V]
  return np.asarray(values, np.float64), np.asarray(grads, np.float64)


def _assert_mean_close(samples, target, sigmas=5.0):
  mean = samples.mean(axis=0)
  stderr = samples.std(axis=0) / np.sqrt(samples.shape[0]) + 1e-4
  np.testing.assert_array_less(np.abs(mean - target), sigmas * stderr)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_k3_values_unbiased_monte_carlo(estimator):
  theta, ref, samples = _categorical()
  values, _ = _per_sample(theta, ref, samples, estimator)
  _assert_mean_close(values, float(_exact_kl(theta, ref)))


def test_k2_value_is_biased():
  theta, ref, samples = _categorical()
  values, _ = _per_sample(theta, ref, samples, "k2")
  stderr = values.std() / np.sqrt(_N)
  assert abs(values.mean() - float(_exact_kl(theta, ref))) > 8 * stderr


def test_gradient_expectations_monte_carlo():
  """E[grad k1] = 0 (Tunix's bug); E[grad k2] = E[grad k3+] = grad KL(pi||ref);
  E[grad k3] = grad KL(ref||pi)."""
  theta, ref, samples = _categorical()
  reverse = np.asarray(jax.grad(_exact_kl)(theta, ref), np.float64)
  forward = np.asarray(jax.grad(_exact_forward_kl)(theta, ref), np.float64)
  assert np.abs(reverse - forward).max() > 0.05  # the two targets are distinguishable
  _, g1 = _per_sample(theta, ref, samples, "k1")
  _assert_mean_close(g1, np.zeros(_V))
  for estimator in ("k2", "k3+", "k1+"):
    _, g = _per_sample(theta, ref, samples, estimator)
    _assert_mean_close(g, reverse)
  _, g3 = _per_sample(theta, ref, samples, "k3")
  _assert_mean_close(g3, forward)
