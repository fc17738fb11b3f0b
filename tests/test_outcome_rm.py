"""The outcome reward model's loss (objectives/outcome_rm.py) against numpy by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from objectives import outcome_rm, registry


def _case():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(4, 5)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32)
  labels = np.array([1.0, 0.0, np.nan, 1.0], np.float32)  # the empty row's label is never read
  return values, mask, labels


def test_scores_are_the_values_at_each_rows_last_token():
  values, mask, _ = _case()
  values[0, 3:] = np.nan  # padding may hold anything
  np.testing.assert_array_equal(np.asarray(outcome_rm.last_token_scores(values, mask)),
                                [values[0, 2], values[1, 4], 0.0, values[3, 0]])


def test_bce_and_gradient_match_numpy():
  values, mask, labels = _case()
  s = np.array([values[0, 2], values[1, 4], values[3, 0]], np.float64)
  y = np.array([1.0, 0.0, 1.0])
  want = np.mean(-(y * np.log(1 / (1 + np.exp(-s))) + (1 - y) * np.log(1 / (1 + np.exp(s)))))
  loss = lambda v: (lambda t, c, m: t / c)(*outcome_rm.bce_terms(v, mask, labels))  # noqa: E731
  np.testing.assert_allclose(float(loss(jnp.asarray(values))), want, rtol=1e-5)
  grad = np.asarray(jax.grad(loss)(jnp.asarray(values)))
  want_grad = np.zeros_like(values)
  for (row, col), si, yi in zip([(0, 2), (1, 4), (3, 0)], s, y):
    want_grad[row, col] = (1 / (1 + np.exp(-si)) - yi) / 3  # d BCE / d logit = sigma(s) - y
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
  _, count, metrics = outcome_rm.bce_terms(values, mask, labels)
  assert float(count) == 3.0
  assert float(metrics["stats/orm_accuracy"]) == pytest.approx(np.mean((s > 0) == (y > 0.5)))


def test_bad_inputs_are_named():
  values, mask, labels = _case()
  with pytest.raises(ValueError, match="labels"):
    outcome_rm.bce_terms(values, mask, np.array([1.0, 2.0, 0.0, 1.0], np.float32))
  with pytest.raises(ValueError, match="mask"):
    outcome_rm.last_token_scores(values, mask[:, :3])
  with pytest.raises(KeyError, match="labels"):
    registry.spec("outcome_rm_bce").fn(values, {"mask": mask})
  assert registry.spec("outcome_rm_bce").inputs == "values"
