"""Tests for jaxrl_reward.checkpoint."""
import gc
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrl_reward import checkpoint as checkpoint_lib
from jaxrl_reward.checkpoint import Checkpointer, one_line


def _state(offset=0.0):
  return {
      "params": {
          "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + offset,
          "b": jnp.linspace(-1.0, 1.0, 4).astype(jnp.bfloat16),
      },
      "opt": [jnp.array(7, jnp.int32), np.arange(5, dtype=np.int16)],
      "count": 3,
  }


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
      tree)


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_values_dtypes_and_extra(tmp_path):
  state = _state()
  extra = {"stage": "rl", "examples_seen": 128, "history": [1.5, 2.0]}
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.save(5, state, extra=extra)
    ckpt.wait()
    restored, restored_extra = ckpt.restore(_abstract(state))
  _assert_tree_equal(restored, state)
  assert restored["params"]["b"].dtype == jnp.bfloat16
  assert isinstance(restored["opt"][1], np.ndarray)
  assert restored_extra == extra


def test_restore_from_a_new_checkpointer_and_concrete_target(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1.0))
  ckpt = Checkpointer(tmp_path)
  restored, extra = ckpt.restore(_state(0.0), step=1)  # concrete arrays as the target
  ckpt.close()
  _assert_tree_equal(restored, _state(1.0))
  assert extra == {}


def test_latest_step_max_to_keep_and_interval(tmp_path):
  ckpt = Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2)
  assert ckpt.latest_step() is None
  saved = [ckpt.save(step, _state(float(step))) for step in range(5)]
  assert saved == [True, False, True, False, True]
  assert ckpt.save(5, _state(5.0), force=True)
  ckpt.wait()
  assert ckpt.latest_step() == 5
  assert ckpt.all_steps() == [4, 5]
  assert sorted(d for d in os.listdir(tmp_path) if d.isdigit()) == ["4", "5"]
  restored, _ = ckpt.restore(_abstract(_state()), step=4)
  _assert_tree_equal(restored, _state(4.0))
  with pytest.raises(FileNotFoundError, match="available steps"):
    ckpt.restore(_abstract(_state()), step=2)
  ckpt.close()


def test_unfinalised_tmp_dir_is_ignored(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1.0))
  # What a crash in the middle of saving step 2 leaves behind: the temporary directory.
  crashed = tmp_path / "2.orbax-checkpoint-tmp-1700000000123456"
  (crashed / "state").mkdir(parents=True)
  (crashed / "state" / "partial").write_bytes(b"\0" * 16)
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() == 1
  assert ckpt.all_steps() == [1]
  restored, _ = ckpt.restore(_abstract(_state()))
  _assert_tree_equal(restored, _state(1.0))
  ckpt.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  ckpt = Checkpointer(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="no finalised checkpoint"):
    ckpt.restore(_abstract(_state()))
  ckpt.close()


@pytest.mark.parametrize("part", ["state/_METADATA", "state"])
def test_restore_names_a_missing_part_of_the_step(tmp_path, part):
  """Without the check orbax reports a tree-structure mismatch or a missing item instead."""
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, _state())
  ckpt.wait()
  path = tmp_path / "1" / part
  shutil.rmtree(path) if path.is_dir() else path.unlink()
  with pytest.raises(FileNotFoundError, match=f"^step 1: {re.escape(str(path))} is missing$"):
    ckpt.restore(_abstract(_state()))
  ckpt.close()


ROOT = pathlib.Path(__file__).resolve().parents[1]

# 40 arrays, every data file of the newest step cut in half: the restore fails with many reads
# still pending, whose late errors Python would print (hundreds of lines) after the warning.
FALLBACK_SCRIPT = textwrap.dedent("""
    import pathlib, sys
    import jax, jax.numpy as jnp
    from jaxrl_reward.checkpoint import Checkpointer
    directory = pathlib.Path(sys.argv[1])
    state = {f"a{i}": jnp.full((64, 64), float(i)) for i in range(40)}
    ckpt = Checkpointer(directory)
    ckpt.save(1, state)
    ckpt.save(2, jax.tree.map(lambda x: x + 1, state))
    ckpt.wait()
    for path in (directory / "2" / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, _, step = ckpt.restore_newest_readable(lambda step: abstract)
    ckpt.close()
    print(step, float(restored["a3"][0, 0]))
""")


def test_fallback_prints_one_line_and_nothing_from_the_abandoned_reads(tmp_path):
  proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, str(tmp_path / "ckpt")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["1", "3.0"]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("warning: checkpoint step 2 "), proc.stderr[:3000]


def test_only_the_abandoned_reads_are_dropped(monkeypatch, caplog):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  monkeypatch.setattr(checkpoint_lib, "_FAILED_STEPS", ["/ckpt/7"])
  checkpoint_lib._quiet_abandoned_reads()

  @types.coroutine
  def pause():
    yield

  async def read():  # like orbax's read: any BaseException, GeneratorExit included, is wrapped
    try:
      await pause()
    except BaseException as e:
      raise Exception("a page of TensorStore spec") from e

  pending = read()
  pending.send(None)
  del pending
  gc.collect()
  sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None))
  other = types.SimpleNamespace(exc_value=RuntimeError("a real problem"), object=None)
  sys.unraisablehook(other)
  assert seen == [other]

  log = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for path in ("/ckpt/7/state/", "/elsewhere/"):
      try:
        raise ValueError(f'Error reading "a0" in {path}')
      except ValueError:
        log.error("Future exception was never retrieved", exc_info=True)
  assert [str(r.exc_info[1]) for r in caplog.records] == ['Error reading "a0" in /elsewhere/']


def test_one_line_reports_the_root_cause():
  try:
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "w/0.0"\nsecond line')
    except ValueError as inner:
      raise Exception("Encountered error while reading array index. Details: " + "x" * 500) from inner
  except Exception as e:
    assert one_line(e) == 'ValueError: OUT_OF_RANGE: Error reading "w/0.0"'
    context_only = RuntimeError("outer")
    context_only.__context__ = e  # an error raised while handling another is its own cause
    assert one_line(context_only) == "RuntimeError: outer"
  assert one_line(KeyError()) == "KeyError"
  assert one_line(RuntimeError("y" * 300)) == "RuntimeError: " + "y" * 223 + "..."


def test_restore_onto_a_different_mesh(tmp_path):
  devices = np.array(jax.devices())
  assert devices.size == 8
  mesh8 = Mesh(devices.reshape(8), ("data",))
  values = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
  x = jax.device_put(values, NamedSharding(mesh8, P("data")))
  ckpt = Checkpointer(tmp_path)
  ckpt.save(0, {"x": x})
  ckpt.wait()
  mesh42 = Mesh(devices.reshape(4, 2), ("a", "b"))
  target = NamedSharding(mesh42, P("a", "b"))
  restored, _ = ckpt.restore({"x": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=target)})
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored["x"]), values)
  assert restored["x"].sharding == target
  assert restored["x"].addressable_shards[0].data.shape == (2, 3)
