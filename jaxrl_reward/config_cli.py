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
  """Exits with status 2 and one line on stderr when an override names no config key."""
  argv = sys.argv if argv is None else argv
  spec, keys = parse_argv(argv, flag)
  if not spec or not keys:
    return
  try:
    config = load(spec)
  except Exception as e:  # noqa: BLE001  (absl reports a bad config file itself, with its traceback)
    del e
    return
  bad = unknown_keys(config, keys)
  if bad:
    known = sorted(flat_keys(config))
    hints = []
    for key in bad:
      close = difflib.get_close_matches(key, known, 1)
      hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    sys.stderr.write(f"error: --{flag}.{', --{flag}.'.join(hints)}: no such key in {spec}; open blocks that take "
                     f"new keys: {', '.join(OPEN_BLOCKS)}\n")
    sys.exit(2)
