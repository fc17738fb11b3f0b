"""Loss aggregation over tokens and sequences, as (sum, denominator) pairs.

Every aggregator returns a pair `(total, denominator)` instead of a mean, so that the
same loss is obtained whether a batch is processed whole, split into micro-batches with
gradient accumulation, or sharded over data-parallel devices: the caller adds up the
totals and the denominators separately and divides once, at the end.

The denominator never depends on parameters, so the gradient of `total / denominator`
is `grad(total) / denominator` and can be accumulated the same way.

Shapes: `values` and `mask` are `[B, T]`; `mask` is 1 on real tokens, 0 on padding.

Empty rows: a fully masked row is absent in every mode. It adds nothing to the total and is
not counted in any denominator (the sequence modes count only rows with at least one token,
as verl >= 0.6 does for `seq-mean-token-sum`), so padding a batch with empty rows never
changes a loss.

Masked entries of `values` are ignored whatever they hold (NaN and +-inf included): they are
replaced by 0 before any arithmetic (`checks.fill_masked`), and so get a zero gradient.
"""
from __future__ import annotations

import chex
import jax.numpy as jnp

from objectives import checks

Array = chex.Array

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def _check(values: Array, mask: Array) -> tuple[Array, Array]:
  """(values with 0 at masked entries, mask as values' dtype)."""
  chex.assert_rank(values, 2)
  chex.assert_equal_shape((values, mask))
  return checks.fill_masked(values, mask), mask.astype(values.dtype)


def token_mean(values: Array, mask: Array) -> tuple[Array, Array]:
  """Mean over every unmasked token of the batch (DAPO, BNPO; verl `token-mean`).

  Returns `(sum_{b,t} m v, sum_{b,t} m)`.
  """
  values, mask = _check(values, mask)
  return jnp.sum(values * mask), jnp.sum(mask)


def seq_mean_token_mean(values: Array, mask: Array) -> tuple[Array, Array]:
  """Mean over sequences of each sequence's token mean (original GRPO).

  Returns `(sum_b [sum_t m v / max(sum_t m, 1)], #sequences with >= 1 token)`. A fully
  masked row contributes 0 to both parts, so it neither adds NaN nor dilutes the mean.
  """
  values, mask = _check(values, mask)
  lengths = jnp.sum(mask, axis=-1)  # [B]
  per_seq = jnp.sum(values * mask, axis=-1) / jnp.maximum(lengths, 1.0)
  return jnp.sum(per_seq), _nonempty_rows(mask)


def _nonempty_rows(mask: Array) -> Array:
  return jnp.sum((jnp.sum(mask, axis=-1) > 0).astype(mask.dtype))


def seq_mean_token_sum(values: Array, mask: Array) -> tuple[Array, Array]:
  """Mean over sequences of each sequence's token sum (verl `seq-mean-token-sum`).

  Returns `(sum_{b,t} m v, #sequences with >= 1 token)`.
  """
  values, mask = _check(values, mask)
  return jnp.sum(values * mask), _nonempty_rows(mask)


def seq_mean_token_sum_norm(
    values: Array, mask: Array, *, max_length: int | None = None
) -> tuple[Array, Array]:
  """Token sum divided by B x max_length (Dr. GRPO, arXiv 2503.20783).

  `max_length` defaults to the mask's width T; B counts the rows with at least one token
  (equal to the batch size unless a row is fully masked). The denominator does not depend
  on the lengths, so the loss does not favour short or long sequences.
  """
  values, mask = _check(values, mask)
  length = values.shape[1] if max_length is None else max_length
  return jnp.sum(values * mask), _nonempty_rows(mask) * length


def aggregate(values: Array, mask: Array, mode: str, **kwargs) -> tuple[Array, Array]:
  """Dispatches to the aggregator named `mode` (one of `AGGREGATIONS`)."""
  fns = {
      "token_mean": token_mean,
      "seq_mean_token_mean": seq_mean_token_mean,
      "seq_mean_token_sum": seq_mean_token_sum,
      "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
  }
  if mode not in fns:
    raise ValueError(f"aggregation mode={mode!r} is not one of {AGGREGATIONS}")
  return fns[mode](values, mask, **kwargs)


def safe_divide(total: Array, denominator: Array) -> Array:
  """total / denominator, and 0 (not NaN) when the denominator is 0."""
  return jnp.where(denominator > 0, total / jnp.maximum(denominator, 1e-12), 0.0)


def masked_mean(values: Array, mask: Array, axis=None) -> Array:
  """Mean of `values` where `mask` is 1; 0 where nothing is unmasked."""
  values = checks.fill_masked(values, mask)
  mask = mask.astype(values.dtype)
  return safe_divide(jnp.sum(values * mask, axis=axis), jnp.sum(mask, axis=axis))


def masked_whiten(values: Array, mask: Array, *, shift_mean: bool = True, unbiased: bool = True,
                  eps: float = 1e-8) -> Array:
  """(v - mean) / sqrt(var + eps) over unmasked entries, as verl's `masked_whiten`.

  The variance is unbiased (Bessel's correction, n / (n - 1)) by default, as in verl and
  PRIME; with fewer than two unmasked entries it is taken as 0. With `shift_mean=False`
  the mean is added back after scaling. Masked entries are 0.
  """
  values = checks.fill_masked(values, mask)
  mask = mask.astype(values.dtype)
  mean = masked_mean(values, mask)
  var = masked_mean(jnp.square(values - mean), mask)
  if unbiased:
    count = jnp.sum(mask)
    var = jnp.where(count > 1, var * count / jnp.maximum(count - 1, 1.0), 0.0)
  whitened = (values - mean) * jnp.reciprocal(jnp.sqrt(var + eps))
  if not shift_mean:
    whitened = whitened + mean
  return whitened * mask
