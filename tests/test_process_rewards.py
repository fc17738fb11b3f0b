"""Step scores of an implicit PRM through the pipeline: text steps -> token positions -> step rewards
(jaxrl_reward/process_rewards.py, experiments/prm_best_of_n.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import support
from configs import implicit_prm as implicit_prm_config
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import process_rewards
from jaxrl_reward.data import chain_sums
from jaxrl_reward.data import tokenizer as tokenizer_lib

TEXTS = ["1+2=3\n3+4=7\n#### 7", "10-20=-10\n-10+5=-5\n-5+1=-4\n#### -4", "#### 3"]


def _encode(tokenizer, texts, length=40):
  return process_rewards.encode_solutions(tokenizer, texts, length)


def test_step_ends_land_on_the_last_character_of_each_line():
  tok = tokenizer_lib.build_arithmetic_tokenizer()
  ids, mask = _encode(tok, TEXTS)
  ends = process_rewards.step_end_mask(tok, ids, mask, TEXTS, chain_sums.step_end_offsets)
  assert np.flatnonzero(ends[0]).tolist() == [4, 10]  # "1+2=3" ends at 4, "3+4=7" at 10
  assert np.flatnonzero(ends[1]).tolist() == [8, 17, 25]
  assert ends[2].sum() == 0  # only the answer line: no step
  with pytest.raises(ValueError, match="completion 2 has no step"):
    process_rewards.step_end_mask(tok, ids, mask, TEXTS, chain_sums.step_end_offsets, require_steps=True)


def test_step_rewards_are_differences_of_cumulative_token_rewards_at_step_ends():
  tok = tokenizer_lib.build_arithmetic_tokenizer()
  ids, mask = _encode(tok, TEXTS[:2])
  ends = process_rewards.step_end_mask(tok, ids, mask, TEXTS[:2], chain_sums.step_end_offsets)
  rng = np.random.default_rng(0)
  prm, ref = rng.normal(size=ids.shape).astype(np.float32), rng.normal(size=ids.shape).astype(np.float32)
  rewards, step_mask, tokens = process_rewards.step_rewards(prm, ref, mask, ends, beta=0.5, max_steps=4)
  token_rewards = 0.5 * (prm - ref) * mask
  np.testing.assert_allclose(tokens, token_rewards, rtol=1e-6)
  for b in range(2):
    positions = np.flatnonzero(ends[b])
    q = np.cumsum(token_rewards[b])[positions]  # q^k: cumulative token rewards at the k-th step end
    np.testing.assert_allclose(np.asarray(rewards[b, :len(q)]), np.diff(q, prepend=0.0), rtol=1e-5, atol=1e-6)
    assert np.asarray(step_mask[b]).sum() == len(q)
    np.testing.assert_allclose(np.asarray(rewards[b]).sum(), q[-1], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def prm_run():
  """The chain-sums implicit-PRM experiment with a PRM that differs from its reference."""
  config = implicit_prm_config.get_config("chain_sums_tiny")
  e = experiment_lib.Experiment(config, mesh=support.one_device())
  stage = e.stage("reward_model")
  state = stage.enter(e.stages[0].enter({}))
  noise = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype),
                       state["prm"]["params"])
  return e, {**state, "prm": {**state["prm"], "params": noise}}


def test_the_pipeline_reads_the_prm_at_step_boundaries(prm_run):
  e, state = prm_run
  examples = e.context.task.eval[:2]
  prompts = [x["prompt"] for x in examples]
  solutions = [x["solution"] for x in examples]
  rewards, steps = process_rewards.teacher_forced_step_rewards(e.context, state, prompts, solutions, beta=0.05)
  # Independently: the two models' log-probs of the same tokens, summed per line by hand.
  tok = e.context.task.tokenizer
  ids, mask = _encode(tok, solutions, e.config.task.max_completion_length)
  from jaxrl_reward.rollout import Rollout  # noqa: PLC0415
  policy = e.context.roles.policy
  cond = policy.conditions(prompts, np.arange(2), 2)
  rollout = Rollout(actions=jnp.asarray(ids), mask=jnp.asarray(mask, jnp.float32), old_logp=jnp.zeros(ids.shape),
                    group_ids=cond["group_ids"], extras={"prompt_ids": cond["prompt_ids"], "prompt_mask": cond["prompt_mask"]})
  prm = np.asarray(e.context.roles["prm"].scorer.compute_logprobs(state["prm"]["params"], rollout))
  ref = np.asarray(e.context.roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout))
  for b, text in enumerate(solutions):
    lines = text.split("\n")[:-1]  # the step lines, before "#### answer"
    assert steps[b] == len(lines) == examples[b]["num_steps"]
    start = 0
    for k, line in enumerate(lines):
      end = start + len(line)  # tokens [start, end) are the line's characters (character tokenizer)
      lo = 0 if k == 0 else start - 1  # the previous step's newline belongs to this step
      want = 0.05 * np.sum(prm[b, lo:end] - ref[b, lo:end])
      np.testing.assert_allclose(rewards[b, k], want, rtol=1e-4, atol=1e-6)
      start = end + 1
  assert np.abs(rewards).max() > 0


def test_well_formed_completions_have_the_answer_and_the_problem_s_steps():
  task = chain_sums.build_task(implicit_prm_config.get_config("chain_sums_tiny").task, seed=0)
  example = chain_sums.make_example([1, 2, 4], ["+", "+"])  # two steps
  assert process_rewards.well_formed(task, example, example["solution"])
  assert process_rewards.well_formed(task, example, "1+2=4\n4+4=8\n#### 8")  # wrong, but well-formed
  assert not process_rewards.well_formed(task, example, "1+2=3\n3+4=7")  # no answer line
  assert not process_rewards.well_formed(task, example, "1+2=3\n#### 3")  # stopped after one step
  assert not process_rewards.well_formed(task, example, "1+2=3\n3+4=7\n7+0=7\n#### 7")  # an extra step


def test_best_of_n_arguments_and_roles_are_checked(prm_run, tmp_path):
  with pytest.raises(ValueError, match=r"--ns \[8\] must be in \[1, --samples=4\]"):
    process_rewards.check_best_of_n([1, 8], 4, 10)
  config = implicit_prm_config.get_config("chain_sums_tiny")
  config.roles = {}
  with pytest.raises(ValueError, match="config.reward_model.role=.prm. must name a role of config.roles of kind .lm."):
    experiment_lib.Experiment(config, mesh=support.one_device())


@pytest.mark.slow
def test_evaluate_a_prm_run_and_an_orm_run_from_its_warm_up(tmp_path):
  """`evaluate` end to end: an implicit-PRM run, then an outcome-RM run that starts from its
  warm-up (`init_from`); Best-of-1 is pass@1 for any scorer, and the ORM has no localisation."""
  prm_config = implicit_prm_config.get_config("chain_sums_tiny")
  experiment_lib.Experiment(prm_config, mesh=support.one_device()).run(tmp_path / "prm")
  orm_config = implicit_prm_config.get_config("chain_sums_tiny,orm")
  orm_config.stages, orm_config.init_from = ("reward_model",), str(tmp_path / "prm")
  experiment_lib.Experiment(orm_config, mesh=support.one_device()).run(tmp_path / "orm")
  kwargs = dict(num=4, samples=4, ns=[1, 4], aggregations=["min", "sum"], problems_per_batch=2)
  prm = process_rewards.evaluate(prm_config, tmp_path / "prm", **kwargs)
  orm = process_rewards.evaluate(orm_config, tmp_path / "orm", **kwargs)
  for result, scorers in ((prm, ("best_of_n/min", "best_of_n/sum", "best_of_n/policy_likelihood")),
                          (orm, ("best_of_n/outcome", "best_of_n/policy_likelihood"))):
    assert result["pass_at_n"][1] == pytest.approx(result["random"]) == pytest.approx(result["frac_correct"])
    for key in scorers:
      assert result[key][1] == pytest.approx(result["random"])  # best of one draw: a random draw
      assert 0.0 <= result[key][4] <= result["pass_at_n"][4] + 1e-9
  assert orm["frac_correct"] == pytest.approx(prm["frac_correct"])  # the same policy, samples and problems
  assert orm["localisation"] is None and "best_of_n/min" not in orm
  assert set(prm["localisation"]) >= {"threshold", "f1"}
  # Issue 23's diagnostics, for every scorer: the untrained implicit PRM is its reference (all
  # scores 0: no correlation, pair accuracy at chance); Best-of-N over well-formed samples.
  for result, scorers in ((prm, ("min", "sum", "policy_likelihood", "untrained/min", "untrained/sum")),
                          (orm, ("outcome", "policy_likelihood", "untrained/outcome"))):
    assert set(result["score_length_corr"]) == set(result["score_steps_corr"]) == set(scorers)
    for key in scorers:
      assert f"best_of_n/{key}" in result and set(result[f"best_of_n_well_formed/{key}"]) == {1, 4}
    assert set(result["pair_accuracy"]) == {"trained", "untrained"}
    assert 0.0 <= result["well_formed"]["frac"] <= 1.0
  assert prm["pair_accuracy"]["untrained"] == 0.5 and prm["score_length_corr"]["untrained/min"] is None
  assert prm["best_of_n/untrained/min"][4] == pytest.approx(prm["random"])  # constant score: a random pick
  # Reading a run with the wrong config fails, and leaves the run's checkpoints where they are.
  steps = sorted(p.name for p in (tmp_path / "prm" / "checkpoints").iterdir())
  with pytest.raises(ValueError, match="holds a run of another config"):
    process_rewards.evaluate(orm_config, tmp_path / "prm", **kwargs)
  assert sorted(p.name for p in (tmp_path / "prm" / "checkpoints").iterdir()) == steps
  assert not any(name.startswith("unreadable") for name in steps)


def test_a_prm_trained_on_outcomes_scores_a_shared_wrong_step_lower():
  """The implicit PRM learns from outcome labels only, yet its step reward singles out the step
  where flawed solutions go wrong (step 1 of every flawed solution here), against the same step
  of the worked solutions of the same problems."""
  config = support.with_keys(implicit_prm_config.get_config("chain_sums_tiny"), **{"roles.prm.lr": 3e-3})
  e = experiment_lib.Experiment(config, mesh=support.one_device())
  stage = e.stage("reward_model")
  state = stage.enter(e.stages[0].enter({}))
  examples = [x for x in e.context.task.train if x["num_steps"] >= 2][:8]
  rng = np.random.default_rng(0)
  prompts = [x["prompt"] for x in examples for _ in range(2)]
  solutions = [s for x in examples for s in (x["solution"], chain_sums.flawed_solution(x, 1, rng)[0])]
  labels = np.tile([1.0, 0.0], len(examples)).astype(np.float32)
  tokenizer, policy = e.context.task.tokenizer, e.context.roles.policy
  ids, mask = process_rewards.encode_solutions(tokenizer, solutions, config.task.max_completion_length)
  cond = policy.conditions(prompts, np.arange(len(prompts)) // 4, len(prompts))  # groups of 4 rows
  from jaxrl_reward.rollout import Rollout  # noqa: PLC0415
  rollout = Rollout(actions=jnp.asarray(ids), mask=jnp.asarray(mask, jnp.float32), old_logp=jnp.zeros(ids.shape),
                    group_ids=cond["group_ids"], extras={"prompt_ids": cond["prompt_ids"],
                                                         "prompt_mask": cond["prompt_mask"],
                                                         "labels": jnp.asarray(labels)})
  rollout = rollout.update(ref_logp=e.context.roles["reference"].scorer.compute_logprobs(
      state["reference"]["params"], rollout))
  before, _ = process_rewards.teacher_forced_step_rewards(e.context, state, prompts, solutions, beta=0.05)
  np.testing.assert_allclose(before, 0.0, atol=1e-6)  # the untrained PRM is its reference: no signal
  prm = state["prm"]
  params, opt_state = prm["params"], prm["opt_state"]  # donated by the updates
  for _ in range(30):
    params, opt_state, _ = stage.update(params, opt_state, rollout)
  trained = {**state, "prm": {"params": params, "opt_state": opt_state}}
  rewards, steps = process_rewards.teacher_forced_step_rewards(e.context, trained, prompts, solutions, beta=0.05)
  assert np.all(steps >= 2)
  correct_step1, flawed_step1 = rewards[0::2, 1], rewards[1::2, 1]
  assert np.all(flawed_step1 < correct_step1), (flawed_step1, correct_step1)
  assert np.mean(correct_step1 - flawed_step1) > 0.05
  # Step 0 is the same text in both: a causal PRM cannot tell them apart there.
  np.testing.assert_allclose(rewards[0::2, 0], rewards[1::2, 0], atol=1e-5)
