"""The typed rollout batch that every stage passes on.

A `Rollout` is a pytree (a frozen `flax.struct` dataclass) whose leaves all have the rows
as their leading dimension, so `jax.tree.map` slices, shards and splits it like one array.
It also reads like a mapping (`rollout["mask"]`, `rollout.get("ref_logp")`, `"ref_logp" in
rollout`), which is all an objective or an advantage estimator sees: they stay pure
functions over arrays and import nothing from the engine.

Fields (B rows, T steps: completion tokens of a language model, denoising steps of a
diffusion model):
- `actions`: what was sampled, `[B, T, ...]` (token ids `[B, T]` for a language model).
- `mask`: `[B, T]` float32, 1 on real steps.
- `old_logp`: `[B, T]` log-probs of the actions under the sampling parameters (the sampler's
  or a teacher-forced recomputation, `config.train.old_logp`).
- `group_ids`: `[B]` int32, the prompt (condition) each row was sampled for, unique within
  a step. Rows of one group come from one policy snapshot and travel together: every mini-
  and micro-batch holds whole groups.
- `rewards`: `[B]` or `[B, T]` combined reward; `advantages`: `[B]` or `[B, T]`;
  `ref_logp`: `[B, T]` log-probs under the reference role (when something needs them).
- `extras`: regime and stage extras by name, each `[B, ...]`: the prompts of a language
  model (`prompt_ids`, `prompt_mask`), `outcome_rewards`, `token_rewards`, `valid`,
  `labels`, `values`, `returns`, `sampler_logp`, `is_weight`, and after a likelihood reward
  spliced the reference answer after each chain of thought (`rewards.likelihood`):
  `token_mask` (the tokens present; `mask` then covers the chain of thought only) and
  `answer_mask` (the reference answer's tokens), ...
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import jax
from flax import struct

_FIELDS = ("actions", "mask", "old_logp", "group_ids", "rewards", "advantages", "ref_logp")


@struct.dataclass
class Rollout(Mapping):
  """A batch of sampled rows; see the module docstring."""
  actions: jax.Array
  mask: jax.Array
  old_logp: jax.Array
  group_ids: jax.Array
  rewards: jax.Array | None = None
  advantages: jax.Array | None = None
  ref_logp: jax.Array | None = None
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)

  # -- the mapping view that objectives read ---------------------------------------------

  def __getitem__(self, key: str):
    value = getattr(self, key) if key in _FIELDS else self.extras.get(key)
    if value is None:
      raise KeyError(f"the rollout has no {key!r}; it has {sorted(self)}")
    return value

  def __iter__(self) -> Iterator[str]:
    yield from (k for k in _FIELDS if getattr(self, k) is not None)
    yield from self.extras

  def __len__(self) -> int:
    return sum(1 for _ in self)

  # -- building ---------------------------------------------------------------------------

  def with_extras(self, **extras) -> "Rollout":
    """A copy with these extras added (or replaced)."""
    return self.replace(extras={**self.extras, **extras})

  def update(self, **values) -> "Rollout":
    """A copy with the given fields or extras set (a name that is not a field is an extra)."""
    fields = {k: v for k, v in values.items() if k in _FIELDS}
    extras = {k: v for k, v in values.items() if k not in _FIELDS}
    return self.replace(**fields, extras={**self.extras, **extras})

  def without(self, *extras: str) -> "Rollout":
    """A copy without these extras (absent ones are ignored)."""
    return self.replace(extras={k: v for k, v in self.extras.items() if k not in extras})

  @property
  def num_rows(self) -> int:
    return int(self.mask.shape[0])
