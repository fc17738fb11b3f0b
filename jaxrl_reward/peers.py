"""A process of a multi-process run that stops answering is reported in one line, in bounded time.

When a process dies (a host fails, a job is killed on one machine), the others wait in their
next collective; JAX's coordination service ends them later with a page of C++ stack. With
`PeerWatch` active, each process writes a heartbeat counter into the distributed key-value
store every `timeout_s / 6` seconds from a daemon thread and reads the others'. A process
whose counter has not moved for `timeout_s` (measured on the reader's own clock), or a
coordinator that no longer answers, makes every surviving process print one line (which
process, at which step, the last checkpoint to resume from) and exit with status 1. The
thread runs beside the training loop, so it reports even while the main thread is blocked
inside a collective. Where the collective fails instead of blocking (CPU collectives see
the dead peer's connection reset), the loop hands the error to `PeerWatch.collective_failed`,
which waits for the heartbeats to name the process that is gone and reports the same way. Either way the process ends at once (`os._exit`): a normal exit would
wait in jax.distributed's shutdown barrier for the dead process. With one process it does
nothing.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import jax

_KEY = "jaxrl_reward/alive/{}"
EXIT_CODE = 1


def _client():
  from jax._src import distributed  # the public API exposes no handle on the key-value store
  return distributed.global_state.client


class PeerWatch:
  """Context manager watching the other processes (see the module docstring).

  Args:
    timeout_s: seconds without a heartbeat after which a process counts as gone; keep it below
      `jax.distributed`'s own heartbeat timeout (100 s by default) so this message comes first.
    where: returns where the run stands, for the message (e.g. "at step 12; the last checkpoint is ...").
  """

  def __init__(self, timeout_s: float, where: Callable[[], str]):
    if not timeout_s > 0:
      raise ValueError(f"multihost_timeout_s must be > 0, got {timeout_s}")
    self.timeout_s = float(timeout_s)
    self.where = where
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self) -> "PeerWatch":
    if jax.process_count() > 1 and _client() is not None:
      self._thread = threading.Thread(target=self._watch, name="peer-watch", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=self.timeout_s)

  def _watch(self) -> None:
    client, me, n = _client(), jax.process_index(), jax.process_count()
    peers = [p for p in range(n) if p != me]
    seen = {p: (None, time.monotonic()) for p in peers}  # last counter value, when it last changed
    beat = 0
    while not self._stop.wait(self.timeout_s / 6):
      now = time.monotonic()
      try:
        client.key_value_set(_KEY.format(me), str(beat), allow_overwrite=True)
        beat += 1
        for p in peers:
          try:
            value = client.key_value_try_get(_KEY.format(p))
          except Exception:  # noqa: BLE001  (not written yet: the peer has not started watching)
            value = None
          if value != seen[p][0]:
            seen[p] = (value, now)
      except Exception as e:  # noqa: BLE001  (the key-value store lives in process 0)
        if not self._stop.is_set():
          self.lost_peer(f"the coordinator (process 0) does not answer ({type(e).__name__})")
      gone = [p for p in peers if now - seen[p][1] > self.timeout_s]
      if gone and not self._stop.is_set():
        self.lost_peer(f"process{'es' if len(gone) > 1 else ''} {', '.join(map(str, gone))} "
                       f"sent no heartbeat for {self.timeout_s:.0f} s")

  def collective_failed(self, cause: str) -> None:
    """A collective failed: give the heartbeats `timeout_s` to name the process that is gone
    (the watch thread then reports and ends the process), else report the failure itself."""
    if self._thread is not None:
      self._thread.join(timeout=self.timeout_s * 1.5)
    self.lost_peer(f"a collective failed ({cause})")

  def lost_peer(self, what: str) -> None:
    """Prints the one line (`what` happened, where the run stands) and ends this process."""
    print(f"error: process {jax.process_index()} of {jax.process_count()}: {what} (a process died or hangs) "
          f"{self.where()}; restart every process with the same command to resume", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)  # the main thread may be blocked in a collective: nothing else can end it
