"""What produced a run: the workdir, its `config.json` and `provenance.json`.

`provenance.json` records the git commit (and whether the tree had uncommitted changes),
the versions of the packages that determine the numbers, the Python version and platform,
the JAX backend, devices and processes, the command line and the UTC start time, so that
a result can be traced back to the code and setup that produced it.

Multi-host: `prepare_workdir` may be called on every process (each writes its own probe
file); `write_config` and `write_provenance` should be called on process 0 only.
"""
from __future__ import annotations

import collections
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import config_dict

CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "ml-collections",
            "transformers", "numpy")


def prepare_workdir(path: str | os.PathLike) -> pathlib.Path:
  """Creates the run directory `path` (and its parents) and checks that it is writable.

  Writes and deletes a probe file, so a read-only mount or missing permission fails here,
  at the start of the run, rather than at the first checkpoint.

  Returns:
    The directory as an absolute `pathlib.Path`.
  Raises:
    PermissionError: the directory cannot be created or written (also when `path`, or one
      of its parents, is an existing file).
  """
  workdir = pathlib.Path(path).expanduser().absolute()
  if workdir.exists() and not workdir.is_dir():
    raise PermissionError(f"workdir {str(path)!r} is not writable: it exists and is not a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"workdir {str(path)!r} is not writable: cannot create it ({e})") from e
  probe = workdir / f".write_probe.{os.getpid()}.{uuid.uuid4().hex}"
  try:
    probe.write_bytes(b"ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"workdir {str(path)!r} is not writable: {e}") from e
  return workdir


def _json_ready(value: Any) -> Any:
  """Tuples -> lists, mappings -> dicts with string keys; other non-JSON values -> str."""
  if isinstance(value, Mapping):
    return {str(k): _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy / jax scalar
    return value.item()
  return str(value)


def _write_json(path: pathlib.Path, obj: Any) -> pathlib.Path:
  """Writes `obj` as indented JSON atomically (temporary file + rename)."""
  tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
  os.replace(tmp, path)
  return path


def config_to_dict(config: Any) -> dict:
  """A JSON-ready dict of an `ml_collections.ConfigDict` (or any mapping); tuples -> lists."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
  return _json_ready(config)


def write_config(workdir: str | os.PathLike, config: Any) -> pathlib.Path:
  """Writes `<workdir>/config.json` from a `ConfigDict` (or mapping); returns its path."""
  return _write_json(pathlib.Path(workdir) / CONFIG_FILE, config_to_dict(config))


def read_recorded(workdir: str | os.PathLike) -> dict:
  """The config a run in `workdir` recorded (its config.json), as a plain dict; a clear error
  naming the file when it cannot be read."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a readable config ({e}); it records the run of this workdir") from e


def recorded_config(workdir: str | os.PathLike, defaults: Any = None, *, whole: Sequence[str] = ("roles",)):
  """The config a run in `workdir` recorded (its config.json) as a `ConfigDict`, lists as tuples.

  `defaults` (a config) fills the keys the record lacks (a run from before a key existed):
  the record wins wherever it has a value, and the blocks named in `whole` (dotted paths) and
  every `options` block come from the record alone (a role or an option the record lacks was
  not part of that run).
  """
  recorded = read_recorded(workdir)

  def merge(base, top, path=""):
    if not isinstance(base, Mapping) or not isinstance(top, Mapping):
      return top
    out = dict(base)
    for key, value in top.items():
      here = f"{path}{key}"
      out[key] = value if here in whole or key == "options" else merge(base.get(key), value, here + ".")
    return out

  def tuples(x):
    if isinstance(x, Mapping):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x

  merged = merge(config_to_dict(defaults), recorded) if defaults is not None else recorded
  return config_dict.ConfigDict(tuples(merged))


CHANGES_FILE = "config_changes.jsonl"


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, Mapping):
    return {prefix[:-1]: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, f"{prefix}{key}."))
  return out


def config_changes(workdir: str | os.PathLike, config: Any) -> dict[str, tuple[Any, Any]]:
  """`{key: (in config.json, in config)}` for every dotted key whose value differs ({} without a file)."""
  if not (pathlib.Path(workdir) / CONFIG_FILE).is_file():
    return {}
  old = _flat(read_recorded(workdir))
  new = _flat(config_to_dict(config))
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def allowed_change(key: str, allow) -> bool:
  """Whether `key` is one of `allow` or inside one of its blocks (`train` allows `train.steps`)."""
  return any(key == a or key.startswith(a + ".") for a in allow)


def record_config_changes(workdir: str | os.PathLike, step: int, changes: Mapping[str, tuple[Any, Any]]) -> None:
  """Appends the changes a resumed run was allowed to make, and at which step, to config_changes.jsonl."""
  line = {"step": int(step), "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "changes": {k: list(v) for k, v in changes.items()}}
  with open(pathlib.Path(workdir) / CHANGES_FILE, "a", encoding="utf-8") as f:
    f.write(json.dumps(_json_ready(line)) + "\n")


def _git(args: list[str], cwd: pathlib.Path) -> str | None:
  try:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                            check=True)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip()


def git_info(path: str | os.PathLike | None = None) -> dict | None:
  """`{"commit", "dirty"}` of the git repository containing `path` (default: this package).

  `dirty` is True when tracked files have uncommitted changes. None when `path` is not in
  a git repository or git is not installed.
  """
  path = pathlib.Path(path) if path is not None else pathlib.Path(__file__).resolve().parent
  commit = _git(["rev-parse", "HEAD"], path)
  if not commit:
    return None
  status = _git(["status", "--porcelain", "--untracked-files=no"], path)
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
  """Installed version of each distribution in `names` (None when not installed)."""
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _jax_info() -> dict:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kinds": dict(collections.Counter(d.device_kind for d in devices)),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }
  except Exception as e:  # pylint: disable=broad-except  (no backend must not stop a run)
    return {"error": f"{type(e).__name__}: {e}"}


def collect_provenance(extra: Mapping[str, Any] | None = None) -> dict:
  """A JSON-ready dict describing the code, packages, machine and command of this run.

  Keys: `git` (`{"commit", "dirty"}` or None), `packages` (name -> version or None),
  `python`, `platform`, `jax` (`backend`, `device_kinds` kind -> count, `device_count`,
  `local_device_count`, `process_index`, `process_count`), `command` (argv list),
  `time_utc` (ISO 8601). Entries of `extra` (e.g. the mesh) are added at the top level
  and take precedence.
  """
  provenance = {
      "git": git_info(),
      "packages": package_versions(),
      "python": sys.version,
      "platform": platform.platform(),
      "jax": _jax_info(),
      "command": list(sys.argv),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if extra:
    provenance.update(_json_ready(dict(extra)))
  return provenance


def _read_provenance(workdir: str | os.PathLike) -> dict:
  try:
    record = json.loads((pathlib.Path(workdir) / PROVENANCE_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}
  return record if isinstance(record, dict) else {}


def write_provenance(workdir: str | os.PathLike, extra: Mapping[str, Any] | None = None, *,
                     start_step: int = 0) -> pathlib.Path:
  """Writes `<workdir>/provenance.json` (see `collect_provenance`); returns its path.

  The file keeps one entry per run segment in `segments` (`{"commit", "dirty", "start_step",
  "end_step", "time_utc"}`): a run resumed at `start_step` adds a segment to those of the
  earlier ones (`end_segment` moves its end as it saves), so the code that trained each step
  stays known after a resume; the top-level `git` is the newest segment's.
  """
  earlier = _read_provenance(workdir)
  segments = list(earlier.get("segments") or [])
  if not segments and earlier.get("git") is not None:  # a file from before segments were kept
    segments = [{**earlier["git"], "start_step": None, "end_step": None, "time_utc": earlier.get("time_utc")}]
  record = collect_provenance(extra)
  git = record.get("git") or {}
  record["segments"] = segments + [{"commit": git.get("commit"), "dirty": git.get("dirty"),
                                    "start_step": int(start_step), "end_step": int(start_step),
                                    "time_utc": record["time_utc"]}]
  return _write_json(pathlib.Path(workdir) / PROVENANCE_FILE, record)


def end_segment(workdir: str | os.PathLike, step: int) -> None:
  """Records that the newest segment of `<workdir>/provenance.json` trained up to `step`."""
  record = _read_provenance(workdir)
  if record.get("segments"):
    record["segments"][-1]["end_step"] = int(step)
    _write_json(pathlib.Path(workdir) / PROVENANCE_FILE, record)


__all__ = ["prepare_workdir", "config_to_dict", "write_config", "git_info", "package_versions",
           "collect_provenance", "write_provenance", "end_segment", "read_recorded", "CONFIG_FILE", "PROVENANCE_FILE", "PACKAGES"]
