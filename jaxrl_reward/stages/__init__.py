"""Stages: a run is a sequence of them, named in `config.stages`.

Each stage kind is one short file over the shared state (a dict of roles, see
`jaxrl_reward.state`) and the global step counter:

- `sft`: supervised warm-up of the policy on the task's worked solutions (`config.warmup`);
- `rl`: rollouts -> rewards -> advantages -> the policy objective (`config.objective`), with
  online updates of further trainable roles (`config.roles`);
- `reward_model`: a reward / process-reward role trained with `config.objective` on the
  policy's samples labelled by the verifier (`config.reward_model`).

A diffusion run (`config.model.kind="diffusion"`) has its own two kinds: `pretrain` (the
denoiser and the image reward / guard models on the task's images) and `rl` (trajectories of
the DDIM sampler, image rewards, the same objectives and learner).

A stage is built once from the config (`STAGES[name](context, start)`, where `start` is the
global step it begins at) and offers:

    check_config(config)             static checks of the config alone (before anything is built)
    enter(state) -> state            the state this stage trains, from the previous one ({} fresh)
    state_shardings() -> tree        shardings of that state (restore onto any mesh)
    step(state, step) -> (state, metrics)
    evaluate(state, step) -> metrics held-out evaluation (default: the policy's accuracy)
    check()                          start-up checks (traces the losses on abstract inputs)

`steps`, `label` (the results-table row "after <label>"), `eval_every` (0: only at the end)
and `evaluates_initial_policy` (evaluate before the first step when the run starts with it)
describe it to the loop in `jaxrl_reward.experiment`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import evaluation
from jaxrl_reward import sharding
from jaxrl_reward.data.task import Task
from jaxrl_reward.rollout import Rollout
from jaxrl_reward.state import Roles


@dataclasses.dataclass
class Context:
  """What every stage shares: the config, the task, the roles and the run's key."""
  config: Any
  task: Task
  roles: Roles

  @property
  def key(self) -> jax.Array:
    return jax.random.PRNGKey(self.config.seed)

  @property
  def placement(self) -> sharding.Placement:
    return self.roles["policy"].placement

  def host_rows(self, global_rows: int) -> slice:
    """This process's rows of a `[global_rows, ...]` batch."""
    return sharding.host_rows(self.placement.mesh, self.placement.rules, global_rows)

  def to_global(self, local, global_rows: int):
    return sharding.to_global(local, self.placement.mesh, self.placement.rules, global_rows)


class Stage:
  """Base class: defaults for the optional parts of the stage interface."""
  name = ""
  label = ""
  steps = 0
  eval_every = 0
  evaluates_initial_policy = False

  def __init__(self, context: Context, start: int):
    self.ctx = context
    self.start = int(start)

  @property
  def end(self) -> int:
    return self.start + self.steps

  @staticmethod
  def check_config(config) -> None:
    """Checks of the config alone, run before the task and the models are built."""

  def check(self) -> None:
    """Start-up checks; raise with a message naming the config key."""

  def evaluate(self, state, step: int) -> dict[str, float]:
    return evaluation.policy_accuracy(self.ctx, state["policy"]["params"], step)

  def save_artifacts(self, state, workdir, step: int) -> None:
    """Files beside the metrics at the end of the stage (e.g. sample grids); called on every process."""


def check_divides(name: str, rows: int, shards: int) -> None:
  """A batch of `rows` must divide over the mesh's batch shards; the error names the key."""
  if rows % shards:
    raise ValueError(f"{name} = {rows} rows does not divide over the mesh's {shards} batch shards "
                     "(config.mesh); change the batch size or the mesh")


def prompt_groups(context: Context, examples: list[dict], group_size: int) -> tuple[Any, list[dict]]:
  """Conditions for `group_size` samples of each example (group-major, group ids 0..N-1) and
  this process's rows of the repeated examples."""
  size = len(examples) * group_size
  rows = context.host_rows(size)
  repeated = [e for e in examples for _ in range(group_size)][rows]
  group_ids = (np.arange(size) // group_size)[rows]
  conditions = context.roles.policy.conditions([e["prompt"] for e in repeated], group_ids, size)
  return conditions, repeated


def abstract_rollout(config, rows: int, *, per_step: tuple[str, ...] = (), per_row: tuple[str, ...] = (),
                     token_rewards: bool = False, reference: bool = False, extra_steps: int = 0) -> Rollout:
  """Shapes of a language-model rollout of `rows` rows as a loss sees it, for start-up traces:
  the sampled fields, the rewards (`[B, T]` with `token_rewards`), the reference log-probs
  (with `reference`), the extras every scored rollout has, and float extras named in
  `per_step` (`[B, T]`) and `per_row` (`[B]`); `extra_steps` columns are added to T (a reward
  that splices a reference answer after each chain of thought)."""
  t, p = config.task.max_completion_length + int(extra_steps), config.task.max_prompt_length
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  extras = {"prompt_ids": i32(rows, p), "prompt_mask": i32(rows, p), "outcome_rewards": f32(rows),
            "valid": jax.ShapeDtypeStruct((rows,), bool), "labels": f32(rows),
            **{k: f32(rows, t) for k in per_step}, **{k: f32(rows) for k in per_row}}
  return Rollout(actions=i32(rows, t), mask=f32(rows, t), old_logp=f32(rows, t), group_ids=i32(rows),
                 rewards=f32(rows, t) if token_rewards else f32(rows), ref_logp=f32(rows, t) if reference else None,
                 extras=extras)


def registry(kind: str = "lm") -> dict[str, type]:
  """The stage kinds of a model kind (`config.model.kind`): "lm" or "diffusion"."""
  if kind == "diffusion":
    from jaxrl_reward.stages import diffusion_rl, pretrain  # noqa: PLC0415
    return {"pretrain": pretrain.Pretrain, "rl": diffusion_rl.DiffusionRL}
  from jaxrl_reward.stages import reward_model, rl, sft  # noqa: PLC0415
  return {"sft": sft.SFT, "rl": rl.RL, "reward_model": reward_model.RewardModel}
