"""Checkpoints of the training state with orbax: atomic, asynchronous, multi-host safe.

A checkpoint of step `s` is the directory `<directory>/<s>/` with two items:

- `state`: any pytree of `jax.Array` (possibly sharded), numpy arrays and Python scalars,
  written with `ocp.args.StandardSave` (tensorstore, one shard per device).
- `extra`: a small JSON dict (stage name, host-side counters, data-iterator position, ...),
  written with `ocp.args.JsonSave`.

Atomicity: orbax writes every checkpoint into a temporary directory
`<s>.orbax-checkpoint-tmp-<timestamp>` and renames it to `<s>` only once every item of
every process is written, then adds its finalisation marker (`commit_success.txt`,
`_CHECKPOINT_METADATA`). A run killed mid-save therefore leaves only an unfinalised
temporary directory, which `latest_step` ignores (and which is cleaned up the next time a
`Checkpointer` is opened on the directory), so resuming always starts from the last
complete checkpoint.

Multi-host: every process must call `save`, `wait` and `close` with the same arguments
(they synchronise); orbax makes the primary process write the metadata and each process
write the shards it owns.

Restoring onto another mesh: pass `abstract_state` as a pytree of `jax.ShapeDtypeStruct`
whose `.sharding` is the target `NamedSharding`; each process then reads only the slices
of the arrays that its devices hold, whatever the mesh the checkpoint was saved from.

Example:
  ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
  ckpt.save(step, {"params": params, "opt_state": opt_state}, extra={"stage": "rl"})
  ...
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  state, extra = ckpt.restore(abstract)            # latest step
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any

_STATE = "state"
_EXTRA = "extra"


def _as_abstract(leaf: Any) -> Any:
  """Concrete `jax.Array` -> `ShapeDtypeStruct` with its sharding; other leaves unchanged.

  `ShapeDtypeStruct` leaves restore as `jax.Array` with their `.sharding` (a single-device
  array when it is unset), numpy arrays restore as numpy arrays, Python scalars as scalars.
  """
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return leaf


class Checkpointer:
  """A series of numbered checkpoints in one directory, over `ocp.CheckpointManager`.

  Args:
    directory: where the step directories are written (created if missing).
    max_to_keep: how many of the most recent checkpoints to keep (None keeps all).
    save_interval_steps: `save` only writes steps that are a multiple of this
      (unless `force=True`).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 2,
               save_interval_steps: int = 1):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep!r}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        cleanup_tmp_directories=True,  # remove unfinalised saves left by a crash
        create=True,
        enable_async_checkpointing=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state: PyTree, *, extra: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Starts saving `state` (and `extra`) as checkpoint `step`; returns whether it saves.

    The save is asynchronous: arrays are copied off the devices before this returns (so the
    caller may donate or overwrite them), then written in a background thread; call
    `wait()` before reading the checkpoint from elsewhere. Every process must call it.

    Args:
      step: the training step (non-negative int); must not already be saved.
      state: pytree of jax/numpy arrays and scalars.
      extra: small JSON-serialisable dict stored beside the state (default `{}`).
      force: save even if `step` is not a multiple of `save_interval_steps`.
    Returns:
      True if a checkpoint is being written, False if the step was skipped.
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    extra = {} if extra is None else dict(extra)
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _EXTRA: ocp.args.JsonSave(extra),
    })
    return bool(self._manager.save(step, args=args, force=force))

  def all_steps(self) -> list[int]:
    """Sorted steps of the checkpoints in the directory (see `latest_step`)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The most recent step, or None if there is none.

    On a `Checkpointer` just opened on the directory this is the last finalised step; a
    step whose asynchronous save this object started is counted at once (`wait()` first to
    be sure it is finalised).
    """
    return self._manager.latest_step()

  def restore(self, abstract_state: PyTree, *, step: int | None = None) -> tuple[PyTree, dict]:
    """Restores checkpoint `step` (default: the latest) onto the layout of `abstract_state`.

    Args:
      abstract_state: pytree with the structure of the saved state whose leaves are
        `jax.ShapeDtypeStruct` (set `.sharding` to the target sharding, which may be on a
        mesh of another shape than the one saved from), concrete `jax.Array` (their shape,
        dtype and sharding are used), numpy arrays or scalars.
      step: which checkpoint; None for the latest.
    Returns:
      `(state, extra)`: the restored pytree and the `extra` dict saved with it.
    Raises:
      FileNotFoundError: there is no finalised checkpoint (or not the requested step).
    """
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no finalised checkpoint to restore in directory {self.directory!r}")
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(
          f"step={step!r}: no finalised checkpoint of that step in {self.directory!r}; "
          f"available steps: {steps}")
    target = jax.tree.map(_as_abstract, abstract_state)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(target),
        _EXTRA: ocp.args.JsonRestore(),
    }))
    extra = restored[_EXTRA]
    return restored[_STATE], ({} if extra is None else dict(extra))

  def wait(self) -> None:
    """Blocks until every asynchronous save has been written and finalised."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


__all__ = ["Checkpointer"]
