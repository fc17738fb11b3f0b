"""The RL stage of a diffusion run (`config.model.kind="diffusion"`): trajectories -> image
rewards -> advantages -> objective -> optax.

Each step (`config.rollout`, `config.train`):
1. samples `group_size` trajectories for each of `prompts_per_step` conditions from the policy
   snapshot (`policies.diffusion.DiffusionPolicy`: per-step log-probs `[B, S]` of the DDIM
   transitions, mask all ones, group ids);
2. old log-probs (`train.old_logp`): "recompute" (default; teacher-forced under the snapshot
   parameters with the same program as the loss, so PRDP's tiny clip range measures the update
   and not the sampler's rounding) or "sampler"; the gap is logged as `stats/sampler_logp_gap`;
3. the reference role's per-step log-probs (a frozen copy of the policy at the start of the
   stage; RDP and PRDP read them, every objective logs `train/log_ratio`);
4. rewards of the final images (`rewards.images.ImageRewards`) and the guard metric beside them;
   advantages from `config.advantage.estimator`: a registered estimator
   (`objectives.estimators`, e.g. "group"), or "per_prompt_running", DDPO's per-prompt running
   reward statistics (`objectives.ddpo.stat_tracker_update`, state kept in the checkpoint);
5. `num_iterations` passes over the batch (K gradient steps per snapshot with one
   mini-batch), each split into `num_minibatches` optimizer steps of whole groups, each
   accumulated over `grad_accum_steps` micro-batches of whole groups.

The objective is any registered RL objective on log-probs, by name: "prdp", "rdp" or "ddpo"
(and the language-model ones, which see the same `[B, T]` arrays). Everything random derives
from `config.seed` and the step, so a resumed run gives the same numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import diffusion_eval
from jaxrl_reward import learner
from jaxrl_reward import optim
from jaxrl_reward import stages
from jaxrl_reward.data import batching
from jaxrl_reward.rollout import Rollout
from jaxrl_reward.stages.rl import check_groups, check_objective
from objectives import ddpo
from objectives import estimators
from objectives import registry

RUNNING = "per_prompt_running"  # DDPO's per-prompt reward statistics (stateful, kept by this stage)
RUNNING_OPTIONS = {"buffer_size": 32, "min_count": 16}
OLD_LOGP = ("recompute", "sampler")


def _settings(config):
  c, t = config, config.train
  objective = check_objective(c.objective.name, stage="rl", inputs="logprobs", where="config.objective.name")
  options = registry.resolve_options(c.objective.name, c.objective.options)
  estimator = c.advantage.estimator
  given = dict(c.advantage.get("options") or {})
  if estimator == RUNNING:
    unknown = sorted(set(given) - set(RUNNING_OPTIONS))
    if unknown:
      raise ValueError(f"advantage.options {unknown} are not options of {RUNNING!r}; it takes {sorted(RUNNING_OPTIONS)}")
    estimator_options = {**RUNNING_OPTIONS, **given}
  else:
    if estimator not in estimators.names():
      raise KeyError(f"advantage.estimator={estimator!r} is not {RUNNING!r} or a registered estimator: "
                     f"{estimators.names()}")
    estimator_options = estimators.resolve_options(estimator, given)
  old_logp = t.get("old_logp", "recompute")
  if old_logp == "auto":
    old_logp = "recompute"
  if old_logp not in OLD_LOGP:
    raise ValueError(f"train.old_logp={old_logp!r} is not one of {OLD_LOGP} for a diffusion run")
  check_groups(config)
  return objective, options, estimator, estimator_options, old_logp


def _check_config(config) -> None:
  _settings(config)
  # The image roles (reward model, guard) start random and only the pre-training stage trains
  # them: fine-tuning against random ones runs to the end and means nothing.
  image_roles = [n for n, r in (config.get("roles") or {}).items() if r.get("kind") == "image"]
  order = tuple(config.stages)
  before = "pretrain" in order[:order.index("rl")]
  if image_roles and not (before and int(config.pretrain.steps) > 0) and not config.get("init_from", "") \
      and not config.get("allow_untrained_reward", False):
    why = (f"config.pretrain.steps={int(config.pretrain.steps)}" if before
           else f"config.stages={order!r} has no 'pretrain' stage before 'rl'")
    raise ValueError(f"{why} and config.init_from is empty: the image models {', '.join(image_roles)} "
                     "(the reward model and guard of config.roles) would be untrained; pretrain them, set "
                     "config.init_from to a pre-trained run, or set config.allow_untrained_reward=True")


class DiffusionRL(stages.Stage):
  name = "rl"
  evaluates_initial_policy = True  # a run that starts here (config.init_from) measures its start
  check_config = staticmethod(_check_config)

  def __init__(self, context: stages.Context, start: int):
    super().__init__(context, start)
    c = context.config
    r, t = c.rollout, c.train
    self.objective, self.options, self.estimator, self.estimator_options, self.old_logp = _settings(c)
    self.label = c.objective.name.upper()
    self.steps, self.eval_every = int(t.steps), int(c.eval.every)
    self.group_size, self.prompts = int(r.group_size), int(r.prompts_per_step)
    self.num_iterations, self.num_minibatches = int(t.num_iterations), int(t.num_minibatches)
    self.accum = int(t.grad_accum_steps)
    self.rewards = diffusion_eval.rewards_of(context)
    self.frozen = [n for n, s in context.roles.specs.items() if s.kind == "image"]
    updates = self.num_iterations * self.num_minibatches
    o = c.optim
    self.optimizer = optim.from_config(o, o.lr, total_steps=self.steps * updates, schedule=o.schedule,
                                       warmup_steps=o.warmup_steps * updates)
    role = context.roles["policy"]
    self.placement = role.placement.with_optimizer(self.optimizer, role.abstract_params)
    self.loss = learner.objective_loss(role.scorer, self.objective.fn, self.options)
    self.update = learner.make_update(self.loss, self.optimizer, self.placement, num_microbatches=self.accum,
                                      group_size=self.group_size, loss_key="loss/total")
    rows, replicated = self.placement.rows, self.placement.replicated
    self._take_rows = self.placement.jit(lambda batch, idx: jax.tree.map(lambda x: x[idx], batch),
                                         in_shardings=(rows, replicated), out_shardings=rows)
    self._advantages = self.placement.jit(self._advantages_fn, in_shardings=(rows,), out_shardings=rows)
    self._running = self.placement.jit(self._running_fn, in_shardings=(replicated, rows),
                                       out_shardings=(replicated, rows))
    self._stats = self.placement.jit(self._stats_fn, in_shardings=(rows, rows), out_shardings=replicated)

  # -- start-up checks --------------------------------------------------------------------

  def check(self) -> None:
    rows = self.prompts * self.group_size
    stages.check_divides("rollout batch (prompts_per_step x group_size / train.num_minibatches)",
                         rows // self.num_minibatches, self.ctx.placement.batch_shards)
    b = rows // (self.num_minibatches * self.accum)
    rollout = jax.eval_shape(lambda: self._abstract_rollout(b))
    jax.eval_shape(self.loss, self.ctx.roles["policy"].abstract_params, rollout)

  def _abstract_rollout(self, rows: int):
    """A rollout of `rows` zero rows with the fields the loss reads (for the start-up trace)."""
    policy, task = self.ctx.roles.policy, self.ctx.task
    s = policy.num_steps
    f32 = jnp.zeros((rows, s), jnp.float32)
    return Rollout(actions=jnp.zeros((rows, s + 1) + task.image_shape, jnp.float32), mask=f32 + 1, old_logp=f32,
                   group_ids=jnp.arange(rows, dtype=jnp.int32) // self.group_size, rewards=jnp.zeros((rows,)),
                   advantages=jnp.zeros((rows,)), ref_logp=f32,
                   extras={"conditions": jnp.zeros((rows,), jnp.int32), "valid": jnp.ones((rows,), bool)})

  # -- state -----------------------------------------------------------------------------

  def enter(self, state):
    roles = self.ctx.roles
    params = state["policy"]["params"] if "policy" in state else roles.create("policy", state)
    new = {"policy": {"params": params, "opt_state": self.placement.jit(
        self.optimizer.init, in_shardings=(self.placement.params,), out_shardings=self.placement.opt_state)(params)}}
    new["reference"] = {"params": state["reference"]["params"] if "reference" in state
                        else roles.create("reference", new)}
    for name in self.frozen:  # trained by the pre-training stage; a fresh (random) one otherwise
      new[name] = {"params": state[name]["params"] if name in state else roles.create(name, state)}
    if self.estimator == RUNNING:
      new["reward_stats"] = state.get("reward_stats", self._tracker_init())
    return new

  def _tracker_init(self):
    return ddpo.stat_tracker_init(self.ctx.task.num_conditions, int(self.estimator_options["buffer_size"]))

  def state_shardings(self):
    roles = self.ctx.roles
    out = {"policy": {"params": self.placement.params, "opt_state": self.placement.opt_state},
           "reference": {"params": roles["reference"].placement.params},
           **{n: {"params": roles[n].placement.params} for n in self.frozen}}
    if self.estimator == RUNNING:
      out["reward_stats"] = jax.tree.map(lambda _: self.placement.replicated, self._tracker_init())
    return out

  # -- one step --------------------------------------------------------------------------

  def _advantages_fn(self, rollout):
    adv = estimators.compute(self.estimator, rollout, group_size=self.group_size, options=self.estimator_options)
    return rollout.update(advantages=adv)

  def _running_fn(self, tracker, rollout):
    tracker, adv = ddpo.stat_tracker_update(tracker, rollout["conditions"], rollout.rewards,
                                            min_count=int(self.estimator_options["min_count"]))
    return tracker, rollout.update(advantages=adv)

  def _stats_fn(self, rollout, parts):
    groups = rollout.rewards.reshape(-1, self.group_size)
    stats = {"train/reward": jnp.mean(rollout.rewards), "train/reward_std": jnp.std(rollout.rewards),
             "train/reward_group_std": jnp.mean(jnp.std(groups, axis=1)),
             "train/log_ratio": jnp.mean(jnp.sum((rollout.old_logp - rollout.ref_logp) * rollout.mask, axis=-1)),
             "stats/advantage_abs_mean": jnp.mean(jnp.abs(rollout.advantages))}
    stats.update({f"train/{k}": jnp.mean(v) for k, v in parts.items()})
    return stats

  def collect(self, state, step: int):
    """One step's scored rollout (with advantages), its stats and the state's new reward statistics."""
    ctx, c = self.ctx, self.ctx.config
    policy = ctx.roles.policy
    idx = batching.batch_indices(len(ctx.task.train), self.prompts, seed=c.seed + 1, step=step - self.start)
    size = self.prompts * self.group_size
    rows = ctx.host_rows(size)
    ids = np.repeat([ctx.task.train[i]["prompt"] for i in idx], self.group_size)
    group_ids = np.arange(size) // self.group_size
    conditions = policy.conditions(ids[rows], group_ids[rows], size)
    params = state["policy"]["params"]
    rollout = policy.sample(params, conditions, jax.random.fold_in(ctx.key, step))
    recomputed = policy.compute_logprobs(params, rollout)
    gap = jnp.mean(jnp.abs(recomputed - rollout.old_logp))
    if self.old_logp == "recompute":
      rollout = rollout.update(old_logp=recomputed, sampler_logp=rollout.old_logp)
    rollout = rollout.update(ref_logp=ctx.roles["reference"].scorer.compute_logprobs(
        state["reference"]["params"], rollout))
    total, parts = self.rewards.score(state, policy.images(rollout), rollout["conditions"])
    rollout = rollout.update(rewards=total.astype(jnp.float32), valid=jnp.ones_like(total, dtype=bool))
    tracker = state.get("reward_stats")
    if self.estimator == RUNNING:
      tracker, rollout = self._running(tracker, rollout)
    else:
      rollout = self._advantages(rollout)
    return rollout, {**self._stats(rollout, parts), "stats/sampler_logp_gap": gap}, tracker

  def step(self, state, step: int):
    c = self.ctx.config
    rollout, stats, tracker = self.collect(state, step)
    state = dict(state)
    if tracker is not None:
      state["reward_stats"] = tracker
    rng = np.random.default_rng([c.seed, step])
    sums: dict[str, jax.Array] = {}
    count = 0
    for _ in range(self.num_iterations):
      for rows in learner.minibatch_rows(self.prompts, self.group_size, self.num_minibatches, rng):
        params, opt_state, metrics = self.update(state["policy"]["params"], state["policy"]["opt_state"],
                                                 self._take_rows(rollout, rows))
        state["policy"] = {"params": params, "opt_state": opt_state}
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
        count += 1
    return state, {**{k: v / count for k, v in jax.device_get(sums).items()}, **stats}

  def evaluate(self, state, step: int) -> dict[str, float]:
    return diffusion_eval.evaluate(self.ctx, state, step)

  def save_artifacts(self, state, workdir, step: int) -> None:
    diffusion_eval.save_grid(self.ctx, state, workdir, f"samples_after_{self.name}.png")
