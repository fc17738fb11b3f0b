"""PRIME through the RL stage (configs/prime.py): the accuracy filter, the advantages of a real
rollout against the loop port of PRIME's algebra, and one step on 8 devices against one."""
import jax
import numpy as np
import pytest

import sharded_run  # noqa: F401  (registers the reward "test_length_mod3")
import support
from configs import prime as prime_config
from jaxrl_reward import experiment as experiment_lib
from test_prime import np_prime
from test_prime_norm import np_prime_norm


def _config(mesh=(("data", 1),), **overrides):
  """PRIME's tiny variant with a verifier whose accuracy varies within groups of an untrained model."""
  c = prime_config.get_config("tiny")
  return support.with_keys(c, **{
      "rewards.names": ("test_length_mod3", "implicit_prm"), "rewards.eval_name": "test_length_mod3",
      "warmup.steps": 1, "train.steps": 1, "train.num_iterations": 1, "optim.warmup_steps": 0, "optim.lr": 1e-3,
      # Bounds that split this fixture's groups (accuracies 0.75, 0.5, 0.5, 0.5).
      "rewards.accuracy_filter": (0.2, 0.6), "roles.prm.lr": 1e-3, "mesh": tuple(mesh), **overrides})


@pytest.fixture(scope="module")
def prime_run():
  e = support.experiment(_config())
  rl = e.stage("rl")
  state = rl.enter(e.stages[0].enter({}))
  # A PRM that differs from its reference (at the start it is the policy: token rewards 0).
  noisy = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype),
                       state["prm"]["params"])
  state = {**state, "prm": {**state["prm"], "params": noisy}}
  examples = [e.context.task.train[i] for i in range(rl.prompts)]
  rollout, _ = rl.score(state, examples, jax.random.PRNGKey(3))
  return e, rl, state, rollout


def test_accuracy_filter_drops_the_groups_outside_the_bounds(prime_run):
  _, rl, _, rollout = prime_run
  labels = np.asarray(rollout["labels"]).reshape(-1, rl.group_size)
  filtered, kept = rl._accuracy_filter(rollout)  # pylint: disable=protected-access
  keep = (labels.mean(1) >= 0.2) & (labels.mean(1) <= 0.6)
  assert 0 < keep.sum() < len(keep), "the fixture must have groups on both sides of the filter"
  assert float(kept) == pytest.approx(keep.mean())
  rows = np.repeat(keep, rl.group_size)
  np.testing.assert_array_equal(np.asarray(filtered["valid"]), np.asarray(rollout["valid"]) & rows)
  np.testing.assert_array_equal(np.asarray(filtered.mask), np.asarray(rollout.mask) * rows[:, None])


def test_prime_advantages_of_a_rollout_match_the_loop_port(prime_run):
  _, rl, _, rollout = prime_run
  filtered, _ = rl._accuracy_filter(rollout)  # pylint: disable=protected-access
  adv = np.asarray(rl._advantages(filtered).advantages)  # pylint: disable=protected-access
  rows = np.asarray(filtered["valid"])
  mask = np.asarray(rollout.mask)
  tokens, outcome = np.asarray(rollout["token_rewards"]), np.asarray(rollout["outcome_rewards"])
  assert np.abs(tokens).max() > 0  # the PRM's token rewards are part of the sum
  # configs/prime.py normalises the token scores as PRIME does (over the rows the filter keeps).
  want, _ = np_prime(np_prime_norm(tokens[rows], mask[rows]), outcome[rows], mask[rows], k=rl.group_size)
  np.testing.assert_allclose(adv[rows], want, rtol=1e-4, atol=1e-5)
  assert np.all(adv[~rows] == 0)


def test_prime_config_errors_name_the_key():
  with pytest.raises(ValueError, match=r"rewards.accuracy_filter=\(0.9, 0.1\) must be"):
    experiment_lib.check_config(_config(**{"rewards.accuracy_filter": (0.9, 0.1)}))
  with pytest.raises(ValueError, match="unknown modifier 'ppo'"):
    prime_config.get_config("tiny,ppo")
  with pytest.raises(KeyError, match="no role 'prm'"):  # the PRM's reward without the PRM
    support.experiment(_config(**{"roles": {}}))


@pytest.mark.slow
def test_one_prime_step_on_8_devices_matches_one_device():
  runs = {}
  for name, mesh in (("one", (("data", 1),)), ("data8", sharded_run.MESHES["data8"])):
    c = _config(mesh)
    e = (support.experiment(c) if name == "one" else experiment_lib.Experiment(c))
    runs[name] = sharded_run.train_steps(e)
  (h1, s1), (h8, s8) = runs["one"], runs["data8"]
  for k in ("train/reward", "loss/total", "loss/prm", "train/accuracy_filter/kept_frac"):
    np.testing.assert_allclose(h8[-1][k], h1[-1][k], rtol=2e-4, atol=1e-5, err_msg=k)
  for role in ("policy", "prm"):
    for a, b in zip(jax.tree.leaves(s1[role]["params"]), jax.tree.leaves(s8[role]["params"])):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a),
                                 rtol=2e-4, atol=2e-5, err_msg=role)


def _implicit_prm_mean(rl, params, state, rollout, beta):
  """Mean over rows of the summed token rewards beta (log pi_prm - log pi_ref), by hand."""
  roles = rl.ctx.roles
  prm = np.asarray(roles["prm"].scorer.compute_logprobs(params, rollout))
  ref = np.asarray(roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout))
  return float(np.mean(np.sum(beta * (prm - ref) * np.asarray(rollout.mask), axis=-1)))


@pytest.mark.parametrize("after_update", [False, True])
def test_the_prm_scores_before_or_after_its_update(prime_run, after_update, monkeypatch):
  """PRIME's two orders: the PRM's rewards come from its parameters before this step's update
  (default), or it updates first and scores the batch again (`roles.prm.score_after_update`)."""
  from jaxrl_reward.data import batching
  e, rl, state, _ = prime_run
  monkeypatch.setattr(rl, "rescored_roles", ["prm"] if after_update else [])
  step = rl.start
  new_state, stats = rl.step(jax.tree.map(lambda x: x.copy(), state), step)  # the step donates its input
  idx = batching.batch_indices(len(e.context.task.train), rl.prompts, seed=e.config.seed + 1, step=0)
  rollout, _ = rl.score(state, [e.context.task.train[i] for i in idx], jax.random.fold_in(e.context.key, step))
  filtered, _ = rl._accuracy_filter(rollout)  # pylint: disable=protected-access
  beta = e.config.rewards.options.implicit_prm.beta
  before = _implicit_prm_mean(rl, state["prm"]["params"], state, filtered, beta)
  after = _implicit_prm_mean(rl, new_state["prm"]["params"], state, filtered, beta)
  assert abs(after - before) > 1e-4  # the update moved the PRM's rewards on this batch
  want = after if after_update else before
  assert stats["train/rewards/implicit_prm"] == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_score_after_update_is_checked():
  experiment_lib.check_config(_config(**{"roles.prm.score_after_update": True}))
  assert prime_config.get_config("tiny,update_first").roles.prm.score_after_update
  with pytest.raises(ValueError, match="score_after_update=True needs a trainable role"):
    experiment_lib.check_config(_config(**{"roles.prm.score_after_update": True, "roles.prm.trainable": False}))
  with pytest.raises(ValueError, match="no in-jit reward of config.rewards.names=.* reads role 'prm'"):
    support.experiment(_config(**{"roles.prm.score_after_update": True, "rewards.names": ("test_length_mod3",),
                                  "rewards.weights": (1.0,), "advantage.estimator": "rloo",
                                  "advantage.options": {}, "rewards.options": {}}))
