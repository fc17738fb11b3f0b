"""Tests for objectives.value: PPO clipped value loss vs numpy (value and gradient), masking, errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import objectives  # noqa: F401  (registers everything)
from objectives import aggregation, registry
from objectives import value as value_lib


def np_value_loss(v, old, ret, mask, clip_range):
  """Per-token loss, d loss / d v, and the clipped-branch indicator (float64, verl formula)."""
  unclipped = (v - ret) ** 2
  if clip_range is None:
    return 0.5 * unclipped * mask, (v - ret) * mask, np.zeros_like(v)
  vc = np.clip(v, old - clip_range, old + clip_range)
  clipped = (vc - ret) ** 2
  use_clipped = clipped > unclipped
  inside = (v >= old - clip_range) & (v <= old + clip_range)
  grad = np.where(use_clipped, (vc - ret) * inside, v - ret)
  return 0.5 * np.maximum(unclipped, clipped) * mask, grad * mask, use_clipped.astype(float)


def make_inputs(seed=0, b=4, t=6):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, b)
  lengths[0] = t
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  old = rng.normal(0, 1, (b, t)).astype(np.float32)
  v = (old + rng.normal(0, 0.4, (b, t))).astype(np.float32)  # some inside, some outside the clip
  ret = rng.normal(0, 1, (b, t)).astype(np.float32)
  return v, old, ret, mask


def _loss(v, old, ret, mask, **options):
  total, den, _ = value_lib.value_loss_terms(v, old, ret, mask, **options)
  return aggregation.safe_divide(total, den)


@pytest.mark.parametrize("clip_range", [0.2, None])
def test_token_mean_value_and_gradient_match_numpy(clip_range):
  v, old, ret, mask = make_inputs(1)
  per_token, grad, use_clipped = np_value_loss(*(np.float64(x) for x in (v, old, ret)), mask, clip_range)
  n = mask.sum()
  total, den, metrics = value_lib.value_loss_terms(v, old, ret, mask, clip_range=clip_range)
  np.testing.assert_allclose(total, per_token.sum(), rtol=1e-5)
  assert den == n
  np.testing.assert_allclose(metrics["loss/value"], per_token.sum() / n, rtol=1e-5)
  np.testing.assert_allclose(metrics["stats/value_clip_frac"], (use_clipped * mask).sum() / n, rtol=1e-6)
  np.testing.assert_allclose(metrics["stats/value_mean"], (v * mask).sum() / n, rtol=1e-5)
  if clip_range is not None:
    assert 0 < metrics["stats/value_clip_frac"] < 1  # both branches are exercised
  g = jax.grad(functools.partial(_loss, clip_range=clip_range))(jnp.asarray(v), old, ret, mask)
  np.testing.assert_allclose(g, grad / n, rtol=1e-5, atol=1e-7)


def test_golden_by_hand():
  """c = 0.2. Token 0: V=1, V_old=.5, R=0: (1-0)^2=1 vs (.7-0)^2=.49 -> .5, grad V-R = 1.
  Token 1: V=.9, V_old=.5, R=1: .01 vs (.7-1)^2=.09 -> .045 (clipped branch), grad 0.
  Token 2: masked."""
  v = np.array([[1.0, 0.9, 5.0]], np.float32)
  old = np.array([[0.5, 0.5, -3.0]], np.float32)
  ret = np.array([[0.0, 1.0, 2.0]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  total, den, metrics = value_lib.value_loss_terms(v, old, ret, mask, clip_range=0.2)
  np.testing.assert_allclose(total, 0.545, rtol=1e-6)
  assert den == 2.0
  np.testing.assert_allclose(metrics["stats/value_clip_frac"], 0.5)
  g = jax.grad(functools.partial(_loss, clip_range=0.2))(jnp.asarray(v), old, ret, mask)
  np.testing.assert_allclose(g, [[0.5, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("aggregation_mode", aggregation.AGGREGATIONS)
def test_aggregations_match_aggregate(aggregation_mode):
  v, old, ret, mask = make_inputs(2)
  per_token, _, _ = np_value_loss(*(np.float64(x) for x in (v, old, ret)), mask, 0.2)
  total, den, _ = value_lib.value_loss_terms(v, old, ret, mask, aggregation=aggregation_mode)
  ref_total, ref_den = aggregation.aggregate(jnp.asarray(per_token, jnp.float32), mask, aggregation_mode)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  np.testing.assert_allclose(den, ref_den)


def test_no_clip_equals_large_clip():
  v, old, ret, mask = make_inputs(3)
  for fn in (_loss, jax.grad(_loss)):
    np.testing.assert_allclose(fn(jnp.asarray(v), old, ret, mask, clip_range=None),
                               fn(jnp.asarray(v), old, ret, mask, clip_range=1e6), rtol=1e-6)
  # and a small clip is different (the test can fail)
  assert not np.isclose(_loss(v, old, ret, mask, clip_range=None), _loss(v, old, ret, mask, clip_range=0.05))
  # old_values None: the clip is centred on sg(values), hence inactive
  np.testing.assert_allclose(_loss(v, None, ret, mask, clip_range=0.2), _loss(v, old, ret, mask, clip_range=None),
                             rtol=1e-6)


@pytest.mark.parametrize("clip_range", [0.2, None])
def test_masked_positions_contribute_nothing(clip_range):
  v, old, ret, mask = make_inputs(4)
  rng = np.random.default_rng(5)
  pad = mask == 0
  assert pad.any()
  dirty = [np.where(pad, rng.uniform(-1e3, 1e3, x.shape), x).astype(np.float32) for x in (v, old, ret)]
  clean_terms = value_lib.value_loss_terms(v, old, ret, mask, clip_range=clip_range)
  dirty_terms = value_lib.value_loss_terms(*dirty, mask, clip_range=clip_range)
  for a, b in zip(clean_terms[:2], dirty_terms[:2]):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  for key in clean_terms[2]:
    np.testing.assert_allclose(clean_terms[2][key], dirty_terms[2][key], rtol=1e-6, err_msg=key)
  g_clean = jax.grad(functools.partial(_loss, clip_range=clip_range))(jnp.asarray(v), old, ret, mask)
  g_dirty = jax.grad(functools.partial(_loss, clip_range=clip_range))(jnp.asarray(dirty[0]), *dirty[1:], mask)
  np.testing.assert_allclose(g_clean, g_dirty, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(g_dirty)[pad], 0.0)


def test_bad_shapes_name_the_argument():
  v, old, ret, mask = make_inputs(6)
  with pytest.raises(ValueError, match="values must have rank 2"):
    value_lib.value_loss_terms(v[0], old, ret, mask)
  with pytest.raises(ValueError, match="old_values"):
    value_lib.value_loss_terms(v, old[:, :3], ret, mask)
  with pytest.raises(ValueError, match="returns"):
    value_lib.value_loss_terms(v, old, ret[:2], mask)
  with pytest.raises(ValueError, match="mask"):
    value_lib.value_loss_terms(v, old, ret, mask.T)
  with pytest.raises(ValueError, match="clip_range"):
    value_lib.value_loss_terms(v, old, ret, mask, clip_range=-0.1)
  with pytest.raises(ValueError, match="aggregation"):
    value_lib.value_loss_terms(v, old, ret, mask, aggregation="mean")


def test_registered_objective():
  spec = registry.spec("value_mse")
  assert (spec.stage, spec.inputs) == ("rl", "values")
  assert registry.defaults("value_mse") == {"clip_range": 0.2, "aggregation": "token_mean"}
  assert not registry.requires_reference("value_mse")
  v, old, ret, mask = make_inputs(7)
  batch = {"returns": ret, "old_values": old, "mask": mask}
  got = jax.jit(functools.partial(registry.get("value_mse"), clip_range=0.1))(v, batch)
  want = value_lib.value_loss_terms(v, old, ret, mask, clip_range=0.1)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1])
  assert set(got[2]) == {"loss/value", "stats/value_clip_frac", "stats/value_mean"}
  with pytest.raises(KeyError, match="returns"):
    registry.get("value_mse")(v, {"mask": mask})
  with pytest.raises(ValueError, match="has no option 'clip'"):
    registry.resolve_options("value_mse", {"clip": 0.2})
