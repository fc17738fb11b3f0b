"""The interface an RL stage needs from a model kind.

A policy turns a batch of conditions (prompts, class labels, ...) into a `Rollout` and
recomputes the per-step log-probs of a rollout's actions under given parameters. T is the
number of completion tokens for a language model and of denoising steps for a diffusion
model; objectives only ever see the `[B, T]` arrays, so they do not depend on the kind.

    rollout = policy.sample(params, conditions, key)   # actions, old_logp [B, T], mask [B, T], group_ids [B]
    logp = policy.logprobs(params, rollout)            # [B, T], traceable: used inside the loss

A model that scores rollouts without sampling them (a reference, a reward or process-reward
model, a value model) is a `RolloutScorer`: `outputs(params, rollout) -> [B, T]` (log-probs
of the actions, or value estimates). Every policy is a scorer whose outputs are its log-probs.
"""
from __future__ import annotations

from typing import Any, Protocol

import jax

from jaxrl_reward.rollout import Rollout


class RolloutScorer(Protocol):
  """Per-step outputs of a model on a rollout (`kind` says which: "logprobs" or "values")."""
  kind: str

  def outputs(self, params: Any, rollout: Rollout) -> jax.Array:
    """`[B, T]` float32, traceable (called inside jitted steps)."""


class Policy(RolloutScorer, Protocol):
  """A model that samples rollouts and scores their actions."""

  def sample(self, params: Any, conditions: Any, key: jax.Array) -> Rollout:
    """Samples one row per condition; `conditions` carry `group_ids` `[B]`."""

  def logprobs(self, params: Any, rollout: Rollout) -> jax.Array:
    """`[B, T]` log-probs of `rollout.actions` under `params` (0 where the mask is 0)."""
