"""Supervised warm-up of the policy: token-mean cross-entropy on the task's worked solutions.

Reads `config.warmup` (`steps`, `batch_size`, `lr`; cosine decay after the shared linear
warm-up of `config.optim.warmup_steps`). The targets of step s come from
`task.sft_targets(examples, s)`, a pure function of the step, so a resumed run sees the
same data.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxrl_reward import learner
from jaxrl_reward import logprobs as logprobs_lib
from jaxrl_reward import optim
from jaxrl_reward import stages
from jaxrl_reward.data import batching


class SFT(stages.Stage):
  name = "sft"
  label = "warm-up"

  def __init__(self, context: stages.Context, start: int):
    super().__init__(context, start)
    c = context.config
    self.steps = int(c.warmup.steps)
    self.batch_size = int(c.warmup.batch_size)
    stages.check_divides("warmup.batch_size", self.batch_size, context.placement.batch_shards)
    self.optimizer = optim.from_config(c.optim, c.warmup.lr, total_steps=self.steps, schedule="cosine",
                                       warmup_steps=min(c.optim.warmup_steps, self.steps))
    role = context.roles["policy"]
    self.graphdef = role.graphdef
    self.placement = role.placement.with_optimizer(self.optimizer, role.abstract_params)
    self.update = learner.make_update(self.loss, self.optimizer, self.placement, loss_key="loss/sft")

  def check(self) -> None:
    if self.steps:  # a task checks its worked solutions on the first call (a math file: every row's length)
      self.ctx.task.sft_targets(self.ctx.task.train[:1], 0)

  def loss(self, params, batch):
    """Token-mean cross-entropy on the target tokens of right-padded sequences `[b, L]`."""
    model = nnx.merge(self.graphdef, params)
    hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)  # [b, L, D]
    logp = logprobs_lib.token_logprobs(hidden[:, :-1], model.unembedding(), batch["input_ids"][:, 1:])
    mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return -jnp.sum(logp * mask), jnp.sum(mask), {}

  def enter(self, state):
    params = state["policy"]["params"] if "policy" in state else self.ctx.roles.create("policy", state)
    return {"policy": {"params": params, "opt_state": self.placement.jit(
        self.optimizer.init, in_shardings=(self.placement.params,),
        out_shardings=self.placement.opt_state)(params)}}

  def state_shardings(self):
    return {"policy": {"params": self.placement.params, "opt_state": self.placement.opt_state}}

  def step(self, state, step: int):
    ctx, size = self.ctx, self.batch_size
    idx = batching.batch_indices(len(ctx.task.train), size, seed=ctx.config.seed, step=step - self.start)
    examples = [ctx.task.train[i] for i in idx]
    targets = ctx.task.sft_targets(examples, step - self.start)  # global: the noise depends on the row
    rows = ctx.host_rows(size)
    t = ctx.config.task
    local = batching.encode_sft(ctx.task.tokenizer, [e["prompt"] for e in examples[rows]], targets[rows],
                                max_length=t.max_prompt_length + t.max_completion_length)
    policy = state["policy"]
    params, opt_state, metrics = self.update(policy["params"], policy["opt_state"], ctx.to_global(local, size))
    return {**state, "policy": {"params": params, "opt_state": opt_state}}, metrics
