"""Tests for jaxrl_reward.metrics."""
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reward import metrics as metrics_lib


def _read_tensorboard_scalars(tb_dir):
  """(tag, step, value) of every scalar in the event files (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2
  scalars = []
  for path in sorted(tb_dir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      record = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      if event.HasField("session_log"):
        scalars.append(("<purge>", event.step, None))
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def _strict_json(line):
  """`json.loads` that rejects the non-standard tokens NaN, Infinity and -Infinity."""
  def reject(token):
    raise ValueError(f"non-standard JSON token {token} in {line!r}")
  return json.loads(line, parse_constant=reject)


def test_log_writes_one_json_line_per_call_and_tensorboard(tmp_path):
  logger = metrics_lib.MetricsLogger(tmp_path)
  logger.log(1, {"train/reward": 0.5, "loss/policy": jnp.float32(-0.25)})
  logger.log(2, {"train/reward": np.array([0.75]), "eval/accuracy_greedy": 1})
  # Lines are flushed as written: readable before close.
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "train/reward": 0.5, "loss/policy": -0.25},
      {"step": 2, "train/reward": 0.75, "eval/accuracy_greedy": 1.0},
  ]
  logger.close()
  assert isinstance(json.loads(lines[1])["eval/accuracy_greedy"], float)
  scalars = _read_tensorboard_scalars(tmp_path / "tensorboard")
  assert ("train/reward", 2, 0.75) in scalars
  assert ("loss/policy", 1, -0.25) in scalars


def test_log_rejects_non_scalars_and_step_key(tmp_path):
  with metrics_lib.MetricsLogger(tmp_path, tensorboard=False) as logger:
    with pytest.raises(ValueError, match="train/reward"):
      logger.log(0, {"train/reward": np.ones(3)})
    with pytest.raises(ValueError, match="step"):
      logger.log(0, {"step": 1.0})


def test_truncate_after_matches_an_uninterrupted_run(tmp_path):
  def values(step):
    return {"train/reward": step / 10, "stats/kl": math.nan if step == 3 else step}

  with metrics_lib.MetricsLogger(tmp_path / "full", tensorboard=False) as logger:
    for step in range(6):
      logger.log(step, values(step))
  with metrics_lib.MetricsLogger(tmp_path / "resumed") as logger:  # interrupted after step 4
    for step in range(5):
      logger.log(step, values(step))
  with metrics_lib.MetricsLogger(tmp_path / "resumed") as logger:  # resumed from step 2
    logger.truncate_after(2)
    assert [r["step"] for r in metrics_lib.read_metrics(tmp_path / "resumed")] == [0, 1, 2]
    for step in range(3, 6):
      logger.log(step, values(step))
  full = (tmp_path / "full" / "metrics.jsonl").read_text()
  assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == full
  assert _strict_json(full.splitlines()[3])["nonfinite"] == {"stats/kl": "nan"}  # rewritten lines stay strict
  rows = metrics_lib.read_metrics(tmp_path / "full" / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(6))
  assert math.isnan(rows[3]["stats/kl"])
  assert len(list((tmp_path / "resumed" / "tensorboard").glob("events.out.tfevents.*"))) == 2
  scalars = _read_tensorboard_scalars(tmp_path / "resumed" / "tensorboard")
  assert ("<purge>", 3, None) in scalars  # TensorBoard discards the earlier steps >= 3


def test_nonfinite_values_are_strict_json_and_read_back_as_floats(tmp_path):
  with metrics_lib.MetricsLogger(tmp_path) as logger:
    logger.log(1, {"loss/total": 0.5, "stats/kl": 0.1})
    logger.log(2, {"loss/total": math.nan, "stats/kl": np.float32(np.inf),
                   "stats/ratio": jnp.float32(-jnp.inf), "train/reward": 0.25})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  parsed = [_strict_json(line) for line in lines]  # strict JSON: no NaN / Infinity tokens
  assert parsed == [
      {"step": 1, "loss/total": 0.5, "stats/kl": 0.1},
      {"step": 2, "loss/total": None, "stats/kl": None, "stats/ratio": None, "train/reward": 0.25,
       "nonfinite": {"loss/total": "nan", "stats/kl": "inf", "stats/ratio": "-inf"}},
  ]
  rows = metrics_lib.read_metrics(tmp_path)
  assert list(rows[1]) == ["step", "loss/total", "stats/kl", "stats/ratio", "train/reward"]
  assert math.isnan(rows[1]["loss/total"]) and rows[1]["train/reward"] == 0.25
  assert rows[1]["stats/kl"] == math.inf and rows[1]["stats/ratio"] == -math.inf
  scalars = _read_tensorboard_scalars(tmp_path / "tensorboard")  # TensorBoard gets the floats
  assert ("stats/kl", 2, math.inf) in scalars and ("stats/ratio", 2, -math.inf) in scalars
  assert any(tag == "loss/total" and step == 2 and math.isnan(v) for tag, step, v in scalars)
  table = metrics_lib.format_table(rows, ["step", "loss/total", "stats/kl", "stats/ratio"])
  assert table.splitlines()[-1] == "| 2 | nan | inf | -inf |"
  out = tmp_path / "curves.png"
  assert metrics_lib.plot_curves(tmp_path, out, keys=("loss/total", "stats/kl", "stats/ratio")) == [
      "loss/total", "stats/kl", "stats/ratio"]
  assert out.read_bytes().startswith(b"\x89PNG")
  with metrics_lib.MetricsLogger(tmp_path, tensorboard=False) as logger:
    with pytest.raises(ValueError, match="nonfinite"):
      logger.log(3, {"nonfinite": 1.0})


def test_read_metrics_reads_bare_nonfinite_tokens_of_old_files(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 0, "a": NaN, "b": Infinity, "c": -Infinity}\n{"step": 1, "a": 1.0, "b": null}\n')
  rows = metrics_lib.read_metrics(tmp_path)
  assert math.isnan(rows[0]["a"]) and rows[0]["b"] == math.inf and rows[0]["c"] == -math.inf
  assert rows[1] == {"step": 1, "a": 1.0, "b": None}


def test_read_metrics_rejects_a_bad_nonfinite_field(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "a": null, "nonfinite": {"a": "big"}}\n{"step": 1, "a": 1.0}\n')
  with pytest.raises(ValueError, match=r"line 1.*nonfinite.*'a'"):
    metrics_lib.read_metrics(path)


def test_disabled_logger_writes_nothing(tmp_path):
  logger = metrics_lib.MetricsLogger(tmp_path / "run", enabled=False)
  logger.log(0, {"train/reward": 1.0})
  logger.truncate_after(0)
  logger.close()
  assert not (tmp_path / "run").exists()


def test_read_metrics_errors_and_truncated_last_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics"):
    metrics_lib.read_metrics(tmp_path / "nope.jsonl")
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "a": 1.0}\n\n{"step": 1, "a": 2.0}\n{"step": 2, "a"')
  with pytest.warns(UserWarning, match="truncated"):
    assert metrics_lib.read_metrics(tmp_path) == [{"step": 0, "a": 1.0}, {"step": 1, "a": 2.0}]
  path.write_text('{"step": 0\n{"step": 1, "a": 2.0}\n')
  with pytest.raises(ValueError, match="line 1"):
    metrics_lib.read_metrics(path)


def test_plot_curves_writes_png_of_present_keys(tmp_path):
  with metrics_lib.MetricsLogger(tmp_path, tensorboard=False) as logger:
    for step in range(4):
      logger.log(step, {"train/reward": step * 0.1})
    logger.log(3, {"eval/accuracy_greedy": 0.5})
  out = tmp_path / "plots" / "curves.png"
  plotted = metrics_lib.plot_curves(tmp_path / "metrics.jsonl", out, title="run")
  assert plotted == ["train/reward", "eval/accuracy_greedy"]
  data = out.read_bytes()
  assert data.startswith(b"\x89PNG") and len(data) > 1000
  with pytest.raises(ValueError, match="train/reward"):
    metrics_lib.plot_curves(tmp_path, out, keys=("stats/kl",))
  # A run's summary (a reward-model-only run logs none of the default keys) must not fail.
  other = tmp_path / "other.png"
  assert metrics_lib.plot_curves(tmp_path, other, keys=("stats/kl",), missing_ok=True) == []
  assert not other.exists()
  with pytest.raises(FileNotFoundError):
    metrics_lib.plot_curves(tmp_path / "missing.jsonl", out)


def test_format_table():
  table = metrics_lib.format_table(
      [{"model": "base", "greedy": 0.453125, "n": 64}, {"model": "rl|v2", "greedy": 0.75}],
      ["model", "greedy", "n"])
  assert table.splitlines() == [
      "| model | greedy | n |",
      "|---|---|---|",
      "| base | 0.4531 | 64 |",
      "| rl\\|v2 | 0.7500 |  |",
  ]
