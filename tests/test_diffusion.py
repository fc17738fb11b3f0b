"""The diffusion side: DDIM log-probs against numpy, pre-training, PRDP on diffusion rollouts, resume
and meshes (models/diffusion.py, policies/diffusion.py, stages/pretrain.py, stages/diffusion_rl.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import support
from configs import prdp_digits
from jaxrl_reward import diffusion_eval
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import learner
from jaxrl_reward import sharding
from models import diffusion
from objectives import registry


def np_ddim_logprob(x_t, x_prev, eps, abar_t, abar_prev, eta):
  """The Gaussian density of a DDIM step, written out in float64 numpy (formulas.md 1a)."""
  x_t, x_prev, eps = (np.asarray(a, np.float64) for a in (x_t, x_prev, eps))
  sigma = max(eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)), 1e-6)
  x0 = (x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
  mu = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - sigma ** 2) * eps
  dens = -((x_prev - mu) ** 2) / (2 * sigma ** 2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
  return dens.reshape(len(x_t), -1).mean(-1)


# ----------------------------------------------------------------------------- log-probs


def test_ddim_logprob_is_the_gaussian_density_of_the_step():
  rng = np.random.default_rng(0)
  x_t, x_prev, eps = (rng.normal(size=(3, 4, 4, 1)).astype(np.float32) for _ in range(3))
  for abar_t, abar_prev in ((0.3, 0.5), (0.9, 0.999), (0.01, 0.05)):
    for eta in (1.0, 0.5):
      got = diffusion.ddim_logprob(x_t, x_prev, eps, abar_t, abar_prev, eta=eta)
      np.testing.assert_allclose(got, np_ddim_logprob(x_t, x_prev, eps, abar_t, abar_prev, eta), rtol=1e-4, atol=1e-4)


def test_ddim_logprob_without_density_or_with_mismatched_shapes_is_an_error():
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="eta must be > 0"):
    diffusion.ddim_logprob(x, x, x, 0.5, 0.6, eta=0.0)
  with pytest.raises(ValueError, match="one shape"):
    diffusion.ddim_logprob(x, x[:1], x, 0.5, 0.6, eta=1.0)
  with pytest.raises(ValueError, match="num_steps"):
    diffusion.linear_schedule(1000).ddim_timesteps(0)


@pytest.fixture(scope="module")
def tiny_denoiser():
  cfg = diffusion.get_config("dit_tiny", image_size=4, num_conditions=3)
  return diffusion.Denoiser(cfg, rngs=nnx.Rngs(3)), diffusion.linear_schedule(1000)


def test_sampler_log_probs_are_the_density_of_its_stored_transitions(tiny_denoiser):
  model, schedule = tiny_denoiser
  conditions = jnp.asarray([0, 1, 2, 3])  # 3: the null condition
  traj = diffusion.ddim_sample(model, schedule, conditions, jax.random.PRNGKey(0), num_steps=5, eta=1.0, guidance=2.0)
  assert traj.latents.shape == (4, 6, 4, 4, 1) and traj.logprobs.shape == (4, 5)
  t, abar_t, abar_prev = (np.asarray(a) for a in schedule.ddim_timesteps(5))
  assert abar_prev[-1] == pytest.approx(float(schedule.alpha_bar[0]))  # the last step keeps a variance
  for s in range(5):
    x = traj.latents[:, s]
    tt = jnp.full((4,), t[s])
    cond, uncond = model(x, tt, conditions), model(x, tt, jnp.full((4,), 3))
    eps = uncond + 2.0 * (cond - uncond)
    want = np_ddim_logprob(x, traj.latents[:, s + 1], eps, abar_t[s], abar_prev[s], 1.0)
    np.testing.assert_allclose(traj.logprobs[:, s], want, rtol=1e-3, atol=2e-3)
  # Recomputed under the same parameters, over chunks of steps, they agree.
  for chunk in (0, 2):
    again = diffusion.trajectory_logprobs(model, schedule, traj.latents, conditions, eta=1.0, guidance=2.0,
                                          step_chunk=chunk)
    np.testing.assert_allclose(again, traj.logprobs, rtol=1e-3, atol=2e-3)


# ----------------------------------------------------------------------------- runs


def tiny_config(**overrides):
  c = prdp_digits.get_config("tiny")
  return support.with_keys(c, **overrides)


PRETRAINED = {"pretrain.steps": 800, "pretrain.batch_size": 128, "model.name": "dit_small", "diffusion.num_steps": 8,
              "task.num_prompts": 10, "eval.samples_per_prompt": 8, "eval.batch_size": 40}


@pytest.fixture(scope="module")
def pretrained():
  """The `dit_small` denoiser pre-trained for 800 steps: (experiment, initial state, pre-trained state)."""
  e = experiment_lib.Experiment(tiny_config(**PRETRAINED), mesh=support.one_device())
  pre = e.stages[0]
  state = initial = pre.enter({})
  initial = jax.tree.map(jnp.copy, initial)
  for step in range(pre.steps):
    state, _ = pre.step(state, step)
  return e, initial, state


def test_pretraining_lowers_the_heldout_loss_and_samples_show_their_class(pretrained):
  e, initial, state = pretrained
  before = diffusion_eval.heldout_metrics(e.context, initial)
  after = diffusion_eval.heldout_metrics(e.context, state)
  assert after["eval/denoise_loss"] < 0.6 * before["eval/denoise_loss"]
  assert after["eval/guard_heldout_accuracy"] > 0.8  # the guard itself reads real digits
  assert after["eval/reward_model_heldout_corr"] > 0.6
  # The guard assigns samples of the pre-trained model to their conditioning class well above chance.
  samples = diffusion_eval.evaluate(e.context, state, 0)
  assert samples["eval/guard_accuracy"] > 0.1 + 0.1, samples  # 80 samples: 3 standard deviations of chance
  chance = diffusion_eval.evaluate(e.context, {**state, "policy": initial["policy"]}, 0)
  assert samples["eval/guard_accuracy"] > chance["eval/guard_accuracy"] + 0.1


@pytest.fixture(scope="module")
def rl_batch(pretrained):
  """The RL stage entered from the pre-trained state, and one collected rollout."""
  e, _, state = pretrained
  rl = e.stages[1]
  state = rl.enter(fresh(state))
  rollout, stats, _ = rl.collect(state, rl.start)
  return rl, state, rollout, stats


def fresh(state):
  return jax.tree.map(jnp.copy, state)


def _loss(rl, name, **options):
  spec = registry.spec(name)
  return learner.objective_loss(rl.ctx.roles.policy, spec.fn, registry.resolve(name, name, spec.options, options))


def _moved(params, grads, lr):
  return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def _value_and_grad(loss):
  """Jitted (loss, number of pairs) and gradient of a registered loss at (params, batch)."""
  def fn(params, batch):
    (total, (den, _)), grads = jax.value_and_grad(lambda p: learner._as_pair(loss(p, batch)), has_aux=True)(params)
    return total, den, grads
  return jax.jit(fn)


def test_prdp_with_a_large_clip_is_rdp_on_diffusion_rollouts(rl_batch):
  rl, state, rollout, _ = rl_batch
  params = state["policy"]["params"]
  rdp = _value_and_grad(_loss(rl, "rdp", beta=0.1))
  prdp = _value_and_grad(_loss(rl, "prdp", beta=0.1, clip_eps=1e3))
  total, _, grads = rdp(params, rollout)
  moved = _moved(params, grads, 1e-2)  # away from the snapshot, so that logp != old_logp
  for p in (params, moved):
    a, da, ga = rdp(p, rollout)
    b, db, gb = prdp(p, rollout)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert float(da) == float(db) == 6 * 2  # C(4, 2) pairs in each of 2 groups
    jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6), ga, gb)
  assert float(total) > 0


def test_prdp_past_its_clip_range_leaves_a_zero_gradient(rl_batch):
  rl, state, rollout, _ = rl_batch
  pair = jax.tree.map(lambda x: x[:2], rollout)  # two trajectories of one condition: a single pair
  params = state["policy"]["params"]
  policy = rl.ctx.roles.policy
  eps = 1e-7
  prdp = _value_and_grad(_loss(rl, "prdp", beta=0.1, clip_eps=eps))
  rdp = _value_and_grad(_loss(rl, "rdp", beta=0.1))
  loss_at_snapshot, _, grads = prdp(params, pair)
  moved = _moved(params, grads, 1e-4)  # a small step down the loss: every step's log-ratio moves past eps
  assert float(rdp(moved, pair)[0]) < float(rdp(params, pair)[0])
  change = np.abs(np.asarray(policy.compute_logprobs(moved, pair) - policy.compute_logprobs(params, pair)))
  assert change.min() > 10 * eps
  loss_moved, _, zero = prdp(moved, pair)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(zero))
  np.testing.assert_allclose(loss_moved, loss_at_snapshot, rtol=1e-4)  # the clipped, snapshot loss
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(rdp(moved, pair)[2]))


def test_one_prdp_iteration_raises_the_reward_on_fixed_conditions(pretrained):
  e, _, state = pretrained
  rl = e.stages[1]
  state = rl.enter(fresh(state))  # an update donates (deletes) the parameters it is given
  before = diffusion_eval.evaluate(e.context, state, 0)["eval/reward"]
  state, metrics = rl.step(state, rl.start)  # one snapshot, K = 2 gradient steps
  after = diffusion_eval.evaluate(e.context, state, 0)["eval/reward"]
  assert np.isfinite(metrics["loss/total"])
  assert after > before + 0.05, (before, after)


def test_objectives_by_name_train_a_diffusion_policy(pretrained):
  e, _, state = pretrained
  for name, estimator in (("rdp", "group"), ("ddpo", "per_prompt_running")):
    c = tiny_config(**PRETRAINED, **{"objective.name": name, "advantage.estimator": estimator})
    c.objective.options = {"beta": 0.1} if name == "rdp" else {}
    other = experiment_lib.Experiment(c, mesh=support.one_device())
    rl = other.stages[1]
    s = rl.enter(fresh(state))
    s, metrics = rl.step(s, rl.start)
    assert np.isfinite(metrics["loss/total"]) and metrics["optim/grad_norm"] > 0
    if estimator == "per_prompt_running":
      assert int(jnp.sum(s["reward_stats"]["count"])) == 8  # every trajectory's reward went into the buffers


def test_diffusion_config_errors_name_the_key():
  with pytest.raises(ValueError, match="rewards.reward_role"):
    experiment_lib.Experiment(tiny_config(**{"rewards.reward_role": "nope"}), mesh=support.one_device())
  with pytest.raises(ValueError, match="config.roles.guard.kind"):
    experiment_lib.Experiment(tiny_config(**{"roles.guard": dict(kind="lm")}), mesh=support.one_device())
  with pytest.raises(KeyError, match="advantage.estimator"):
    experiment_lib.check_config(tiny_config(**{"advantage.estimator": "nope"}))
  with pytest.raises(ValueError, match="old_logp"):
    experiment_lib.check_config(tiny_config(**{"train.old_logp": "nope"}))
  with pytest.raises(ValueError, match="task.num_prompts"):
    experiment_lib.Experiment(tiny_config(**{"task.num_prompts": 11}), mesh=support.one_device())


@pytest.mark.slow
def test_a_diffusion_run_resumes_to_the_same_numbers(tmp_path):
  e = experiment_lib.Experiment(tiny_config(**{"checkpoint_every": 100}), mesh=support.one_device())
  full, resumed, rows = support.run_full_and_resumed(e, tmp_path, stop_at=7)  # inside the RL stage
  assert any("loss/total" in r for r in rows) and (tmp_path / "full" / "samples_after_rl.png").exists()
  jax.tree.map(np.testing.assert_array_equal, full["policy"]["params"], resumed["policy"]["params"])


@pytest.mark.slow
def test_a_diffusion_run_on_8_devices_matches_one_device():
  def run(mesh):
    e = experiment_lib.Experiment(tiny_config(**{"pretrain.steps": 2, "train.steps": 2}), mesh=mesh)
    state, history = e.initial_state(), []
    for step in range(e.total_steps):
      stage = e.stages[e.stage_index(step)]
      state, metrics = stage.step(state, step)
      history.append(jax.device_get(metrics))
      if step + 1 == stage.end and stage is not e.stages[-1]:
        state = e.stages[e.stage_index(step + 1)].enter(state)
    return history, jax.device_get(state["policy"]["params"])

  one, params_one = run(support.one_device())
  eight, params_eight = run(sharding.make_mesh((("data", 4), ("fsdp", 2), ("tensor", 1))))
  for a, b in zip(one, eight):
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=2e-4, err_msg=k)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-4), params_one, params_eight)


def test_jpeg_rewards_follow_ddpo_definition():
  from jaxrl_reward.rewards import images as image_rewards
  flat = -np.ones((1, 28, 28, 1), np.float32)
  noise = np.random.default_rng(0).uniform(-1, 1, (1, 28, 28, 1)).astype(np.float32)
  sizes = image_rewards.jpeg_kilobytes(np.concatenate([flat, noise]))
  assert sizes[1] > 2 * sizes[0] > 0  # noise does not compress
  # uint8 rounding as DDPO: -1 -> 0, 1 -> 255, 0 -> 128 (127.5 rounds to even)
  np.testing.assert_array_equal(image_rewards.to_uint8(np.asarray([-1.0, 1.0, 0.0, 2.0])), [0, 255, 128, 255])


def test_config_variants_bring_their_objective_and_options():
  c = prdp_digits.get_config("large,ddpo")
  assert c.objective.name == "ddpo" and c.advantage.estimator == "per_prompt_running"
  assert dict(c.objective.options) == {"clip_eps": 1e-4, "adv_clip_max": 5.0}
  assert c.rollout.prompts_per_step == 10 and c.train.num_iterations == 1
  assert dict(prdp_digits.get_config("rdp").objective.options) == {"beta": prdp_digits.BETA}
  styles = prdp_digits.get_config("styles")
  assert (styles.task.thickness_bins, styles.task.slant_bins, styles.task.num_prompts) == (4, 3, 0)
  assert styles.rollout.prompts_per_step == 64 and styles.train.num_iterations == 1
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    prdp_digits.get_config("large,nope")


@pytest.mark.slow
def test_a_run_starts_from_the_trained_roles_of_init_from(tmp_path):
  pre = tiny_config(**{"stages": ("pretrain",)})
  experiment_lib.Experiment(pre, mesh=support.one_device()).run(tmp_path / "pre")
  source = experiment_lib.Experiment(pre, mesh=support.one_device())
  trained, _ = source.restore(tmp_path / "pre")
  rl = experiment_lib.Experiment(tiny_config(**{"stages": ("rl",), "init_from": str(tmp_path / "pre")}),
                                 mesh=support.one_device())
  state = rl.initial_state()
  for role in ("policy", "reference", "reward_model", "guard"):  # the reference is the pre-trained policy
    jax.tree.map(np.testing.assert_array_equal, state[role]["params"],
                 trained["policy" if role == "reference" else role]["params"])
  with pytest.raises(experiment_lib.ConfigMismatch, match="model.name: 'dit_tiny' there, 'dit_small' here"):
    experiment_lib.Experiment(tiny_config(**{"stages": ("rl",), "init_from": str(tmp_path / "pre"),
                                             "model.name": "dit_small"}), mesh=support.one_device())
  with pytest.raises(FileNotFoundError, match="holds no run"):
    experiment_lib.Experiment(tiny_config(**{"stages": ("rl",), "init_from": str(tmp_path / "none")}),
                              mesh=support.one_device())


def test_jpeg_rewards_score_a_policy_batch(rl_batch):
  from jaxrl_reward.rewards import images as image_rewards
  rl, state, rollout, _ = rl_batch
  config = tiny_config(**{"rewards.names": ("jpeg_incompressibility", "jpeg_compressibility"),
                          "rewards.weights": (1.0, 0.5)})
  rewards = image_rewards.ImageRewards(config.rewards, rl.ctx.roles, num_styles=1)
  images = rl.ctx.roles.policy.images(rollout)
  total, parts = rewards.score(state, images, rollout["conditions"])
  sizes = image_rewards.jpeg_kilobytes(np.asarray(images))
  np.testing.assert_allclose(parts["jpeg_incompressibility"], sizes, rtol=1e-6)
  np.testing.assert_allclose(parts["jpeg_compressibility"], -sizes, rtol=1e-6)
  np.testing.assert_allclose(total, 0.5 * sizes, rtol=1e-5)
  assert parts["guard"].shape == (rollout.num_rows,) and np.all((0 <= parts["guard"]) & (parts["guard"] <= 1))


@pytest.mark.slow
def test_the_mnist_variant_builds_120_conditions_and_trains_a_step_of_each_stage():
  c = prdp_digits.get_config("mnist")
  support.with_keys(c, **{"pretrain.batch_size": 8, "rollout.prompts_per_step": 2, "rollout.group_size": 2,
                          "diffusion.num_steps": 2, "model.name": "dit_tiny", "eval.batch_size": 8})
  e = experiment_lib.Experiment(c, mesh=support.one_device())
  assert e.context.task.num_conditions == 120 and len(e.context.task.eval) == 120
  assert e.context.task.image_shape == (28, 28, 1)
  pre, rl = e.stages
  state, metrics = pre.step(pre.enter({}), 0)
  assert np.isfinite(metrics["loss/pretrain_policy"]) and np.isfinite(metrics["loss/pretrain_guard"])
  state, metrics = rl.step(rl.enter(state), rl.start)
  assert np.isfinite(metrics["loss/total"]) and metrics["train/reward_std"] >= 0
