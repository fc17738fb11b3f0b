"""One writer per workdir: an advisory lock file held for the life of a run.

`<workdir>/.lock` holds `{"host", "pid", "time_utc", "command"}` of the run that writes the
workdir. A second run on the same workdir stops at start-up with one line naming that run's
host and pid, before it writes anything (its config check, `config.json`, metrics and
checkpoints would otherwise interleave with the first run's).

- On one host the lock is an `fcntl.flock` on the file: the kernel releases it when the
  process ends, however it ends, so a live holder is never mistaken for a dead one. A lock
  file left by a run that died (its pid is gone, or it no longer holds the flock) is taken
  over with a warning.
- A lock file written on another host cannot be checked from here (flock does not reach
  across every shared file system): it is refused, and the message says to delete the file
  if that run is gone.
- Multi-host: process 0 holds the lock for the run; the other processes write no files that
  process 0 does not also coordinate.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys

LOCK_FILE = ".lock"


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def _describe(holder: dict) -> str:
  since = f", started {holder['time_utc']}" if holder.get("time_utc") else ""
  return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')}{since}"


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode("utf-8", "replace")
  try:
    holder = json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError):
    return False
  except PermissionError:  # a process of another user
    return True
  return True


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, *, enabled: bool = True):
  """Holds `<workdir>/.lock` for the duration of the block (see the module docstring).

  Raises:
    WorkdirLocked: another live run holds it (one line naming its host and pid).
  """
  if not enabled:
    yield None
    return
  path = pathlib.Path(workdir) / LOCK_FILE
  host = socket.gethostname()
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd)
      os.close(fd)
      raise WorkdirLocked(f"workdir {str(workdir)!r} is in use by another run ({_describe(holder)}); wait for it "
                          "to end, stop it, or use another workdir") from None
    # The file may have been unlinked by its previous holder between our open and flock: retry on the new one.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    holder = _read(fd)
    if holder:
      if holder.get("host") not in (None, host):
        raise WorkdirLocked(f"workdir {str(workdir)!r} is in use by a run on another machine ({_describe(holder)}); "
                            f"if that run is gone, delete {path} and start again")
      if holder.get("pid") != os.getpid():
        state = "is no longer running" if not _pid_alive(holder.get("pid")) else "no longer holds the lock"
        print(f"warning: taking over the lock of workdir {workdir}: the run that held it ({_describe(holder)}) "
              f"{state}", file=sys.stderr, flush=True)
    mine = {"host": host, "pid": os.getpid(),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": list(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(mine) + "\n").encode())
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    raise
  try:
    yield path
  finally:
    # Unlink before unlocking: a run waiting on this inode re-checks the path after its flock.
    with contextlib.suppress(OSError):
      path.unlink()
    os.close(fd)
