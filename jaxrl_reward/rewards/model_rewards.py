"""In-jit rewards: pure functions of the rollout and of models in the state.

A host-side reward (`rewards.base`) scores decoded text on the host and gives `[B]`. An
in-jit reward runs inside a compiled function on the rollout's arrays and may read models
of the training state, so it can give per-token rewards:

    @register_model_reward("implicit_prm", level="token", roles=("prm", "reference"))
    def implicit_prm(rollout, roles, *, beta=0.05):
      return objectives.implicit_prm.token_rewards(
          roles["prm"].outputs(rollout), roles["reference"].outputs(rollout), rollout["mask"], beta=beta)

- `rollout`: the `Rollout` (reads like a dict of `[B, ...]` arrays).
- `roles`: a mapping from the role names the reward declared to `BoundRole`s: the role's
  parameters (`.params`), its scorer (`.scorer`, for a forward pass of your own) and
  `.outputs(rollout)`, its per-step outputs on the rollout (log-probs of an "lm" role,
  values of a "value" role).
- Options are the keyword-only arguments (defaults = the reward's defaults), set per reward
  in `config.rewards.options.<name>`.
- `level`: "sequence" (returns `[B]`) or "token" (returns `[B, T]`, 0 on masked steps).

A reward that needs host-side inputs first (for example the reference answers of the task,
tokenised and spliced after each chain of thought) also registers `prepare(rollout, *,
policy, task, columns, options) -> (rollout, stats)`, which the RL stage calls on each fresh
sample before anything else reads it, and `layout(options, task) -> (extra_steps,
per_step, per_row)`: the columns it adds to `T` and the extras it adds, for the start-up traces
(it checks the options and the task, so a bad one fails before any warm-up).
At most one reward of a run may prepare.

`roles` declared here must exist in the run (`config.roles`, or the built-in `policy` and
`reference`); the engine checks that when the run starts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from objectives import implicit_prm
from objectives import registry as objective_registry

LEVELS = ("sequence", "token")


@dataclasses.dataclass(frozen=True)
class ModelReward:
  name: str
  fn: Callable[..., jax.Array]
  level: str
  roles: tuple[str, ...]
  options: objective_registry.Options
  prepare: Callable[..., Any] | None = None
  layout: Callable[..., tuple[int, tuple[str, ...], tuple[str, ...]]] | None = None


@dataclasses.dataclass(frozen=True)
class BoundRole:
  """A role's parameters and scorer inside a compiled reward."""
  params: Any
  scorer: Any

  def outputs(self, rollout) -> jax.Array:
    return self.scorer.outputs(self.params, rollout)


_REGISTRY = objective_registry.Registry("in-jit reward")


def register_model_reward(name: str, *, level: str, roles: tuple[str, ...] = (), overwrite: bool = False,
                          prepare: Callable[..., Any] | None = None, layout: Callable[..., Any] | None = None):
  """Decorator registering an in-jit reward `fn(rollout, roles, **options)` under `name`
  (`prepare` and `layout`: see the module docstring; give both or neither)."""
  if level not in LEVELS:
    raise ValueError(f"level={level!r} is not one of {LEVELS}")
  if (prepare is None) != (layout is None):
    raise ValueError(f"in-jit reward {name!r}: give both prepare and layout, or neither")

  def decorator(fn):
    _REGISTRY.add(name, ModelReward(name, fn, level, tuple(roles),
                                    objective_registry.signature_options(fn, positional=2), prepare, layout),
                  overwrite=overwrite)
    return fn

  return decorator


def is_registered(name: str) -> bool:
  return name in _REGISTRY


def get(name: str) -> ModelReward:
  return _REGISTRY[name]


def names() -> list[str]:
  return _REGISTRY.names()


@register_model_reward("implicit_prm", level="token", roles=("prm", "reference"))
def implicit_prm_reward(rollout, roles, *, beta=0.05):
  """Token rewards of an implicit PRM role: beta (log pi_prm - log pi_ref) (arXiv 2412.01981).

  Uses `rollout["ref_logp"]` when the engine already computed the reference's log-probs.
  """
  ref = rollout.get("ref_logp")
  if ref is None:
    ref = roles["reference"].outputs(rollout)
  return implicit_prm.token_rewards(roles["prm"].outputs(rollout), ref, rollout["mask"], beta=beta)
