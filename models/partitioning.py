"""Logical axis names -> mesh shardings: the rules table, parameter shardings and the
activation constraints that model code calls.

Model code names only logical axes (`embed`, `vocab`, `mlp`, `heads`, `kv_heads`,
`head_dim`, `norm` on parameters; `act_batch`, `act_seq`, `act_embed`, `act_vocab`, ... on
activations). A run maps them to the axes of its mesh with a rules table (MaxText style):

    rules = merge_rules((("embed", "fsdp"), ("vocab", "tensor"), ...))

A rule's value is a mesh axis, a tuple of mesh axes, or None (replicated). A tensor dim
whose size does not divide by the product of its mesh axes stays replicated; a mesh axis is
never used twice in one spec. `constrain` pins an activation only while a mesh is active
(`activate`, at trace time); elsewhere it is the identity, so models run unchanged on one
device. This module depends on jax and flax only: models import it, the engine
(`jaxrl_reward.sharding`) builds meshes and batch placement on top of it.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# MaxText-style defaults: FSDP shards the hidden ("embed") dim of every weight, tensor
# parallelism shards heads, the MLP and the vocabulary; the batch runs over data x fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


def merge_rules(overrides: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
  """DEFAULT_RULES with the given `(logical, mesh_axes)` pairs replacing or adding entries."""
  table = dict(DEFAULT_RULES)
  for entry in overrides:
    if len(entry) != 2:
      raise ValueError(f"sharding_rules entries are (logical_name, mesh_axes) pairs, got {entry!r}")
    name, target = entry
    table[str(name)] = tuple(target) if isinstance(target, list) else target
  return tuple(table.items())


# ----------------------------------------------------------------------------- specs


def axes_of(target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def logical_to_spec(names: Sequence[str | None], rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec of a tensor whose dims have the given logical `names`.

  A dim keeps only the mesh axes (of its rule) that exist in `mesh` with size > 1, that no
  earlier dim of the tensor uses, and (when `shape` is given) whose product divides it.

  Raises:
    KeyError: a logical name that has no rule, naming it and the known names.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    axes = [a for a in axes_of(table[name]) if mesh.shape.get(a, 1) > 1 and a not in used]
    if shape is not None:
      while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes.pop()  # drop the innermost axis until the dim divides
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return PartitionSpec(*spec)


def _logical_names(variable) -> tuple | None:
  meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
  return meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")


def param_shardings(params, mesh: Mesh, rules) -> Any:
  """A tree of NamedSharding with the structure of `params` (an nnx.State, abstract or concrete).

  Each parameter is sharded by its logical axis names (nnx metadata); a parameter without
  names is replicated. The result has the same pytree structure as `params` (each
  `nnx.Param` holds its sharding as value), so it serves as `in_shardings` /
  `out_shardings` and for `optax.tree_map_params`.
  """
  def one(variable):
    if not isinstance(variable, nnx.Variable):
      return NamedSharding(mesh, logical_to_spec((None,) * np.ndim(variable), rules, mesh))
    value = variable.get_raw_value()
    names = _logical_names(variable)
    spec = logical_to_spec(names, rules, mesh, value.shape) if names else PartitionSpec()
    return variable.replace(value=NamedSharding(mesh, spec))

  return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ----------------------------------------------------------------------------- activations

_ACTIVE = threading.local()


@contextlib.contextmanager
def activate(mesh: Mesh | None, rules) -> Iterator[None]:
  """Within the block (trace time), `constrain` pins activations to `mesh` by `rules`."""
  previous = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = None if mesh is None else (mesh, tuple(rules))
  try:
    yield
  finally:
    _ACTIVE.value = previous


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names under `activate`; identity otherwise."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  mesh, rules = active
  if mesh.size == 1:
    return x
  spec = logical_to_spec(names, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
