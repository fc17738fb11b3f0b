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
write the shards it owns. With several processes saves are synchronous (see the comment
in `Checkpointer.__init__`): a background save's barriers could deadlock with training.

A damaged checkpoint (a truncated or overwritten data file, a deleted `_METADATA` or item
directory) is found when it is read: every save stores a fingerprint of the state in its
`extra` (the sum of |x| of each array), so bytes that still decode but changed are caught
too. `restore_newest_readable` tries the newest step first, and on failure prints one line
naming the step and the cause, moves the step's directory aside (`unreadable-<step>`, kept
for inspection) and tries the next older one.

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

import gc
import inspect
import logging
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any

_STATE = "state"
_EXTRA = "extra"
_FINGERPRINT = "fingerprint"


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
        # Several processes: orbax's default barriers are XLA collectives, and from the
        # background save thread they can interleave with the training step's collectives in
        # a different order on each process, which deadlocks both. Saving in the main thread
        # keeps every process's collectives in one order.
        enable_async_checkpointing=jax.process_count() == 1,
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
    extra[_FINGERPRINT] = fingerprint(state)
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
    missing = self._missing_file(int(step))
    if missing is not None:
      raise FileNotFoundError(f"step {step}: {missing} is missing")
    target = jax.tree.map(_as_abstract, abstract_state)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(target),
        _EXTRA: ocp.args.JsonRestore(),
    }))
    extra = {} if restored[_EXTRA] is None else dict(restored[_EXTRA])
    saved = extra.pop(_FINGERPRINT, None)
    if saved is not None:
      now = fingerprint(restored[_STATE])
      if len(now) != len(saved) or not np.allclose(now, saved, rtol=1e-4, atol=1e-6, equal_nan=True):
        raise ValueError(f"step {step}: the restored arrays do not match the fingerprint saved with them "
                         "(a data file was changed)")
    return restored[_STATE], extra

  def restore_newest_readable(self, abstract_for_step, *, validate=None,
                              set_aside: bool = True) -> tuple[PyTree, dict, int] | None:
    """Restores the newest checkpoint that reads back whole; None if there is no checkpoint.

    Args:
      abstract_for_step: `step -> abstract_state` (see `restore`); the layout may depend on
        the step (a run's stages hold different states).
      validate: optional `state -> None` that raises on a state that read back but is not
        usable (for example non-finite parameters).
      set_aside: rename each unreadable step to `unreadable-<step>` (a run resuming in its own
        workdir); False leaves the directory as it is (a reader of another run's checkpoints,
        which must never change them: a wrong abstract state there is the reader's mistake).
    Returns:
      `(state, extra, step)` of the newest readable step.
    Raises:
      RuntimeError: there are checkpoints but none reads back; the message lists each step's
        cause.
    """
    failures = []
    _quiet_abandoned_reads()
    for step in reversed(self.all_steps()):
      try:
        state, extra = self.restore(abstract_for_step(step), step=step)
        if validate is not None:
          validate(state)
      except Exception as e:  # noqa: BLE001  (any failure to read a step makes it unusable)
        _FAILED_STEPS.append(str(pathlib.Path(self.directory) / str(step)))
        cause = one_line(e)
        moved = f"moved to {self._set_aside(step).name}, " if set_aside else ""
        print(f"warning: checkpoint step {step} in {self.directory} cannot be restored ({cause}); {moved}"
              "trying an older step", file=sys.stderr, flush=True)
        failures.append(f"step {step}: {cause}")
        gc.collect()  # close the failed restore's pending reads now, under the hook above
        continue
      return state, extra, step
    if failures:
      raise RuntimeError(f"no checkpoint in {self.directory} can be restored: {'; '.join(failures)}")
    return None

  def _missing_file(self, step: int) -> pathlib.Path | None:
    """The first missing part of step `step`'s state item, or None.

    Without these orbax reports a tree-structure mismatch (no `_METADATA`: it falls back to
    the caller's tree) or a missing item, which hides the cause.
    """
    state = pathlib.Path(self.directory) / str(step) / _STATE
    for path in (state, state / "_METADATA"):
      if not path.exists():
        return path
    return None

  def _set_aside(self, step: int) -> pathlib.Path:
    """Renames step `step`'s directory to `unreadable-<step>[-k]` (process 0; every process waits)."""
    source = pathlib.Path(self.directory) / str(step)
    target = source.with_name(f"unreadable-{step}")
    k = 1
    while target.exists():
      target, k = source.with_name(f"unreadable-{step}-{k}"), k + 1
    if jax.process_index() == 0 and source.exists():
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self._manager.reload()
    return target

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


_abs_sums = jax.jit(lambda leaves: jnp.stack([jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]))


def fingerprint(state: PyTree) -> list[float]:
  """Sum of |x| of each `jax.Array` leaf of `state` (float32), the same on every process."""
  leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
  if not leaves:
    return []
  return [float(v) for v in np.asarray(_abs_sums(leaves).addressable_data(0))]


_FAILED_STEPS: list[str] = []  # directories of the steps whose restore failed


def _quiet_abandoned_reads() -> None:
  """Stops Python from printing what the reads of a failed restore leave behind.

  A restore that fails on one array stops with other reads still pending, and each of them
  ends in an exception that nobody can catch, which Python prints with its traceback
  (hundreds of lines, at any later point of the run):
  - orbax's read coroutine wraps any BaseException, GeneratorExit included, in an Exception
    whose message is a page of TensorStore spec, so closing a pending one raises;
  - tensorstore reads that finish after orbax closed its event loop fail to schedule their
    callback (RuntimeError "Event loop is closed");
  - asyncio logs each abandoned read whose error names a file of the failed step ("Future
    exception was never retrieved").
  These are dropped; anything else goes on as before. Installed once, before the first
  restore that may fail: the first callbacks can fail before the restore's error reaches us.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_read_errors", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    closed_read = inspect.iscoroutine(unraisable.object) and isinstance(
        getattr(error, "__cause__", None), GeneratorExit)
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    if not (closed_read or closed_loop):
      previous(unraisable)

  hook.drops_closed_read_errors = True
  sys.unraisablehook = hook
  asyncio_log = logging.getLogger("asyncio")
  if _is_not_an_abandoned_read not in asyncio_log.filters:
    asyncio_log.addFilter(_is_not_an_abandoned_read)


def _is_not_an_abandoned_read(record: logging.LogRecord) -> bool:
  error = record.exc_info[1] if record.exc_info else None
  return not (error is not None and "exception was never retrieved" in record.getMessage()
              and any(step in str(error) for step in _FAILED_STEPS))


def one_line(error: BaseException, limit: int = 240) -> str:
  """`Type: first line of the message` of the error's root cause, shortened.

  The root cause is the last error of the `raise ... from` chain: orbax wraps tensorstore's
  precise error (which file, which byte range) in a generic one whose message runs to pages.
  """
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["Checkpointer"]
