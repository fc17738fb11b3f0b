"""The RL stage: rollouts -> rewards -> advantages -> objective -> optax, every step.

Each step (`config.rollout`, `config.train`):
1. samples `group_size` completions for each of `prompts_per_step` prompts from the policy
   (`Rollout`: actions, sampler log-probs, mask, group ids);
2. old log-probs (`train.old_logp`): the sampler's ("sampler"), or a teacher-forced pass
   under the rollout parameters ("recompute"; "auto" picks it for bfloat16, where sampler
   and learner log-probs differ), with an optional truncated importance weight
   min(pi_learner / pi_sampler, `train.tis_cap`) and `stats/sampler_logp_gap` (mean |gap|)
   logged either way;
3. the reference role's log-probs when the objective, a reward or a role's objective reads
   them; the value role's values when the estimator needs them;
4. rewards (`rewards.scoring.RewardSet`: host-side text functions and in-jit rewards, `[B]`
   or `[B, T]`) and advantages from the estimator named `config.advantage.estimator`
   (`objectives.estimators`, options `config.advantage.options`); before them RLPR's std filter
   (`rewards.std_filter_beta`) and PRIME's accuracy filter (`rewards.accuracy_filter`) can take
   groups out of every update (their rows become invalid and fully masked);
5. one update of each further trainable role (`config.roles`: a process reward model with its
   reward-model objective on the verifier's labels, a value model on the returns), scored
   before it is updated; or, for a role with `score_after_update=True` (PRIME's
   update="before"), updated first, and the in-jit rewards computed again with it before the
   advantages;
6. `num_iterations` passes over the batch, each split into `num_minibatches` optimizer steps
   of whole groups, each accumulated over `grad_accum_steps` micro-batches of whole groups.

Everything random derives from `config.seed` and the step (`fold_in`), so a run resumed from a
checkpoint gives the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import learner
from jaxrl_reward import optim
from jaxrl_reward import sharding
from jaxrl_reward import stages
from jaxrl_reward.data import batching
from jaxrl_reward.rewards import scoring
from jaxrl_reward.rollout import Rollout
from jaxrl_reward.state import role_specs
from objectives import advantages as advantages_lib
from objectives import estimators
from objectives import logprob_rewards
from objectives import prime
from objectives import registry

OLD_LOGP = ("auto", "sampler", "recompute")
MISSING_STEPS = "missing_reward_steps"  # the state's counter of RL steps in a row without a host reward


def check_objective(name: str, *, stage: str, inputs: str, where: str) -> registry.Objective:
  """The registered objective `name`, or an error saying why it cannot train at `where`."""
  spec = registry.spec(name)
  if spec.stage != stage:
    raise ValueError(f"{where}={name!r} is an objective of the {spec.stage!r} stage, not of the {stage!r} "
                     f"stage; objectives of the {stage!r} stage: {registry.names(stage)}")
  if spec.inputs != inputs:
    raise ValueError(f"{where}={name!r} reads {spec.inputs}, but this model gives {inputs}")
  return spec


def check_groups(config) -> None:
  """Groups of at least 2 rows, and prompts that split into whole-group mini- and micro-batches."""
  r, t = config.rollout, config.train
  if r.group_size < 2:
    raise ValueError(f"rollout.group_size must be >= 2 for group-relative training, got {r.group_size}")
  if r.prompts_per_step % (t.num_minibatches * t.grad_accum_steps):
    raise ValueError(
        f"rollout.prompts_per_step={r.prompts_per_step} does not split into train.num_minibatches="
        f"{t.num_minibatches} x train.grad_accum_steps={t.grad_accum_steps} parts of whole groups; make "
        "prompts_per_step a multiple of num_minibatches x grad_accum_steps")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What an RL stage runs with, read and checked from the config alone (no model is built)."""
  objective: registry.Objective
  options: dict
  estimator: str
  estimator_options: dict
  role_objectives: dict  # trainable extra role -> (objective, options)
  value_role: str | None
  needs_labels: bool
  needs_reference: bool
  old_logp: str
  tis_cap: float
  std_filter_beta: float
  accuracy_filter: tuple[float, float] | None


def settings(config) -> Settings:
  """The RL stage's settings of `config`; every error names the config key."""
  c, t = config, config.train
  objective = check_objective(c.objective.name, stage="rl", inputs="logprobs", where="config.objective.name")
  options = registry.resolve_options(c.objective.name, c.objective.options)
  estimator = c.advantage.estimator
  estimator_options = estimators.resolve_options(estimator, c.advantage.get("options") or {})
  specs = role_specs(config)
  value_role = next((n for n, s in specs.items() if s.kind == "value"), None)
  if "values" in estimators.needs(estimator) and value_role is None:
    raise ValueError(f"advantage.estimator={estimator!r} needs a value role: add one to config.roles "
                     "(kind='value', trainable=True, objective='value_mse')")
  role_objectives = {}
  for n, spec in specs.items():
    if spec.trainable:
      kind = "values" if spec.kind == "value" else "logprobs"
      role_objectives[n] = (
          check_objective(spec.objective, stage="rl" if kind == "values" else "reward_model", inputs=kind,
                          where=f"config.roles.{n}.objective"),
          registry.resolve(f"objective (role {n!r})", spec.objective, registry.spec(spec.objective).options,
                           spec.options))
  _, model_rewards = scoring.reward_specs(c.rewards)
  needs_reference = (objective.needs_reference(options) or any("reference" in m.roles for m, _, _ in model_rewards)
                     or any(o.needs_reference(opts) for o, opts in role_objectives.values()))
  old_logp = t.get("old_logp", "auto")
  if old_logp not in OLD_LOGP:
    raise ValueError(f"train.old_logp={old_logp!r} is not one of {OLD_LOGP}")
  if old_logp == "auto":
    old_logp = "recompute" if c.model.dtype == "bfloat16" else "sampler"
  tis_cap = float(t.get("tis_cap", 0.0) or 0.0)
  if tis_cap and old_logp != "recompute":
    raise ValueError("train.tis_cap corrects the sampler/learner mismatch of recomputed old log-probs; "
                     "it needs train.old_logp='recompute'")
  std_filter_beta = float(c.rewards.get("std_filter_beta", 0.0) or 0.0)
  if std_filter_beta < 0:
    raise ValueError(f"rewards.std_filter_beta must be >= 0 (0: off), got {std_filter_beta}")
  if int(c.rewards.get("std_filter_start_step", 11)) < 2:
    raise ValueError(f"rewards.std_filter_start_step must be >= 2, got {c.rewards.std_filter_start_step}")
  accuracy_filter = tuple(c.rewards.get("accuracy_filter", ()) or ())
  if accuracy_filter and (len(accuracy_filter) != 2 or not 0.0 <= accuracy_filter[0] <= accuracy_filter[1] <= 1.0):
    raise ValueError(f"rewards.accuracy_filter={accuracy_filter!r} must be () (off) or (low, high) with "
                     "0 <= low <= high <= 1 (PRIME: (0.2, 0.8))")
  check_groups(config)
  return Settings(objective, options, estimator, estimator_options, role_objectives, value_role,
                  needs_labels=any(specs[n].kind == "lm" for n in role_objectives) or bool(accuracy_filter),
                  needs_reference=bool(needs_reference), old_logp=old_logp, tis_cap=tis_cap,
                  std_filter_beta=std_filter_beta,
                  accuracy_filter=tuple(float(x) for x in accuracy_filter) or None)


def _drop_rows(rollout: Rollout, keep: jax.Array) -> Rollout:
  """The rollout with the rows where `keep` is False invalid and fully masked (out of every update)."""
  masked = {k: rollout[k] * keep[:, None].astype(rollout[k].dtype) for k in ("mask", "answer_mask") if k in rollout}
  return rollout.update(valid=rollout["valid"] & keep, **masked)


def _logp_gap(sampler_logp, learner_logp, mask):
  """Mean |sampler - teacher-forced| log-prob over the real tokens."""
  return jnp.sum(jnp.abs(sampler_logp - learner_logp) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class RL(stages.Stage):
  name = "rl"
  evaluates_initial_policy = True
  check_config = staticmethod(settings)

  def __init__(self, context: stages.Context, start: int):
    super().__init__(context, start)
    c = context.config
    r, t = c.rollout, c.train
    roles = context.roles
    s = settings(c)
    self.steps = int(t.steps)
    self.eval_every = int(c.eval.every)
    self.group_size, self.prompts = int(r.group_size), int(r.prompts_per_step)
    self.objective, self.options, self.label = s.objective, s.options, c.objective.name.upper()
    self.estimator, self.estimator_options = s.estimator, s.estimator_options
    self.old_logp, self.tis_cap, self.value_role = s.old_logp, s.tis_cap, s.value_role
    self.needs_reference = s.needs_reference
    self.std_filter_beta = s.std_filter_beta
    self.accuracy_filter = s.accuracy_filter
    self.std_filter_start = int(c.rewards.get("std_filter_start_step", 11))
    # Every role of config.roles is in the state; the trainable ones update online.
    self.extra_roles = [n for n in roles.specs if n not in ("policy", "reference")]
    self.trained_roles = list(s.role_objectives)
    # Trained roles that in-jit rewards read after their update (PRIME's update="before").
    self.rescored_roles = [n for n in self.trained_roles if roles.specs[n].score_after_update]
    self.role_names = ["policy"] + (["reference"] if self.needs_reference else []) + self.extra_roles
    self.rewards = scoring.RewardSet(c.rewards, roles, with_labels=s.needs_labels)
    # A step-end mask [B, T] (1 at the last token of each step, `Task.step_ends`) for an estimator
    # that reads steps (PURE's min-form over step ends).
    self.needs_step_ends = "step_ends" in estimators.needs(self.estimator)
    if self.needs_step_ends and getattr(context.task, "step_ends", None) is None:
      raise ValueError(f"advantage.estimator={self.estimator!r} reads the steps of each completion, but "
                       f"task.name={c.task.name!r} has no step boundaries (Task.step_ends); use a task with "
                       "steps (chain_sums, reasoning_gym)")
    unread = [n for n in self.rescored_roles if n not in self.rewards.role_names]
    if unread:
      raise ValueError(f"config.roles.{unread[0]}.score_after_update=True, but no in-jit reward of "
                       f"config.rewards.names={tuple(c.rewards.names)} reads role {unread[0]!r}")
    role_objectives = s.role_objectives

    # Optimizers and updates.
    self.num_iterations, self.num_minibatches = int(t.num_iterations), int(t.num_minibatches)
    self.accum = int(t.grad_accum_steps)
    updates_per_step = self.num_iterations * self.num_minibatches
    o = c.optim
    optimizer = optim.from_config(o, o.lr, total_steps=self.steps * updates_per_step, schedule=o.schedule,
                                  warmup_steps=o.warmup_steps * updates_per_step)
    trained = {"policy": (optimizer, self.objective, self.options, "loss/total"),
               **{n: (optim.from_config(o, roles.specs[n].lr, total_steps=self.steps, schedule="constant",
                                        warmup_steps=0), objective, options, f"loss/{n}")
                  for n, (objective, options) in role_objectives.items()}}
    self.optimizers, self.placements, self.losses, self.updates = {}, {}, {}, {}
    for n, (opt, objective, options, loss_key) in trained.items():
      role = roles[n]
      self.optimizers[n] = opt
      self.placements[n] = role.placement.with_optimizer(opt, role.abstract_params)
      self.losses[n] = learner.objective_loss(role.scorer, objective.fn, options)
      self.updates[n] = learner.make_update(self.losses[n], opt, self.placements[n], num_microbatches=self.accum,
                                            group_size=self.group_size, loss_key=loss_key)
    rows, replicated = self.ctx.placement.rows, self.ctx.placement.replicated
    self._take_rows = self.ctx.placement.jit(lambda batch, idx: jax.tree.map(lambda x: x[idx], batch),
                                             in_shardings=(rows, replicated), out_shardings=rows)
    self._advantages = self.ctx.placement.jit(self._advantages_fn, in_shardings=(rows,), out_shardings=rows)
    self._stats = self.ctx.placement.jit(self._stats_fn, in_shardings=(rows,), out_shardings=replicated)
    self._gap = self.ctx.placement.jit(_logp_gap, in_shardings=(rows, rows, rows), out_shardings=replicated)
    self._filter = self.ctx.placement.jit(self._filter_fn, in_shardings=(replicated, rows),
                                          out_shardings=(replicated, rows, replicated))
    # Host values (numpy) as replicated arrays of the state: global arrays, as checkpoints of several processes need.
    self._replicated = self.ctx.placement.jit(lambda x: x, in_shardings=(replicated,), out_shardings=replicated)
    self._std_filter_init = self.ctx.placement.jit(logprob_rewards.std_filter_init, out_shardings=replicated)
    self._accuracy_filter = self.ctx.placement.jit(self._accuracy_filter_fn, in_shardings=(rows,),
                                                   out_shardings=(rows, replicated))

  # -- start-up checks --------------------------------------------------------------------

  def check(self) -> None:
    rows = self.prompts * self.group_size
    stages.check_divides("rollout batch (prompts_per_step x group_size / train.num_minibatches)",
                         rows // self.num_minibatches, self.ctx.placement.batch_shards)
    # Trace every loss once on abstract inputs: a bad option fails here, in seconds.
    rollout = jax.eval_shape(self._advantages_fn, self.abstract_rollout(rows // (self.num_minibatches * self.accum)))
    for name, loss in self.losses.items():
      jax.eval_shape(loss, self.ctx.roles[name].abstract_params, rollout)

  def abstract_rollout(self, rows: int) -> Rollout:
    """Shapes of a rollout of `rows` rows as the losses see it (for the start-up trace)."""
    per_step = ("sampler_logp",) + (("token_rewards",) if self.rewards.has_token_rewards else ()) \
        + (("step_ends",) if self.needs_step_ends else ()) \
        + (("is_weight",) if self.tis_cap else ()) + (("values", "old_values", "returns") if self.value_role else ())
    per_row = ("baseline_rewards",) if "baseline_rewards" in estimators.needs(self.estimator) else ()
    extra_steps, layout_steps, layout_rows = self.rewards.layout(self.ctx.task)
    return stages.abstract_rollout(self.ctx.config, rows, per_step=per_step + layout_steps,
                                   per_row=per_row + layout_rows, token_rewards=self.rewards.has_token_rewards,
                                   reference=self.needs_reference, extra_steps=extra_steps)

  # -- state -----------------------------------------------------------------------------

  def enter(self, state):
    roles = self.ctx.roles
    new = {"policy": {"params": state["policy"]["params"] if "policy" in state
                      else roles.create("policy", state)}}
    # A role an earlier stage trained (a reward-model stage's PRM), or that `config.init_from`
    # brought, keeps its parameters; the others start as their `init` says.
    new.update({n: {"params": state[n]["params"] if n in state else roles.create(n, new)}
                for n in self.role_names if n != "policy"})
    for n, opt in self.optimizers.items():
      placement = self.placements[n]
      new[n]["opt_state"] = placement.jit(opt.init, in_shardings=(placement.params,),
                                          out_shardings=placement.opt_state)(new[n]["params"])
    if self.std_filter_beta:  # RLPR's EMA of the group reward std, carried across steps
      new["std_filter"] = state["std_filter"] if "std_filter" in state else self._std_filter_init()
    if self.rewards.host:  # steps in a row without any host reward: resumed with the run
      new[MISSING_STEPS] = state[MISSING_STEPS] if MISSING_STEPS in state else self._replicated(np.int32(0))
    return new

  def state_shardings(self):
    out = {n: {"params": self.ctx.roles[n].placement.params} for n in self.role_names}
    for n, placement in self.placements.items():
      out[n] = {"params": placement.params, "opt_state": placement.opt_state}
    if self.std_filter_beta:
      out["std_filter"] = jax.tree.map(lambda _: self.ctx.placement.replicated, logprob_rewards.std_filter_init())
    if self.rewards.host:
      out[MISSING_STEPS] = self.ctx.placement.replicated
    return out

  # -- one step --------------------------------------------------------------------------

  def _advantages_fn(self, rollout: Rollout) -> Rollout:
    adv = estimators.compute(self.estimator, rollout, group_size=self.group_size, options=self.estimator_options)
    rollout = rollout.update(advantages=adv)
    if self.value_role:
      rewards = rollout.rewards
      if rewards.ndim == 1:
        rewards = advantages_lib.outcome_to_token_rewards(rewards, rollout.mask)
      if self.estimator == "gae":
        o = self.estimator_options
        _, returns = advantages_lib.gae(rewards, rollout["values"], rollout.mask, gamma=o["gamma"], lam=o["lam"])
      else:
        returns = advantages_lib.discounted_returns(rewards, rollout.mask)
      rollout = rollout.update(returns=returns)
    return rollout

  def _filter_fn(self, filter_state, rollout: Rollout):
    """RLPR's std filter: the groups whose reward std is below `std_filter_beta` x its EMA leave
    the update (their rows become invalid and fully masked)."""
    rewards = rollout.rewards if rollout.rewards.ndim == 1 else jnp.sum(rollout.rewards * rollout.mask, axis=-1)
    stds = jnp.std(rewards.reshape(-1, self.group_size), axis=1)
    start = self.std_filter_start
    filter_state, keep = logprob_rewards.std_filter_update(filter_state, stds, beta_f=self.std_filter_beta,
                                                           start_step=start, ema_start_step=(start + 1) // 2)
    return filter_state, _drop_rows(rollout, jnp.repeat(keep, self.group_size)), jnp.mean(keep.astype(jnp.float32))

  def _accuracy_filter_fn(self, rollout: Rollout):
    """PRIME's accuracy filter: the groups whose verifier accuracy is outside [low, high] leave the update."""
    low, high = self.accuracy_filter
    keep = prime.accuracy_filter(rollout["labels"], group_size=self.group_size, low=low, high=high)
    return _drop_rows(rollout, keep), jnp.mean(keep.astype(jnp.float32))

  def _stats_fn(self, rollout: Rollout) -> dict:
    mask = rollout.mask
    lengths = jnp.sum(mask, axis=-1)
    last = jnp.take_along_axis(rollout.actions, jnp.maximum(lengths.astype(jnp.int32) - 1, 0)[:, None], axis=1)[:, 0]
    ended = (last == self.ctx.roles.policy.eos_id) & (lengths > 0)
    if "completion_length" in rollout:  # the sample as drawn, before a reference answer was spliced in
      lengths, ended = rollout["completion_length"], rollout["completion_ended"]
    total = rollout.rewards if rollout.rewards.ndim == 1 else jnp.sum(rollout.rewards, axis=-1)
    groups = total.reshape(-1, self.group_size)
    return {
        "train/reward": jnp.mean(total),
        "train/completion_length": jnp.mean(lengths),
        "train/eos_frac": jnp.mean(ended),
        "train/frac_zero_std_groups": jnp.mean(jnp.std(groups, axis=1) == 0),
        "train/frac_valid": jnp.mean(rollout["valid"].astype(jnp.float32)),
        "stats/advantage_abs_mean": jnp.mean(jnp.abs(rollout.advantages)),
        **estimators.compute_stats(self.estimator, rollout, group_size=self.group_size,
                                   options=self.estimator_options),
    }

  def collect(self, state, examples: list[dict], key) -> tuple[Rollout, dict]:
    """Samples, scores and computes the advantages of one step's rollout."""
    rollout, stats = self.score(state, examples, key)
    rollout = self._advantages(rollout)
    return rollout, {**stats, **self._stats(rollout)}

  def _sample(self, params, conditions, local, key, *, greedy: bool = False) -> tuple[Rollout, list[str], dict]:
    """A fresh sample, its completions (this process's rows) and the rewards' host-side preparation."""
    policy = self.ctx.roles.policy
    rollout = policy.sample(params, conditions, key, greedy=greedy)
    completions = policy.decode(rollout)
    if self.needs_step_ends and not greedy:
      rollout = rollout.update(step_ends=self._step_end_mask(rollout, completions))
    rollout, stats = self.rewards.prepare(rollout, policy=policy, task=self.ctx.task,
                                          columns=scoring.columns_of(local))
    return rollout, completions, stats

  def _step_end_mask(self, rollout: Rollout, completions: list[str]) -> jax.Array:
    """`[B, T]` float32, 1 at the token that holds the last character of each step of each
    completion (`Task.step_ends` on the decoded text, `process_rewards.step_end_mask`), built on
    each process for its rows."""
    from jaxrl_reward import process_rewards  # noqa: PLC0415  (it imports the engine)
    placement = self.ctx.placement
    local = process_rewards.step_end_mask(self.ctx.roles.policy.tokenizer, sharding.local_rows(rollout.actions),
                                          sharding.local_rows(rollout.mask), completions, self.ctx.task.step_ends)
    return sharding.to_global(local, placement.mesh, placement.rules, rollout.num_rows)

  def score(self, state, examples: list[dict], key, step: int | None = None) -> tuple[Rollout, dict]:
    """Samples and scores one step's rollout (everything but the advantages); `step` (1-based) is
    named in the rewards' warnings."""
    ctx, roles = self.ctx, self.ctx.roles
    policy = roles.policy
    params = state["policy"]["params"]
    conditions, local = stages.prompt_groups(ctx, examples, self.group_size)
    rollout, completions, prepared = self._sample(params, conditions, local, key)
    recomputed = policy.compute_logprobs(params, rollout)
    gap = self._gap(rollout.old_logp, recomputed, rollout.mask)
    if self.old_logp == "recompute":
      rollout = rollout.update(old_logp=recomputed, sampler_logp=rollout.old_logp)
      if self.tis_cap:
        rollout = rollout.update(is_weight=jnp.minimum(jnp.exp(recomputed - rollout["sampler_logp"]), self.tis_cap))
    if self.needs_reference:
      rollout = rollout.update(ref_logp=roles["reference"].scorer.compute_logprobs(
          state["reference"]["params"], rollout))
    prompts = [e["prompt"] for e in local]
    # The policy's teacher-forced log-probs under these parameters, for an in-jit reward that reads them.
    rollout, stats = self.rewards.score(rollout.update(policy_logp=recomputed), state, prompts=prompts,
                                        completions=completions, columns=scoring.columns_of(local), step=step)
    rollout = rollout.without("policy_logp")
    if self.value_role:
      values = roles[self.value_role].scorer.compute_outputs(state[self.value_role]["params"], rollout)
      rollout = rollout.update(values=values, old_values=values)
    if "baseline_rewards" in estimators.needs(self.estimator):  # ReMax: the greedy completion's reward
      greedy, greedy_completions, _ = self._sample(params, conditions, local, key, greedy=True)
      greedy, _ = self.rewards.score(greedy, state, prompts=prompts, completions=greedy_completions,
                                     columns=scoring.columns_of(local))
      total = greedy.rewards if greedy.rewards.ndim == 1 else jnp.sum(greedy.rewards, axis=-1)
      rollout = rollout.update(baseline_rewards=total)
    return rollout, {**prepared, **stats, "stats/sampler_logp_gap": gap}

  def _check_missing(self, stats, step: int, missing_before: int) -> int:
    """Steps in a row without any host reward, up to this one; warns on such a step and stops after
    `rewards.stop_after_missing_steps` of them in a row."""
    if stats["train/frac_valid"] > 0:
      return 0
    missing = missing_before + 1
    limit = int(self.ctx.config.rewards.get("stop_after_missing_steps", 0) or 0)
    names = [n for n, _, _ in self.rewards.host]
    print(f"warning: step {step + 1}: every host-side reward {names} was missing (None) for every row; "
          "the policy gets no signal", file=sys.stderr, flush=True)
    if limit and missing >= limit:
      raise RuntimeError(f"{missing} RL steps in a row without any reward from {names} (up to step "
                         f"{step + 1}); check the reward functions and the task's columns "
                         "(rewards.stop_after_missing_steps sets the limit, 0 never stops)")
    return missing

  def step(self, state, step: int):
    c = self.ctx.config
    idx = batching.batch_indices(len(self.ctx.task.train), self.prompts, seed=c.seed + 1, step=step - self.start)
    key = jax.random.fold_in(self.ctx.key, step)
    rollout, stats = self.score(state, [self.ctx.task.train[i] for i in idx], key, step=step + 1)
    state = dict(state)
    valid = rollout["valid"]
    if self.std_filter_beta:
      state["std_filter"], rollout, kept = self._filter(state["std_filter"], rollout)
      stats["train/std_filter/kept_frac"] = kept
    if self.accuracy_filter:
      rollout, stats["train/accuracy_filter/kept_frac"] = self._accuracy_filter(rollout)
    rng = np.random.default_rng([c.seed, step])
    metric_sums: dict[str, jax.Array] = {}
    counts: dict[str, int] = {}

    def apply(name, batch):
      params, opt_state, metrics = self.updates[name](state[name]["params"], state[name]["opt_state"], batch)
      state[name] = {**state[name], "params": params, "opt_state": opt_state}
      for k, v in metrics.items():
        metric_sums[k] = metric_sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1

    for name in self.rescored_roles:  # update first, then score once with the updated parameters
      apply(name, rollout)
    if self.rescored_roles:
      rollout, reward_stats = self.rewards.rescore(rollout, state)
      # The PRM's pair accuracy on this batch before its update (logged by `score`) stays; the
      # one after the update on the same batch is a training accuracy, logged beside it.
      for key in [k for k in reward_stats if k.startswith(scoring.PAIR_ACCURACY)]:
        reward_stats[key.replace(scoring.PAIR_ACCURACY, scoring.PAIR_ACCURACY + "_after_update", 1)] = \
            reward_stats.pop(key)
      stats.update(reward_stats)
    rollout = self._advantages(rollout)
    # frac_valid counts the rows with a reward, before the std filter takes groups out.
    stats.update(self._stats(rollout.update(valid=valid)))
    if self.rewards.host:
      missing = self._check_missing(jax.device_get(stats), step, int(jax.device_get(state[MISSING_STEPS])))
      state[MISSING_STEPS] = self._replicated(np.int32(missing))
    for name in self.trained_roles:  # scored above with the parameters before this update
      if name not in self.rescored_roles:
        apply(name, rollout)
    for _ in range(self.num_iterations):
      for rows in learner.minibatch_rows(self.prompts, self.group_size, self.num_minibatches, rng):
        apply("policy", self._take_rows(rollout, rows))
    metrics = {k: v / counts[k] for k, v in jax.device_get(metric_sums).items()}
    return state, {**metrics, **stats}
