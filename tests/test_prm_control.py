"""The positive control of the implicit PRM (configs/implicit_prm.py:control, issue 23): trained on
balanced (worked, flawed) solution pairs (`reward_model.data="solution_pairs"`), a scorer must order
held-out worked solutions above flawed ones; trained on inverted labels, below. Both directions show
that `eval/pair_accuracy` measures what the scorer learned and can fail."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import support
from configs import implicit_prm as implicit_prm_config
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward.stages import reward_model

# A chain-sums task small enough for a `micro` model without warm-up to learn its two steps'
# arithmetic facts in a few dozen updates: three operands in 0..3 (256 prompts, 224 for training).
TASK = {"task.max_value": 3, "task.min_terms": 3, "task.max_terms": 3, "task.num_train": 192, "task.num_eval": 32,
        "rollout.prompts_per_step": 16, "roles.prm.lr": 3e-3}
STEPS = 30


@pytest.fixture(scope="module")
def control():
  """(experiment, reward-model stage, initial state) of `control_tiny` on the small task, from an
  untrained policy (the PRM and its reference start equal: every score is 0)."""
  config = support.with_keys(implicit_prm_config.get_config("control_tiny"), **TASK)
  e = experiment_lib.Experiment(config, mesh=support.one_device())
  stage = e.stage("reward_model")
  return e, stage, stage.enter({})


def _train(control, *, invert: bool, steps: int = STEPS):
  """The stage's updates on its training pairs (labels 1 - l when `invert`) from the initial state;
  returns the state after them."""
  e, stage, initial = control
  role = initial["prm"]
  params = jax.tree.map(jnp.copy, role["params"])  # the updates donate their inputs
  opt_state = jax.tree.map(jnp.copy, role["opt_state"])
  for step in range(steps):
    idx = np.random.default_rng([e.config.seed, step]).choice(len(e.context.task.train), stage.prompts, replace=False)
    rollout, stats = stage.labelled_pairs(initial, [e.context.task.train[i] for i in idx],
                                          np.random.default_rng([e.config.seed, step]))
    assert stats["stats/label_mean"] == 0.5  # balanced: one worked and one flawed solution per problem
    if invert:
      rollout = rollout.update(labels=1.0 - rollout["labels"])
    params, opt_state, _ = stage.update(params, opt_state, rollout)
  return {**initial, "prm": {"params": params, "opt_state": opt_state}}


def test_untrained_prm_is_at_chance(control):
  _, stage, initial = control
  metrics = stage.evaluate(initial, 0)
  assert metrics["eval/num_pairs"] == 32  # one held-out pair per held-out problem
  assert metrics["eval/pair_accuracy"] == 0.5  # every score is 0: ties count one half


def test_training_on_worked_and_flawed_pairs_raises_held_out_pair_accuracy(control):
  metrics = control[1].evaluate(_train(control, invert=False), STEPS)
  assert metrics["eval/pair_accuracy"] >= 0.75, metrics
  assert metrics["eval/label_accuracy"] > 0.6, metrics


def test_inverted_labels_lower_held_out_pair_accuracy(control):
  metrics = control[1].evaluate(_train(control, invert=True), STEPS)
  assert metrics["eval/pair_accuracy"] <= 0.25, metrics


def test_held_out_pairs_are_fixed_and_from_held_out_problems(control):
  e, stage, initial = control
  rng = lambda: np.random.default_rng([e.config.seed, reward_model.EVAL_PAIRS_SEED])  # noqa: E731
  examples = e.context.task.eval[:stage.prompts]
  prompts, texts, labels, wrong = reward_model.solution_pairs(e.context.task, examples, 1, rng())
  again = reward_model.solution_pairs(e.context.task, examples, 1, rng())
  assert (prompts, texts) == again[:2] and (wrong == again[3]).all()
  assert labels.tolist() == [1.0, 0.0] * len(examples) and (wrong[0::2] == -1).all() and (wrong[1::2] >= 0).all()
  assert not set(prompts) & {x["prompt"] for x in e.context.task.train}
  assert all(texts[2 * i] == x["solution"] != texts[2 * i + 1] for i, x in enumerate(examples))


def test_control_config_and_its_checks():
  c = implicit_prm_config.get_config("control")
  assert c.reward_model.data == "solution_pairs" and c.rollout.group_size == 2
  assert implicit_prm_config.get_config("chain_sums").reward_model.data == "samples"
  assert implicit_prm_config.get_config("control,orm").reward_model.role == "orm"
  assert implicit_prm_config.get_config("control,dpo").objective.name == "implicit_prm_dpo"
  with pytest.raises(ValueError, match="conflict"):
    implicit_prm_config.get_config("control,dpo,orm")
  with pytest.raises(ValueError, match="group_size=3 must be even"):
    reward_model.RewardModel.check_config(support.with_keys(implicit_prm_config.get_config("control_tiny"),
                                                            **{"rollout.group_size": 3}))
  with pytest.raises(ValueError, match="reward_model.data='pairs'"):
    reward_model.RewardModel.check_config(support.with_keys(implicit_prm_config.get_config("control_tiny"),
                                                            **{"reward_model.data": "pairs"}))
  balanced = support.with_keys(implicit_prm_config.get_config("chain_sums_tiny"),
                               **{"objective.options.label_balance": True, "train.grad_accum_steps": 2})
  with pytest.raises(ValueError, match="label_balance .* train.grad_accum_steps=1"):
    reward_model.RewardModel.check_config(balanced)
