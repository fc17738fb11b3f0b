"""Stop requests: Ctrl-C (SIGINT) and SIGTERM end a run at a step boundary, with a checkpoint.

The first SIGINT or SIGTERM (what preemptible TPU VMs and schedulers send) is recorded; the
training loop finishes the step it is in, saves a checkpoint and raises `Interrupted`, whose
`exit_code` is the shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM). A second
SIGINT aborts at once (`KeyboardInterrupt`). With several processes, a request on any of them
stops all of them at the same step (`requested` agrees across processes), so no process is
left waiting in a collective.
"""
from __future__ import annotations

import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped on a signal after saving; `exit_code` is 128 + the signal number."""

  def __init__(self, signum: int, step: int, message: str):
    super().__init__(message)
    self.signum, self.step = signum, step
    self.exit_code = 128 + signum


class StepAbandoned(Exception):
  """A wait inside a step gave up on a stop request (a host reward still running when Ctrl-C or
  SIGTERM came): the step is not done, and the run stops with the state before it."""

  def __init__(self, signum: int, what: str):
    super().__init__(f"{signal.Signals(signum).name} while waiting for {what}")
    self.signum, self.what = signum, what


_ACTIVE: list["StopRequests"] = []  # the StopRequests of the running loop (innermost last)


def pending() -> int | None:
  """This process's pending stop request (its signal number), or None: for code that waits
  inside a step (a host reward) and must not outlast a Ctrl-C."""
  return _ACTIVE[-1].signum if _ACTIVE else None


class StopRequests:
  """Context manager that turns SIGINT / SIGTERM into a request the loop checks each step."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    _ACTIVE.append(self)
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    if self in _ACTIVE:
      _ACTIVE.remove(self)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: abort now
    if self.signum is None:
      self.signum = signum
      again = " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""
      print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint{again}",
            file=sys.stderr, flush=True)

  def requested(self) -> int | None:
    """The signal number if any process was asked to stop (every process gets the same answer)."""
    if jax.process_count() == 1:
      return self.signum
    signums = multihost_utils.process_allgather(np.asarray(self.signum or 0, np.int32))
    asked = [int(s) for s in np.asarray(signums).reshape(-1) if s]
    return asked[0] if asked else None
