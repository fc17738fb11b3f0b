"""Tests for experiments/profile_ops.py: a real trace, summed by operation kind."""
import jax
import jax.numpy as jnp

from experiments import profile_ops


def test_trace_summary_counts_the_traced_operations(tmp_path):
  x = jnp.ones((256, 256), jnp.float32)
  fn = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  wall = profile_ops.traced(fn, lambda: (x,), trace_dir=str(tmp_path))
  summary = profile_ops.summarise_trace(str(tmp_path), top=20)
  assert wall > 0 and summary["thread_ms"] > 0
  shares = [k["share"] for k in summary["kinds"]]
  assert abs(sum(shares) - 1.0) < 0.01  # every kind is listed (fewer than 20 here)
  assert all(k["calls"] >= 1 for k in summary["kinds"])
  # Kinds drop the numeric suffix of HLO names: two products of one kind are one entry.
  names = [k["kind"] for k in summary["kinds"]]
  assert len(names) == len(set(names)) and not any(n[-1].isdigit() for n in names)
  assert sum(k["thread_ms"] for k in summary["kinds"]) <= summary["thread_ms"] + 0.2


def test_kind_strips_the_numeric_suffix():
  assert profile_ops._kind("ynn_fusion.12") == "ynn_fusion"
  assert profile_ops._kind("copy") == "copy"
