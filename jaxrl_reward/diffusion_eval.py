"""Held-out evaluation of a diffusion policy: reward, guard and distance from the reference.

Each evaluation samples `config.eval.samples_per_prompt` images for every condition of
`task.eval` with the same noise every time (the key depends on the seed only), so values of
different steps and runs of one seed compare the same starting points. It reports:

- `eval/reward` (and `eval/reward_std`, and each named reward `eval/<name>`): the rewards of
  `config.rewards` (`rewards.images.ImageRewards`);
- `eval/guard` and `eval/guard_accuracy`: the guard classifier's mean probability of the
  conditioned class, and how often its most likely class is the conditioned one;
- `eval/log_ratio`: the mean over trajectories of sum_t [log pi_theta - log pi_ref] of the
  sampled transitions, a Monte-Carlo estimate of KL(pi_theta || pi_ref) over whole trajectories
  (only when the state holds a reference).

`heldout_metrics` measures the pre-trained models on the held-out images: the denoising loss
(`eval/denoise_loss`, fixed noise and timesteps), and each image role's accuracy ("class"
targets) or correlation with its target ("thickness").

`save_grid` writes a grid of those samples (rows: conditions, columns: samples) as a PNG.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from jaxrl_reward import sharding
from jaxrl_reward.rewards import images as image_rewards
from models import diffusion

_EVAL_STREAM = 1 << 21  # keeps the evaluation noise apart from the training steps' keys


def rewards_of(context) -> image_rewards.ImageRewards:
  """The context's image rewards, built once."""
  if not hasattr(context, "_image_rewards"):
    context._image_rewards = image_rewards.ImageRewards(context.config.rewards, context.roles,
                                                        context.task.train_images.num_styles)
  return context._image_rewards


def eval_conditions(context) -> np.ndarray:
  """Condition ids of every evaluation sample: each of `task.eval`, `eval.samples_per_prompt` times."""
  per = int(context.config.eval.get("samples_per_prompt", 8))
  return np.repeat(np.asarray([e["prompt"] for e in context.task.eval], np.int32), per)


def sample_eval(context, params):
  """Rollouts of every evaluation condition (chunks of `eval.batch_size`, the last padded) and their count."""
  policy = context.roles.policy
  ids = eval_conditions(context)
  size = int(context.config.eval.batch_size)
  padded = np.concatenate([ids, np.full(-len(ids) % size, ids[-1], np.int32)])
  key = jax.random.fold_in(context.key, _EVAL_STREAM)
  rollouts = []
  for start in range(0, len(padded), size):
    rows = context.host_rows(size)
    conditions = policy.conditions(padded[start:start + size][rows], np.arange(size)[rows], size)
    rollouts.append(policy.sample(params, conditions, jax.random.fold_in(key, start)))
  return rollouts, len(ids)


def evaluate(context, state, step: int) -> dict[str, float]:
  """The metrics of the module docstring (every process returns the same numbers)."""
  del step  # the same noise at every evaluation
  rewards = rewards_of(context)
  policy = context.roles.policy
  values: dict[str, list] = {}
  for rollout in sample_eval(context, state["policy"]["params"])[0]:
    images = policy.images(rollout)
    total, parts = rewards.score(state, images, rollout["conditions"])
    batch = {"reward": total, **parts}
    if rewards.guard_role:
      logits = context.roles[rewards.guard_role].scorer.compute(state[rewards.guard_role]["params"], images)
      batch["guard_accuracy"] = (jnp.argmax(logits, -1) == rollout["conditions"] // rewards.num_styles)
    if "reference" in state:
      ref = context.roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout)
      batch["log_ratio"] = jnp.sum((rollout.old_logp - ref) * rollout.mask, axis=-1)
    for k, v in batch.items():
      values.setdefault(k, []).append(sharding.gather_rows(sharding.local_rows(v.astype(jnp.float32))))
  n = len(eval_conditions(context))
  out = {f"eval/{k}": float(np.mean(np.concatenate(v)[:n])) for k, v in values.items()}
  out["eval/reward_std"] = float(np.std(np.concatenate(values["reward"])[:n]))
  return out


def heldout_metrics(context, state, max_images: int = 512) -> dict[str, float]:
  """Held-out denoising loss of the policy and quality of the image roles (module docstring)."""
  task, roles = context.task, context.roles
  images = jnp.asarray(task.eval_images.images[:max_images])
  conditions = jnp.asarray(task.eval_images.conditions[:max_images])
  model = nnx.merge(roles["policy"].graphdef, state["policy"]["params"])
  key = jax.random.fold_in(context.key, _EVAL_STREAM + 1)
  out = {"eval/denoise_loss": float(jnp.mean(diffusion.ddpm_loss(model, roles.policy.schedule, images, conditions,
                                                                  key, cond_dropout=0.0)))}
  for name, spec in roles.specs.items():
    if spec.kind != "image" or name not in state:
      continue
    pred = np.asarray(roles[name].scorer.apply(state[name]["params"], images))
    target = dict(spec.options).get("target", "class")
    truth = task.targets("eval", target)[:max_images]
    if target == "class":
      out[f"eval/{name}_heldout_accuracy"] = float(np.mean(pred.argmax(-1) == truth))
    else:
      out[f"eval/{name}_heldout_corr"] = float(np.corrcoef(pred[:, 0], truth)[0, 1])
  return out


def save_grid(context, state, workdir, filename: str, max_conditions: int = 10) -> None:
  """A PNG grid of evaluation samples: a row per condition (up to `max_conditions`), a column per sample."""
  rollouts, n = sample_eval(context, state["policy"]["params"])
  images = np.concatenate([sharding.gather_rows(sharding.local_rows(context.roles.policy.images(r)))
                           for r in rollouts])[:n]
  if jax.process_index() != 0:
    return
  per = int(context.config.eval.get("samples_per_prompt", 8))
  rows = min(max_conditions, n // per)
  grid = images[:rows * per].reshape(rows, per, *images.shape[1:])
  h, w = grid.shape[2:4]
  canvas = np.ones((rows * (h + 1), per * (w + 1)), np.float32)
  for i in range(rows):
    for j in range(per):
      canvas[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = (grid[i, j, ..., 0] + 1) / 2
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  plt.imsave(pathlib.Path(workdir) / filename, canvas, cmap="gray", vmin=0.0, vmax=1.0)
