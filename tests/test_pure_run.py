"""PURE's runs (configs/pure.py): a PRM trained from outcomes, then frozen as the RL reward; the
verifier on a fixed fraction of the problems (`rewards.verified_fraction`)."""
import jax
import numpy as np
import pytest

import sharded_run  # noqa: F401  (registers the reward "test_length_mod3")
import support
from configs import pure as pure_config
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward.rewards import scoring


def test_verified_problems_are_a_fixed_fraction():
  prompts = [f"{a}+{b}=" for a in range(60) for b in range(50)]
  picked = np.asarray([scoring.is_verified(p, 0.1) for p in prompts])
  assert abs(picked.mean() - 0.1) < 0.02
  assert list(picked) == [scoring.is_verified(p, 0.1) for p in prompts]  # the same set every time
  assert all(scoring.is_verified(p, 1.0) for p in prompts) and not any(scoring.is_verified(p, 0.0) for p in prompts)


def test_host_rewards_are_given_on_the_verified_problems_only():
  e = support.micro_experiment(**{"rewards.names": ("test_length_mod3",), "rewards.weights": (1.0,),
                                  "rewards.verified_fraction": 0.5})
  rl = e.stage("rl")
  state = rl.enter(e.stages[0].enter({}))
  examples = [e.context.task.train[i] for i in range(rl.prompts)]
  rollout, stats = rl.score(state, examples, jax.random.PRNGKey(0))
  completions = e.context.roles.policy.decode(rollout)
  prompts = [x["prompt"] for x in examples for _ in range(rl.group_size)]
  verified = np.asarray([scoring.is_verified(p, 0.5) for p in prompts])
  assert 0 < verified.sum() < len(verified), "the fixture must have both kinds of problems"
  want = np.where(verified, [len(c) % 3 for c in completions], 0.0)
  np.testing.assert_array_equal(np.asarray(rollout["outcome_rewards"]), want)
  assert stats["train/rewards/verified_frac"] == pytest.approx(verified.mean())
  with pytest.raises(ValueError, match="rewards.verified_fraction=1.5"):
    support.micro_experiment(**{"rewards.verified_fraction": 1.5})


def test_pure_config_errors_name_the_key():
  with pytest.raises(ValueError, match="unknown modifier 'max'"):
    pure_config.get_config("tiny,max")
  c = pure_config.get_config("tiny")
  del c.reward_model.objective  # the reward-model stage would read config.objective: an RL objective
  with pytest.raises(ValueError, match="config.objective.name='grpo' is an objective of the 'rl' stage"):
    experiment_lib.check_config(c)


@pytest.mark.slow
def test_pure_trains_a_prm_then_keeps_it_frozen_as_the_reward():
  e = support.experiment(pure_config.get_config("tiny,verified"))
  assert [s.name for s in e.stages] == ["sft", "reward_model", "rl"]
  state, history, prm_after_training = e.initial_state(), [], None
  for step in range(e.total_steps):
    stage = e.stages[e.stage_index(step)]
    if step == stage.start and step > 0:
      if stage.name == "rl":
        prm_after_training = jax.tree.map(np.asarray, state["prm"]["params"])
      state = stage.enter(state)
    state, metrics = stage.step(state, step)
    history.append((stage.name, jax.device_get(metrics)))
  # The RL stage read the PRM its reward-model stage trained, and never changed it.
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["prm"]["params"]), prm_after_training)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(prm_after_training),
                                                   jax.tree.leaves(state["reference"]["params"])))
  rl_rows = [m for name, m in history if name == "rl"]
  assert rl_rows and all(abs(m["train/rewards/implicit_prm"]) > 0 for m in rl_rows)
  assert all(np.isfinite(m["loss/total"]) and "train/rewards/verified_frac" in m for m in rl_rows)
