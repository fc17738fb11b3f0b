"""Tests for objectives.ddpo: the DDPO_IS loss against numpy (values, gradients, clip, masking,
accumulation) and the per-prompt stat tracker against a dict-of-deques reference."""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from objectives import ddpo, registry
from numeric import fd_grad


# ----------------------------------------------------------------------------- numpy references


def np_ddpo(logp, old, adv, mask, *, eps=1e-4, a_max=5.0):
  """Loop-based float64 reference of the DDPO_IS loss (mean over unmasked steps)."""
  logp, old, mask = (np.asarray(x, np.float64) for x in (logp, old, mask))
  adv = np.asarray(adv, np.float64)
  b, t = logp.shape
  total, count = 0.0, 0
  for i in range(b):
    for j in range(t):
      if mask[i, j] == 0:
        continue
      a = adv[i] if adv.ndim == 1 else adv[i, j]
      a = min(max(a, -a_max), a_max)
      r = np.exp(logp[i, j] - old[i, j])
      total += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
      count += 1
  return total / count if count else 0.0


def np_ddpo_grad(logp, old, adv, mask, *, eps=1e-4, a_max=5.0):
  """Closed-form gradient: -A r / count where the unclipped branch is active, else 0."""
  logp, old, mask = (np.asarray(x, np.float64) for x in (logp, old, mask))
  adv = np.asarray(adv, np.float64)
  adv = np.broadcast_to(adv[:, None], logp.shape) if adv.ndim == 1 else adv
  a = np.clip(adv, -a_max, a_max)
  r = np.exp(logp - old)
  clipped_better = ((a > 0) & (r > 1 + eps)) | ((a < 0) & (r < 1 - eps))
  g = np.where(clipped_better, 0.0, -a * r) * mask
  return g / mask.sum()


def make_inputs(seed, b=4, t=5, spread=0.3):
  rng = np.random.default_rng(seed)
  logp = (rng.normal(size=(b, t)) - 2.0).astype(np.float32)
  old = (logp + spread * rng.normal(size=(b, t))).astype(np.float32)
  adv = (3.0 * rng.normal(size=(b,))).astype(np.float32)
  adv[0] = 8.0  # beyond A_max = 5
  adv[1] = -6.0
  mask = (rng.uniform(size=(b, t)) > 0.25).astype(np.float32)
  mask[0, 0] = 1.0
  return logp, old, adv, mask


def loss_fn(**options):
  return lambda lp, old, adv, m: ddpo.ddpo_loss(lp, old, adv, m, **options)[0]


# ----------------------------------------------------------------------------- loss


def test_hand_computed_golden_value_and_gradient():
  # ratios 1.5 and 0.5, A = 2, eps = 0.2:
  #   l_1 = max(-3, -2.4) = -2.4 (clipped branch, gradient 0)
  #   l_2 = max(-1, -1.6) = -1   (unclipped, gradient -A r / 2 = -0.5)
  logp = jnp.log(jnp.array([[1.5, 0.5]], jnp.float32))
  old = jnp.zeros((1, 2), jnp.float32)
  adv, mask = jnp.array([2.0]), jnp.ones((1, 2))
  f = loss_fn(clip_eps=0.2)
  np.testing.assert_allclose(f(logp, old, adv, mask), -1.7, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f)(logp, old, adv, mask), [[0.0, -0.5]], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [1e-4, 0.1])
def test_loss_and_gradient_match_numpy(seed, eps):
  logp, old, adv, mask = make_inputs(seed)
  f = loss_fn(clip_eps=eps, adv_clip_max=5.0)
  np.testing.assert_allclose(f(logp, old, adv, mask), np_ddpo(logp, old, adv, mask, eps=eps), rtol=1e-5)
  g = np.asarray(jax.grad(f)(jnp.asarray(logp), old, adv, mask))
  np.testing.assert_allclose(g, np_ddpo_grad(logp, old, adv, mask, eps=eps), rtol=1e-5, atol=1e-7)
  # The closed form is itself checked by finite differences of the numpy loss (no ratio sits
  # within h of a clip boundary for these seeds).
  fd = fd_grad(lambda x: np_ddpo(x, old, adv, mask, eps=eps), logp, h=1e-7)
  np.testing.assert_allclose(np_ddpo_grad(logp, old, adv, mask, eps=eps), fd, rtol=1e-4, atol=1e-6)


def test_per_step_loss_matches_numpy():
  logp, old, adv, mask = make_inputs(3)
  per = np.asarray(ddpo.per_step_loss(logp, old, adv, mask, clip_eps=0.1, adv_clip_max=5.0))
  assert per.shape == logp.shape
  np.testing.assert_array_equal(per[mask == 0], 0.0)
  for i, j in zip(*np.nonzero(mask)):
    one = np.zeros_like(mask)
    one[i, j] = 1.0
    np.testing.assert_allclose(per[i, j], np_ddpo(logp, old, adv, one, eps=0.1), rtol=1e-5)


def test_metrics_match_numpy():
  logp, old, adv, mask = make_inputs(4, spread=0.05)
  eps = 0.03
  _, metrics = ddpo.ddpo_loss(logp, old, adv, mask, clip_eps=eps)
  d = (logp.astype(np.float64) - old)[mask > 0]
  a = np.clip(np.broadcast_to(adv[:, None], logp.shape), -5, 5)[mask > 0]
  clip_frac = np.mean(np.abs(np.exp(d) - 1) > eps)
  assert 0 < clip_frac < 1
  np.testing.assert_allclose(metrics["stats/clip_frac"], clip_frac, rtol=1e-6)
  np.testing.assert_allclose(metrics["stats/approx_kl"], 0.5 * np.mean(d ** 2), rtol=1e-5)
  np.testing.assert_allclose(metrics["stats/adv_abs_mean"], np.mean(np.abs(a)), rtol=1e-6)
  np.testing.assert_allclose(metrics["loss/ddpo"], np_ddpo(logp, old, adv, mask, eps=eps), rtol=1e-5)
  assert float(metrics["stats/num_steps"]) == mask.sum()


@pytest.mark.parametrize("per_step_adv", [False, True])
def test_on_policy_loss_is_minus_mean_clipped_advantage(per_step_adv):
  logp, _, adv, mask = make_inputs(5)
  if per_step_adv:
    adv = adv[:, None] + np.linspace(-1, 1, logp.shape[1], dtype=np.float32)[None]
  a = np.clip(np.broadcast_to(adv[:, None], logp.shape) if adv.ndim == 1 else adv, -5, 5)
  count = mask.sum()
  for eps in (1e-4, 0.0):  # eps = 0: the tie goes to the unclipped branch, so the gradient stays -A
    f = loss_fn(clip_eps=eps)
    np.testing.assert_allclose(f(logp, logp, adv, mask), -np.sum(a * mask) / count, rtol=1e-6)
    g = jax.grad(f)(jnp.asarray(logp), jnp.asarray(logp), adv, mask)
    np.testing.assert_allclose(g, -a * mask / count, rtol=1e-6)


def test_gradient_is_zero_once_clipped_in_the_loss_lowering_direction():
  eps = 0.1
  old = np.zeros((4, 1), np.float32)
  # rows: A>0 ratio above 1+eps (clipped), A>0 ratio below 1-eps (not clipped: loss rises),
  #       A<0 ratio below 1-eps (clipped), A<0 ratio above 1+eps (not clipped)
  ratio = np.array([1.3, 0.7, 0.7, 1.3], np.float32)
  adv = np.array([1.0, 1.0, -2.0, -2.0], np.float32)
  logp = np.log(ratio)[:, None]
  mask = np.ones_like(old)
  g = np.asarray(jax.grad(loss_fn(clip_eps=eps))(jnp.asarray(logp), old, adv, mask))[:, 0]
  np.testing.assert_allclose(g, [0.0, -1.0 * 0.7 / 4, 0.0, 2.0 * 1.3 / 4], rtol=1e-5, atol=0)
  # Just inside the interval the gradient is the unclipped one again.
  inside = np.log(np.array([1.09, 0.91, 0.91, 1.09], np.float32))[:, None]
  g_in = np.asarray(jax.grad(loss_fn(clip_eps=eps))(jnp.asarray(inside), old, adv, mask))[:, 0]
  np.testing.assert_allclose(g_in, -adv * np.exp(inside[:, 0]) / 4, rtol=1e-5)


def test_huge_log_ratio_does_not_overflow():
  logp = np.array([[500.0, -500.0, 0.0]], np.float32)
  old = np.zeros_like(logp)
  for a in (1.0, -1.0):
    value, metrics = ddpo.ddpo_loss(logp, old, np.array([a], np.float32), np.ones_like(logp))
    g = jax.grad(loss_fn())(jnp.asarray(logp), old, jnp.array([a]), jnp.ones_like(logp))
    assert np.isfinite(value) and np.all(np.isfinite(g)) and np.isfinite(metrics["stats/approx_kl"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_masked_positions_do_not_leak(bad):
  logp, old, adv, mask = make_inputs(6, spread=0.05)
  mask[2] = 0.0  # a fully masked row whose advantage is garbage too
  dirty = [x.copy() for x in (logp, old)]
  for x in dirty:
    x[mask == 0] = bad
  adv_dirty = adv.copy()
  adv_dirty[2] = bad
  adv_steps = np.broadcast_to(adv[:, None], logp.shape).copy()
  adv_steps_dirty = adv_steps.copy()
  adv_steps_dirty[mask == 0] = bad
  f = loss_fn(clip_eps=0.02)
  for clean_adv, dirty_adv in ((adv, adv_dirty), (adv_steps, adv_steps_dirty)):
    clean_v, clean_g = jax.value_and_grad(f)(jnp.asarray(logp), old, clean_adv, mask)
    v, g = jax.value_and_grad(f)(jnp.asarray(dirty[0]), dirty[1], dirty_adv, mask)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    np.testing.assert_allclose(v, clean_v, rtol=1e-6)
    np.testing.assert_allclose(g, clean_g, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g)[mask == 0], 0.0)
    _, metrics = ddpo.ddpo_loss(dirty[0], dirty[1], dirty_adv, mask, clip_eps=0.02)
    assert all(np.isfinite(float(m)) for m in metrics.values())


def test_accumulating_two_halves_equals_the_whole_batch():
  logp, old, adv, mask = make_inputs(7, b=6, spread=0.2)
  mask[1, :] = 0.0
  mask[4, 2:] = 0.0  # halves with different numbers of steps
  batch = lambda s: {"old_logp": old[s], "advantages": adv[s], "mask": mask[s]}  # noqa: E731
  obj = functools.partial(registry.get("ddpo"), clip_eps=0.05)

  def total(lp, s):
    return obj(lp, batch(s))[0]

  whole = slice(0, 6)
  halves = (slice(0, 3), slice(3, 6))
  s_all, d_all, _ = obj(jnp.asarray(logp), batch(whole))
  parts = [obj(jnp.asarray(logp[s]), batch(s)) for s in halves]
  assert float(parts[0][1]) != float(parts[1][1])
  np.testing.assert_allclose(sum(p[0] for p in parts) / sum(p[1] for p in parts), s_all / d_all, rtol=1e-6)
  np.testing.assert_allclose(s_all / d_all, np_ddpo(logp, old, adv, mask, eps=0.05), rtol=1e-5)
  g_all = jax.grad(total)(jnp.asarray(logp), whole) / d_all
  g_parts = np.concatenate([jax.grad(total)(jnp.asarray(logp[s]), s) for s in halves]) / sum(p[1] for p in parts)
  np.testing.assert_allclose(g_parts, g_all, rtol=1e-6)


def test_registered_objective_matches_functional_form_and_jits():
  logp, old, adv, mask = make_inputs(8)
  spec = registry.spec("ddpo")
  assert spec.stage == "rl" and spec.inputs == "logprobs"
  assert registry.defaults("ddpo") == {"clip_eps": 1e-4, "adv_clip_max": 5.0}
  assert not registry.requires_reference("ddpo")
  batch = {"old_logp": old, "advantages": adv, "mask": mask}
  s, d, metrics = jax.jit(registry.get("ddpo"))(logp, batch)
  expected, _ = ddpo.ddpo_loss(logp, old, adv, mask)
  np.testing.assert_allclose(s / d, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss/ddpo"], expected, rtol=1e-6)
  # [B, T] advantages equal to the broadcast [B] ones give the same result.
  batch_steps = {**batch, "advantages": np.broadcast_to(adv[:, None], logp.shape)}
  np.testing.assert_allclose(registry.get("ddpo")(logp, batch_steps)[0], s, rtol=1e-6)
  with pytest.raises(KeyError, match="old_logp"):
    registry.get("ddpo")(logp, {"advantages": adv, "mask": mask})


def test_invalid_options_and_shapes_raise():
  logp, old, adv, mask = make_inputs(9)
  batch = {"old_logp": old, "advantages": adv, "mask": mask}
  obj = registry.get("ddpo")
  with pytest.raises(ValueError, match="clip_eps"):
    obj(logp, batch, clip_eps=-0.1)
  with pytest.raises(ValueError, match="clip_eps"):
    ddpo.ddpo_loss(logp, old, adv, mask, clip_eps=float("nan"))
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match="adv_clip_max"):
      obj(logp, batch, adv_clip_max=bad)
  with pytest.raises(ValueError, match="adv_clip_max"):
    ddpo.per_step_loss(logp, old, adv, mask, adv_clip_max=0.0)
  with pytest.raises(ValueError, match="has no option 'clip_epsilon'"):
    registry.resolve_options("ddpo", {"clip_epsilon": 0.1})
  with pytest.raises(ValueError, match="advantages"):
    ddpo.ddpo_loss(logp, old, adv[:-1], mask)
  with pytest.raises(ValueError, match="old_logp"):
    ddpo.ddpo_loss(logp, old[:, :-1], adv, mask)


# ----------------------------------------------------------------------------- stat tracker


class RefTracker:
  """The official PerPromptStatTracker (ring-buffer version), with eps as a parameter."""

  def __init__(self, buffer_size, min_count, eps):
    self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
    self.stats = {}
    self.fallback_rows = self.prompt_rows = 0

  def update(self, prompts, rewards):
    rewards = np.asarray(rewards, np.float64)
    advantages = np.empty_like(rewards)
    for prompt in np.unique(prompts):
      prompt_rewards = rewards[prompts == prompt]
      self.stats.setdefault(int(prompt), collections.deque(maxlen=self.buffer_size)).extend(prompt_rewards)
      buf = self.stats[int(prompt)]
      if len(buf) < self.min_count:
        mean, std = np.mean(rewards), np.std(rewards) + self.eps
        self.fallback_rows += len(prompt_rewards)
      else:
        mean, std = np.mean(buf), np.std(buf) + self.eps
        self.prompt_rows += len(prompt_rewards)
      advantages[prompts == prompt] = (prompt_rewards - mean) / std
    return advantages


@pytest.mark.parametrize("jit", [False, True])
def test_tracker_matches_reference_with_duplicates_fallback_and_overflow(jit):
  num_prompts, buffer_size, min_count, eps = 5, 4, 3, 1e-6
  rng = np.random.default_rng(0)
  ref = RefTracker(buffer_size, min_count, eps)
  state = ddpo.stat_tracker_init(num_prompts, buffer_size)
  update = functools.partial(ddpo.stat_tracker_update, min_count=min_count, eps=eps)
  if jit:
    update = jax.jit(update)
  overflowed = False
  for step in range(8):
    ids = rng.integers(0, num_prompts, size=7).astype(np.int32)
    if step == 2:
      ids[:6] = 1  # one prompt with more rows in one batch than its buffer holds
    overflowed |= np.bincount(ids).max() > buffer_size
    rewards = rng.normal(size=7).astype(np.float32) * 2 + step
    state, adv = update(state, ids, rewards)
    expected = ref.update(ids, rewards.astype(np.float64))
    np.testing.assert_allclose(adv, expected, rtol=2e-4, atol=2e-4)
    stats = ddpo.stat_tracker_stats(state)
    for p in range(num_prompts):
      buf = ref.stats.get(p, ())
      assert int(state["count"][p]) == len(buf) == int(stats["count"][p])
      held = np.sort(np.asarray(state["values"])[p, :len(buf)])
      np.testing.assert_allclose(held, np.sort(np.asarray(buf, np.float32)), rtol=1e-6)
      if buf:
        np.testing.assert_allclose(stats["mean"][p], np.mean(buf), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats["std"][p], np.std(buf), rtol=1e-4, atol=1e-5)
  assert overflowed and ref.fallback_rows > 0 and ref.prompt_rows > 0


def test_tracker_jit_state_is_a_checkpointable_pytree():
  state = ddpo.stat_tracker_init(3, 8)
  assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
      "values": ((3, 8), jnp.float32), "count": ((3,), jnp.int32), "head": ((3,), jnp.int32)}
  update = jax.jit(functools.partial(ddpo.stat_tracker_update, min_count=2))
  ids = jnp.array([0, 0, 2, 0], jnp.int32)
  rewards = jnp.array([1.0, 3.0, 5.0, 5.0])
  state, adv = update(state, ids, rewards)
  # prompt 0 holds 3 >= 2 rewards (mean 3, std sqrt(8/3)); prompt 2 holds 1 < 2: batch stats.
  std0 = np.sqrt(8 / 3)
  batch_mean, batch_std = 3.5, np.std([1.0, 3.0, 5.0, 5.0])
  np.testing.assert_allclose(adv, [-2 / (std0 + 1e-6), 0.0, (5 - batch_mean) / (batch_std + 1e-6),
                                   2 / (std0 + 1e-6)], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state["count"], [3, 0, 1])
  np.testing.assert_array_equal(state["head"], [3, 0, 1])
  # Round trip through numpy (a checkpoint) and a scan over batches.
  restored = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), state)

  def body(s, xs):
    return update(s, *xs)

  batches = (jnp.array([[1, 1, 1, 2]] * 3, jnp.int32), jnp.arange(12.0).reshape(3, 4))
  final, advs = jax.lax.scan(body, restored, batches)
  assert advs.shape == (3, 4) and np.all(np.isfinite(advs))
  np.testing.assert_array_equal(final["count"], [3, 8, 4])


def test_tracker_invalid_ids_and_options():
  state = ddpo.stat_tracker_init(3, 4)
  with pytest.raises(ValueError, match="prompt_ids"):
    ddpo.stat_tracker_update(state, np.array([0, 3]), np.array([1.0, 2.0]), min_count=2)
  with pytest.raises(ValueError, match="min_count"):
    ddpo.stat_tracker_update(state, np.array([0, 1]), np.array([1.0, 2.0]), min_count=5)
  with pytest.raises(ValueError, match="rewards"):
    ddpo.stat_tracker_update(state, np.array([0, 1]), np.array([1.0]), min_count=2)
  with pytest.raises(ValueError, match="num_prompts"):
    ddpo.stat_tracker_init(0)
  # Under jit an out-of-range id cannot be checked: its row is not pushed and uses batch stats.
  update = jax.jit(functools.partial(ddpo.stat_tracker_update, min_count=1))
  new, adv = update(state, jnp.array([0, 7, -1], jnp.int32), jnp.array([1.0, 2.0, 3.0]))
  np.testing.assert_array_equal(new["count"], [1, 0, 0])
  np.testing.assert_allclose(adv, [0.0, 0.0, 1 / (np.std([1.0, 2.0, 3.0]) + 1e-6)], atol=1e-6)
