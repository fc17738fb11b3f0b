"""The reward-model stage: train a (process) reward model role on the policy's own samples,
labelled by outcome only, or (the positive control) on worked and flawed solutions.

Each step samples `rollout.group_size` completions for each of `rollout.prompts_per_step`
training prompts from the frozen policy, labels each by the verifier
(`config.rewards.eval_name`, clipped to [0, 1]), computes the reference role's log-probs (a
frozen copy of the policy, the implicit PRM's pi_ref), and updates the role named
`config.reward_model.role` (declared in `config.roles`, `kind="lm"`; `init="policy"` starts it
from the policy) with `config.objective` (an objective of the "reward_model" stage:
`implicit_prm_ce`, `implicit_prm_dpo`, `implicit_prm_kto`), accumulated over
`train.grad_accum_steps` micro-batches of whole groups. The evaluation samples the held-out
prompts once and reports how well the role's outcome score r = sum of its token rewards
separates correct from incorrect samples.

`config.reward_model.data` picks the training data (`DATA`):
- "samples" (default): the policy's samples labelled by the verifier, as above;
- "solution_pairs": the positive control. Each of the `prompts_per_step` training problems
  gives `group_size / 2` (worked, flawed) pairs from `Task.solution_pair` (the worked solution
  labelled 1, the flawed one, whose first wrong step is known, 0: 50/50 labels known to be
  right), teacher-forced (no sampling); the evaluation then reports, on fixed pairs of the
  held-out problems, `eval/pair_accuracy` (worked scored above its flawed partner) and
  `eval/label_accuracy` (sign of the score). A scorer that cannot learn this has a bug in the
  pipeline, not a hard task. Step-error localisation and Best-of-N on the policy's samples
  come from `jaxrl_reward.process_rewards.evaluate` (`experiments/prm_best_of_n.py`).

With "samples" the evaluation also reports the Pearson correlation of the score with each
sample's length in tokens (`eval/score_length_corr`) and, when the task has steps, with its
number of steps (`eval/score_steps_corr`): an outcome-trained PRM that learned a length
penalty shows a strongly negative one.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import learner
from jaxrl_reward import optim
from jaxrl_reward import prm_eval
from jaxrl_reward import sharding
from jaxrl_reward import stages
from jaxrl_reward.data import batching
from jaxrl_reward.rewards import scoring
from jaxrl_reward.rollout import Rollout
from jaxrl_reward.stages import rl
from jaxrl_reward.state import role_specs
from objectives import outcome_rm
from objectives import registry

# What an objective of the stage reads -> the kind of role it trains.
ROLE_KIND = {"logprobs": "lm", "values": "value"}
# Where the training batches come from (`config.reward_model.data`); see the module docstring.
DATA = ("samples", "solution_pairs")
# The held-out (worked, flawed) pairs of the evaluation are drawn from this seed offset.
EVAL_PAIRS_SEED = 1 << 20


def encode_solutions(tokenizer, texts, length: int):
  """Right-padded completion tokens (text then EOS) `[B, length]` and their mask."""
  ids = np.full((len(texts), length), tokenizer.pad_token_id or tokenizer.eos_token_id, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(tokens) > length:
      raise ValueError(f"solution {i} has {len(tokens)} tokens, more than task.max_completion_length={length}")
    ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
  return ids, mask


def solution_pairs(task, examples: list[dict], pairs_per_example: int, rng: np.random.Generator):
  """(prompts, texts, labels, first wrong steps) of `pairs_per_example` (worked, flawed) pairs of each
  example, pair-major: worked (label 1.0, first wrong step -1) then flawed (0.0, its first wrong step)."""
  if task.solution_pair is None:
    raise ValueError("config.reward_model.data='solution_pairs' needs a task with worked and flawed solutions "
                     "(Task.solution_pair: chain_sums, reasoning_gym chains)")
  prompts, texts, labels, first_wrong = [], [], [], []
  for e in examples:
    for _ in range(pairs_per_example):
      worked, flawed, wrong = task.solution_pair(e, rng)
      prompts += [e["prompt"], e["prompt"]]
      texts += [worked, flawed]
      labels += [1.0, 0.0]
      first_wrong += [-1, int(wrong)]
  return prompts, texts, np.asarray(labels, np.float32), np.asarray(first_wrong, np.int64)



def objective_of(config) -> tuple[str, Any, str]:
  """(name, options, config key) of the stage's objective: `config.reward_model.objective` when
  set (a run whose RL stage follows, with `config.objective` for the policy), else `config.objective`."""
  block = config.reward_model
  if block.get("objective"):
    return block.objective, block.get("options") or {}, "config.reward_model.objective"
  return config.objective.name, config.objective.options, "config.objective.name"


def outcome_scores(scorer, inputs: str, beta: float, params, rollout) -> jax.Array:
  """`[B]` a reward model's score of each whole response: beta sum_t (log pi - log pi_ref) for an
  implicit PRM (its outcome reward r), the value at the last token for an ORM."""
  outputs = scorer.outputs(params, rollout)
  if inputs == "values":
    return outcome_rm.last_token_scores(outputs, rollout.mask)
  return beta * jnp.sum((outputs - rollout.ref_logp) * rollout.mask, axis=-1)


class RewardModel(stages.Stage):
  name = "reward_model"
  label = "reward model"

  @staticmethod
  def check_config(config) -> None:
    c = config
    if "reward_model" not in c:
      raise ValueError("config.stages has 'reward_model' but the config has no reward_model block "
                       "(steps, role, eval_every); see configs/implicit_prm.py")
    specs = role_specs(c)
    role = c.reward_model.role
    if role not in specs or specs[role].kind not in ROLE_KIND.values():
      raise ValueError(f"config.reward_model.role={role!r} must name a role of config.roles of kind 'lm' (an "
                       f"implicit PRM) or 'value' (an outcome reward model); config.roles has {sorted(specs)}")
    inputs = next(i for i, kind in ROLE_KIND.items() if kind == specs[role].kind)
    name, options, where = objective_of(c)
    rl.check_objective(name, stage="reward_model", inputs=inputs, where=where)
    registry.resolve_options(name, options)
    scoring.reward_specs(c.rewards)
    data = c.reward_model.get("data", "samples")
    if data not in DATA:
      raise ValueError(f"config.reward_model.data={data!r} is not one of {DATA}")
    if data == "solution_pairs" and c.rollout.group_size % 2:
      raise ValueError(f"config.reward_model.data='solution_pairs' fills each group with (worked, flawed) pairs: "
                       f"rollout.group_size={c.rollout.group_size} must be even")
    if registry.resolve_options(name, options).get("label_balance") and c.train.grad_accum_steps > 1:
      raise ValueError(f"{where}={name!r} with label_balance weighs the classes of the batch it sees: use "
                       f"train.grad_accum_steps=1 (got {c.train.grad_accum_steps}), or the weights would be "
                       "those of each micro-batch")
    if c.rollout.prompts_per_step % c.train.grad_accum_steps:
      raise ValueError(f"rollout.prompts_per_step={c.rollout.prompts_per_step} does not split into "
                       f"train.grad_accum_steps={c.train.grad_accum_steps} micro-batches of whole groups")

  def __init__(self, context: stages.Context, start: int):
    super().__init__(context, start)
    c = context.config
    self.steps = int(c.reward_model.steps)
    self.eval_every = int(c.reward_model.get("eval_every", 0) or 0)
    self.role = c.reward_model.role
    self.data = c.reward_model.get("data", "samples")
    roles = context.roles
    role = roles[self.role]
    name, options, _ = objective_of(c)
    self.objective = registry.spec(name)
    self.options = registry.resolve_options(name, options)
    self.group_size, self.prompts = int(c.rollout.group_size), int(c.rollout.prompts_per_step)
    self.accum = int(c.train.grad_accum_steps)
    self.rewards = scoring.RewardSet(c.rewards, roles, with_labels=True)
    self.optimizer = optim.from_config(c.optim, roles.specs[self.role].lr, total_steps=self.steps,
                                       schedule="constant", warmup_steps=0)
    self.placement = role.placement.with_optimizer(self.optimizer, role.abstract_params)
    self.loss = learner.objective_loss(role.scorer, self.objective.fn, self.options)
    self.update = learner.make_update(self.loss, self.optimizer, self.placement, num_microbatches=self.accum,
                                      group_size=self.group_size, loss_key=f"loss/{self.role}")
    self.needs_reference = self.objective.needs_reference(self.options)
    self._scores = context.placement.jit(
        functools.partial(outcome_scores, role.scorer, self.objective.inputs, float(self.options.get("beta", 1.0))),
        in_shardings=(self.placement.params, context.placement.rows), out_shardings=context.placement.rows)

  def check(self) -> None:
    stages.check_divides("rollout batch (prompts_per_step x group_size)", self.prompts * self.group_size,
                         self.ctx.placement.batch_shards)
    rollout = stages.abstract_rollout(self.ctx.config, self.prompts * self.group_size // self.accum,
                                      reference=self.needs_reference)
    jax.eval_shape(self.loss, self.ctx.roles[self.role].abstract_params, rollout)

  def enter(self, state):
    roles = self.ctx.roles
    new = {"policy": {"params": state["policy"]["params"] if "policy" in state
                      else roles.create("policy", state)}}
    new["reference"] = {"params": roles.create("reference", new)}
    params = roles.create(self.role, new)
    new[self.role] = {"params": params, "opt_state": self.placement.jit(
        self.optimizer.init, in_shardings=(self.placement.params,), out_shardings=self.placement.opt_state)(params)}
    return new

  def state_shardings(self):
    roles = self.ctx.roles
    return {"policy": {"params": roles["policy"].placement.params},
            "reference": {"params": roles["reference"].placement.params},
            self.role: {"params": self.placement.params, "opt_state": self.placement.opt_state}}

  def labelled_samples(self, state, examples: list[dict], key):
    """The policy's samples of `examples`, with the verifier's labels and reference log-probs."""
    ctx, policy = self.ctx, self.ctx.roles.policy
    conditions, local = stages.prompt_groups(ctx, examples, self.group_size)
    rollout = policy.sample(state["policy"]["params"], conditions, key)
    if self.needs_reference:
      rollout = rollout.update(ref_logp=ctx.roles["reference"].scorer.compute_logprobs(
          state["reference"]["params"], rollout))
    rollout, stats = self.rewards.score(rollout, state, prompts=[e["prompt"] for e in local],
                                        completions=policy.decode(rollout), columns=scoring.columns_of(local))
    return rollout, stats

  def labelled_pairs(self, state, examples: list[dict], rng: np.random.Generator):
    """Teacher-forced (worked, flawed) pairs of `examples` (`solution_pairs`), `group_size / 2` pairs per
    example in one group, with labels 1 / 0 and reference log-probs: a rollout of the stage's shape."""
    ctx = self.ctx
    prompts, texts, labels, _ = solution_pairs(ctx.task, examples, self.group_size // 2, rng)
    size, rows = len(texts), ctx.host_rows(len(texts))
    conditions = ctx.roles.policy.conditions(prompts[rows], (np.arange(size) // self.group_size)[rows], size)
    ids, mask = encode_solutions(ctx.task.tokenizer, texts[rows], int(ctx.config.task.max_completion_length))
    arrays = ctx.to_global({"actions": ids, "mask": mask.astype(np.float32), "labels": labels[rows],
                            "old_logp": np.zeros(ids.shape, np.float32)}, size)
    rollout = Rollout(actions=arrays["actions"], mask=arrays["mask"], old_logp=arrays["old_logp"],
                      group_ids=conditions["group_ids"],
                      extras={"prompt_ids": conditions["prompt_ids"], "prompt_mask": conditions["prompt_mask"],
                              "labels": arrays["labels"]})
    if self.needs_reference:
      rollout = rollout.update(ref_logp=ctx.roles["reference"].scorer.compute_logprobs(
          state["reference"]["params"], rollout))
    return rollout, {"stats/label_mean": float(labels.mean())}

  def step(self, state, step: int):
    c = self.ctx.config
    idx = batching.batch_indices(len(self.ctx.task.train), self.prompts, seed=c.seed + 2, step=step - self.start)
    examples = [self.ctx.task.train[i] for i in idx]
    if self.data == "solution_pairs":
      rollout, stats = self.labelled_pairs(state, examples, np.random.default_rng([c.seed, step]))
    else:
      rollout, stats = self.labelled_samples(state, examples, jax.random.fold_in(self.ctx.key, step))
    role = state[self.role]
    params, opt_state, metrics = self.update(role["params"], role["opt_state"], rollout)
    return {**state, self.role: {"params": params, "opt_state": opt_state}}, {**metrics, **stats}

  def evaluate(self, state, step: int) -> dict[str, float]:
    """Outcome-score quality of the role on held-out problems: the fraction of (correct, incorrect)
    pairs of the same problem it orders right, and the label accuracy of sign(r); on the policy's
    samples ("samples", with the score's correlations with length and steps) or on fixed worked and
    flawed solutions ("solution_pairs")."""
    ctx = self.ctx
    examples = ctx.task.eval[: len(ctx.task.eval) // self.prompts * self.prompts]
    if not examples:
      raise ValueError(f"task.num_eval={len(ctx.task.eval)} is below rollout.prompts_per_step={self.prompts}")
    scores, labels, lengths, steps = [], [], [], []
    gather = lambda x: sharding.gather_rows(sharding.local_rows(x))  # noqa: E731
    rng = np.random.default_rng([ctx.config.seed, EVAL_PAIRS_SEED])  # the same held-out pairs at every evaluation
    for start in range(0, len(examples), self.prompts):
      chunk = examples[start:start + self.prompts]
      if self.data == "solution_pairs":
        rollout, _ = self.labelled_pairs(state, chunk, rng)
      else:
        key = jax.random.fold_in(jax.random.fold_in(ctx.key, step), start + (1 << 20))
        rollout, _ = self.labelled_samples(state, chunk, key)
        if ctx.task.step_ends is not None:
          steps.append(sharding.gather_rows(np.asarray([len(ctx.task.step_ends(t))
                                                        for t in ctx.roles.policy.decode(rollout)], np.float64)))
      scores.append(gather(self._scores(state[self.role]["params"], rollout)))
      labels.append(gather(rollout["labels"]))
      lengths.append(gather(rollout.mask).sum(-1))
    r, y = np.concatenate(scores), np.concatenate(labels)
    # Pairs within a group; with "solution_pairs" only the (worked, flawed) pairs drawn together
    # (rows 2k, 2k + 1). A tie counts one half: a scorer that cannot tell the two apart (an
    # untrained implicit PRM scores every response 0) is at chance, and one that orders them the
    # wrong way is below it.
    groups = np.arange(len(r)) // (2 if self.data == "solution_pairs" else self.group_size)
    accuracy, pairs = scoring.pair_accuracy(r, y, groups)
    out = {"eval/pair_accuracy": float(accuracy), "eval/label_accuracy": float(np.mean((r > 0) == (y > 0.5))),
           "eval/num_pairs": float(pairs)}
    if self.data == "samples":
      out["eval/score_length_corr"] = prm_eval.pearson(r, np.concatenate(lengths))
      if steps:
        out["eval/score_steps_corr"] = prm_eval.pearson(r, np.concatenate(steps))
    return out
