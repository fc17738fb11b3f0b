"""Value-function (critic) loss: PPO's clipped squared error, as verl `compute_value_loss`.

Schulman et al., "Proximal Policy Optimization Algorithms" (arXiv 1707.06347); verl
`core_algos.compute_value_loss`. Per token, with V the current value estimates (the only input
with gradients), V_old those of the rollout's critic, R the returns and c = `clip_range`:

    L_t = 0.5 max((V_t - R_t)^2, (clip(V_t, V_old_t - c, V_old_t + c) - R_t)^2)

and with `clip_range=None` simply L_t = 0.5 (V_t - R_t)^2. The loss is aggregated over the
unmasked tokens by `objectives.aggregation.aggregate`, as a (sum, denominator) pair that adds
up over micro-batches. Returns are usually GAE's (`objectives.advantages.gae`, returns = A + V).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from objectives import aggregation as agg
from objectives import checks, registry

Array = jax.Array


def value_loss_terms(values: Array, old_values: Array | None, returns: Array, mask: Array, *,
                     clip_range: float | None = 0.2, aggregation: str = "token_mean"
                     ) -> tuple[Array, Array, dict[str, Array]]:
  """Clipped value loss as a (sum, denominator) pair plus scalar metrics.

  Args:
    values: `[B, T]` value estimates V_t under the current parameters (carries gradients).
    old_values: `[B, T]` value estimates of the critic that produced the rollout (the clip's
      centre), or None for sg(values) (the first update on a rollout: the clip is then inactive).
    returns: `[B, T]` regression targets R_t.
    mask: `[B, T]`, 1 on completion tokens; values, old_values and returns are ignored where it is
      0, whatever they hold there (NaN and +-inf included).
    clip_range: c >= 0, or None for the unclipped loss 0.5 (V - R)^2.
    aggregation: one of `objectives.aggregation.AGGREGATIONS` (verl's default is token mean).

  Returns:
    (sum, denominator, metrics): `loss/value` (sum / denominator), `stats/value_clip_frac`
    (fraction of unmasked tokens where the clipped branch is the larger), `stats/value_mean`
    (mean of V over unmasked tokens). Masked tokens contribute nothing.
  """
  checks.check_rank("values", values, 2, "[B, T]")
  shape = jnp.shape(values)
  checks.check_shape("returns", returns, shape, "values")
  checks.check_shape("mask", mask, shape, "values")
  if old_values is not None:
    checks.check_shape("old_values", old_values, shape, "values")
  if clip_range is not None and isinstance(clip_range, (int, float)) and not clip_range >= 0:
    raise ValueError(f"clip_range must be >= 0 or None (no clipping), got {clip_range}")
  values = jnp.asarray(values)
  values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
  dtype = values.dtype
  sg = jax.lax.stop_gradient
  old_values = sg(values) if old_values is None else sg(jnp.asarray(old_values).astype(dtype))
  returns = sg(jnp.asarray(returns).astype(dtype))
  # Padding may hold anything (NaN, inf): replace it in every input before any arithmetic, so
  # that neither the loss nor the gradient (0 there) sees it.
  values, old_values, returns = (checks.fill_masked(x, mask) for x in (values, old_values, returns))
  mask = jnp.asarray(mask).astype(dtype)
  unclipped = jnp.square(values - returns)
  if clip_range is None:
    per_token = 0.5 * unclipped
    clipped_frac = jnp.zeros_like(unclipped)
  else:
    v_clipped = jnp.clip(values, old_values - clip_range, old_values + clip_range)
    clipped = jnp.square(v_clipped - returns)
    per_token = 0.5 * jnp.maximum(unclipped, clipped)
    clipped_frac = (clipped > unclipped).astype(dtype)
  total, denominator = agg.aggregate(per_token, mask, aggregation)
  metrics = {
      "loss/value": sg(agg.safe_divide(total, denominator)),
      "stats/value_clip_frac": sg(agg.masked_mean(clipped_frac, mask)),
      "stats/value_mean": sg(agg.masked_mean(values, mask)),
  }
  return total, denominator, metrics


@registry.register("value_mse", stage="rl", inputs="values", needs_reference=False)
def value_mse(values: Array, batch: Mapping[str, Array], *, clip_range: float | None = 0.2,
              aggregation: str = "token_mean") -> tuple[Array, Array, dict[str, Array]]:
  """Registered critic loss: `value_loss_terms(values [B, T], batch["old_values"], batch["returns"],
  batch["mask"])`; `old_values` may be absent (then sg(values): no clipping)."""
  for key in ("returns", "mask"):
    if key not in batch or batch[key] is None:
      raise KeyError(f"objective 'value_mse' needs batch[{key!r}]; got keys {sorted(batch)}")
  old_values = batch["old_values"] if "old_values" in batch else None
  return value_loss_terms(values, old_values, batch["returns"], batch["mask"], clip_range=clip_range,
                          aggregation=aggregation)
