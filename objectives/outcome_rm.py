"""Outcome reward model (ORM): one score per response, trained on outcome labels.

The baseline of the implicit PRM paper (Yuan et al., arXiv 2412.01981, Table 1 "ORM"): a model of
the policy's size with a scalar head, trained with binary cross-entropy on the verifier's label
of each sampled response, read at the response's last token (as an ORM in TRL's
`RewardTrainer` / verl's reward model reads the last token's value). It scores sequences only:
it has no step scores, so a Best-of-N with it ranks whole responses.

Shapes: values `[B, T]` (the value head at every completion position; `mask` 1 on real tokens),
labels `[B]` in [0, 1].

    s_b = V_{b, last_b}     (last_b = the last position with mask 1)
    L   = mean_b BCE(sigma(s_b), l_b)

A row without tokens has no score (s = 0) and leaves the loss: it is not counted.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from objectives import aggregation, checks, registry

Array = jax.Array


def last_token_scores(values: Array, mask: Array) -> Array:
  """`[B]` the value at each row's last unmasked position; 0 for a row without tokens.

  Args:
    values: `[B, T]`; ignored where `mask` is 0, whatever it holds there (NaN and inf included).
    mask: `[B, T]`.
  """
  checks.check_rank("values", values, 2, "[B, T]")
  checks.check_shape("mask", mask, jnp.shape(values), "values")
  present = jnp.asarray(mask) > 0
  t = values.shape[1]
  last = (t - 1) - jnp.argmax(jnp.flip(present, -1), axis=-1)  # [B]
  picked = jnp.take_along_axis(checks.fill_masked(values, present), last[:, None], axis=-1)[:, 0]
  return jnp.where(jnp.any(present, axis=-1), picked, 0.0)


def bce_terms(values: Array, mask: Array, labels: Array) -> tuple[Array, Array, dict[str, Array]]:
  """ORM cross-entropy as (sum over the rows with tokens, their number, metrics).

  Args:
    values: `[B, T]` value-head outputs (logits of "correct").
    mask: `[B, T]`.
    labels: `[B]` outcome labels in [0, 1] (concrete labels outside raise; a row without tokens may
      hold anything, NaN included).

  Returns:
    (sum, count, metrics): `loss/orm_bce`, `stats/orm_accuracy` (sign of s agrees with the label
    thresholded at 0.5) and `stats/orm_score_mean`, over the rows with tokens.
  """
  scores = last_token_scores(values, mask)
  checks.check_shape("labels", labels, scores.shape, "values[:, 0]")
  present = jnp.any(jnp.asarray(mask) > 0, axis=-1)
  checks.check_unit_interval("labels (outcome labels of the ORM loss)", labels, where=present)
  weight = present.astype(scores.dtype)
  y = checks.fill_masked(jnp.asarray(labels).astype(scores.dtype), present)
  per_row = -(y * jax.nn.log_sigmoid(scores) + (1.0 - y) * jax.nn.log_sigmoid(-scores))
  total, count = jnp.sum(per_row * weight), jnp.sum(weight)
  hit = ((scores > 0) == (y > 0.5)).astype(scores.dtype)
  metrics = {"loss/orm_bce": aggregation.safe_divide(total, count),
             "stats/orm_accuracy": aggregation.safe_divide(jnp.sum(hit * weight), count),
             "stats/orm_score_mean": aggregation.safe_divide(jnp.sum(scores * weight), count)}
  return total, count, metrics


@registry.register("outcome_rm_bce", stage="reward_model", inputs="values", needs_reference=False)
def outcome_rm_bce(values: Array, batch: Mapping[str, Array]) -> tuple[Array, Array, dict[str, Array]]:
  """Registered ORM loss: `bce_terms(values, batch["mask"], batch["labels"])` (trains a role of
  kind "value" in the reward-model stage)."""
  for key in ("mask", "labels"):
    if key not in batch or batch[key] is None:
      raise KeyError(f"objective 'outcome_rm_bce' needs batch[{key!r}]; got keys {sorted(batch)}")
  return bce_terms(values, batch["mask"], batch["labels"])
