"""Command-line config overrides: every key must exist, except inside the open blocks.

Entry points load a config with `config_flags.DEFINE_config_file(..., lock_config=False,
accept_new_attributes=True)`, so that the open blocks (an objective's, an estimator's or an
in-jit reward's options, extra roles) take keys the config file does not list; before absl
parses the flags, `check_argv` compares every `--config.KEY=...` with the config file's own
keys and stops with one line naming a key that does not exist (and the closest one that
does). The open blocks' keys are checked later, when the run starts, against what the
selected objective, estimator or reward accepts.
"""
from __future__ import annotations

import difflib
import pathlib
import sys
from typing import Iterable, Sequence

from ml_collections.config_flags import config_flags

OPEN_BLOCKS = ("objective.options", "advantage.options", "rewards.options", "roles")


def load(spec: str):
  """The config of `path[:variant]`, as the config flag loads it (unlocked)."""
  return config_flags.ConfigFileFlagParser(name="config", lock_config=False).parse(spec)


def flat_keys(config, prefix: str = "") -> set[str]:
  """Every dotted key of a (nested) ConfigDict."""
  keys = set()
  for key, value in config.items():
    name = f"{prefix}{key}"
    keys.add(name)
    if hasattr(value, "items") and not isinstance(value, dict):
      keys |= flat_keys(value, name + ".")
  return keys


def unknown_keys(config, overrides: Iterable[str]) -> list[str]:
  """The override keys that `config` lacks and that are not inside an open block."""
  known = flat_keys(config)
  return [k for k in overrides
          if k not in known and not any(k.startswith(block + ".") for block in OPEN_BLOCKS)]


def parse_argv(argv: Sequence[str], flag: str = "config") -> tuple[str | None, list[str]]:
  """(the `--config=` value, the keys of `--config.KEY=...` / `--config.KEY ...` overrides)."""
  spec, keys = None, []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      spec = arg.split("=", 1)[1]
    elif arg == f"--{flag}" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith(f"--{flag}."):
      keys.append(arg[len(flag) + 3:].split("=", 1)[0])
  return spec, keys


def check_argv(argv: Sequence[str] = None, flag: str = "config") -> None:
  """Exits with status 2 and one line on stderr when the config file fails to load (unless
  `--traceback` is given) or an override names no config key."""
  argv = sys.argv if argv is None else argv
  spec, keys = parse_argv(argv, flag)
  if not spec:
    return
  try:
    if not pathlib.Path(spec.split(":", 1)[0]).is_file():
      raise FileNotFoundError(f"no such config file: {spec.split(':', 1)[0]}")
    config = load(spec)
    known = flat_keys(config)  # a file that failed to load raises here (absl loads lazily)
  except Exception as e:  # noqa: BLE001  (any error of the user's config file)
    if "--traceback" in argv:
      return  # absl loads it again and shows the whole traceback
    cause = e  # ml_collections wraps the file's own error in a page of traceback text: report the innermost
    while (cause.__cause__ or cause.__context__) is not None:
      cause = cause.__cause__ or cause.__context__
    text = (str(cause).strip().splitlines() or [""])[0]
    sys.stderr.write(f"error: --{flag}={spec}: {type(cause).__name__}: {text}  (--traceback shows where)\n")
    sys.exit(2)
  bad = unknown_keys(config, keys)
  if bad:
    known = sorted(known)
    hints = []
    for key in bad:
      close = difflib.get_close_matches(key, known, 1)
      hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    sys.stderr.write(f"error: --{flag}.{', --{flag}.'.join(hints)}: no such key in {spec}; open blocks that take "
                     f"new keys: {', '.join(OPEN_BLOCKS)}\n")
    sys.exit(2)
