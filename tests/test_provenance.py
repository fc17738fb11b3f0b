"""Tests for jaxrl_reward.provenance."""
import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from jaxrl_reward import provenance


def test_prepare_workdir_creates_parents(tmp_path):
  workdir = provenance.prepare_workdir(tmp_path / "a" / "b" / "run")
  assert workdir.is_dir() and workdir.is_absolute()
  assert list(workdir.iterdir()) == []  # the probe file is removed
  assert provenance.prepare_workdir(workdir) == workdir  # existing directory is fine


def test_prepare_workdir_under_a_file_is_a_clear_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="is not writable"):
    provenance.prepare_workdir(blocker / "run")
  with pytest.raises(PermissionError, match="not a directory"):
    provenance.prepare_workdir(blocker)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_prepare_workdir_read_only_dir(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o500)
  try:
    with pytest.raises(PermissionError, match="is not writable"):
      provenance.prepare_workdir(read_only)
  finally:
    read_only.chmod(0o700)


def test_write_config_round_trip(tmp_path):
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.mesh = (("data", -1), ("fsdp", 1))
  config.optim = ml_collections.ConfigDict({"lr": 3e-5, "betas": (0.9, 0.99), "name": "adamw"})
  config.eval = None
  path = provenance.write_config(tmp_path, config)
  assert path == tmp_path / "config.json"
  loaded = json.loads(path.read_text())
  assert loaded == {
      "seed": 3,
      "mesh": [["data", -1], ["fsdp", 1]],
      "optim": {"lr": 3e-5, "betas": [0.9, 0.99], "name": "adamw"},
      "eval": None,
  }
  assert ml_collections.ConfigDict(loaded).optim.lr == config.optim.lr


def test_collect_provenance_keys_and_versions():
  info = provenance.collect_provenance(extra={"mesh": {"data": 8}, "shape": (4, 2)})
  for key in ("git", "packages", "python", "platform", "jax", "command", "time_utc"):
    assert key in info, key
  for name in provenance.PACKAGES:
    assert info["packages"][name] == importlib.metadata.version(name)
  assert info["python"] == sys.version
  assert info["jax"]["backend"] == jax.default_backend()
  assert info["jax"]["device_count"] == 8
  assert sum(info["jax"]["device_kinds"].values()) == 8
  assert (info["jax"]["process_index"], info["jax"]["process_count"]) == (0, 1)
  assert info["command"] == sys.argv
  assert info["time_utc"].endswith("+00:00")
  assert info["mesh"] == {"data": 8} and info["shape"] == [4, 2]
  json.dumps(info)  # JSON-ready


def test_git_info_matches_git_and_tolerates_no_repo(tmp_path):
  package_dir = os.path.dirname(provenance.__file__)
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    head = None
  info = provenance.git_info()
  assert (info or {}).get("commit") == head
  if info is not None:
    assert isinstance(info["dirty"], bool)
  assert provenance.git_info(tmp_path) is None  # tmp_path is not inside a repository


def test_write_provenance(tmp_path):
  path = provenance.write_provenance(tmp_path, extra={"stage": "rl"})
  loaded = json.loads(path.read_text())
  assert path.name == "provenance.json"
  assert loaded["stage"] == "rl"
  assert loaded["packages"]["orbax-checkpoint"] == importlib.metadata.version("orbax-checkpoint")
