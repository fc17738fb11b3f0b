"""Runs host-side checks in a child process with a per-call deadline.

A verifier built on sympy or a parser (math answer equivalence, a dataset's own scorer)
can run for minutes on an adversarial completion such as `9^{9^{9^{9}}}`, and an
in-process time limit cannot interrupt it reliably (signals only reach the main thread,
and a thread cannot be killed). `TimedWorker` runs each call in a long-lived child
process instead:

    worker = TimedWorker(preload=("math_verify",))
    outcome = worker.call(some_module.check, gold, predicted, timeout_s=5.0)
    if outcome.ok:
      ...outcome.value...

- The child is a fresh interpreter (`subprocess` + `sys.executable -c`, not `fork`), so
  it is safe to use from a process that already runs JAX threads, and it does not import
  the parent's `__main__`.
- `fn` must be importable by reference (a module-level function, or a builtin such as
  `time.sleep`); arguments and results are pickled.
- On a deadline the child is killed (SIGKILL) and a new one is started at once, in the
  background; the next call waits for it to be ready (its start-up time, which includes
  the `preload` imports, does not count against that call's deadline).
- The child dies with the parent (Linux `PR_SET_PDEATHSIG`), and exits when the parent
  closes the pipe.
- Calls are serialised by a lock: one call runs at a time per worker.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

DEFAULT_STARTUP_TIMEOUT_S = 120.0

_CHILD_COMMAND = "from jaxrl_reward.rewards.timed_worker import serve; serve()"


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a call returned.

  Attributes:
    status: "ok" (`value` holds the result), "error" (the function raised; `error` holds
      its type and message), "timeout" (the deadline passed and the child was killed) or
      "crashed" (the child died during the call, e.g. killed for memory).
    value: the function's return value when `status == "ok"`, else None.
    error: a one-line description when `status != "ok"`.
  """

  status: str
  value: Any = None
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.status == "ok"


def _child_env() -> dict[str, str]:
  """The parent's environment, with its `sys.path` on PYTHONPATH and single-threaded BLAS."""
  env = dict(os.environ)
  paths = [p if p else os.getcwd() for p in sys.path]
  if env.get("PYTHONPATH"):
    paths.append(env["PYTHONPATH"])
  env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
  for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    env.setdefault(key, "1")
  return env


class _Child:
  """One child interpreter and the two pipes to it."""

  def __init__(self, preload: Sequence[str], memory_limit_mb: int | None):
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    args = [str(to_child_r), str(from_child_w), ",".join(preload), str(memory_limit_mb or 0)]
    try:
      self.process = subprocess.Popen(
          [sys.executable, "-c", _CHILD_COMMAND, *args],
          pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=_child_env())
    finally:
      os.close(to_child_r)
      os.close(from_child_w)
    self.send = Connection(to_child_w, readable=False)
    self.recv = Connection(from_child_r, writable=False)
    self.ready = False

  def alive(self) -> bool:
    return self.process.poll() is None

  def kill(self) -> None:
    if self.alive():
      self.process.kill()
    self.process.wait()
    self.send.close()
    self.recv.close()


def _kill_held(holder: list) -> None:
  if holder[0] is not None:
    holder[0].kill()
    holder[0] = None


class TimedWorker:
  """A child process that runs `fn(*args)` calls, each with a deadline.

  Args:
    preload: modules the child imports before it reports ready (their import time then
      never counts against a call's deadline). An entry `"module:function"` also calls
      `module.function()` once (a warm-up, e.g. a first parse that fills caches).
    startup_timeout_s: how long to wait for a new child to be ready; a child that is not
      ready by then is an error (RuntimeError), not a timeout of the call.
    memory_limit_mb: if set, the child's address space limit (`RLIMIT_AS`); a call that
      needs more fails with status "error" (MemoryError) instead of exhausting the host.
  """

  def __init__(
      self,
      *,
      preload: Sequence[str] = (),
      startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
      memory_limit_mb: int | None = None,
  ):
    if any("," in entry for entry in preload):
      raise ValueError(f"preload entries must not contain ',', got preload={list(preload)!r}")
    self.preload = tuple(preload)
    self.startup_timeout_s = float(startup_timeout_s)
    self.memory_limit_mb = memory_limit_mb
    self.starts = 0  # number of children started so far; a restart increments it
    self._holder: list[_Child | None] = [None]  # shared with the finalizer
    self._lock = threading.Lock()
    weakref.finalize(self, _kill_held, self._holder)  # also runs at interpreter exit

  @property
  def _child(self) -> _Child | None:
    return self._holder[0]

  def _start(self) -> None:
    self._holder[0] = _Child(self.preload, self.memory_limit_mb)
    self.starts += 1

  def _discard(self) -> None:
    _kill_held(self._holder)

  def _ready_child(self) -> _Child:
    """The running child, started (or restarted) and waited for as needed."""
    if self._child is not None and not self._child.alive():
      self._discard()
    if self._child is None:
      self._start()
    child = self._child
    if not child.ready:
      message = None
      try:
        if child.recv.poll(self.startup_timeout_s):
          status, payload = child.recv.recv()
          if status == "ready":
            child.ready = True
            return child
          message = payload
      except (EOFError, OSError):
        pass
      exit_code = child.process.poll()
      self._discard()
      if message is not None:
        state = "failed while starting"
      elif exit_code is None:
        state = f"was not ready within startup_timeout_s={self.startup_timeout_s}"
      else:
        state = f"exited with code {exit_code} while starting"
      raise RuntimeError(f"the worker process {state} (preload={list(self.preload)!r}): "
                         f"{message or 'see its stderr'}")
    return child

  def start(self) -> int:
    """Starts a child if none is running, waits until it is ready, and returns `starts`.

    `starts` changes exactly when a new child is started, so a caller can tell whether
    state it set up in the child (a cache, a built scorer) is still there.
    """
    with self._lock:
      self._ready_child()
      return self.starts

  def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Outcome:
    """Runs `fn(*args)` in the child and returns its `Outcome` within about `timeout_s` s.

    Args:
      fn: a module-level function (pickled by reference; the child imports its module).
      *args: picklable arguments.
      timeout_s: the deadline for this call (> 0), from the moment it is sent to a ready
        child.

    Returns:
      `Outcome`; a timeout or a crash kills the child and starts a new one.

    Raises:
      RuntimeError when a child cannot be started (see `startup_timeout_s`).
    """
    if not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0, got timeout_s={timeout_s}")
    request = pickle.dumps((fn, args))
    with self._lock:
      child = self._ready_child()
      try:
        child.send.send_bytes(request)
      except OSError:  # the child died while idle (e.g. killed from outside): one retry
        self._discard()
        child = self._ready_child()
        child.send.send_bytes(request)
      try:
        if child.recv.poll(timeout_s):
          status, payload = child.recv.recv()
          if status == "ok":
            return Outcome("ok", value=payload)
          return Outcome("error", error=payload)
      except (EOFError, OSError) as e:
        self._discard()
        self._start()
        return Outcome("crashed", error=f"the worker process died during the call ({type(e).__name__})")
      self._discard()
      self._start()  # in the background: the next call waits for it
      return Outcome("timeout", error=f"no result within timeout_s={timeout_s}")

  def close(self) -> None:
    """Stops the child (a later call starts a new one)."""
    with self._lock:
      self._discard()

  def __enter__(self) -> "TimedWorker":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _die_with_parent() -> None:
  """Asks Linux to SIGKILL this process when its parent dies (best effort elsewhere)."""
  try:
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _describe(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}"[:2000]


def serve() -> None:
  """The child's main loop (run by `TimedWorker`; argv: fds, preload, memory limit)."""
  read_fd, write_fd, preload, memory_limit_mb = sys.argv[1:5]
  _die_with_parent()
  recv = Connection(int(read_fd), writable=False)
  send = Connection(int(write_fd), readable=False)
  try:
    if int(memory_limit_mb):
      import resource

      limit = int(memory_limit_mb) * 1024 * 1024
      resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import importlib

    for entry in filter(None, preload.split(",")):
      module_name, _, function_name = entry.partition(":")
      module = importlib.import_module(module_name)
      if function_name:
        getattr(module, function_name)()
  except BaseException as e:  # report it instead of a bare exit
    send.send(("failed", _describe(e)))
    return
  send.send(("ready", None))
  while True:
    try:
      request = recv.recv_bytes()
    except (EOFError, OSError):
      return
    try:
      fn, args = pickle.loads(request)
      reply = ("ok", fn(*args))
      send.send(reply)
    except Exception as e:  # the function (or pickling its result) failed: report it
      send.send(("error", _describe(e)))
