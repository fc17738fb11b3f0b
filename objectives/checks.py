"""Argument checks shared by the objectives: errors name the argument and the expected layout."""
from __future__ import annotations

import jax.numpy as jnp


def check_rank(name: str, x, rank: int, layout: str) -> None:
  """Raises ValueError unless `x` has `rank` dimensions (`layout` such as "[B, T]")."""
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {jnp.shape(x)}")


def check_shape(name: str, x, shape, like: str) -> None:
  """Raises ValueError unless `x` has exactly `shape` (that of the argument `like`)."""
  if tuple(jnp.shape(x)) != tuple(shape):
    raise ValueError(f"{name} must have the shape of {like} {tuple(shape)}, got {tuple(jnp.shape(x))}")
