"""Argument checks shared by the objectives: errors name the argument and the expected layout.

Also the masking helper every objective uses on its inputs: values at masked positions (padding)
may be anything, NaN and +-inf included, and must reach neither a loss nor its gradient. `x * 0`
is NaN for x = NaN or inf, and the gradient through `jnp.where(m, f(x), 0)` is NaN where f'(x)
is, so the inputs themselves are replaced before any arithmetic (`fill_masked`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def check_rank(name: str, x, rank: int | Sequence[int], layout: str) -> None:
  """Raises ValueError unless `x` has `rank` dimensions (one of them, for a sequence of ranks);
  `layout` says what is expected, such as "[B, T]" or "[B] or [B, T]"."""
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  if jnp.ndim(x) not in ranks:
    expected = " or ".join(str(r) for r in ranks)
    raise ValueError(f"{name} must have rank {expected} ({layout}), got shape {jnp.shape(x)}")


def check_shape(name: str, x, shape, like: str) -> None:
  """Raises ValueError unless `x` has exactly `shape` (that of the argument `like`)."""
  if tuple(jnp.shape(x)) != tuple(shape):
    raise ValueError(f"{name} must have the shape of {like} {tuple(shape)}, got {tuple(jnp.shape(x))}")


def is_traced(x) -> bool:
  """Whether `x` is a tracer (its values are unknown while tracing, e.g. under `jax.jit`)."""
  return isinstance(x, jax.core.Tracer)


def check_unit_interval(name: str, x, where=None) -> None:
  """Raises ValueError if a concrete `x` has an entry outside [0, 1] (NaN included).

  Only the entries where `where` (a bool array broadcastable to `x`) is True are checked; when
  `where` is traced, every entry is. A traced `x` cannot be checked and is let through.
  """
  if is_traced(x):
    return
  values = np.asarray(x, np.float64)
  if where is not None and not is_traced(where):
    values = values[np.broadcast_to(np.asarray(where, bool), values.shape)]
  bad = values[~((values >= 0.0) & (values <= 1.0))]
  if bad.size:
    raise ValueError(f"{name} must be in [0, 1], got {bad.size} value(s) outside it, e.g. {bad[0]!r}")


def fill_masked(x, mask, fill: float = 0.0):
  """`x` where `mask > 0`, `fill` elsewhere (mask broadcast against x).

  Applied to an input before any arithmetic, it keeps NaN or inf at masked positions out of
  both the value and the gradient (which is 0 there).
  """
  x = jnp.asarray(x)
  return jnp.where(jnp.asarray(mask) > 0, x, jnp.asarray(fill, x.dtype))
