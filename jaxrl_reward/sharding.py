"""Device meshes, batch placement and multi-host data for a run.

The logical-axis machinery (rules table, parameter shardings, activation constraints)
lives in `models.partitioning`, which model code imports; it is re-exported here. A run's
config maps the logical names to the axes of its mesh:

    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))     # -1: the remaining devices
    config.sharding_rules = (("embed", "fsdp"), ("vocab", "tensor"), ...)

Batches are laid out over the batch axes (`act_batch`'s rule, by default `("data",
"fsdp")`); with several processes each one supplies only the rows its devices hold
(`host_rows` says which, `to_global` assembles the global array).

The mesh uses `AxisType.Auto` on every axis: shardings are given at the jit boundary
(`in_shardings` / `out_shardings`) and as constraints inside the model, and XLA's
partitioner propagates them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from models.partitioning import (  # noqa: F401  (re-exported: the engine's one sharding module)
    DEFAULT_RULES, MESH_AXES, axes_of, activate, constrain, logical_to_spec, merge_rules,
    param_shardings)

# ----------------------------------------------------------------------------- mesh


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),), devices=None) -> Mesh:
  """A mesh with the named axes; at most one size may be -1 (the remaining devices).

  Args:
    axes: `((name, size), ...)`, e.g. `(("data", 2), ("fsdp", -1), ("tensor", 2))`.
    devices: the devices to use (default: all devices of all processes).
  Raises:
    ValueError: on a repeated or empty name, two -1 sizes, or sizes whose product is not
      the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple((str(name), int(size)) for name, size in axes)
  names = [n for n, _ in axes]
  if not axes or len(set(names)) != len(names) or not all(names):
    raise ValueError(f"mesh axes must be distinct non-empty names, got mesh={axes!r}")
  sizes = [s for _, s in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may have size -1, got mesh={axes!r}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: sizes must be positive or -1, got mesh={axes!r}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh={axes!r}: {len(devices)} devices do not divide by the fixed axes' {known}")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"mesh={axes!r} needs {math.prod(sizes)} devices but {len(devices)} are available")
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def mesh_from_config(config) -> Mesh:
  """`make_mesh(config.mesh)`, or a pure data-parallel mesh when the config has none."""
  axes = config.get("mesh", None)
  return make_mesh(tuple(axes) if axes else (("data", -1),))


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
  """`config.sharding_rules` over the defaults (a config rule replaces the default one)."""
  return merge_rules(config.get("sharding_rules", None) or ())


# ----------------------------------------------------------------------------- specs


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def optimizer_shardings(optimizer, abstract_opt_state, params_sharding, mesh: Mesh):
  """Shardings of an optax state: moments follow their parameter, counters are replicated."""
  return optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt_state, params_sharding,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, NamedSharding)))


# ----------------------------------------------------------------------------- batches


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Rows over the batch axes (`act_batch`'s rule), every other dim replicated."""
  axes = [a for a in axes_of(dict(rules).get("act_batch")) if mesh.shape.get(a, 1) > 1]
  first = None if not axes else axes[0] if len(axes) == 1 else tuple(axes)
  return NamedSharding(mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules) -> int:
  """Number of distinct row blocks of a batch: a global batch must divide by it."""
  spec = batch_sharding(mesh, rules, 1).spec[0]
  return math.prod(mesh.shape[a] for a in axes_of(spec))


def host_rows(mesh: Mesh, rules, global_rows: int) -> slice:
  """The contiguous rows of a `[global_rows, ...]` batch that this process's devices hold.

  Raises:
    ValueError: if `global_rows` does not divide into the batch shards, or this process's
      rows are not contiguous (a mesh whose batch axes interleave processes).
  """
  shards = batch_shards(mesh, rules)
  if global_rows % shards:
    raise ValueError(f"a batch of {global_rows} rows does not divide over {shards} batch shards "
                     f"of mesh {dict(mesh.shape)}")
  sharding = batch_sharding(mesh, rules, 1)
  starts = {index[0].start or 0
            for index in sharding.addressable_devices_indices_map((global_rows,)).values()}
  block = global_rows // shards
  lo, hi = min(starts), max(starts) + block
  if hi - lo != block * len(starts):  # a gap: another process holds rows in between
    raise ValueError(f"the rows of process {jax.process_index()} are not contiguous on mesh "
                     f"{dict(mesh.shape)}; put the batch axes first in config.mesh")
  return slice(lo, hi)


def to_global(local, mesh: Mesh, rules, global_rows: int):
  """This process's rows (a pytree of numpy arrays) -> global `jax.Array`s over the batch axes."""
  def one(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, rules, x.ndim)
    return jax.make_array_from_process_local_data(sharding, x, (global_rows,) + x.shape[1:])
  return jax.tree.map(one, local)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, as one numpy array (in order)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  pieces = {}
  for shard in x.addressable_shards:
    start = shard.index[0].start or 0
    if start not in pieces:
      pieces[start] = np.asarray(shard.data)
  return np.concatenate([pieces[k] for k in sorted(pieces)], axis=0)


def gather_rows(local: np.ndarray) -> np.ndarray:
  """Concatenates every process's rows (in process order): the whole batch on every host."""
  if jax.process_count() == 1:
    return np.asarray(local)
  return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


# ----------------------------------------------------------------------------- reports


def per_device_bytes(tree, device=None) -> int:
  """Bytes of `tree`'s arrays held on `device` (default: the first local device)."""
  device = jax.local_devices()[0] if device is None else device
  total = 0
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      if shard.device == device:
        total += shard.data.size * shard.data.dtype.itemsize
  return total


def unsharded_report(tree, *, min_size: int = 1 << 16) -> list[tuple[str, tuple[int, ...]]]:
  """`(path, shape)` of every array with at least `min_size` elements that is fully replicated."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and leaf.size >= min_size and leaf.sharding.is_fully_replicated \
        and len(leaf.sharding.device_set) > 1:
      out.append((jax.tree_util.keystr(path), tuple(leaf.shape)))
  return out


# ----------------------------------------------------------------------------- multi-host


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the environment describes several processes.

  Recognised: `JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
  (explicit, e.g. two local CPU processes), or a cluster JAX detects by itself (TPU pod
  slices, SLURM, Open MPI) when `JAX_DISTRIBUTED=auto`. Returns whether it initialised.
  """
  if _distributed_initialized():
    return False
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
    return True
  if os.environ.get("JAX_DISTRIBUTED", "").lower() == "auto":
    jax.distributed.initialize()
    return True
  return False


def _distributed_initialized() -> bool:
  try:
    from jax._src import distributed  # the public API has no query
    return distributed.global_state.client is not None
  except (ImportError, AttributeError):
    return False


# ----------------------------------------------------------------------------- placement


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run's arrays live: the mesh, the rules and the shardings of its state.

  `params` (and `opt_state`, once `with_optimizer` set it) are trees of NamedSharding
  with the structure of the params / optimizer state; `rows` is the sharding of every
  batch leaf (rows over the batch axes; a prefix for arrays of any rank).
  """
  mesh: Mesh
  rules: tuple
  params: Any
  opt_state: Any = None

  @property
  def rows(self) -> NamedSharding:
    return batch_sharding(self.mesh, self.rules, 1)

  @property
  def replicated(self) -> NamedSharding:
    return replicated(self.mesh)

  @property
  def batch_shards(self) -> int:
    return batch_shards(self.mesh, self.rules)

  def with_optimizer(self, optimizer, params_like) -> "Placement":
    """The same placement with `opt_state` set to `optimizer`'s state shardings."""
    abstract = jax.eval_shape(optimizer.init, params_like)
    return dataclasses.replace(
        self, opt_state=optimizer_shardings(optimizer, abstract, self.params, self.mesh))

  def constrain_rows(self, x: jax.Array, axis: int = 0) -> jax.Array:
    """Pins dim `axis` of `x` to the batch axes (the others replicated)."""
    if self.mesh.size == 1:
      return x
    spec = [None] * x.ndim
    spec[axis] = self.rows.spec[0]
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

  def jit(self, fn, **jit_kwargs) -> "Compiled":
    """`jax.jit(fn, **jit_kwargs)`, tracing `fn` with the model's constraints active (see `Compiled`)."""
    return Compiled(fn, self, **jit_kwargs)


class Compiled:
  """A function jitted under a placement, which counts how often it was traced.

  Each trace is a compilation, so `traces` is what "compiled once" means (JAX's own
  dispatch-cache size is not: it can be evicted in a long process). On the CPU devices of
  several processes each call also waits for its result: CPU collectives between processes
  (gloo) run on each local device's own thread, and with JAX's asynchronous dispatch two
  programs in flight at once can meet the other process's collectives in a different order
  and hang both (seen as one process blocked launching a program the other had passed).
  Waiting keeps one program with cross-process collectives running at a time, in the same
  order on every process.
  """

  def __init__(self, fn, placement: Placement, **jit_kwargs):
    self.traces = 0

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      self.traces += 1
      with activate(placement.mesh, placement.rules):
        return fn(*args, **kwargs)

    self._jitted = jax.jit(traced, **jit_kwargs)
    self._wait = jax.process_count() > 1 and placement.mesh.devices.flat[0].platform == "cpu"
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    out = self._jitted(*args, **kwargs)
    return jax.block_until_ready(out) if self._wait else out

  def lower(self, *args, **kwargs):
    return self._jitted.lower(*args, **kwargs)


def placement_for(abstract_params, mesh: Mesh, rules) -> Placement:
  return Placement(mesh=mesh, rules=tuple(rules), params=param_shardings(abstract_params, mesh, rules))
