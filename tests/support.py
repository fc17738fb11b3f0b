"""Shared helpers of the engine tests: the `tiny` arithmetic config on the `micro` model."""
import jax

from configs import grpo_arithmetic
from jaxrl_reward import experiment as experiment_lib
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
