"""The RL loop: supervised warm-up, then rollout -> rewards -> advantages -> objective -> optax.

One config drives both stages and one step counter spans them: steps [0, W) are warm-up
(cross-entropy on worked solutions), steps [W, W + S) are GRPO (or any registered
objective). Each GRPO step:

1. samples `group_size` completions for each of `prompts_per_step` prompts with the
   jitted sampler, keeping the sampler's per-token log-probs as the old log-probs;
2. scores them with host-side reward functions (TRL's interface) and combines them;
3. turns rewards into group-relative advantages;
4. runs `num_iterations` passes over the batch, each split into `num_minibatches`
   optimizer steps, each accumulated over `grad_accum_steps` micro-batches.

Everything random derives from `config.seed` and the step (`fold_in`), so a run resumed
from a checkpoint gives the same numbers as an uninterrupted one.

Scale: the run's mesh (`config.mesh`) and logical-axis rules (`config.sharding_rules`)
place the parameters, optimizer state and reference model (created directly sharded: a
jitted initialiser with `out_shardings`, no full host copy); every compiled function runs
with explicit in/out shardings. With several processes each one tokenises and scores only
the rows its devices hold (`sharding.host_rows`); rewards are gathered so that group
advantages and metrics are the same on every process; only process 0 writes logs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import auto as tqdm

import objectives
from objectives import advantages as advantages_lib
from objectives import registry
from jaxrl_reward import checkpoint as checkpoint_lib
from jaxrl_reward import logprobs as logprobs_lib
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import optim
from jaxrl_reward import provenance
from jaxrl_reward import sampling
from jaxrl_reward import sharding
from jaxrl_reward import update as update_lib
from jaxrl_reward.data import batching
from jaxrl_reward.data import tasks as tasks_lib
from jaxrl_reward.rewards import base as rewards_base
from models import transformer

del objectives  # imported for its registrations


@dataclasses.dataclass
class Components:
  """Everything built from a config, before any step runs.

  `init_params` is a function returning the initial parameters, created directly in the
  shardings of `placement.params`.
  """
  task: tasks_lib.Task
  graphdef: Any
  init_params: Any
  rest: Any
  warmup_optimizer: Any
  rl_optimizer: Any
  placement: sharding.Placement


def build_model(config, vocab_size: int) -> transformer.Transformer:
  """The policy from `config.model`, initialised from `config.seed`."""
  vocab = -(-vocab_size // 8) * 8  # round up: a multiple of 8 shards and tiles better
  model_config = transformer.get_config(config.model.name, vocab_size=vocab, dtype=config.model.dtype)
  return transformer.Transformer(model_config, rngs=nnx.Rngs(config.seed))


def build(config, mesh=None) -> Components:
  """Task, model structure, sharded initialiser and optimizers of a config.

  `mesh` defaults to `sharding.mesh_from_config(config)`.
  """
  task = tasks_lib.build_task(config.task, seed=config.seed)
  mesh = sharding.mesh_from_config(config) if mesh is None else mesh
  rules = sharding.rules_from_config(config)
  hf_path = config.model.get("hf_path", "")
  if hf_path:  # pretrained weights, read straight into their shardings
    from models import hf  # only runs that load a checkpoint need it
    loaded = hf.load(hf_path, dtype=config.model.dtype, mesh=mesh, rules=rules)
    if loaded.config.vocab_size < len(task.tokenizer):
      raise ValueError(f"model.hf_path={hf_path!r} has a vocabulary of {loaded.config.vocab_size} "
                       f"but the task's tokenizer has {len(task.tokenizer)} tokens")
    graphdef, weights, rest = nnx.split(loaded, nnx.Param, ...)
    placement = sharding.placement_for(weights, mesh, rules)
    # A fresh copy per call: the update step donates (and so deletes) the buffers it gets.
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=placement.params)
    init_params = functools.partial(copy, weights)
  else:
    make_model = functools.partial(build_model, config, len(task.tokenizer))
    graphdef, abstract_params, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
    placement = sharding.placement_for(abstract_params, mesh, rules)
    init_params = jax.jit(lambda: nnx.split(make_model(), nnx.Param, ...)[1],
                          out_shardings=placement.params)
  if jax.tree.leaves(rest):
    raise ValueError("the model has non-parameter state, which the trainer does not carry")
  w, s = config.warmup.steps, config.train.steps
  updates_per_rl_step = config.train.num_iterations * config.train.num_minibatches
  shared = dict(weight_decay=config.optim.weight_decay, b1=config.optim.b1, b2=config.optim.b2,
                max_grad_norm=config.optim.max_grad_norm)
  warmup_opt = optim.make_optimizer(
      config.warmup.lr, total_steps=max(w, 1), warmup_steps=min(config.optim.warmup_steps, w),
      schedule="cosine", **shared)
  rl_opt = optim.make_optimizer(
      config.optim.lr, total_steps=max(s * updates_per_rl_step, 1),
      warmup_steps=config.optim.warmup_steps * updates_per_rl_step, schedule=config.optim.schedule,
      **shared)
  return Components(task, graphdef, init_params, rest, warmup_opt, rl_opt, placement)


# ----------------------------------------------------------------------------- losses


def sft_loss(model, batch):
  """Token-mean cross-entropy on the target tokens of right-padded sequences `[b, L]`."""
  hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)  # [b, L, D]
  logp = logprobs_lib.token_logprobs(hidden[:, :-1], model.unembedding(), batch["input_ids"][:, 1:])
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
  total = -jnp.sum(logp * mask)
  den = jnp.sum(mask)
  return total, den, {}


def make_rl_loss(objective_name: str, options: Mapping[str, Any], temperature: float):
  objective = registry.get(objective_name)
  options = dict(options)

  def rl_loss(model, batch):
    logp = logprobs_lib.completion_logprobs(
        model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["mask"],
        temperature=temperature)  # [b, N]
    total, den, metrics = objective(logp, batch, **options)
    return total.astype(jnp.float32), jnp.asarray(den, jnp.float32), metrics

  return rl_loss


def needs_reference(config) -> bool:
  return registry.requires_reference(config.objective.name, config.objective.options.to_dict())


# ----------------------------------------------------------------------------- trainer


class Trainer:
  """Holds the compiled functions of a run; `run()` trains from scratch or resumes."""

  def __init__(self, config, workdir: str | pathlib.Path, *, mesh=None):
    self.config = config
    self.workdir = provenance.prepare_workdir(workdir)
    self.is_main = jax.process_index() == 0
    self.c = build(config, mesh)
    self.mesh = self.c.placement.mesh
    _validate(config, self.c.placement.batch_shards)
    self.tokenizer = self.c.task.tokenizer
    self.eos_id = self.tokenizer.eos_token_id
    self.pad_id = self.tokenizer.pad_token_id
    self.rollout_size = config.rollout.prompts_per_step * config.rollout.group_size
    self.warmup_steps = config.warmup.steps
    self.total_steps = config.warmup.steps + config.train.steps
    self.key = jax.random.PRNGKey(config.seed)

    g, rest, placement = self.c.graphdef, self.c.rest, self.c.placement
    abstract_params = jax.eval_shape(self.c.init_params)
    self.warmup_placement = placement.with_optimizer(self.c.warmup_optimizer, abstract_params)
    self.rl_placement = placement.with_optimizer(self.c.rl_optimizer, abstract_params)
    self.warmup_update = update_lib.make_update_step(
        sft_loss, g, rest, self.c.warmup_optimizer, num_microbatches=1, loss_key="loss/sft",
        placement=self.warmup_placement)
    accum = config.train.grad_accum_steps
    self.rl_update = update_lib.make_update_step(
        make_rl_loss(config.objective.name, config.objective.options.to_dict(), config.rollout.temperature),
        g, rest, self.c.rl_optimizer, num_microbatches=accum, loss_key="loss/total",
        placement=self.rl_placement)
    sample_kw = dict(max_new_tokens=config.task.max_completion_length, eos_id=self.eos_id,
                     pad_id=self.pad_id, placement=placement)
    self.rollout_sampler = sampling.make_sampler(
        g, temperature=config.rollout.temperature, top_k=config.rollout.top_k, top_p=config.rollout.top_p,
        **sample_kw)
    self.greedy_sampler = sampling.make_sampler(g, temperature=0.0, **sample_kw)

    temperature = config.rollout.temperature

    def reference_logprobs(ref_params, batch):
      model = nnx.merge(g, ref_params, rest)
      return logprobs_lib.completion_logprobs(
          model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["mask"],
          temperature=temperature)

    rows, replicated = placement.rows, placement.replicated
    self.reference_logprobs = placement.jit(
        reference_logprobs, in_shardings=(placement.params, rows), out_shardings=rows)
    self.take_rows = placement.jit(lambda batch, idx: jax.tree.map(lambda x: x[idx], batch),
                                   in_shardings=(rows, replicated), out_shardings=rows)
    self.copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), in_shardings=(placement.params,),
                               out_shardings=placement.params)
    self.reward_fns = [rewards_base.get_reward(n) for n in config.rewards.names]
    self.reward_weights = np.asarray(config.rewards.weights, np.float32)
    self.eval_reward = rewards_base.get_reward(config.rewards.eval_name)

  # -- state ---------------------------------------------------------------------------

  def _init_opt_state(self, placement: sharding.Placement, optimizer, params):
    init = jax.jit(optimizer.init, in_shardings=(placement.params,), out_shardings=placement.opt_state)
    return init(params)

  def _rl_state(self, params) -> dict[str, Any]:
    """The GRPO stage's state: a fresh optimizer and, when beta > 0, a frozen copy as reference."""
    state = {"params": params,
             "opt_state": self._init_opt_state(self.rl_placement, self.c.rl_optimizer, params)}
    if needs_reference(self.config):
      state["ref_params"] = self.copy_params(params)
    return state

  def _initial_state(self, step: int) -> dict[str, Any]:
    params = self.c.init_params()
    if step < self.warmup_steps:
      return {"params": params,
              "opt_state": self._init_opt_state(self.warmup_placement, self.c.warmup_optimizer, params)}
    return self._rl_state(params)

  def _state_shardings(self, step: int) -> dict[str, Any]:
    placement = self.warmup_placement if step < self.warmup_steps else self.rl_placement
    out = {"params": placement.params, "opt_state": placement.opt_state}
    if step >= self.warmup_steps and needs_reference(self.config):
      out["ref_params"] = placement.params
    return out

  def _abstract_state(self, step: int):
    """ShapeDtypeStructs of the state at `step`, with their target shardings (for restore)."""
    shapes = jax.eval_shape(lambda: self._initial_state(step))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self._state_shardings(step))

  # -- host rows -----------------------------------------------------------------------

  def _host_rows(self, global_rows: int) -> slice:
    return sharding.host_rows(self.mesh, self.c.placement.rules, global_rows)

  def _to_global(self, local, global_rows: int):
    return sharding.to_global(local, self.mesh, self.c.placement.rules, global_rows)

  # -- one step of each stage ----------------------------------------------------------

  def warmup_step(self, state, step: int):
    cfg = self.config
    size = cfg.warmup.batch_size
    idx = batching.batch_indices(len(self.c.task.train), size, seed=cfg.seed, step=step)
    examples = [self.c.task.train[i] for i in idx]
    targets = self.c.task.sft_targets(examples, step)  # global: the noise depends on the row
    rows = self._host_rows(size)
    local = batching.encode_sft(
        self.tokenizer, [e["prompt"] for e in examples[rows]], targets[rows],
        max_length=cfg.task.max_prompt_length + cfg.task.max_completion_length)
    batch = self._to_global(local, size)
    params, opt_state, metrics = self.warmup_update(state["params"], state["opt_state"], batch)
    return {**state, "params": params, "opt_state": opt_state}, metrics

  def rollout(self, params, prompts_examples: list[dict], key) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Samples the group completions, scores them, computes advantages."""
    cfg = self.config
    group = cfg.rollout.group_size
    examples = batching.repeat_for_groups(prompts_examples, group)
    size = len(examples)
    rows = self._host_rows(size)
    examples = examples[rows]  # this process's rows
    prompts = [e["prompt"] for e in examples]
    prompt_ids, prompt_mask = self._to_global(batching.encode_prompts(
        self.tokenizer, prompts, max_length=cfg.task.max_prompt_length, padding_side="left"), size)
    out = self.rollout_sampler(params, prompt_ids, prompt_mask, key)
    tokens, mask = sharding.local_rows(out.tokens), sharding.local_rows(out.mask)
    completions = batching.decode_completions(self.tokenizer, tokens, mask)
    columns = _columns(examples)
    local_lengths = mask.sum(-1)
    local_eos = tokens[np.arange(len(tokens)), np.maximum(local_lengths - 1, 0)] == self.eos_id
    local_scores = rewards_base.compute_rewards(self.reward_fns, prompts, completions, columns)
    # Every process gets every row's rewards: group advantages and metrics need all of them.
    per_fn = sharding.gather_rows(np.asarray(local_scores, np.float32))  # [B, F]
    lengths = sharding.gather_rows(local_lengths)
    eos = sharding.gather_rows(local_eos)
    rewards, all_missing = advantages_lib.combine_rewards(jnp.asarray(per_fn), jnp.asarray(self.reward_weights))
    valid = ~all_missing
    if cfg.advantage.estimator == "group":
      adv = advantages_lib.group_advantages(
          rewards, group_size=group, scale_rewards=cfg.advantage.scale_rewards, valid=valid)
    else:
      adv = advantages_lib.rloo(rewards, group_size=group, valid=valid)
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": out.tokens,
        "mask": out.mask.astype(jnp.float32), "old_logp": out.logprobs,
        **self._to_global({"advantages": np.asarray(adv, np.float32)[rows],
                           "rewards": np.asarray(rewards, np.float32)[rows]}, size),
    }
    stats = {
        "train/reward": float(np.nanmean(np.asarray(rewards))),
        "train/completion_length": float(lengths.mean()),
        "train/eos_frac": float(eos.mean()),
    }
    for name, col in zip(cfg.rewards.names, per_fn.T):
      stats[f"train/rewards/{name}"] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
    groups = np.asarray(rewards).reshape(-1, group)
    stats["train/frac_zero_std_groups"] = float((np.nanstd(groups, axis=1) == 0).mean())
    return batch, stats

  def rl_step(self, state, step: int):
    cfg = self.config
    rl_index = step - self.warmup_steps
    idx = batching.batch_indices(
        len(self.c.task.train), cfg.rollout.prompts_per_step, seed=cfg.seed + 1, step=rl_index)
    key = jax.random.fold_in(self.key, step)
    batch, stats = self.rollout(state["params"], [self.c.task.train[i] for i in idx], key)
    if "ref_params" in state:
      batch["ref_logp"] = self.reference_logprobs(state["ref_params"], batch)
    params, opt_state = state["params"], state["opt_state"]
    rng = np.random.default_rng([cfg.seed, step])
    metrics_sum: dict[str, float] = {}
    n_updates = 0
    group = cfg.rollout.group_size
    for _ in range(cfg.train.num_iterations):
      # Shuffle whole groups, so mini-batches keep groups together when they can.
      groups = rng.permutation(cfg.rollout.prompts_per_step)
      order = (groups[:, None] * group + np.arange(group)[None, :]).reshape(-1)
      for mb in np.array_split(order, cfg.train.num_minibatches):
        minibatch = self.take_rows(batch, mb.astype(np.int32))
        params, opt_state, m = self.rl_update(params, opt_state, minibatch)
        for k, v in m.items():
          metrics_sum[k] = metrics_sum.get(k, 0.0) + v
        n_updates += 1
    metrics = {k: v / n_updates for k, v in jax.device_get(metrics_sum).items()}
    metrics.update(stats)
    return {**state, "params": params, "opt_state": opt_state}, metrics

  # -- evaluation ----------------------------------------------------------------------

  def evaluate(self, params, step: int) -> dict[str, float]:
    """Held-out accuracy with greedy decoding and with the rollout's sampling settings."""
    cfg = self.config
    examples = self.c.task.eval
    bs = cfg.eval.batch_size
    n = len(examples)
    padded = examples + [examples[-1]] * (-n % bs)
    key = jax.random.fold_in(jax.random.fold_in(self.key, step), 1 << 20)
    scores = {"greedy": [], "sampled": []}
    for start in range(0, len(padded), bs):
      chunk = padded[start:start + bs][self._host_rows(bs)]
      prompts = [e["prompt"] for e in chunk]
      ids, mask = self._to_global(batching.encode_prompts(
          self.tokenizer, prompts, max_length=cfg.task.max_prompt_length, padding_side="left"), bs)
      columns = _columns(chunk)
      for mode, sampler in (("greedy", self.greedy_sampler), ("sampled", self.rollout_sampler)):
        out = sampler(params, ids, mask, jax.random.fold_in(key, start))
        tokens, cmask = sharding.local_rows(out.tokens), sharding.local_rows(out.mask)
        completions = batching.decode_completions(self.tokenizer, tokens, cmask)
        r = self.eval_reward(prompts, completions, **columns)
        local = np.asarray([0.0 if v is None else float(v) for v in r], np.float32)
        scores[mode].extend(sharding.gather_rows(local).tolist())
    return {f"eval/accuracy_{m}": float(np.mean(v[:n])) for m, v in scores.items()}

  # -- the loop ------------------------------------------------------------------------

  def run(self, *, stop_at: int | None = None) -> dict[str, Any]:
    """Trains until the last step (or until `stop_at` steps are done, as a preempted job would)."""
    cfg = self.config
    end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
    if self.is_main:
      provenance.write_config(self.workdir, cfg)
      provenance.write_provenance(self.workdir, extra={
          "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
          "mesh": dict(self.mesh.shape)})
    logger = metrics_lib.MetricsLogger(self.workdir, enabled=self.is_main)
    ckpt = checkpoint_lib.Checkpointer(self.workdir / "checkpoints", max_to_keep=2)
    start = ckpt.latest_step()
    if start is None:
      start = 0
      state = self._initial_state(0)
      logger.truncate_after(-1)
    else:
      state, _ = ckpt.restore(self._abstract_state(start), step=start)
      logger.truncate_after(start)

    last_eval: dict[str, float] = {}
    if start == 0 and self.warmup_steps == 0:  # no warm-up: measure the starting policy
      last_eval = self.evaluate(state["params"], 0)
      logger.log(0, {**last_eval, "eval/stage": 0.0})
    bar = tqdm.tqdm(range(start, end), initial=start, total=self.total_steps,
                    disable=not self.is_main, desc="train", dynamic_ncols=True)
    for step in bar:
      if step < self.warmup_steps:
        state, metrics = self.warmup_step(state, step)
      else:
        state, metrics = self.rl_step(state, step)
      done = step + 1
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      metrics["train/stage"] = 0.0 if step < self.warmup_steps else 1.0
      if done % cfg.log_every == 0 or done == self.total_steps:
        logger.log(done, metrics)
      saved = False
      if done == self.warmup_steps:
        last_eval = self.evaluate(state["params"], done)
        logger.log(done, {**last_eval, "eval/stage": 0.0})
        state = self._rl_state(state["params"])
        saved = ckpt.save(done, state, force=True)
      elif done > self.warmup_steps and (
          (done - self.warmup_steps) % cfg.eval.every == 0 or done == self.total_steps):
        last_eval = self.evaluate(state["params"], done)
        logger.log(done, {**last_eval, "eval/stage": 1.0})
      if not saved and (done % cfg.checkpoint_every == 0 or done == self.total_steps):
        ckpt.save(done, state, force=True)
      postfix = {"loss": metrics.get("loss/total", metrics.get("loss/sft"))}
      if "train/reward" in metrics:
        postfix["reward"] = metrics["train/reward"]
      if last_eval:
        postfix["acc"] = last_eval["eval/accuracy_greedy"]
      bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items() if v is not None})
    ckpt.wait()
    ckpt.close()
    logger.close()
    self.state = state
    return self.summarise()

  def summarise(self) -> dict[str, Any]:
    """Builds the accuracy table from metrics.jsonl, writes results.md/json and the plot."""
    rows = []
    history = metrics_lib.read_metrics(self.workdir / "metrics.jsonl")
    for stage, label in ((0.0, "after warm-up" if self.warmup_steps else "initial"), (1.0, "after GRPO")):
      evals = [r for r in history if r.get("eval/stage") == stage]
      if evals:
        last = evals[-1]
        rows.append({"stage": label, "step": last["step"],
                     "accuracy_greedy": last["eval/accuracy_greedy"],
                     "accuracy_sampled": last["eval/accuracy_sampled"]})
    table = metrics_lib.format_table(rows, ["stage", "step", "accuracy_greedy", "accuracy_sampled"])
    if self.is_main:
      (self.workdir / "results.md").write_text(table + "\n")
      (self.workdir / "results.json").write_text(json.dumps(rows, indent=2))
      metrics_lib.plot_curves(self.workdir / "metrics.jsonl", self.workdir / "reward_curve.png",
                              title=f"{self.config.objective.name} on {self.config.task.name}")
    return {"rows": rows, "table": table}


def _columns(examples: list[dict]) -> dict[str, list]:
  """Every field but the prompt, as the keyword columns of the reward functions (TRL style)."""
  return {k: [e[k] for e in examples] for k in examples[0] if k != "prompt"}


def _validate(config, batch_shards: int = 1) -> None:
  r, t = config.rollout, config.train
  batch = r.prompts_per_step * r.group_size
  for name, rows in (("rollout batch (prompts_per_step x group_size / train.num_minibatches)",
                      batch // max(t.num_minibatches, 1)),
                     ("warmup.batch_size", config.warmup.batch_size),
                     ("eval.batch_size", config.eval.batch_size)):
    if rows % batch_shards:
      raise ValueError(f"{name} = {rows} rows does not divide over the mesh's {batch_shards} batch "
                       f"shards (config.mesh); change the batch size or the mesh")
  if r.group_size < 2:
    raise ValueError(f"rollout.group_size must be >= 2 for group-relative advantages, got {r.group_size}")
  if batch % t.num_minibatches:
    raise ValueError(f"rollout batch {batch} (prompts_per_step x group_size) does not split into "
                     f"train.num_minibatches={t.num_minibatches}")
  if (batch // t.num_minibatches) % t.grad_accum_steps:
    raise ValueError(f"mini-batch of {batch // t.num_minibatches} rows does not split into "
                     f"train.grad_accum_steps={t.grad_accum_steps}")
  if config.advantage.estimator not in ("group", "rloo"):
    raise ValueError(f"advantage.estimator={config.advantage.estimator!r} is not one of ('group', 'rloo')")
  if len(config.rewards.names) != len(config.rewards.weights):
    raise ValueError(f"rewards.names has {len(config.rewards.names)} entries but rewards.weights has "
                     f"{len(config.rewards.weights)}")
  registry.get(config.objective.name)  # raises naming the registered objectives


def train(config, workdir) -> dict[str, Any]:
  return Trainer(config, workdir).run()
