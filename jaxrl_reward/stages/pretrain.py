"""Pre-training of a diffusion run: the denoiser (DDPM loss) and the image roles, on the task's images.

Reads `config.pretrain` (`steps`, `batch_size`, `lr`, `cond_dropout`; cosine decay after the
shared linear warm-up of `config.optim.warmup_steps`). Each step draws one batch of training
images (`batching.batch_indices`, a pure function of the seed and the step, so a resumed run
sees the same data) and takes one optimizer step of the policy on the epsilon-prediction loss
(`models.diffusion.ddpm_loss`, conditions dropped to the null id with probability
`cond_dropout` for classifier-free guidance) and one of every image role of `config.roles` on
its target (`options.target`: "class" with cross-entropy, "thickness" with squared error). The
image roles are frozen afterwards: they are the reward model and the guard of the RL stage.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrl_reward import diffusion_eval
from jaxrl_reward import learner
from jaxrl_reward import optim
from jaxrl_reward import stages
from jaxrl_reward.data import batching
from models import diffusion


class Pretrain(stages.Stage):
  name = "pretrain"
  label = "pre-training"

  def __init__(self, context: stages.Context, start: int):
    super().__init__(context, start)
    c = context.config
    p = c.pretrain
    self.steps, self.batch_size = int(p.steps), int(p.batch_size)
    self.cond_dropout = float(p.get("cond_dropout", 0.1))
    if not 0 <= self.cond_dropout < 1:
      raise ValueError(f"pretrain.cond_dropout must be in [0, 1), got {self.cond_dropout}")
    stages.check_divides("pretrain.batch_size", self.batch_size, context.placement.batch_shards)
    roles = context.roles
    self.trained = ["policy"] + [n for n, s in roles.specs.items() if s.kind == "image"]
    self.targets = {n: dict(roles.specs[n].options).get("target", "class") for n in self.trained[1:]}
    self.optimizers, self.placements, self.updates = {}, {}, {}
    for name in self.trained:
      role = roles[name]
      opt = optim.from_config(c.optim, p.lr, total_steps=self.steps, schedule="cosine",
                              warmup_steps=min(c.optim.warmup_steps, self.steps))
      self.optimizers[name] = opt
      self.placements[name] = role.placement.with_optimizer(opt, role.abstract_params)
      loss = self._denoising_loss if name == "policy" else self._image_loss(name)
      self.updates[name] = learner.make_update(loss, opt, self.placements[name], loss_key=f"loss/pretrain_{name}")

  def _denoising_loss(self, params, batch):
    model = nnx.merge(self.ctx.roles["policy"].graphdef, params)
    per_image = diffusion.ddpm_loss(model, self.ctx.roles.policy.schedule, batch["images"], batch["conditions"],
                                    batch["key"][0], cond_dropout=self.cond_dropout)
    return jnp.sum(per_image), jnp.asarray(per_image.shape[0], jnp.float32), {}

  def _image_loss(self, name: str):
    graphdef, target = self.ctx.roles[name].graphdef, self.targets[name]

    def loss(params, batch):
      out = nnx.merge(graphdef, params)(batch["images"])
      if target == "class":
        per_image = optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"])
        metrics = {f"stats/pretrain_{name}_accuracy": jnp.mean(jnp.argmax(out, -1) == batch["labels"])}
      else:
        per_image, metrics = jnp.square(out[:, 0] - batch[target]), {}
      return jnp.sum(per_image), jnp.asarray(per_image.shape[0], jnp.float32), metrics
    return loss

  def enter(self, state):
    roles, new = self.ctx.roles, {}
    for name in self.trained:
      params = state[name]["params"] if name in state else roles.create(name, state)
      placement = self.placements[name]
      new[name] = {"params": params, "opt_state": placement.jit(
          self.optimizers[name].init, in_shardings=(placement.params,), out_shardings=placement.opt_state)(params)}
    return new

  def state_shardings(self):
    return {n: {"params": p.params, "opt_state": p.opt_state} for n, p in self.placements.items()}

  def step(self, state, step: int):
    ctx, size = self.ctx, self.batch_size
    images = ctx.task.train_images
    idx = batching.batch_indices(len(images), size, seed=ctx.config.seed, step=step - self.start)
    rows = ctx.host_rows(size)
    local = {"images": images.images[idx][rows], "conditions": images.conditions[idx][rows],
             "labels": images.labels[idx][rows]}
    local.update({t: ctx.task.targets("train", t)[idx][rows] for t in set(self.targets.values()) if t != "class"})
    batch = ctx.to_global(local, size)
    # One key per row (the same on every process): the noise of the denoising loss.
    batch["key"] = ctx.to_global({"k": jax.random.split(jax.random.fold_in(ctx.key, step), size)[rows]}, size)["k"]
    state, metrics = dict(state), {}
    for name in self.trained:
      params, opt_state, m = self.updates[name](state[name]["params"], state[name]["opt_state"], batch)
      state[name] = {"params": params, "opt_state": opt_state}
      metrics.update(m)
    return state, metrics

  def evaluate(self, state, step: int) -> dict[str, float]:
    return {**diffusion_eval.evaluate(self.ctx, state, step), **diffusion_eval.heldout_metrics(self.ctx, state)}

  def save_artifacts(self, state, workdir, step: int) -> None:
    diffusion_eval.save_grid(self.ctx, state, workdir, f"samples_after_{self.name}.png")
