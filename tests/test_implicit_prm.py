"""Tests for objectives.implicit_prm: golden values and gradients vs numpy, Q/step-reward identities."""
import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import implicit_prm, registry
from numeric import fd_grad

fd_grad_h = functools.partial(fd_grad, h=1e-5)  # float32 inputs: a wider step

BETA = 0.05


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_token_rewards(logp, ref, mask, beta):
  ratio = np.float64(logp) if ref is None else np.float64(logp) - ref
  return beta * ratio * mask


def np_steps(token_rewards, ends, max_steps):
  """(q, step rewards, step mask) [B, S] by explicit loops."""
  b, _ = token_rewards.shape
  q = np.zeros((b, max_steps))
  r = np.zeros((b, max_steps))
  valid = np.zeros((b, max_steps), bool)
  for i in range(b):
    positions = [t for t in np.flatnonzero(ends[i])][:max_steps]
    prev = 0.0
    for k, pos in enumerate(positions):
      q[i, k] = np.sum(token_rewards[i, :pos + 1])
      r[i, k] = q[i, k] - prev
      prev = q[i, k]
      valid[i, k] = True
  return q, r, valid


def np_score(token_rewards, ends, aggregate, max_steps):
  q, r, valid = np_steps(np.float64(token_rewards), ends, max_steps)
  out = np.zeros(q.shape[0])
  for i in range(q.shape[0]):
    if not valid[i].any():
      continue
    if aggregate == "min":
      out[i] = r[i][valid[i]].min()
    elif aggregate == "min_q":
      out[i] = q[i][valid[i]].min()
    elif aggregate == "sum":
      out[i] = r[i][valid[i]].sum()
    else:
      out[i] = q[i][valid[i]][-1]
  return out


def np_ce(logp, ref, mask, labels, beta):
  """Mean BCE over the rows with tokens (a row without tokens is absent, as PRIME's filtered samples)."""
  r = np.sum(np_token_rewards(logp, ref, mask, beta), axis=-1)
  present = np.asarray(mask).sum(-1) > 0
  per_seq = -(labels * np_log_sigmoid(r) + (1 - labels) * np_log_sigmoid(-r))
  return np.mean(per_seq[present])


def np_dpo(cl, cr, cm, rl, rr, rm, beta):
  z = np.sum((np.float64(cl) - cr) * cm, -1) - np.sum((np.float64(rl) - rr) * rm, -1)
  return np.mean(-np_log_sigmoid(beta * z))




def make_inputs(seed, b=3, t=6):
  rng = np.random.default_rng(seed)
  logp = (rng.normal(size=(b, t)) - 2).astype(np.float32)
  ref = (logp + rng.normal(size=(b, t))).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask[1, 4:] = 0
  mask[2, :] = 0  # empty response
  ends = np.zeros((b, t), bool)
  ends[0, [1, 3, 5]] = True
  ends[1, [0, 3]] = True
  return logp, ref, mask, ends


class ImplicitPrmTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(True, False)
  def test_token_rewards(self, with_ref):
    logp, ref, mask, _ = make_inputs(0)
    ref_arg = ref if with_ref else None
    out = self.variant(functools.partial(implicit_prm.token_rewards, beta=BETA))(logp, ref_arg, mask)
    np.testing.assert_allclose(out, np_token_rewards(logp, ref_arg, mask, BETA), rtol=1e-5, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(aggregate=implicit_prm.AGGREGATES, max_steps=(None, 2))
  def test_step_scores_value_and_grad(self, aggregate, max_steps):
    logp, ref, mask, ends = make_inputs(1)
    tok = np_token_rewards(logp, ref, mask, 1.0).astype(np.float32)
    s = tok.shape[1] if max_steps is None else max_steps
    fn = functools.partial(implicit_prm.step_scores, aggregate=aggregate, max_steps=max_steps)
    q, score = self.variant(fn)(tok, ends)
    q_ref, _, _ = np_steps(tok, ends, s)
    np.testing.assert_allclose(q, q_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score, np_score(tok, ends, aggregate, s), rtol=1e-5, atol=1e-6)
    grad = self.variant(jax.grad(lambda x: jnp.sum(fn(x, ends)[1] * jnp.array([1.0, 2.0, 3.0]))))(tok)
    expected = fd_grad_h(lambda x: np.sum(np_score(x, ends, aggregate, s) * np.array([1.0, 2.0, 3.0])), tok)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_step_rewards_and_indices(self):
    logp, ref, mask, ends = make_inputs(2)
    tok = np_token_rewards(logp, ref, mask, BETA).astype(np.float32)
    indices = jnp.array([[1, 3, 5, -1], [0, 3, -1, -1], [-1, -1, -1, -1]])
    from_idx = self.variant(implicit_prm.step_end_mask_from_indices, static_argnums=1)(indices, 6)
    np.testing.assert_array_equal(from_idx, ends)
    r, valid = self.variant(functools.partial(implicit_prm.step_rewards, max_steps=4))(tok, from_idx)
    _, r_ref, valid_ref = np_steps(tok, ends, 4)
    np.testing.assert_allclose(r, r_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(valid, valid_ref)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ce_loss_value_and_grad(self):
    logp, ref, mask, _ = make_inputs(3)
    logp = logp * 20  # large |r| where log(sigmoid) is not computed naively
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    fn = functools.partial(implicit_prm.ce_loss, beta=BETA)
    (value, metrics), grad = self.variant(jax.value_and_grad(fn, has_aux=True))(logp, ref, mask, labels)
    np.testing.assert_allclose(value, np_ce(logp, ref, mask, labels, BETA), rtol=1e-5)
    np.testing.assert_allclose(grad, fd_grad_h(lambda x: np_ce(x, ref, mask, labels, BETA), logp), rtol=1e-4, atol=1e-6)
    r = np.sum(np_token_rewards(logp, ref, mask, BETA), -1)
    present = mask.sum(-1) > 0  # row 2 has no token: absent from every mean
    np.testing.assert_allclose(metrics["stats/prm_accuracy"], np.mean(((r > 0) == (labels > 0.5))[present]))
    np.testing.assert_allclose(metrics["loss/prm_ce"], value, rtol=1e-6)
    # Taking a row out (PRIME's accuracy filter zeroes its mask) leaves the mean of the others.
    kept = np.ones_like(mask)
    kept[1] = 0
    dropped = fn(logp, ref, mask * kept, labels)[0]
    np.testing.assert_allclose(dropped, np_ce(logp[:1], ref[:1], mask[:1], labels[:1], BETA), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_dpo_loss_value_and_grad(self):
    cl, cr, cm, _ = make_inputs(4)
    rl, rr, rm, _ = make_inputs(5)
    rl, rr, rm = rl[:, :4], rr[:, :4], rm[:, :4]  # rejected responses may have another length
    cm[2] = 1.0
    rm[2] = 1.0
    fn = functools.partial(implicit_prm.dpo_loss, beta=BETA)
    (value, metrics), (gc, gr) = self.variant(jax.value_and_grad(fn, argnums=(0, 3), has_aux=True))(
        cl, cr, cm, rl, rr, rm)
    np.testing.assert_allclose(value, np_dpo(cl, cr, cm, rl, rr, rm, BETA), rtol=1e-5)
    np.testing.assert_allclose(gc, fd_grad_h(lambda x: np_dpo(x, cr, cm, rl, rr, rm, BETA), cl), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gr, fd_grad_h(lambda x: np_dpo(cl, cr, cm, x, rr, rm, BETA), rl), rtol=1e-4, atol=1e-6)
    self.assertIn("rewards/accuracy", metrics)


@functools.partial(jax.jit, static_argnames=("aggregate",))
def _scores(logp, ref, mask, ends, aggregate):
  tok = implicit_prm.token_rewards(logp, ref, mask, beta=BETA)
  q, score = implicit_prm.step_scores(tok, ends, aggregate=aggregate)
  r, valid = implicit_prm.step_rewards(tok, ends)
  return tok, q, score, r, valid, implicit_prm.sequence_rewards(logp, ref, mask, beta=BETA)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(b=st.integers(1, 4), t=st.integers(1, 6), seed=st.integers(0, 2**16),
                  aggregate=st.sampled_from(implicit_prm.AGGREGATES))
def test_invariants(b, t, seed, aggregate):
  rng = np.random.default_rng(seed)
  logp = (rng.normal(size=(b, t)) - 2).astype(np.float32)
  ref = (rng.normal(size=(b, t)) - 2).astype(np.float32)
  lengths = rng.integers(0, t + 1, size=b)
  lengths[0] = 0  # a fully masked row
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  ends = (rng.uniform(size=(b, t)) < 0.4) & (mask > 0)
  ends[np.arange(b), np.maximum(lengths - 1, 0)] |= lengths > 0  # the last token ends a step
  tok, q, score, r, valid, seq = (np.asarray(x) for x in _scores(logp, ref, mask, ends, aggregate))
  for x in (tok, q, score, r, seq):
    assert np.all(np.isfinite(x))
  # Fully masked row: zero rewards, no steps, zero score.
  assert not valid[0].any() and score[0] == 0 and np.all(tok[0] == 0) and np.all(q[0] == 0)
  # The step rewards add up to the sequence implicit reward r_theta(y) ...
  np.testing.assert_allclose(r.sum(-1), seq, rtol=1e-5, atol=1e-6)
  # ... and Q at the last step is r_theta(y).
  num = valid.sum(-1)
  last_q = np.where(num > 0, q[np.arange(b), np.maximum(num - 1, 0)], 0.0)
  np.testing.assert_allclose(last_q, seq, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(seq, np.sum(np_token_rewards(logp, ref, mask, BETA), -1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(score, np_score(tok, ends, aggregate, t), rtol=1e-5, atol=1e-6)


def np_ce_balanced(logp, ref, mask, labels, beta):
  """Class-balanced CE by hand: with N rows with tokens, n_+ = sum l, n_- = sum (1 - l) over them and
  K classes present, w_c = N / (K n_c); the loss is sum_b w(l_b) BCE_b / N."""
  r = np.sum(np_token_rewards(logp, ref, mask, beta), axis=-1)
  present = np.asarray(mask).sum(-1) > 0
  l, r = np.float64(labels)[present], r[present]
  n, n_pos, n_neg = len(l), l.sum(), (1 - l).sum()
  k = int(n_pos > 0) + int(n_neg > 0)
  w_pos = n / (k * n_pos) if n_pos > 0 else 0.0
  w_neg = n / (k * n_neg) if n_neg > 0 else 0.0
  return np.sum(-(w_pos * l * np_log_sigmoid(r) + w_neg * (1 - l) * np_log_sigmoid(-r))) / n


class LabelBalanceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(([1.0, 0.0, 0.0, 0.0, 1.0],), ([0.0, 0.0, 0.0, 0.0, 1.0],), ([0.0, 0.0, 0.0, 0.0, 0.0],),
                            ([0.9, 0.0, 0.2, 0.0, 1.0],))
  def test_value_and_grad_against_numpy(self, labels):
    logp, ref, mask, _ = make_inputs(10, b=5)  # row 2 has no token: absent, its label ignored
    logp = logp * 10  # |r| of order 1: the weights change the loss visibly
    labels = np.asarray(labels, np.float32)
    fn = functools.partial(implicit_prm.ce_loss, beta=BETA, label_balance=True)
    (value, metrics), grad = self.variant(jax.value_and_grad(fn, has_aux=True))(logp, ref, mask, labels)
    np.testing.assert_allclose(value, np_ce_balanced(logp, ref, mask, labels, BETA), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/prm_ce"], value, rtol=1e-6)
    np.testing.assert_allclose(grad, fd_grad_h(lambda x: np_ce_balanced(x, ref, mask, labels, BETA), logp),
                               rtol=1e-4, atol=1e-6)

  def test_golden_weights_and_default_off(self):
    # Present rows 0, 1, 3, 4 with labels 1, 0, 0, 0: n_+ = 1, n_- = 3, N = 4 -> w_+ = 2, w_- = 2/3, so
    # positives and negatives each weigh N / 2 = 2 (the label of the empty row 2 is ignored).
    logp, ref, mask, _ = make_inputs(11, b=5)
    labels = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    present = np.asarray(mask).sum(-1) > 0
    w_pos, w_neg = implicit_prm.class_weights(jnp.where(present, labels, 0.0), jnp.asarray(present))
    np.testing.assert_allclose([w_pos, w_neg], [2.0, 2.0 / 3.0], rtol=1e-6)
    r = np.sum(np_token_rewards(logp, ref, mask, BETA), axis=-1)
    bce = -(labels * np_log_sigmoid(r) + (1 - labels) * np_log_sigmoid(-r))
    np.testing.assert_allclose(implicit_prm.ce_loss(logp, ref, mask, labels, beta=BETA, label_balance=True)[0],
                               0.5 * bce[0] + 0.5 * np.mean(bce[[1, 3, 4]]), rtol=1e-5)
    np.testing.assert_allclose(implicit_prm.ce_loss(logp, ref, mask, labels, beta=BETA)[0],
                               np_ce(logp, ref, mask, labels, BETA), rtol=1e-5)  # default: unweighted
    batch = {"ref_logp": ref, "mask": mask, "labels": labels}
    total, den, _ = registry.get("implicit_prm_ce")(logp, batch, beta=BETA, label_balance=True)
    np.testing.assert_allclose(total / den, np_ce_balanced(logp, ref, mask, labels, BETA), rtol=1e-5)
    self.assertEqual(registry.resolve_options("implicit_prm_ce", {})["label_balance"], False)


def test_registered_ce_objective():
  logp, ref, mask, _ = make_inputs(6)
  labels = np.array([1.0, 0.0, 0.0], np.float32)
  total, den, _ = registry.get("implicit_prm_ce")(logp, {"ref_logp": ref, "mask": mask, "labels": labels}, beta=BETA)
  np.testing.assert_allclose(total / den, np_ce(logp, ref, mask, labels, BETA), rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
  logp, ref, mask, ends = make_inputs(7)
  with pytest.raises(ValueError, match="logp must have rank 2"):
    implicit_prm.token_rewards(logp[0], ref[0], mask[0], beta=BETA)
  with pytest.raises(ValueError, match="ref_logp"):
    implicit_prm.token_rewards(logp, ref[:, :2], mask, beta=BETA)
  with pytest.raises(ValueError, match="beta must be > 0"):
    implicit_prm.token_rewards(logp, ref, mask, beta=0.0)
  with pytest.raises(ValueError, match="step_end_mask"):
    implicit_prm.step_scores(logp, ends[:, :3])
  with pytest.raises(ValueError, match="aggregate='max'"):
    implicit_prm.step_scores(logp, ends, aggregate="max")
  with pytest.raises(ValueError, match="max_steps"):
    implicit_prm.step_scores(logp, ends, max_steps=0)
  with pytest.raises(ValueError, match="labels"):
    implicit_prm.ce_loss(logp, ref, mask, np.ones(2), beta=BETA)
  with pytest.raises(ValueError, match="step_end_indices must be integers"):
    implicit_prm.step_end_mask_from_indices(jnp.zeros((2, 2)), 4)
  with pytest.raises(ValueError, match="same batch size"):
    implicit_prm.dpo_loss(logp, ref, mask, logp[:2], ref[:2], mask[:2], beta=BETA)
  with pytest.raises(KeyError, match="ref_logp"):
    registry.get("implicit_prm_ce")(logp, {"mask": mask, "labels": np.ones(3)})


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_kto(logp, ref, mask, labels, beta, w_d=1.0, w_u=1.0, kl_reference=None):
  """(loss, analytic d loss / d logp with the KL reference point held fixed, KL used); responses
  without tokens are absent (in no mean)."""
  present = np.sum(mask, axis=-1) > 0
  rho = np.sum((np.float64(logp) - ref) * mask, axis=-1)
  kl = max(np.mean(rho[present]), 0.0) if kl_reference is None else kl_reference
  r, z0 = beta * rho, beta * kl
  des = np.asarray(labels) > 0.5
  per_seq = np.where(des, w_d * (1 - np_sigmoid(r - z0)), w_u * (1 - np_sigmoid(z0 - r)))
  dsig = lambda x: np_sigmoid(x) * (1 - np_sigmoid(x))  # noqa: E731
  dr = np.where(des, -w_d * dsig(r - z0), w_u * dsig(z0 - r)) / present.sum()
  return np.mean(per_seq[present]), dr[:, None] * beta * mask, kl


class KtoLossTest(chex.TestCase):

  def test_golden_value(self):
    # log-ratios summed per row: rho = [2, -1, 0] -> KL = max(1/3, 0), beta 0.5 -> r = [1, -0.5, 0],
    # z0 = 1/6; labels [1, 0, 1], w_d = 1, w_u = 2.
    logp = np.array([[-1.0, -1.0], [-2.0, -3.0], [-0.5, -4.0]], np.float32)
    ref = np.array([[-2.0, -2.0], [-2.0, -2.0], [-0.5, -1.0]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 0]], np.float32)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    expected = (1 - sig(1 - 1 / 6) + 2 * (1 - sig(1 / 6 + 0.5)) + 1 - sig(-1 / 6)) / 3
    value, metrics = implicit_prm.kto_loss(logp, ref, mask, np.array([True, False, True]), beta=0.5,
                                           undesirable_weight=2.0)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["stats/prm_kl"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["stats/prm_reward_desirable"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["stats/prm_reward_undesirable"], -0.5, rtol=1e-6)
    np.testing.assert_allclose(metrics["stats/prm_accuracy"], 2 / 3, rtol=1e-6)
    # A negative mean log-ratio is clamped to KL = 0.
    _, metrics = implicit_prm.kto_loss(logp - 5, ref, mask, np.array([1, 0, 1]), beta=0.5)
    self.assertEqual(float(metrics["stats/prm_kl"]), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(None, 0.7)
  def test_value_and_grad(self, kl_reference):
    _, ref, mask, _ = make_inputs(8, b=4)
    logp = (ref + 2 * np.random.default_rng(8).normal(size=ref.shape) + 1.5).astype(np.float32)
    labels = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    fn = functools.partial(implicit_prm.kto_loss, beta=0.3, desirable_weight=1.5, undesirable_weight=0.5,
                           kl_reference=kl_reference)
    (value, metrics), grad = self.variant(jax.value_and_grad(fn, has_aux=True))(logp, ref, mask, labels)
    expected, expected_grad, kl = np_kto(logp, ref, mask, labels, 0.3, 1.5, 0.5, kl_reference)
    self.assertGreater(kl, 0.0)  # the reference point is active in both cases
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["stats/prm_kl"], kl, rtol=1e-5)
    # The reference point carries no gradient: the analytic gradient holds it fixed.
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    if kl_reference is not None:  # with a fixed KL, finite differences agree as well
      np.testing.assert_allclose(
          grad, fd_grad_h(lambda x: np_kto(x, ref, mask, labels, 0.3, 1.5, 0.5, kl_reference)[0], logp),
          rtol=1e-4, atol=1e-6)

  def test_bad_inputs_raise_clear_errors(self):
    logp, ref, mask, _ = make_inputs(9)
    labels = np.array([1, 0, 1])
    with pytest.raises(ValueError, match="labels"):
      implicit_prm.kto_loss(logp, ref, mask, labels[:2], beta=BETA)
    with pytest.raises(ValueError, match="beta must be > 0"):
      implicit_prm.kto_loss(logp, ref, mask, labels, beta=-1.0)
    with pytest.raises(ValueError, match="undesirable_weight must be >= 0"):
      implicit_prm.kto_loss(logp, ref, mask, labels, beta=BETA, undesirable_weight=-1.0)
    with pytest.raises(ValueError, match="kl_reference must be a scalar"):
      implicit_prm.kto_loss(logp, ref, mask, labels, beta=BETA, kl_reference=np.zeros(3))
    with pytest.raises(ValueError, match="mask"):
      implicit_prm.kto_loss(logp, ref, mask[:, :2], labels, beta=BETA)
