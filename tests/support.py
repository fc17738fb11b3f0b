"""Shared helpers of the engine tests: the `tiny` arithmetic config on the `micro` model."""
import jax
import numpy as np

from configs import grpo_arithmetic
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import sharding


def with_keys(c, **overrides):
  """`c` with dotted keys set (new keys inside the open blocks are added)."""
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def micro_config(**overrides):
  c = grpo_arithmetic.get_config("tiny")
  c.model.name = "micro"
  c.log_every = 1
  return with_keys(c, **overrides)


def one_device():
  """On one device: the engine's logic, fast; tests/test_sharding.py covers the meshes."""
  return sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])


def experiment(config):
  return experiment_lib.Experiment(config, mesh=one_device())


def micro_experiment(**overrides):
  return experiment(micro_config(**overrides))


def run_full_and_resumed(t, workdir, stop_at: int):
  """Runs `t` uninterrupted into workdir/full, then stopped after `stop_at` steps and resumed into
  workdir/resumed; asserts that both wrote the same metrics. Returns (full state, resumed state,
  the full run's metric rows)."""
  t.run(workdir / "full")
  full = t.state
  t.run(workdir / "resumed", stop_at=stop_at)
  t.run(workdir / "resumed")
  rows_full = metrics_lib.read_metrics(workdir / "full" / "metrics.jsonl")
  rows_resumed = metrics_lib.read_metrics(workdir / "resumed" / "metrics.jsonl")
  assert [r["step"] for r in rows_full] == [r["step"] for r in rows_resumed]
  for a, b in zip(rows_full, rows_resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
  return full, t.state, rows_full
