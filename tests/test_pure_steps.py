"""PURE as its code defines it: min-form over step-end rewards, the token baseline, the KL term,
the weights' entropy, and the step-end mask that the RL stage builds from `Task.step_ends`."""
import jax
import numpy as np
import pytest

import support
from configs import pure as pure_config
from objectives import advantages as adv
from objectives import estimators

G = 2


def np_pure(token_rewards, step_ends, mask, outcome, *, k, temperature, outcome_coef=1.0, kl=None, kl_coef=0.0,
            whiten=True):
  """Loop port of PURE's process_experiences (reward_baseline=token) on one reward per step, float64."""
  mask = np.asarray(mask) > 0
  b, t = mask.shape
  rewards = np.zeros((b, t))
  steps, lengths, ends_of = [], [], []
  for i in range(b):
    idx = np.flatnonzero(mask[i])
    ends = [u for u in idx if step_ends[i, u] > 0]
    if idx.size and (not ends or ends[-1] != idx[-1]):
      ends.append(idx[-1])  # the last step ends at EOS
    r, n, prev = [], [], -1
    for e in ends:
      span = [u for u in idx if prev < u <= e]
      r.append(sum(float(token_rewards[i, u]) for u in span))
      n.append(len(span))
      prev = e
    r = np.asarray(r)
    w = np.exp(-(r - r.min()) / temperature) if r.size else r
    w = w / w.sum() if r.size else w
    steps.append(w * r)
    lengths.append(np.asarray(n, float))
    ends_of.append(ends)
  totals = np.asarray([s.sum() for s in steps])
  lens = mask.sum(1).astype(float)
  for i in range(b):
    g = range(i // k * k, i // k * k + k)
    others = [j for j in g if j != i]
    base = sum(totals[j] for j in others) / sum(lens[j] for j in others)
    for e, r, n in zip(ends_of[i], steps[i], lengths[i]):
      rewards[i, e] += r - base * n
  for i in range(b):
    g = range(i // k * k, i // k * k + k)
    loo = outcome[i] - np.mean([outcome[j] for j in g if j != i])
    rewards[i, np.flatnonzero(mask[i])[-1]] += outcome_coef * loo
  if kl_coef:
    rewards -= kl_coef * np.where(mask, kl, 0.0)
  returns = np.where(mask, np.flip(np.cumsum(np.flip(np.where(mask, rewards, 0.0), 1), 1), 1), 0.0)
  if not whiten:
    return returns
  mean = returns[mask].mean()
  var = ((returns[mask] - mean) ** 2).mean() * mask.sum() / (mask.sum() - 1)
  return (returns - mean) / np.sqrt(var + 1e-8) * mask


def _batch(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  b, t = 4, 9
  lengths = np.array([9, 6, 8, 4])
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  ends = np.zeros((b, t), np.float32)
  ends[0, [2, 5]] = ends[1, [1, 3]] = ends[2, [3]] = 1.0
  ends[1, 7] = 1.0  # beyond the row's tokens: ignored
  token_rewards = (rng.normal(size=(b, t)) * scale * mask).astype(np.float32)
  outcome = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
  old_logp, ref_logp = rng.normal(size=(2, b, t)).astype(np.float32)
  return {"rewards": outcome, "outcome_rewards": outcome, "token_rewards": token_rewards, "mask": mask,
          "step_ends": ends, "old_logp": old_logp, "ref_logp": ref_logp}


def test_pure_steps_sum_tokens_into_steps():
  b = _batch()
  steps, step_mask, lengths = (np.asarray(x) for x in adv.pure_steps(b["token_rewards"], b["step_ends"], b["mask"]))
  np.testing.assert_array_equal(np.flatnonzero(step_mask[0]), [2, 5, 8])
  np.testing.assert_array_equal(np.flatnonzero(step_mask[1]), [1, 3, 5])  # 7 is padding; 5 is the last token
  np.testing.assert_array_equal(np.flatnonzero(step_mask[3]), [3])  # no step end: one step, to the end
  np.testing.assert_allclose(steps[0, [2, 5, 8]], [b["token_rewards"][0, s].sum() for s in
                                                   (slice(0, 3), slice(3, 6), slice(6, 9))], rtol=1e-6)
  np.testing.assert_array_equal(lengths[0, [2, 5, 8]], [3, 3, 3])
  np.testing.assert_array_equal(lengths.sum(1), b["mask"].sum(1))


@pytest.mark.parametrize("kl_coef", [0.0, 1e-3])
def test_pure_estimator_matches_numpy(kl_coef):
  b = _batch(1)
  opts = {"temperature": 0.1, "kl_coef": kl_coef}
  out = estimators.compute("pure", b, group_size=G, options=opts)
  expected = np_pure(b["token_rewards"], b["step_ends"], b["mask"], b["outcome_rewards"], k=G, temperature=0.1,
                     kl=b["old_logp"] - b["ref_logp"], kl_coef=kl_coef)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  raw = estimators.compute("pure", b, group_size=G, options={**opts, "whiten": False})
  np.testing.assert_allclose(raw, np_pure(b["token_rewards"], b["step_ends"], b["mask"], b["outcome_rewards"], k=G,
                                          temperature=0.1, kl=b["old_logp"] - b["ref_logp"], kl_coef=kl_coef,
                                          whiten=False), rtol=1e-4, atol=1e-5)


def test_token_baseline_matches_numpy():
  rng = np.random.default_rng(5)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  ends = np.array([[0, 1, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], np.float32)
  steps = (rng.normal(size=(4, 4)) * ends).astype(np.float32)
  lengths = np.array([[0, 2, 0, 2], [0, 2, 0, 0], [1, 0, 2, 0], [1, 0, 0, 0]], np.float32)
  out = np.asarray(adv.pure_token_baseline(steps, lengths, mask, group_size=2))
  expected = np.zeros((4, 4))
  for i in range(4):
    j = i ^ 1  # the other row of the pair
    expected[i] = steps[j].sum() / mask[j].sum() * lengths[i]
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # an invalid partner is in no baseline: the row's baseline is 0
  out = np.asarray(adv.pure_token_baseline(steps, lengths, mask, group_size=2, valid=np.array([1, 0, 1, 1], bool)))
  np.testing.assert_array_equal(out[0], 0.0)


@pytest.mark.parametrize("scale", [1.0, 0.001])
def test_weights_concentrate_on_the_minimum_step_at_the_configured_temperature(scale):
  """Step rewards of scale 1 and 0.001: PURE's config (T = 0.1 x the batch's step-reward std)
  puts the weight on each row's minimum step; a large temperature gives uniform weights."""
  r = np.array([[0.5, -0.8, 0.3, 0.9], [0.2, 0.4, -0.1, 0.6]], np.float32) * scale
  step_mask = np.ones_like(r)
  batch = {"token_rewards": r, "step_ends": step_mask, "mask": step_mask, "rewards": np.zeros(2, np.float32)}
  opts = dict(pure_config.get_config("tiny").advantage.options)
  steps, sm, _, w = estimators._pure_step_weights(batch, step_mask, opts["temperature"], opts["temperature_scale"])
  w = np.asarray(w)
  assert np.all(w[np.arange(2), r.argmin(1)] > 0.95), w
  entropy = estimators.compute_stats("pure", batch, group_size=2, options=opts)["stats/min_form_weight_entropy"]
  assert float(entropy) < 0.2
  hot = np.asarray(adv.min_form_weights(r, step_mask, temperature=100.0 * scale))
  np.testing.assert_allclose(hot, 0.25, atol=0.01)
  hot_stats = estimators.compute_stats("pure", batch, group_size=2, options={**opts, "temperature": 1e4})
  assert float(hot_stats["stats/min_form_weight_entropy"]) > 0.999
  # PURE's absolute T = 0.1 is a minimum at scale 1 and a mean at scale 0.001 (the finding)
  absolute = estimators.compute_stats("pure", batch, group_size=2, options={"temperature": 0.1})
  assert (float(absolute["stats/min_form_weight_entropy"]) > 0.999) == (scale == 0.001)


def test_weight_entropy_is_relative_to_uniform_and_skips_single_step_rows():
  w = np.array([[0.5, 0.5, 0, 0], [1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]], np.float32)
  m = (w > 0).astype(np.float32)
  assert float(adv.min_form_weight_entropy(w, m)) == pytest.approx(1.0, abs=1e-6)
  w2 = np.array([[0.9, 0.1, 0, 0]], np.float32)
  h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
  assert float(adv.min_form_weight_entropy(w2, (w2 > 0).astype(np.float32))) == pytest.approx(h, rel=1e-5)
  assert float(adv.min_form_weight_entropy(w[1:2], m[1:2])) == 1.0  # no row with two steps


def test_rl_stage_marks_the_last_token_of_each_step():
  """Through the RL stage's preparation on chain sums: the step-end mask is 1 exactly at the token
  that holds the last character of each step `Task.step_ends` gives for the decoded completion."""
  c = pure_config.get_config("tiny")
  c.stages = ("rl",)
  e = support.experiment(c)
  rl = e.stage("rl")
  state = rl.enter({})
  examples = [e.context.task.train[i] for i in range(rl.prompts)]
  rollout, stats = rl.collect(state, examples, jax.random.PRNGKey(0))
  policy, task = e.context.roles.policy, e.context.task
  ends = np.asarray(rollout["step_ends"])
  actions, mask = np.asarray(rollout.actions), np.asarray(rollout.mask)
  completions = policy.decode(rollout)
  total = 0
  for row, text in enumerate(completions):
    n = int(mask[row].sum())
    pieces = [policy.tokenizer.decode([int(a)], skip_special_tokens=True) for a in actions[row, :n]]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    want = sorted({int(np.flatnonzero((starts[:-1] <= o) & (o < starts[1:]))[0]) for o in task.step_ends(text)})
    assert list(np.flatnonzero(ends[row])) == want, (row, text)
    total += len(want)
  assert total > 0, "the fixture must have steps"
  assert np.all(ends[mask == 0] == 0)
  assert "stats/min_form_weight_entropy" in stats and np.isfinite(stats["stats/min_form_weight_entropy"])
  expected = estimators.compute("pure", rollout, group_size=rl.group_size, options=rl.estimator_options)
  np.testing.assert_allclose(np.asarray(rollout.advantages), np.asarray(expected), rtol=1e-5, atol=1e-6)
