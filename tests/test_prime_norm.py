"""PRIME's token-score normalisation (`prime.prime_norm`), the "prime" estimator's `process_norm`,
and the PRM's online pair accuracy (`scoring.pair_accuracy`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prime as prime_config
from jaxrl_reward.rewards import scoring
from objectives import estimators
from objectives import prime
from test_prime import np_prime


def np_prime_norm(scores, mask):
  """Transcription of PRIME's `prime_norm` (batch_norm) with masked tokens zeroed, float64 loops."""
  scores, mask = np.float64(scores), np.asarray(mask) > 0
  b, t = scores.shape
  s = np.where(mask, scores, 0.0)
  top = 0.0
  for i in range(b):
    for u in range(t):
      if mask[i, u]:
        top = max(top, abs(sum(s[i, v] for v in range(u, t) if mask[i, v])))
  return s / (top + 1e-6)


def _inputs():
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  scores = np.array([[0.2, -0.1, 0.3, np.nan],    # NaN where masked: ignored
                     [0.5, 0.4, 9.0, -9.0],       # large values where masked: ignored
                     [np.inf, 3.0, 1.0, 2.0],     # an all-masked row
                     [-0.6, -0.7, 0.1, -0.4]],    # the largest |reverse cumsum|: -1.6, a negative sum
                    np.float32)
  return scores, mask


def test_prime_norm_matches_numpy_transcription():
  scores, mask = _inputs()
  out = np.asarray(prime.prime_norm(scores, mask))
  expected = np_prime_norm(scores, mask)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
  # the denominator is the negative row's |sum| (1.6), not the largest positive one (0.9)
  np.testing.assert_allclose(out[3], scores[3] / (1.6 + 1e-6), rtol=1e-6)
  np.testing.assert_array_equal(out[2], 0.0)
  np.testing.assert_array_equal(out[mask == 0], 0.0)


def test_prime_norm_none_and_empty_batch_and_jit():
  scores, mask = _inputs()
  np.testing.assert_array_equal(np.asarray(prime.prime_norm(scores, mask, method="none")),
                                np.where(mask > 0, scores, 0.0))
  empty = np.asarray(prime.prime_norm(np.full((2, 3), np.nan, np.float32), np.zeros((2, 3), np.float32)))
  assert np.all(np.isfinite(empty)) and np.all(empty == 0)
  jitted = jax.jit(prime.prime_norm)(jnp.asarray(scores), jnp.asarray(mask))
  np.testing.assert_allclose(jitted, np_prime_norm(scores, mask), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="method='batch'"):
    prime.prime_norm(scores, mask, method="batch")


def test_prime_estimator_batch_norm_is_rloo_on_normalised_scores():
  rng = np.random.default_rng(3)
  b, t, k = 6, 5, 3
  lengths = np.array([5, 3, 4, 2, 5, 1])
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  process = (rng.normal(size=(b, t)) * 0.01 * mask).astype(np.float32)  # implicit-PRM scale
  outcome = np.array([1, 0, 1, 0, 0, 1], np.float32)
  batch = {"rewards": outcome, "outcome_rewards": outcome, "token_rewards": process, "mask": mask}
  out = estimators.compute("prime", batch, group_size=k, options={"process_norm": "batch_norm"})
  expected, _ = np_prime(np_prime_norm(process, mask), outcome, mask, k=k)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  # the normalisation matters: without it the process term is negligible at this scale
  plain = estimators.compute("prime", batch, group_size=k)
  np.testing.assert_allclose(plain, np_prime(process, outcome, mask, k=k)[0], rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(out) - np.asarray(plain)).max() > 0.1
  with pytest.raises(ValueError, match="process_norm"):
    estimators.compute("prime", {**batch, "token_rewards": None}, group_size=k, options={"process_norm": "bad"})


def test_prime_config_selects_batch_norm():
  for variant in ("tiny", "tiny,update_first", None):
    assert prime_config.get_config(variant).advantage.options.process_norm == "batch_norm"
  assert "process_norm" not in prime_config.get_config("tiny,rloo").advantage.options


def test_pair_accuracy():
  groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  labels = np.array([1, 0, 0, 1, 1, 0, 1, 1], np.float32)
  scores = np.array([0.5, 0.1, 0.5, -1.0, 2.0, 0.0, 3.0, -3.0], np.float32)
  acc, n = scoring.pair_accuracy(scores, labels, groups)
  # group 0: (0 vs 1) win, (0 vs 2) tie; group 1: (3 vs 5) loss, (4 vs 5) win; group 2: no pair
  assert float(n) == 4 and float(acc) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
  acc, n = scoring.pair_accuracy(scores, np.ones_like(labels), groups)  # no mixed group
  assert float(n) == 0 and float(acc) == 0.5
  acc, _ = scoring.pair_accuracy(-scores, labels, groups)  # an inverted scorer: the metric can fail
  assert float(acc) == pytest.approx((0 + 0.5 + 1 + 0) / 4)
