"""Tests for objectives.logprob_rewards: rewards, RLPR filter, JEPO and the likelihood loss vs numpy."""
import functools
import math

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from objectives import logprob_rewards as lr

from numeric import fd_grad

fd_grad_h = functools.partial(fd_grad, h=1e-5)  # float32 inputs: a wider step


def np_answer_reward(logp, mask, kind):
  out = np.zeros(logp.shape[0])
  for i in range(logp.shape[0]):
    tokens = np.float64(logp[i][mask[i] > 0])
    if tokens.size == 0:
      continue
    out[i] = {"logprob": tokens.sum(), "avg_logprob": tokens.mean(), "prob": np.exp(tokens.sum()),
              "avg_prob": np.exp(tokens).mean()}[kind]
  return out


def np_likelihood_loss(cot, cot_mask, ans, ans_mask, adv, sft_coef, w):
  policy = -np.mean(adv * np.sum(np.float64(cot) * cot_mask, -1))
  sft = -np.mean(w * np.sum(np.float64(ans) * ans_mask, -1))
  return policy + sft_coef * sft


def np_log_mean_exp(x):
  m = np.max(x)
  return m + math.log(np.mean(np.exp(x - m)))




def make_answer(seed, b=3, t=4):
  rng = np.random.default_rng(seed)
  logp = np.log(rng.uniform(0.05, 1.0, size=(b, t))).astype(np.float32)
  mask = np.ones((b, t), np.float32)
  mask[1, 2:] = 0
  mask[2] = 0  # no answer tokens
  return logp, mask


class LogprobRewardsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*lr.KINDS)
  def test_answer_reward_value_and_grad(self, kind):
    logp, mask = make_answer(0)
    fn = functools.partial(lr.answer_reward, kind=kind)
    out = self.variant(fn)(logp, mask)
    np.testing.assert_allclose(out, np_answer_reward(logp, mask, kind), rtol=1e-5, atol=1e-7)
    weights = jnp.array([1.0, -2.0, 3.0])
    grad = self.variant(jax.grad(lambda x: jnp.sum(fn(x, mask) * weights)))(logp)
    expected = fd_grad_h(lambda x: np.sum(np_answer_reward(x, mask, kind) * np.array([1.0, -2.0, 3.0])), logp)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_reward_identities(self):
    logp, mask = make_answer(1)
    reward = self.variant(functools.partial(lr.answer_reward, empty_reward=-7.0), static_argnames="kind")
    logprob = reward(logp, mask, kind="logprob")
    np.testing.assert_allclose(logprob[:2], np.sum(logp * mask, -1)[:2], rtol=1e-6)
    np.testing.assert_allclose(reward(logp, mask, kind="prob")[:2], np.exp(logprob[:2]), rtol=1e-6)
    avg_prob = reward(logp, mask, kind="avg_prob")
    assert np.all((avg_prob[:2] > 0) & (avg_prob[:2] <= 1))
    np.testing.assert_array_equal(logprob[2], -7.0)  # the row without answer tokens

  @chex.variants(with_jit=True, without_jit=True)
  def test_rlpr_debiased(self):
    b = jnp.array([0.9, 0.2, 0.5, 0.7])
    a = jnp.array([0.1, 0.6, 0.5, 0.0])
    out = self.variant(lr.rlpr_debiased)(b, a)
    np.testing.assert_allclose(out, [0.8, 0.0, 0.0, 0.7], atol=1e-6)
    fmt = jnp.array([1.0, 1.0, 0.0, 0.0])
    out = self.variant(functools.partial(lr.rlpr_debiased, format_coef=0.1))(b, a, format_reward=fmt)
    np.testing.assert_allclose(out, [0.82, 0.1, 0.0, 0.63], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_jepo(self):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(2, 4)) * 3 - 20).astype(np.float32)
    group = self.variant(lr.jepo_group_reward)(x)
    np.testing.assert_allclose(group, [np_log_mean_exp(np.float64(r)) for r in x], rtol=1e-6)
    grad = self.variant(jax.grad(lambda v: jnp.sum(lr.jepo_group_reward(v))))(x)
    expected = fd_grad_h(lambda v: sum(np_log_mean_exp(r) for r in v), x)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    multi = self.variant(lr.jepo_loo_baselines)(x)
    single = self.variant(functools.partial(lr.jepo_loo_baselines, multi_sample=False))(x)
    for n in range(2):
      for i in range(4):
        others = np.float64(np.delete(x[n], i))
        np.testing.assert_allclose(multi[n, i], np_log_mean_exp(others), rtol=1e-6)
        np.testing.assert_allclose(single[n, i], others.mean(), rtol=1e-6)
    adv = self.variant(lr.jepo_advantages)(x)
    np.testing.assert_allclose(adv, np.asarray(group)[:, None] - np.asarray(multi), rtol=1e-5, atol=1e-6)
    adv_single = self.variant(functools.partial(lr.jepo_advantages, multi_sample=False))(x)
    np.testing.assert_allclose(adv_single, x - np.asarray(single), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1.0, False), (0.5, True), (0.0, False))
  def test_likelihood_loss_value_and_grad(self, sft_coef, reward_weighted):
    rng = np.random.default_rng(3)
    cot = rng.normal(size=(3, 5)).astype(np.float32) - 2
    cot_mask = (np.arange(5)[None] < np.array([[5], [2], [0]])).astype(np.float32)
    ans, ans_mask = make_answer(4)
    adv = np.array([0.5, -1.0, 2.0], np.float32)
    w = np.exp(np.sum(ans * ans_mask, -1)) if reward_weighted else np.ones(3, np.float32)
    sft_weights = w if reward_weighted else None
    fn = functools.partial(lr.likelihood_loss, sft_coef=sft_coef)
    (value, metrics), grads = self.variant(jax.value_and_grad(fn, argnums=(0, 2, 4), has_aux=True))(
        cot, cot_mask, ans, ans_mask, adv, sft_weights=sft_weights)
    np.testing.assert_allclose(value, np_likelihood_loss(cot, cot_mask, ans, ans_mask, adv, sft_coef, w), rtol=1e-5)
    g_cot = fd_grad_h(lambda x: np_likelihood_loss(x, cot_mask, ans, ans_mask, adv, sft_coef, w), cot)
    g_ans = fd_grad_h(lambda x: np_likelihood_loss(cot, cot_mask, x, ans_mask, adv, sft_coef, w), ans)
    np.testing.assert_allclose(grads[0], g_cot, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], g_ans, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(grads[2], 0.0)  # advantages are stop-gradiented
    np.testing.assert_allclose(metrics["loss/total"], value)


def np_rlpr_filter(stds_per_step, beta_f, ema_ratio=0.99, start_step=11, ema_start_step=6):
  """Port of RLPR's EMA filter loop (`filter_mode=EMA`, ray_trainer.py): the keep mask of every step."""
  score_std_list, ema_mean, keeps = [], None, []
  for step, stds in enumerate(stds_per_step, start=1):
    lower = 0.0
    if step >= ema_start_step:
      if step >= start_step:
        if ema_mean is None:
          ema_mean = sum(score_std_list) / len(score_std_list)  # init the ema
        else:
          ema_mean = score_std_list[-1] * (1 - ema_ratio) + ema_mean * ema_ratio
        lower = ema_mean * beta_f
      score_std_list.append([])
    finite = [float(s) for s in stds if math.isfinite(s)]
    if step >= start_step:  # filtering: every generated group, before filtering
      keeps.append([s >= lower for s in stds])
      score_std_list[-1].extend(finite)
    else:
      keeps.append([True] * len(stds))
      if step >= ema_start_step:  # end of step: the training batch
        score_std_list[-1].extend(finite)
    if step >= ema_start_step:
      score_std_list[-1] = sum(score_std_list[-1]) / len(score_std_list[-1])
  return keeps


@functools.partial(jax.jit, static_argnames=("beta_f",))
def _filter_step(state, stds, beta_f):
  return lr.std_filter_update(state, stds, beta_f=beta_f)


def test_std_filter_matches_rlpr_loop():
  rng = np.random.default_rng(5)
  stds_per_step = [rng.uniform(0.0, 0.5, size=6).astype(np.float32) for _ in range(25)]
  stds_per_step[7][2] = np.nan  # a NaN std (e.g. a group of one) is left out of the mean
  stds_per_step[14][0] = np.nan
  expected = np_rlpr_filter(stds_per_step, beta_f=0.9)
  state = lr.std_filter_init()
  for step, stds in enumerate(stds_per_step):
    state, keep = _filter_step(state, stds, 0.9)
    np.testing.assert_array_equal(keep, expected[step], err_msg=f"step {step + 1}")
  assert int(state.step) == 25 and bool(state.initialized)
  assert any(not all(k) for k in expected[10:])  # the filter did drop something


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(b=st.integers(1, 4), t=st.integers(1, 5), seed=st.integers(0, 2**16),
                  kind=st.sampled_from(lr.KINDS))
def test_invariants(b, t, seed, kind):
  rng = np.random.default_rng(seed)
  logp = np.log(rng.uniform(1e-4, 1.0, size=(b, t))).astype(np.float32)
  lengths = rng.integers(0, t + 1, size=b)
  lengths[0] = 0
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  padded = np.where(mask > 0, logp, np.float32(-1e30))  # garbage on padding must not leak
  out = np.asarray(lr.answer_reward(padded, mask, kind=kind))
  assert np.all(np.isfinite(out)) and out[0] == 0.0
  np.testing.assert_allclose(out, np_answer_reward(logp, mask, kind), rtol=1e-5, atol=1e-6)
  if kind in ("prob", "avg_prob"):
    assert np.all((out >= 0) & (out <= 1))
  score_b = rng.uniform(size=b).astype(np.float32)
  score_a = rng.uniform(size=b).astype(np.float32)
  debiased = np.asarray(lr.rlpr_debiased(score_b, score_a))
  assert np.all((debiased >= 0) & (debiased <= 1))


def test_bad_inputs_raise_clear_errors():
  logp, mask = make_answer(6)
  with pytest.raises(ValueError, match="kind='likelihood'"):
    lr.answer_reward(logp, mask, kind="likelihood")
  with pytest.raises(ValueError, match="answer_mask"):
    lr.answer_reward(logp, mask[:, :2], kind="prob")
  with pytest.raises(ValueError, match="answer_logp must have rank 2"):
    lr.answer_reward(logp[0], mask[0], kind="prob")
  with pytest.raises(ValueError, match="score_without"):
    lr.rlpr_debiased(np.ones(3), np.ones(2))
  with pytest.raises(ValueError, match="G >= 2"):
    lr.jepo_loo_baselines(np.ones((2, 1)))
  with pytest.raises(ValueError, match="group_stds"):
    lr.std_filter_update(lr.std_filter_init(), np.ones((2, 2)), beta_f=0.5)
  with pytest.raises(ValueError, match="ema_start_step"):
    lr.std_filter_update(lr.std_filter_init(), np.ones(2), beta_f=0.5, start_step=3, ema_start_step=3)
  with pytest.raises(ValueError, match="advantages"):
    lr.likelihood_loss(logp, mask, logp, mask, np.ones(2))
  with pytest.raises(ValueError, match="answer_logp must have the batch size"):
    lr.likelihood_loss(logp, mask, logp[:2], mask[:2], np.ones(3))
