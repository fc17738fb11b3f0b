"""Likelihood rewards end to end: the splice, the reward pass against a plain forward pass, the
combined objective, RLPR's debiasing and std filter, JEPO, sharding, resumption, bad input."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import support
from configs import likelihood_rewards
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import learner
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward.data import tasks
from jaxrl_reward.data import tokenizer as tokenizer_lib
from jaxrl_reward.rewards import likelihood, model_rewards
from jaxrl_reward.rollout import Rollout
from objectives import estimators, logprob_rewards, registry

FMT = tasks.ARITHMETIC_ANSWER  # "####", then " " before the answer


def _config(**overrides):
  c = likelihood_rewards.get_config("tiny")
  c.model.name = "micro"
  c.log_every = 1
  return support.with_keys(c, **overrides)


def _ids(tok, text):
  return tok.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.build_arithmetic_tokenizer()


def _completions(tok, texts, width):
  """`[b, width]` right-padded completion tokens (each text then EOS) and their mask."""
  actions = np.zeros((len(texts), width), np.int32)
  mask = np.zeros((len(texts), width), np.float32)
  for i, text in enumerate(texts):
    ids = _ids(tok, text) + [tok.eos_token_id]
    actions[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  return actions, mask


# ----------------------------------------------------------------------------- the splice


def test_cot_lengths_find_the_token_that_completes_the_marker(tok):
  texts = ["1+2+0=3 #### 3", "#### 5", "no marker here", "9-1-0=8 ## #### 8 #### 9"]
  actions, mask = _completions(tok, texts, 32)
  got = likelihood.cot_lengths(tok, actions, mask, "####")
  want = [t.index("####") + 4 if "####" in t else 0 for t in texts]  # one token per character
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("no_marker", ["zero", "append"])
def test_splice_layout(tok, no_marker):
  texts = ["1+2+0=3 #### 4", "5+5+0=10 no marker"]
  actions, mask = _completions(tok, texts, 24)
  out = likelihood.splice(actions, mask, ["3", "10"], tokenizer=tok, fmt=FMT, max_answer_tokens=10,
                          no_marker=no_marker)
  w = 34 + (4 if no_marker == "append" else 0)  # T + max_answer_tokens (+ the marker's 4 tokens to append)
  assert out["actions"].shape == (2, w)
  cut = texts[0].index("####") + 4
  answer = _ids(tok, " 3") + [tok.eos_token_id]
  row = out["actions"][0]
  np.testing.assert_array_equal(row[:cut], actions[0, :cut])  # the chain of thought as sampled
  np.testing.assert_array_equal(row[cut:cut + len(answer)], answer)  # then the reference answer
  cols = np.arange(w)
  np.testing.assert_array_equal(out["mask"][0], cols < cut)
  np.testing.assert_array_equal(out["answer_mask"][0], (cols >= cut) & (cols < cut + len(answer)))
  np.testing.assert_array_equal(out["token_mask"][0], cols < cut + len(answer))
  np.testing.assert_array_equal(out["has_marker"], [True, False])
  np.testing.assert_array_equal(out["completion_length"], mask.sum(-1))
  assert out["completion_ended"].all()
  n = len(texts[1])  # the second row has no marker
  if no_marker == "zero":  # the sample as drawn, all in the RL term, nothing to score
    np.testing.assert_array_equal(out["actions"][1, :n + 1], actions[1, :n + 1])
    np.testing.assert_array_equal(out["mask"][1], cols < n + 1)
    assert out["answer_mask"][1].sum() == 0
  else:  # the marker and the answer after the completion, its EOS dropped
    tail = _ids(tok, "####") + _ids(tok, " 10") + [tok.eos_token_id]
    np.testing.assert_array_equal(out["actions"][1, n:n + len(tail)], tail)
    np.testing.assert_array_equal(out["mask"][1], cols < n)
    np.testing.assert_array_equal(out["answer_mask"][1], (cols >= n + 4) & (cols < n + len(tail)))


def test_splice_rejects_an_answer_longer_than_its_columns(tok):
  actions, mask = _completions(tok, ["#### 1"], 8)
  with pytest.raises(ValueError, match="max_answer_tokens=3"):
    likelihood.splice(actions, mask, ["12345"], tokenizer=tok, fmt=FMT, max_answer_tokens=3)


# ----------------------------------------------------------------------------- the reward pass


@pytest.fixture(scope="module")
def policy_batch(tok):
  """A micro policy, prompts of ragged lengths (left padded) and hand-written completions."""
  t = support.experiment(_config())
  policy = t.roles.policy
  params = t.stage("rl").enter({})["policy"]["params"]
  prompts = ["1+2=", "47+38=", "9-30=", "5+5="]
  texts = ["1+2+0=3 #### 3", "7+8+0=15 4+3+1=8 #### 85", "-(30-9) 10-9-0=1 #### -21", "5+5+0=10 ####"]
  answers = ["3", "85", "-21", "10"]
  conditions = policy.conditions(prompts, np.arange(4), 4)
  actions, mask = _completions(tok, texts, t.config.task.max_completion_length)
  rollout = Rollout(actions=jnp.asarray(actions), mask=jnp.asarray(mask), old_logp=jnp.zeros(actions.shape),
                    group_ids=jnp.arange(4, dtype=jnp.int32),
                    extras={"prompt_ids": conditions["prompt_ids"], "prompt_mask": conditions["prompt_mask"]})
  return t, policy, params, prompts, texts, answers, rollout


def _reference_answer_logps(policy, params, tok, prompts, texts, answers):
  """Per-token log-probs of each answer from a plain forward pass over prompt + CoT + answer."""
  model = nnx.merge(policy.graphdef, params)
  out = []
  for prompt, text, answer in zip(prompts, texts, answers):
    p = tok.encode(prompt)  # with <bos>, as the policy encodes prompts
    z = _ids(tok, text[:text.index("####") + 4])
    a = _ids(tok, " " + answer) + [tok.eos_token_id]
    ids = jnp.asarray([p + z + a])
    logits = np.asarray(model(ids, jnp.ones_like(ids)), np.float64)[0]
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    start = len(p) + len(z)
    out.append(np.array([logits[j - 1, ids[0, j]] - logz[j - 1] for j in range(start, ids.shape[1])]))
  return out


def _reward(policy, params, rollout, **options):
  bound = {"policy": model_rewards.BoundRole(params, policy)}
  return np.asarray(jax.jit(lambda r: likelihood.likelihood(r, bound, **options))(rollout))


def test_reward_pass_equals_a_plain_forward_pass(policy_batch, tok):
  t, policy, params, prompts, texts, answers, rollout = policy_batch
  options = dict(kind="logprob", no_marker="zero", max_answer_tokens=8, answer_column="answer", append_eos=True)
  spliced, stats = likelihood.prepare(rollout, policy=policy, task=t.context.task, columns={"answer": answers},
                                      options=options)
  assert stats["train/rewards/likelihood/marker_frac"] == 1.0
  want = _reference_answer_logps(policy, params, tok, prompts, texts, answers)
  assert len({len(w) for w in want}) > 1  # ragged answers
  assert len(set(np.asarray(rollout["prompt_mask"]).sum(-1).tolist())) > 1  # ragged, left-padded prompts
  sums = np.array([w.sum() for w in want])
  np.testing.assert_allclose(_reward(policy, params, spliced, kind="logprob"), sums, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_reward(policy, params, spliced, kind="avg_logprob"),
                             [w.mean() for w in want], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_reward(policy, params, spliced, kind="prob"), np.exp(sums), rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(_reward(policy, params, spliced, kind="avg_prob"),
                             [np.exp(w).mean() for w in want], rtol=1e-4, atol=1e-6)
  # The engine's own teacher-forced pass over the spliced rows gives the same reward.
  reused = spliced.update(policy_logp=policy.compute_logprobs(params, spliced))
  np.testing.assert_allclose(_reward(policy, params, reused, kind="logprob"), sums, rtol=1e-4, atol=1e-4)


def test_rlpr_reward_is_debiased_and_in_the_unit_interval(policy_batch, tok):
  t, policy, params, prompts, texts, answers, rollout = policy_batch
  options = dict(kind="rlpr", no_marker="zero", max_answer_tokens=8, answer_column="answer", append_eos=True)
  spliced, _ = likelihood.prepare(rollout, policy=policy, task=t.context.task, columns={"answer": answers},
                                  options=options)
  got = _reward(policy, params, spliced, kind="rlpr")
  with_cot = np.array([np.exp(w).mean() for w in _reference_answer_logps(policy, params, tok, prompts, texts, answers)])
  # Without reasoning: the marker right after the prompt.
  without = np.array([np.exp(w).mean() for w in _reference_answer_logps(
      policy, params, tok, prompts, ["####"] * 4, answers)])
  np.testing.assert_allclose(got, np.clip(with_cot - without, 0, 1), atol=1e-5)
  assert np.all((got >= 0) & (got <= 1))


def test_rows_without_marker_get_the_floor_never_nan(policy_batch, tok):
  t, policy, params, prompts, texts, answers, rollout = policy_batch
  no_marker = rollout.replace(actions=jnp.asarray(_completions(tok, ["1+2+0=3 3", "8", "7", "10"],
                                                               rollout.actions.shape[1])[0]))
  for kind in likelihood.KINDS:
    options = dict(kind=kind, no_marker="zero", max_answer_tokens=8, answer_column="answer", append_eos=True)
    for batch, marker_frac in ((rollout, 1.0), (no_marker, 0.0)):
      # Half the rows without a marker: they get the probability-0 reward (the lowest log-prob).
      mixed = batch.replace(actions=jnp.concatenate([rollout.actions[:2], no_marker.actions[2:]]))
      spliced, stats = likelihood.prepare(mixed, policy=policy, task=t.context.task, columns={"answer": answers},
                                          options=options)
      got = _reward(policy, params, spliced, kind=kind)
      assert np.all(np.isfinite(got))
      floor = 0.0 if kind in ("prob", "avg_prob", "rlpr") else got[:2].min()
      np.testing.assert_allclose(got[2:], floor)
    spliced, stats = likelihood.prepare(no_marker, policy=policy, task=t.context.task, columns={"answer": answers},
                                        options=options)
    assert stats["train/rewards/likelihood/marker_frac"] == 0.0
    np.testing.assert_array_equal(_reward(policy, params, spliced, kind=kind), 0.0)  # nobody has it: all 0


# ----------------------------------------------------------------------------- the objective


def _answer_sft_loss(policy, params, tok, prompts, texts, answers):
  """-(1/B) sum_i log pi(a*_i | p_i, z_i) by plain forward passes (the reference SFT loss)."""
  def loss(params, batch):
    del batch  # the sequences are rebuilt here from the text
    model = nnx.merge(policy.graphdef, params)
    total = 0.0
    for prompt, text, answer in zip(prompts, texts, answers):
      p, z = tok.encode(prompt), _ids(tok, text[:text.index("####") + 4])
      a = _ids(tok, " " + answer) + [tok.eos_token_id]
      ids = jnp.asarray([p + z + a])
      logp = jax.nn.log_softmax(model(ids, jnp.ones_like(ids))[0].astype(jnp.float32), axis=-1)
      start = len(p) + len(z)
      total = total + sum(logp[j - 1, ids[0, j]] for j in range(start, ids.shape[1]))
    return -total / len(prompts), 1.0, {}
  return loss


def test_zero_rl_weight_update_equals_an_sft_update_on_the_answers(policy_batch, tok):
  t, policy, params, prompts, texts, answers, rollout = policy_batch
  options = dict(kind="logprob", no_marker="zero", max_answer_tokens=8, answer_column="answer", append_eos=True)
  spliced, _ = likelihood.prepare(rollout, policy=policy, task=t.context.task, columns={"answer": answers},
                                  options=options)
  spliced = spliced.update(advantages=jnp.asarray([1.0, -2.0, 0.5, 3.0]), rewards=jnp.ones(4))
  objective = registry.spec("likelihood")
  placement = policy.placement
  opt = optax.sgd(0.5)
  placement = placement.with_optimizer(opt, jax.eval_shape(lambda: params))
  ours = learner.objective_loss(policy, objective.fn, dict(registry.resolve_options("likelihood"), rl_coef=0.0))
  reference = _answer_sft_loss(policy, params, tok, prompts, texts, answers)
  results = []
  for loss in (ours, reference):
    update = learner.make_update(loss, opt, placement, num_microbatches=1, group_size=1)
    fresh = jax.tree.map(jnp.copy, params)
    new, _, metrics = update(fresh, opt.init(fresh), spliced)
    results.append((new, float(metrics["loss/total"])))
  (ours_params, ours_loss), (ref_params, ref_loss) = results
  np.testing.assert_allclose(ours_loss, ref_loss, rtol=1e-5)
  moved = 0
  for a, b, p in zip(jax.tree.leaves(ours_params), jax.tree.leaves(ref_params), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    moved += not np.allclose(np.asarray(a), np.asarray(p))
  assert moved  # the update did something
  # With the RL term on, the same batch gives a different update (the test can tell them apart).
  with_rl = learner.objective_loss(policy, objective.fn, registry.resolve_options("likelihood"))
  fresh = jax.tree.map(jnp.copy, params)
  new, _, _ = learner.make_update(with_rl, opt, placement)(fresh, opt.init(fresh), spliced)
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(new),
                                                                          jax.tree.leaves(ref_params)))


def _objective_numpy(logp, z_mask, a_mask, adv, valid, rewards, rl_coef, sft_coef, sft_weight):
  w = rewards if sft_weight == "reward" else np.ones_like(rewards)
  rows = -rl_coef * adv * (logp * z_mask).sum(-1) - sft_coef * w * (logp * a_mask).sum(-1)
  return (valid * rows).sum() / valid.sum()


@pytest.mark.parametrize("sft_weight", ["one", "reward"])
def test_likelihood_objective_golden_values_and_gradient(sft_weight):
  rng = np.random.default_rng(0)
  b, t = 6, 7
  logp = -rng.uniform(0.1, 3.0, (b, t))
  cut = rng.integers(1, 5, b)
  z_mask = (np.arange(t)[None] < cut[:, None]).astype(np.float64)
  a_mask = ((np.arange(t)[None] >= cut[:, None]) & (np.arange(t)[None] < cut[:, None] + 2)).astype(np.float64)
  adv, rewards = rng.normal(size=b), rng.uniform(size=b)
  valid = np.array([1, 1, 0, 1, 1, 1], bool)
  bad = np.where(z_mask + a_mask > 0, logp, np.nan)  # NaN where neither mask looks
  batch = {"mask": jnp.asarray(z_mask), "answer_mask": jnp.asarray(a_mask), "advantages": jnp.asarray(adv),
           "rewards": jnp.asarray(rewards), "valid": jnp.asarray(valid)}

  def ours(x):
    total, den, _ = logprob_rewards.likelihood_objective(x, batch, rl_coef=0.7, sft_coef=1.3, sft_weight=sft_weight)
    return total / den

  want = _objective_numpy(logp, z_mask, a_mask, adv, valid, rewards, 0.7, 1.3, sft_weight)
  np.testing.assert_allclose(float(ours(jnp.asarray(bad))), want, rtol=1e-6)
  w = rewards if sft_weight == "reward" else np.ones(b)
  want_grad = valid[:, None] * (-0.7 * adv[:, None] * z_mask - 1.3 * w[:, None] * a_mask) / valid.sum()
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(jnp.asarray(logp))), want_grad, rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="sft_weight='reward_model'"):
    logprob_rewards.likelihood_objective(jnp.asarray(logp), batch, sft_weight="reward_model")
  with pytest.raises(KeyError, match="'likelihood' reward"):
    logprob_rewards.likelihood_objective(jnp.asarray(logp), {"mask": batch["mask"], "advantages": batch["advantages"]})


# ----------------------------------------------------------------------------- JEPO and the RLPR filter


def test_jepo_estimator_matches_the_formula_and_skips_invalid_rows():
  rng = np.random.default_rng(1)
  g = 4
  logp_sums = rng.normal(-5.0, 2.0, (3, g))
  batch = {"rewards": jnp.asarray(logp_sums.reshape(-1)), "mask": jnp.ones((3 * g, 5))}
  got = estimators.compute("jepo", batch, group_size=g, options={})
  np.testing.assert_allclose(np.asarray(got).reshape(3, g), logprob_rewards.jepo_advantages(jnp.asarray(logp_sums)),
                             rtol=1e-5)
  # By hand for one group: log-mean-exp of all minus log-mean-exp of the others.
  x = logp_sums[0]
  lme = lambda v: np.log(np.mean(np.exp(v)))  # noqa: E731
  np.testing.assert_allclose(np.asarray(got)[:g], [lme(x) - lme(np.delete(x, i)) for i in range(g)], rtol=1e-5)
  # An invalid row is out of its group's sums (as if the group had G - 1 rows) and gets 0.
  valid = np.ones(3 * g, bool)
  valid[1] = False
  bad = batch["rewards"].at[1].set(jnp.nan)
  got = np.asarray(estimators.compute("jepo", {**batch, "rewards": bad, "valid": jnp.asarray(valid)},
                                      group_size=g, options={}))
  kept = np.delete(x, 1)
  np.testing.assert_allclose(got[[0, 2, 3]], [lme(kept) - lme(np.delete(kept, i)) for i in range(3)], rtol=1e-5)
  assert got[1] == 0 and np.all(np.isfinite(got))
  single = estimators.compute("jepo", batch, group_size=g, options={"multi_sample": False})
  np.testing.assert_allclose(np.asarray(single)[:g], [x[i] - np.delete(x, i).mean() for i in range(g)], rtol=1e-5)


def test_std_filter_drops_exactly_the_groups_below_the_threshold():
  t = support.experiment(_config(**{"rewards.std_filter_beta": 0.5, "rewards.std_filter_start_step": 3}))
  rl = t.stage("rl")
  g = rl.group_size
  # Steps 1 and 2 record mean group stds 1.0 and 3.0 (EMA records from step 2 = (3 + 1) // 2);
  # step 3 filters with ema = 3.0 (the mean of the recorded step 2), threshold 0.5 x 3.0 = 1.5.
  group_rewards = [np.array([[0, 2, 0, 2]] * 4, np.float32),  # std 1 in every group
                   np.array([[0, 6, 0, 6]] * 4, np.float32),  # std 3
                   np.array([[0, 2, 0, 2], [0, 4, 0, 4], [0, 3, 0, 3], [0, 0, 0, 0]], np.float32)]  # 1, 2, 1.5, 0
  state = logprob_rewards.std_filter_init()
  for step, rewards in enumerate(group_rewards):
    b = rewards.size
    rollout = Rollout(actions=jnp.zeros((b, 3), jnp.int32), mask=jnp.ones((b, 3)), old_logp=jnp.zeros((b, 3)),
                      group_ids=jnp.repeat(jnp.arange(b // g), g), rewards=jnp.asarray(rewards.reshape(-1)),
                      extras={"valid": jnp.ones((b,), bool), "answer_mask": jnp.ones((b, 3))})
    state, filtered, kept = rl._filter(state, rollout)
    keep = np.repeat([True, True, True, True] if step < 2 else [False, True, True, False], g)
    np.testing.assert_array_equal(np.asarray(filtered["valid"]), keep, err_msg=f"step {step + 1}")
    np.testing.assert_array_equal(np.asarray(filtered.mask).any(-1), keep)
    np.testing.assert_array_equal(np.asarray(filtered["answer_mask"]).any(-1), keep)
    assert float(kept) == keep.mean()
  np.testing.assert_allclose(float(state.ema), 3.0 * 0.99 + 0.01 * 3.0)


# ----------------------------------------------------------------------------- through the engine


def test_likelihood_run_learns_the_reference_answers(tmp_path):
  """Two RL steps with the combined objective raise the reference answers' log-prob."""
  t = support.experiment(_config(**{"warmup.steps": 1, "train.steps": 3, "optim.warmup_steps": 0,
                                    "optim.lr": 3e-3, "eval.every": 10}))
  t.run(tmp_path)
  rows = [r for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl") if r.get("train/stage") == 1.0]
  assert len(rows) == 3
  for r in rows:
    assert all(np.isfinite(r[k]) for k in ("loss/total", "loss/sft", "loss/policy", "train/reward"))
    assert r["train/rewards/likelihood/marker_frac"] == 0.0  # one warm-up step: no marker, "append"
  assert rows[-1]["train/rewards/likelihood"] > rows[0]["train/rewards/likelihood"]
  results = metrics_lib.read_metrics(tmp_path / "metrics.jsonl")
  evals = [r for r in results if "eval/answer_perplexity" in r]
  assert len(evals) == 2 and evals[-1]["eval/answer_perplexity"] < evals[0]["eval/answer_perplexity"]


def test_one_step_on_eight_devices_matches_one_device():
  runs = []
  for mesh in (support.one_device(), None):  # None: the config's mesh, data 4 x fsdp 2
    c = _config(**{"warmup.steps": 1, "train.steps": 1, "optim.warmup_steps": 0, "optim.lr": 1e-3,
                   "mesh": (("data", 4), ("fsdp", 2), ("tensor", 1))})
    t = experiment_lib.Experiment(c, mesh=mesh)
    state = t.initial_state()
    state, _ = t.stages[0].step(state, 0)
    rl = t.stage("rl")
    state = rl.enter(state)
    state, metrics = rl.step(state, 1)
    runs.append((t, {k: float(v) for k, v in metrics.items()}, state))
  (_, ref, ref_state), (t8, got, state8) = runs
  assert t8.mesh.devices.size == 8
  assert ref.keys() == got.keys()
  assert abs(ref["loss/sft"]) > 0
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(ref_state["policy"]["params"]), jax.tree.leaves(state8["policy"]["params"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-5)


def test_resume_gives_the_same_numbers_with_the_std_filter(tmp_path):
  c = _config(**{"warmup.steps": 1, "train.steps": 4, "optim.warmup_steps": 0, "optim.lr": 1e-3,
                 "eval.every": 10, "checkpoint_every": 1, "rewards.std_filter_beta": 0.5,
                 "rewards.std_filter_start_step": 2, "rewards.options.likelihood.kind": "rlpr"})
  t = support.experiment(c)
  # Stopped inside the RL stage, after the filter started.
  full, resumed, rows_full = support.run_full_and_resumed(t, tmp_path, stop_at=3)
  assert any("train/std_filter/kept_frac" in r for r in rows_full)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  assert int(full["std_filter"].step) == 4


@pytest.mark.parametrize("overrides, message", [
    ({"rewards.options.likelihood.kind": "logprobs"}, r"kind='logprobs' is not one of"),
    ({"rewards.options.likelihood.no_marker": "skip"}, r"no_marker='skip' is not one of"),
    ({"rewards.options.likelihood.answer_column": "reference"}, r"column 'reference'.*answer_column"),
    ({"rewards.options.likelihood.max_answer_tokens": 2}, r"max_answer_tokens=2; raise it"),
])
def test_bad_input_is_named(tmp_path, overrides, message):
  c = _config(**{"warmup.steps": 1, "train.steps": 1, "eval.every": 10, **overrides})
  with pytest.raises((ValueError, KeyError), match=message):
    t = support.experiment(c)
    t.run(tmp_path)


def test_a_task_without_answer_marker_is_an_error(monkeypatch):
  c = _config()
  original = tasks.TASKS["arithmetic"]
  monkeypatch.setitem(tasks.TASKS, "arithmetic",
                      lambda cfg, seed: original(cfg, seed).__class__(**{**vars(original(cfg, seed)),
                                                                        "answer_format": None}))
  with pytest.raises(ValueError, match="answer marker"):
    support.experiment(c).stage("rl").check()



@pytest.mark.parametrize("variant", ["", "tiny", "long", "long_tiny", "verifier", "long_verifier", "smollm2",
                                     "smollm2_cpu"])
def test_every_variant_passes_the_config_checks(variant):
  experiment_lib.check_config(likelihood_rewards.get_config(variant))


def test_auc_counts_ties_as_one_half():
  from experiments import likelihood_auc  # noqa: PLC0415
  scores = np.array([0.9, 0.5, 0.5, 0.1, 0.7])
  correct = np.array([True, True, False, False, False])
  # Pairs (correct, incorrect): 0.9 beats all 3; 0.5 beats 0.1, ties 0.5, loses to 0.7 -> (3 + 1.5) / 6.
  assert likelihood_auc.auc(scores, correct) == pytest.approx(4.5 / 6)
  assert np.isnan(likelihood_auc.auc(scores, np.zeros(5, bool)))


def test_splice_with_a_bpe_tokenizer_and_answer_tags():
  """SmolLM2's BPE tokenizer: the chain of thought ends with the token that completes `<answer>`,
  and the spliced answer decodes to the reference answer, the closing tag and EOS."""
  from configs import grpo_smollm2  # noqa: PLC0415
  from models import hf  # noqa: PLC0415
  folder = grpo_smollm2.model_dir()
  if not (pathlib.Path(folder) / "tokenizer.json").exists():
    pytest.skip(f"no SmolLM2 folder at {folder} (run scripts/get_smollm2.sh)")
  tok = hf.load_tokenizer(folder)
  fmt = tasks.AnswerFormat(marker="<answer>", suffix="</answer>")
  texts = ["12 + 39: 2 + 9 = 11, carry 1. <answer>50</answer>", "I think <answer> -2 </answer>", "no tags 7"]
  actions = np.full((3, 40), tok.pad_token_id, np.int32)
  mask = np.zeros((3, 40), np.float32)
  for i, text in enumerate(texts):
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    actions[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  out = likelihood.splice(actions, mask, ["51", "-2", "7"], tokenizer=tok, fmt=fmt, max_answer_tokens=12,
                          pad_id=tok.pad_token_id)
  np.testing.assert_array_equal(out["has_marker"], [True, True, False])
  for i in range(2):
    cot = out["actions"][i][out["mask"][i] > 0]
    assert tok.decode(cot).endswith("<answer>") and tok.decode(cot[:-1]).find("<answer>") < 0
    answer = out["actions"][i][out["answer_mask"][i] > 0]
    assert tok.decode(answer) == ["51", "-2"][i] + "</answer>" + tok.eos_token
