"""The RL stage's plumbing: old log-probs, in-jit and token rewards through credit assignment,
further trainable roles, and exact resumption with them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sharded_run  # noqa: F401  (registers the reward "test_length_mod3")
import support
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward.rewards import model_rewards
from objectives import estimators

VARYING_REWARD = {"rewards.names": ("test_length_mod3",), "rewards.weights": (1.0,)}


@model_rewards.register_model_reward("test_even_tokens", level="token", overwrite=True)
def even_tokens(rollout, roles):
  """A token reward of the rollout alone: 1 on every even token id."""
  del roles
  return (rollout.actions % 2 == 0).astype(jnp.float32) * rollout.mask


def _collect(t, step_offset=0):
  rl = t.stage("rl")
  state = rl.enter({})
  idx = np.arange(rl.prompts) + step_offset
  return rl, state, rl.collect(state, [t.context.task.train[i] for i in idx], jax.random.PRNGKey(3))[0]


def _masked(x, mask):
  return np.asarray(x)[np.asarray(mask) > 0]


# ----------------------------------------------------------------------------- old log-probs


def test_recomputed_old_logp_equals_the_samplers_in_float32():
  t = support.micro_experiment(**{"train.old_logp": "recompute"})
  _, _, rollout = _collect(t)
  mask = rollout.mask
  assert float(jnp.sum(mask)) > 0
  np.testing.assert_allclose(_masked(rollout.old_logp, mask), _masked(rollout["sampler_logp"], mask),
                             rtol=1e-5, atol=1e-4)
  assert not np.array_equal(np.asarray(rollout.old_logp), np.asarray(rollout["sampler_logp"]))  # two passes


@pytest.mark.parametrize("mode", ["sampler", "recompute"])
def test_recompute_removes_on_policy_clipping_in_bfloat16(mode):
  """bfloat16: the KV-cache sampler's log-probs differ from the learner's teacher-forced ones.
  With a clip range below that gap, the first update of a rollout clips tokens when the old
  log-probs are the sampler's, and none when they are recomputed (the ratio is exactly 1)."""
  t = support.micro_experiment(**{"model.dtype": "bfloat16", "train.old_logp": mode, "warmup.steps": 1,
                                  "train.num_iterations": 1, "train.num_minibatches": 1,
                                  "objective.options.epsilon": 1e-6, "objective.options.epsilon_high": 1e-6,
                                  **VARYING_REWARD})
  rl = t.stage("rl")
  _, metrics = rl.step(rl.enter({}), rl.start)
  assert metrics["stats/sampler_logp_gap"] > 0  # logged either way
  if mode == "recompute":
    assert metrics["stats/clip_frac"] == 0.0 and metrics["stats/ratio_mean"] == 1.0
  else:
    assert metrics["stats/clip_frac"] > 0.0


def test_truncated_importance_weight():
  t = support.micro_experiment(**{"model.dtype": "bfloat16", "train.old_logp": "recompute", "train.tis_cap": 1.0})
  _, _, rollout = _collect(t)
  expected = np.minimum(np.exp(np.asarray(rollout.old_logp) - np.asarray(rollout["sampler_logp"])), 1.0)
  np.testing.assert_allclose(np.asarray(rollout["is_weight"]), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="tis_cap.*recompute"):
    experiment_lib.check_config(support.micro_config(**{"train.old_logp": "sampler", "train.tis_cap": 2.0}))


# ----------------------------------------------------------------------------- rewards and credit


def _token_reward_config(estimator):
  return support.micro_config(**{
      "rewards.names": ("test_length_mod3", "implicit_prm", "test_even_tokens"), "rewards.weights": (1.0, 2.0, 0.5),
      "rewards.options.implicit_prm": {"beta": 0.5},
      "roles.prm": {"kind": "lm", "init": "random", "trainable": False},
      "advantage.estimator": estimator, "warmup.steps": 1, "train.steps": 1, "optim.warmup_steps": 0,
      "optim.lr": 1e-3})


@pytest.mark.parametrize("estimator", ["pure_min_form", "discounted"])
def test_in_jit_model_reward_and_token_reward_train_through_credit_assignment(estimator):
  """A reward that reads the PRM role and the reference (in-jit, per token) and a token reward
  of the rollout alone reach the estimator as `token_rewards`, and the policy trains on them."""
  t = support.experiment(_token_reward_config(estimator))
  rl, state, rollout = _collect(t)
  roles, mask = t.roles, np.asarray(rollout.mask)
  prm = roles["prm"].scorer.compute_logprobs(state["prm"]["params"], rollout)
  ref = roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout)
  even = (np.asarray(rollout.actions) % 2 == 0) * mask
  expected_tokens = 2.0 * 0.5 * (np.asarray(prm) - np.asarray(ref)) * mask + 0.5 * even
  assert np.abs(np.asarray(prm) - np.asarray(ref)).max() > 1e-3  # the PRM is not the reference
  np.testing.assert_allclose(np.asarray(rollout["token_rewards"]), expected_tokens, rtol=1e-5, atol=1e-6)
  lengths = [len(c) % 3 for c in t.roles.policy.decode(rollout)]
  np.testing.assert_allclose(np.asarray(rollout["outcome_rewards"]), lengths)
  batch = {"rewards": rollout.rewards, "outcome_rewards": np.asarray(lengths, np.float32),
           "token_rewards": expected_tokens, "mask": mask}
  expected_adv = estimators.compute(estimator, batch, group_size=rl.group_size)
  np.testing.assert_allclose(np.asarray(rollout.advantages), np.asarray(expected_adv), rtol=1e-4, atol=1e-5)
  assert rollout.advantages.shape == mask.shape and np.abs(np.asarray(rollout.advantages)).max() > 0
  before = [np.asarray(x) for x in jax.tree.leaves(state["policy"]["params"])]
  new_state, metrics = rl.step(state, rl.start)
  assert np.isfinite(metrics["loss/total"])
  assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(before, jax.tree.leaves(new_state["policy"]["params"])))


def test_remax_baseline_is_the_greedy_completions_reward():
  t = support.micro_experiment(**{"advantage.estimator": "remax", **VARYING_REWARD})
  rl, state, rollout = _collect(t)
  greedy = t.roles.policy.sample(state["policy"]["params"], rl_conditions(t), jax.random.PRNGKey(3), greedy=True)
  baseline = [len(c) % 3 for c in t.roles.policy.decode(greedy)]
  np.testing.assert_allclose(np.asarray(rollout["baseline_rewards"]), baseline)
  returns = np.asarray(rollout.advantages) + np.asarray(baseline, np.float32)[:, None] * np.asarray(rollout.mask)
  np.testing.assert_allclose(returns[:, 0], np.asarray(rollout.rewards) * (np.asarray(rollout.mask)[:, 0] > 0),
                             atol=1e-5)


def rl_conditions(t):
  from jaxrl_reward import stages  # noqa: PLC0415
  rl = t.stage("rl")
  return stages.prompt_groups(t.context, [t.context.task.train[i] for i in range(rl.prompts)], rl.group_size)[0]


def test_estimator_without_its_role_or_rewards_is_a_start_up_error():
  with pytest.raises(ValueError, match="needs a value role"):
    experiment_lib.check_config(support.micro_config(**{"advantage.estimator": "gae"}))
  with pytest.raises(KeyError, match="no role 'prm'"):
    support.experiment(support.micro_config(**{"rewards.names": ("implicit_prm",), "rewards.weights": (1.0,)}))
  with pytest.raises(KeyError, match="unknown reward 'implicit_pr'"):
    experiment_lib.check_config(support.micro_config(**{"rewards.names": ("implicit_pr",),
                                                        "rewards.weights": (1.0,)}))
  with pytest.raises(ValueError, match="'group' has no option 'lamda'"):
    experiment_lib.check_config(support.micro_config(**{"advantage.options.lamda": 0.9}))
  with pytest.raises(ValueError, match="config.roles.prm.objective='grpo' is an objective of the 'rl' stage"):
    experiment_lib.check_config(support.micro_config(**{"roles.prm": {"trainable": True, "objective": "grpo"}}))


# ----------------------------------------------------------------------------- further roles


def _two_roles_config():
  """PRIME-like: a PRM and a critic, both trained online; the PRM's token rewards and a verifier."""
  return support.micro_config(**{
      "roles.prm": {"kind": "lm", "init": "policy", "trainable": True, "objective": "implicit_prm_ce", "lr": 1e-3},
      "roles.value": {"kind": "value", "init": "policy", "trainable": True, "objective": "value_mse", "lr": 1e-3},
      "rewards.names": ("test_length_mod3", "implicit_prm"), "rewards.weights": (1.0, 1.0),
      "advantage.estimator": "gae", "advantage.options.lam": 0.95,
      "warmup.steps": 1, "train.steps": 2, "train.num_iterations": 1, "eval.every": 10,
      "optim.warmup_steps": 0, "optim.lr": 1e-3, "checkpoint_every": 1})


def test_two_trainable_roles_train_and_resume_to_the_same_numbers(tmp_path):
  t = support.experiment(_two_roles_config())  # one experiment: its compiled steps serve every run
  full, resumed, rows_full = support.run_full_and_resumed(t, tmp_path, stop_at=2)  # stopped inside RL
  for role in ("policy", "prm", "value", "reference"):
    for a, b in zip(jax.tree.leaves(full[role]), jax.tree.leaves(resumed[role])):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=role)
  rl_rows = [r for r in rows_full if r.get("train/stage") == 1.0]
  assert all(np.isfinite(r["loss/prm"]) and np.isfinite(r["loss/value"]) for r in rl_rows)
  # Each trained role moved away from the policy it started from (the reference is that policy).
  for role in ("prm", "value"):
    assert "opt_state" in full[role]
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(full["value"]["params"]["backbone"]), jax.tree.leaves(full["reference"]["params"])))
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(full["prm"]["params"]), jax.tree.leaves(full["reference"]["params"])))
