"""Argument checks shared by the objectives: errors name the argument and the expected layout."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


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
