"""Tests for objectives.dpo: golden values and gradients vs numpy for every loss type."""
import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import dpo
from numeric import fd_grad


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_dpo(cl, cr, rl, rr, *, beta, loss_type, ls=0.0):
  """Reference per TRL's DPOTrainer formulas, float64, mean over pairs."""
  z = (np.float64(cl) - cr) - (np.float64(rl) - rr)
  if loss_type == "sigmoid":
    losses = -np_log_sigmoid(beta * z) * (1 - ls) - np_log_sigmoid(-beta * z) * ls
  elif loss_type == "robust":
    losses = (-np_log_sigmoid(beta * z) * (1 - ls) + np_log_sigmoid(-beta * z) * ls) / (1 - 2 * ls)
  elif loss_type == "hinge":
    losses = np.maximum(0.0, 1 - beta * z)
  elif loss_type == "ipo":
    losses = (z - 1 / (2 * beta)) ** 2
  return losses.mean()




def make_inputs(seed, b=5):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=b).astype(np.float32) * 2 - 10 for _ in range(4))


CASES = [
    dict(loss_type="sigmoid", ls=0.0),
    dict(loss_type="sigmoid", ls=0.1),  # cDPO
    dict(loss_type="robust", ls=0.1),
    dict(loss_type="hinge", ls=0.0),
    dict(loss_type="ipo", ls=0.0),
]


class DpoTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_value_and_grads(self, loss_type, ls):
    cl, cr, rl, rr = make_inputs(0)
    beta = 0.3
    fn = functools.partial(dpo.loss, beta=beta, loss_type=loss_type, label_smoothing=ls)
    (value, metrics), (g_c, g_r) = self.variant(jax.value_and_grad(fn, argnums=(0, 2), has_aux=True))(cl, cr, rl, rr)
    np.testing.assert_allclose(value, np_dpo(cl, cr, rl, rr, beta=beta, loss_type=loss_type, ls=ls), rtol=1e-5)
    np.testing.assert_allclose(
        g_c, fd_grad(lambda x: np_dpo(x, cr, rl, rr, beta=beta, loss_type=loss_type, ls=ls), cl), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        g_r, fd_grad(lambda x: np_dpo(cl, cr, x, rr, beta=beta, loss_type=loss_type, ls=ls), rl), rtol=1e-4, atol=1e-6)
    chosen = beta * (cl - cr)
    rejected = beta * (rl - rr)
    np.testing.assert_allclose(metrics["rewards/chosen"], chosen.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/rejected"], rejected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/margin"], (chosen - rejected).mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracy"], (chosen > rejected).mean())
    np.testing.assert_allclose(metrics["loss/dpo"], value)

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed(self):
    # z = 1, beta = 1: sigmoid loss = log(1 + e^-1); ipo = (1 - 1/2)^2; hinge = 0.
    one, zero = jnp.array([1.0]), jnp.array([0.0])
    for loss_type, expected in (("sigmoid", np.log1p(np.exp(-1.0))), ("ipo", 0.25), ("hinge", 0.0)):
      value, _ = self.variant(functools.partial(dpo.loss, beta=1.0, loss_type=loss_type))(one, zero, zero, zero)
      np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_robust_is_sigmoid_without_noise_and_unbiased_in_expectation():
  cl, cr, rl, rr = make_inputs(1)
  a, _ = dpo.loss(cl, cr, rl, rr, beta=0.5, loss_type="robust")
  b, _ = dpo.loss(cl, cr, rl, rr, beta=0.5, loss_type="sigmoid")
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # rDPO: E over a label flip with prob eps of the robust loss = the clean sigmoid loss.
  eps = 0.2
  clean = dpo.per_pair_loss(cl, cr, rl, rr, beta=0.5)
  kept = dpo.per_pair_loss(cl, cr, rl, rr, beta=0.5, loss_type="robust", label_smoothing=eps)
  flipped = dpo.per_pair_loss(rl, rr, cl, cr, beta=0.5, loss_type="robust", label_smoothing=eps)
  np.testing.assert_allclose((1 - eps) * kept + eps * flipped, clean, rtol=1e-5)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(b=st.integers(1, 6), seed=st.integers(0, 2**16), loss_type=st.sampled_from(dpo.LOSS_TYPES))
def test_invariants(b, seed, loss_type):
  cl, cr, rl, rr = make_inputs(seed, b)
  scale = np.float32(1e4)  # extreme margins stay finite
  value, _ = dpo.loss(cl * scale, cr, rl, rr, beta=0.1, loss_type=loss_type)
  assert np.isfinite(value) and float(value) >= 0
  # Swapping chosen and rejected flips the sign of every implicit margin.
  _, m1 = dpo.loss(cl, cr, rl, rr, beta=0.1, loss_type=loss_type)
  _, m2 = dpo.loss(rl, rr, cl, cr, beta=0.1, loss_type=loss_type)
  np.testing.assert_allclose(m1["rewards/margin"], -m2["rewards/margin"], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  cl, cr, rl, rr = make_inputs(2)
  with pytest.raises(ValueError, match="loss_type='kto'"):
    dpo.loss(cl, cr, rl, rr, beta=0.1, loss_type="kto")
  with pytest.raises(ValueError, match="chosen_logp must have rank 1"):
    dpo.loss(cl[:, None], cr, rl, rr, beta=0.1)
  with pytest.raises(ValueError, match="rejected_ref_logp"):
    dpo.loss(cl, cr, rl, rr[:2], beta=0.1)
  with pytest.raises(ValueError, match="beta must be > 0"):
    dpo.loss(cl, cr, rl, rr, beta=-1.0)
  with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
    dpo.loss(cl, cr, rl, rr, beta=0.1, loss_type="robust", label_smoothing=0.5)
  with pytest.raises(ValueError, match="label_smoothing is not used"):
    dpo.loss(cl, cr, rl, rr, beta=0.1, loss_type="ipo", label_smoothing=0.1)
