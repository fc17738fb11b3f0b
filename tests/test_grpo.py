"""Tests for objectives.grpo: golden loss and gradient vs numpy, micro-batch invariance,
clipping, edge cases and input errors."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import grpo
from objectives import registry

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
EPS = 0.2
CLAMP = 20.0


# ----------------------------------------------------------------------------- numpy reference


def np_kl_value_grad(lp, ref, estimator):
  x = lp - ref
  base = estimator.rstrip("+")
  if base == "k1":
    value, grad = x, np.ones_like(x)
  elif base == "k2":
    value, grad = 0.5 * x**2, x
  else:
    u = ref - lp
    inside = np.abs(u) < 20.0
    u = np.clip(u, -20.0, 20.0)
    value = np.exp(u) - u - 1.0
    grad = np.where(inside, 1.0 - np.exp(u), 0.0)
    grad = np.where(np.abs(value) < 10.0, grad, 0.0)
    value = np.clip(value, -10.0, 10.0)
  if estimator.endswith("+"):
    grad = x
  return value, grad


def np_weights(mask, loss_type, max_len=None):
  """Aggregation weight of each token: loss = sum(weights * per_token_loss)."""
  b, t = mask.shape
  if loss_type in ("bnpo", "dapo"):
    total = mask.sum()
    return mask / total if total > 0 else np.zeros_like(mask)
  if loss_type == "grpo":
    lengths = mask.sum(1, keepdims=True)
    nonempty = (lengths > 0).sum()
    return np.where(lengths > 0, mask / np.maximum(lengths, 1) / max(nonempty, 1), 0.0)
  return mask / (b * (max_len or t))


def np_grpo(lp, old, adv, mask, ref=None, *, loss_type="dapo", epsilon_high=None, delta=None, beta=0.0,
            kl_estimator="k3", level="token", max_len=None):
  """(loss, d loss / d lp) with the gradient derived by hand, in float64."""
  lp, old, mask = (np.asarray(a, np.float64) for a in (lp, old, mask))
  adv = np.asarray(adv, np.float64)
  adv = adv[:, None] * np.ones_like(lp) if adv.ndim == 1 else adv
  eh = EPS if epsilon_high is None else epsilon_high
  x = lp - old
  if level == "token":
    log_ratio = x
  else:
    lengths = np.maximum(mask.sum(1, keepdims=True), 1.0)
    log_ratio = np.broadcast_to((x * mask).sum(1, keepdims=True) / lengths, lp.shape)
  d_log_ratio = (np.abs(log_ratio) < CLAMP).astype(np.float64)  # d log r_t / d lp_t (stop-grad form)
  r = np.exp(np.clip(log_ratio, -CLAMP, CLAMP))
  dr = r * d_log_ratio
  if delta is None:
    u1, du1 = r * adv, adv
  else:
    u1, du1 = np.minimum(r, delta) * adv, adv * (r < delta)
  u2, du2 = np.clip(r, 1 - EPS, 1 + eh) * adv, adv * ((r > 1 - EPS) & (r < 1 + eh))
  pg = -np.minimum(u1, u2)
  dpg = -np.where(u1 < u2, du1, np.where(u2 < u1, du2, 0.5 * (du1 + du2))) * dr
  per_token, d_per_token = pg, dpg
  if beta > 0:
    k, dk = np_kl_value_grad(lp, np.asarray(ref, np.float64), kl_estimator)
    per_token, d_per_token = pg + beta * k, dpg + beta * dk
  w = np_weights(mask, loss_type, max_len)
  return float((w * per_token).sum()), w * d_per_token


def np_trl_sequence_loss(lp, old, adv, mask, *, loss_type, epsilon_high=None, delta=None):
  """TRL's sequence-level loss value (ratio differentiated through the sequence mean)."""
  eh = EPS if epsilon_high is None else epsilon_high
  lengths = np.maximum(mask.sum(1, keepdims=True), 1.0)
  s = np.exp(((lp - old) * mask).sum(1, keepdims=True) / lengths)  # [B, 1]
  a = adv[:, None]
  c1 = s if delta is None else np.minimum(s, delta)
  per_token = -np.minimum(c1 * a, np.clip(s, 1 - EPS, 1 + eh) * a) * np.ones_like(lp)
  return float((np_weights(mask, loss_type) * per_token).sum())


# ----------------------------------------------------------------------------- data


_BOUNDARIES = np.log([1 - EPS, 1 + EPS, 1.28, 1.5])


def _far_from_kinks(x, mask):
  """Every token and sequence log-ratio is away from the kinks of the clipped loss."""
  seq = (x * mask).sum(1) / np.maximum(mask.sum(1), 1)
  return (np.min(np.abs(x[..., None] - _BOUNDARIES)) > 1e-3
          and np.min(np.abs(seq[..., None] - _BOUNDARIES)) > 1e-3)


def _batch(seed=0, b=4, t=6, lengths=(6, 4, 1, 3)):
  mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)
  for attempt in range(100):  # deterministic: the first draw whose ratios avoid the kinks
    rng = np.random.default_rng(1000 * attempt + seed)
    lp = rng.normal(-1.5, 0.5, (b, t))
    x = rng.normal(0.0, 0.35, (b, t))
    x[0] += 0.5   # row 0: sequence ratio above every clip/delta bound
    x[1] -= 0.4   # row 1: sequence ratio below 1 - eps
    if _far_from_kinks(x, mask):
      break
  old = lp - x
  ref = lp + rng.normal(0.0, 0.5, (b, t))
  adv_seq = np.array([1.0, -0.7, 0.4, -1.3])[:b] if b <= 4 else rng.normal(0, 1, b)
  adv_tok = rng.normal(0.0, 1.0, (b, t))
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  return f32(lp), f32(old), f32(adv_seq), f32(adv_tok), f32(mask), f32(ref)


def _grpo_loss(lp, old, adv, mask, ref, **options):
  return grpo.loss(lp, old, adv, mask, ref_logp=ref, **options)[0]


KL_SETTINGS = [(0.0, "k3"), (0.04, "k1"), (0.04, "k2"), (0.04, "k3")]


@pytest.mark.parametrize(
    "loss_type,level,kl_setting",
    list(itertools.product(LOSS_TYPES, ("token", "sequence"), KL_SETTINGS)))
def test_loss_and_grad_match_numpy(loss_type, level, kl_setting):
  beta, kl_estimator = kl_setting
  lp, old, adv_seq, adv_tok, mask, ref = _batch(seed=1)
  # per-token advantages for two of the four KL settings, per-sequence for the others
  adv = adv_tok if kl_estimator in ("k1", "k3") and beta > 0 else adv_seq
  for epsilon_high, delta in itertools.product((None, 0.28), (None, 1.5)):
    options = dict(loss_type=loss_type, epsilon=EPS, epsilon_high=epsilon_high, delta=delta, beta=beta,
                   kl_estimator=kl_estimator, importance_sampling_level=level)
    value, grad = jax.value_and_grad(_grpo_loss)(lp, old, adv, mask, ref, **options)
    np_value, np_grad = np_grpo(lp, old, adv, mask, ref, loss_type=loss_type, epsilon_high=epsilon_high,
                                delta=delta, beta=beta, kl_estimator=kl_estimator, level=level)
    np.testing.assert_allclose(value, np_value, rtol=1e-5, atol=1e-6, err_msg=str(options))
    np.testing.assert_allclose(grad, np_grad, rtol=1e-4, atol=1e-6, err_msg=str(options))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_sequence_level_matches_trl_gradient_by_finite_differences(loss_type):
  """With per-sequence advantages the stop-gradient GSPO-token form has TRL's gradient."""
  lp, old, adv, _, mask, _ = _batch(seed=1)
  options = dict(loss_type=loss_type, epsilon_high=0.28, delta=1.5)
  grad = jax.grad(_grpo_loss)(lp, old, adv, mask, None, importance_sampling_level="sequence", **options)
  lp64, old64, adv64, mask64 = (np.asarray(a, np.float64) for a in (lp, old, adv, mask))
  fd = np.zeros_like(lp64)
  h = 1e-6
  for idx in np.ndindex(*lp64.shape):
    e = np.zeros_like(lp64)
    e[idx] = h
    fd[idx] = (np_trl_sequence_loss(lp64 + e, old64, adv64, mask64, **options)
               - np_trl_sequence_loss(lp64 - e, old64, adv64, mask64, **options)) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6)
  value = _grpo_loss(lp, old, adv, mask, None, importance_sampling_level="sequence", **options)
  np.testing.assert_allclose(value, np_trl_sequence_loss(lp64, old64, adv64, mask64, **options), rtol=1e-5)


class JitTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("grpo", "token", 0.04), ("dr_grpo", "sequence", 0.0), ("dapo", "sequence", 0.04))
  def test_jit_and_no_jit_agree_with_numpy(self, loss_type, level, beta):
    lp, old, adv, _, mask, ref = _batch(seed=3)
    options = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_high=0.28)
    fn = self.variant(jax.value_and_grad(functools.partial(_grpo_loss, **options)))
    value, grad = fn(lp, old, adv, mask, ref)
    np_value, np_grad = np_grpo(lp, old, adv, mask, ref, loss_type=loss_type, level=level, beta=beta,
                                epsilon_high=0.28)
    np.testing.assert_allclose(value, np_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, np_grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- micro-batching


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level,beta", [("token", 0.0), ("sequence", 0.04)])
def test_micro_batch_invariance(loss_type, level, beta):
  lp, old, adv, _, mask, ref = _batch(seed=4, b=8, t=6, lengths=(6, 2, 5, 1, 0, 3, 6, 4))
  options = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_high=0.28)
  full_value, full_grad = jax.value_and_grad(_grpo_loss)(lp, old, adv, mask, ref, **options)

  def terms(lp_, sl):
    total, den, _ = grpo.loss_terms(lp_, old[sl], adv[sl], mask[sl], ref_logp=ref[sl], **options)
    return total, den

  for n_micro in (1, 2, 4):
    size = 8 // n_micro
    totals, dens, grads = [], [], []
    for k in range(n_micro):
      sl = slice(k * size, (k + 1) * size)
      (total, den), vjp = jax.vjp(lambda x, sl=sl: terms(x, sl), lp[sl])
      totals.append(total)
      dens.append(den)
      grads.append(vjp((jnp.ones(()), jnp.zeros(())))[0])
    den = sum(dens)
    np.testing.assert_allclose(sum(totals) / den, full_value, rtol=1e-6, atol=1e-7, err_msg=f"{n_micro}")
    np.testing.assert_allclose(jnp.concatenate(grads) / den, full_grad, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- clipping


def test_clipping_zeroes_gradient_only_on_the_right_side():
  """A > 0: r > 1 + eps_high clipped (grad 0), r < 1 - eps not; A < 0: the mirror image;
  delta: A < 0 and r > delta has zero gradient."""
  ratios = np.array([[1.5, 0.6, 1.0, 1.9], [1.5, 0.7, 0.75, 1.9]], np.float32)
  old = np.full((2, 4), -1.0, np.float32)
  lp = old + np.log(ratios)
  adv = np.array([1.0, -1.0], np.float32)
  mask = np.ones((2, 4), np.float32)
  grad = jax.grad(lambda x: grpo.loss(x, old, adv, mask, loss_type="bnpo", epsilon_high=0.28)[0])(lp)
  grad = np.asarray(grad) * 8  # undo the token mean
  # A = +1: gradient of -r A is -r where active
  np.testing.assert_allclose(grad[0], [0.0, -0.6, -1.0, 0.0], rtol=1e-5, atol=1e-7)
  # A = -1: gradient r where active; r < 0.8 is clipped, r > 1.28 is not
  np.testing.assert_allclose(grad[1], [1.5, 0.0, 0.0, 1.9], rtol=1e-5, atol=1e-7)
  grad_d = jax.grad(lambda x: grpo.loss(x, old, adv, mask, loss_type="bnpo", epsilon_high=0.28, delta=1.7)[0])(lp)
  np.testing.assert_allclose(np.asarray(grad_d)[1] * 8, [1.5, 0.0, 0.0, 0.0], rtol=1e-5, atol=1e-7)
  _, metrics = grpo.loss(lp, old, adv, mask, loss_type="bnpo", epsilon_high=0.28)
  np.testing.assert_allclose(metrics["stats/clip_frac_high"], 2 / 8, rtol=1e-6)  # row 0: 1.5, 1.9
  np.testing.assert_allclose(metrics["stats/clip_frac_low"], 2 / 8, rtol=1e-6)  # row 1: 0.7, 0.75
  np.testing.assert_allclose(metrics["stats/clip_frac"], 4 / 8, rtol=1e-6)
  np.testing.assert_allclose(metrics["stats/ratio_mean"], ratios.mean(), rtol=1e-5)


def test_on_policy_old_logp_none_gives_ratio_one_with_policy_gradient():
  lp, _, adv, _, mask, _ = _batch(seed=5)
  value, grad = jax.value_and_grad(lambda x: grpo.loss(x, None, adv, mask, loss_type="bnpo")[0])(lp)
  w = mask / mask.sum()
  np.testing.assert_allclose(value, -(w * adv[:, None]).sum(), rtol=1e-5)
  np.testing.assert_allclose(grad, -w * adv[:, None], rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fully_masked_row_is_ignored(loss_type):
  lp, old, adv, _, mask, ref = _batch(seed=6, lengths=(6, 4, 0, 3))
  options = dict(loss_type=loss_type, beta=0.04, importance_sampling_level="sequence")
  value, grad = jax.value_and_grad(_grpo_loss)(lp, old, adv, mask, ref, **options)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[2], 0.0)
  keep = np.array([0, 1, 3])
  value_without = _grpo_loss(lp[keep], old[keep], adv[keep], mask[keep], ref[keep], **options)
  # One convention for every mode: the empty row counts in no denominator (dr_grpo's B too).
  np.testing.assert_allclose(value, value_without, rtol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_mask_gives_zero_not_nan(loss_type):
  lp, old, adv, _, mask, ref = _batch(seed=7)
  zeros = np.zeros_like(mask)
  fn = lambda x: grpo.loss(x, old, adv, zeros, ref_logp=ref, loss_type=loss_type, beta=0.04)  # noqa: E731
  (value, metrics), grad = jax.value_and_grad(fn, has_aux=True)(lp)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)
  for key, metric in metrics.items():
    assert np.isfinite(metric), key


# ----------------------------------------------------------------------------- registry, metrics


def test_registered_objective_matches_loss_terms():
  lp, old, adv, _, mask, ref = _batch(seed=8)
  batch = {"mask": mask, "old_logp": old, "advantages": adv, "ref_logp": ref, "rewards": adv}
  options = dict(loss_type="grpo", beta=0.04, epsilon_high=0.28)
  total, den, metrics = registry.get("grpo")(lp, batch, **options)
  expected = grpo.loss_terms(lp, old, adv, mask, ref_logp=ref, **options)
  np.testing.assert_allclose(total, expected[0], rtol=1e-6)
  np.testing.assert_allclose(den, expected[1])
  assert {"loss/policy", "stats/kl", "stats/clip_frac_low", "stats/clip_frac_high", "stats/clip_frac",
          "stats/ratio_mean"} <= set(metrics)
  # stats/kl is the masked token mean of the k3 estimate
  k, _ = np_kl_value_grad(np.float64(lp), np.float64(ref), "k3")
  np.testing.assert_allclose(metrics["stats/kl"], (k * mask).sum() / mask.sum(), rtol=1e-5)
  assert grpo.needs_reference({"beta": 0.04}) and not grpo.needs_reference({})
  with pytest.raises(KeyError, match="advantages"):
    registry.get("grpo")(lp, {"mask": mask})


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise():
  lp, old, adv, adv_tok, mask, ref = _batch(seed=9)
  with pytest.raises(ValueError, match="loss_type"):
    grpo.loss(lp, old, adv, mask, loss_type="ppo")
  with pytest.raises(ValueError, match="estimator"):
    grpo.loss(lp, old, adv, mask, ref_logp=ref, beta=0.1, kl_estimator="k5")
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.loss(lp, old, adv, mask, beta=0.04)
  with pytest.raises(ValueError, match="importance_sampling_level"):
    grpo.loss(lp, old, adv, mask, importance_sampling_level="sentence")
  with pytest.raises(ValueError, match="old_logp must have the shape of logp"):
    grpo.loss(lp, old[:, :4], adv, mask)
  with pytest.raises(ValueError, match="mask must have the shape of logp"):
    grpo.loss(lp, old, adv, mask[:2])
  with pytest.raises(ValueError, match="advantages"):
    grpo.loss(lp, old, adv[:3], mask)
  with pytest.raises(ValueError, match="advantages"):
    grpo.loss(lp, old, adv_tok[:, :5], mask)
  with pytest.raises(ValueError, match="ref_logp must have the shape of logp"):
    grpo.loss(lp, old, adv, mask, ref_logp=ref[:, :2], beta=0.04)
  with pytest.raises(ValueError, match="logp must have rank 2"):
    grpo.loss(lp[0], old[0], adv, mask[0])
  with pytest.raises(ValueError, match="delta"):
    grpo.loss(lp, old, adv, mask, delta=0.9)
  with pytest.raises(ValueError, match="beta"):
    grpo.loss(lp, old, adv, mask, beta=-1.0)

