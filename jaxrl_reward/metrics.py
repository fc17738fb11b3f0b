"""Training metrics: `metrics.jsonl` + TensorBoard while running, plots and tables at the end.

`metrics.jsonl` holds one JSON object per `MetricsLogger.log` call:
`{"step": 12, "train/reward": 0.41, "loss/policy": -0.02, ...}` (keys namespaced
`<group>/<name>`, values plain floats). Every line is strict JSON, so any JSON reader
takes it: a NaN or infinite value is written as `null` and its key listed, with which
value it was, in the line's `nonfinite` field,
`{"step": 3, "loss/total": null, "nonfinite": {"loss/total": "nan"}}` ("nan", "inf" or
"-inf"). `read_metrics` puts the floats back (and drops `nonfinite`), so tables and plots
see NaN / inf; it also reads older files with the bare `NaN` / `Infinity` tokens. Each
line is flushed when written, so the file is readable while the run goes on and loses at
most the last line in a crash.

Resume: a run restarted from the checkpoint of step `s` calls `truncate_after(s)` first,
so that the lines logged after that checkpoint by the interrupted run are dropped and the
final file equals the one of an uninterrupted run; TensorBoard is told to purge the
events after `s` as well.

Multi-host: only process 0 logs; construct the logger with
`enabled=jax.process_index() == 0` and every method is a no-op on the other processes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
DEFAULT_PLOT_KEYS = ("train/reward", "eval/accuracy_greedy", "eval/accuracy_sampled", "eval/reward", "eval/guard",
                     "loss/pretrain_policy", "eval/pair_accuracy", "eval/best_of_n")
NONFINITE_KEY = "nonfinite"  # per line: name -> "nan" / "inf" / "-inf" of each value written as null
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_float(key: str, value: Any) -> float:
  """A scalar (Python number, numpy or jax 0-d / size-1 array) as a Python float."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metrics[{key!r}] must be a scalar, got an array of shape {array.shape}")
  return float(array.reshape(()))


def _nonfinite_name(value: float) -> str:
  return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


def _encode_line(row: Mapping[str, Any]) -> str:
  """One strict-JSON line of `row` (step and float values): non-finite floats become null,
  named in the `nonfinite` field."""
  record, nonfinite = {}, {}
  for key, value in row.items():
    if isinstance(value, float) and not math.isfinite(value):
      nonfinite[key] = _nonfinite_name(value)
      value = None
    record[key] = value
  if nonfinite:
    record[NONFINITE_KEY] = nonfinite
  return json.dumps(record, allow_nan=False)


def _decode_line(line: str, where: str) -> dict:
  """A row from one line: the values named in `nonfinite` as floats again. Bare `NaN` /
  `Infinity` tokens (files written before the strict format) are read as floats too.

  Raises json.JSONDecodeError for a line that is not JSON, ValueError (naming `where`) for
  a `nonfinite` field that does not name null values as "nan", "inf" or "-inf".
  """
  row = json.loads(line)
  if not isinstance(row, dict):
    raise ValueError(f"{where} is not a JSON object: {line[:80]!r}")
  nonfinite = row.pop(NONFINITE_KEY, None)
  if nonfinite is None:
    return row
  if not isinstance(nonfinite, dict):
    raise ValueError(f"{where}: field {NONFINITE_KEY!r} must map metric names to 'nan', 'inf' or '-inf', "
                     f"got {nonfinite!r}")
  for key, name in nonfinite.items():
    if name not in _NONFINITE or key not in row or row[key] is not None:
      raise ValueError(f"{where}: field {NONFINITE_KEY!r} has {key!r}: {name!r}; expected one of "
                       f"{list(_NONFINITE)} for a key whose value is null")
    row[key] = _NONFINITE[name]
  return row


class MetricsLogger:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard `<workdir>/tensorboard`.

  Args:
    workdir: run directory (created if missing).
    enabled: False on every process but process 0: then nothing is written.
    tensorboard: also write TensorBoard scalars (tensorboardX).
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = bool(enabled)
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / METRICS_FILE
    self._use_tensorboard = bool(tensorboard)
    self._file = None
    self._writer = None
    self._purge_step = None  # set by truncate_after, used by the next event file
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")

  def _check_open(self) -> None:
    if self._file is None:
      raise RuntimeError(f"MetricsLogger for {str(self.workdir)!r} is closed")

  def _tensorboard(self):
    """The TensorBoard writer, opened at the first scalar (no empty event files)."""
    if self._writer is None:
      self._writer = self._open_tensorboard(self._purge_step)
      self._purge_step = None
    return self._writer

  def _open_tensorboard(self, purge_step: int | None = None):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # tensorboardX warns on every NaN / inf scalar; metrics.jsonl names them in the line already.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    # A unique suffix: event files are named by the second they are opened in, and a second
    # writer opened in the same second (after `truncate_after`) must not overwrite the first.
    return SummaryWriter(logdir=str(self.workdir / TENSORBOARD_DIR), purge_step=purge_step,
                         filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes one line `{"step": step, **metrics}` and the TensorBoard scalars.

    Args:
      step: training step (int).
      metrics: namespaced name -> scalar (float, int, numpy or jax scalar / size-1 array).
    """
    if not self.enabled:
      return
    self._check_open()
    if "step" in metrics:
      raise ValueError("metrics must not contain the key 'step' (it is the `step` argument)")
    if NONFINITE_KEY in metrics:
      raise ValueError(f"metrics must not contain the key {NONFINITE_KEY!r} (each line of {METRICS_FILE} "
                       "uses it to name its NaN / inf values)")
    step = int(step)
    record = {"step": step}
    for key, value in metrics.items():
      record[str(key)] = _to_float(str(key), value)
    self._file.write(_encode_line(record) + "\n")
    self._file.flush()
    if self._use_tensorboard:
      writer = self._tensorboard()
      for key, value in record.items():
        if key != "step":
          writer.add_scalar(key, value, global_step=step)
      writer.flush()

  def truncate_after(self, step: int) -> None:
    """Drops every logged line with a step greater than `step` (used when resuming).

    The file is rewritten atomically (temporary file + rename); TensorBoard events of
    later steps are purged by TensorBoard when it reads the run.
    """
    if not self.enabled:
      return
    self._check_open()
    step = int(step)
    self._file.close()
    kept = [row for row in read_metrics(self.path) if row["step"] <= step] if self.path.exists() else []
    tmp = self.path.with_name(self.path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      for row in kept:
        f.write(_encode_line(row) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    # TensorBoard drops the events of steps >= purge_step written before this marker.
    self._purge_step = step + 1

  def close(self) -> None:
    """Flushes and closes the files (idempotent)."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "MetricsLogger":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """Reads a `metrics.jsonl` file (or the one in directory `path`) as a list of dicts.

  Values listed in a line's `nonfinite` field come back as float NaN / inf (the field
  itself is dropped), as do the bare `NaN` / `Infinity` tokens of older files. A
  malformed last line (a write cut short by a crash) is skipped with a warning; a
  malformed line elsewhere is an error.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"metrics file {str(path)!r} does not exist")
  lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(_decode_line(line, f"{str(path)!r} line {i + 1}"))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        warnings.warn(f"skipping the truncated last line of {str(path)!r}: {line[:80]!r}")
        break
      raise ValueError(f"{str(path)!r} line {i + 1} is not valid JSON: {e}") from e
  return rows


def plot_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike, *,
                keys: Sequence[str] = DEFAULT_PLOT_KEYS, title: str | None = None,
                missing_ok: bool = False) -> list[str]:
  """Plots each of `keys` present in the metrics file against the step, one subplot each.

  Args:
    metrics_path: a `metrics.jsonl` file or the workdir holding it.
    out_png: the PNG to write (parent directories are created).
    keys: metric names to plot; those never logged are skipped.
    title: figure title.
    missing_ok: when none of `keys` was logged, write nothing and return [] instead of raising.
  Returns:
    The keys plotted.
  Raises:
    FileNotFoundError: the metrics file is missing.
    ValueError: none of `keys` was ever logged (and not `missing_ok`).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_metrics(metrics_path)
  present = [k for k in keys if any(k in row for row in rows)]
  if not present:
    if missing_ok:
      return []
    available = sorted({k for row in rows for k in row} - {"step"})
    raise ValueError(f"keys={tuple(keys)!r}: none was logged in {str(metrics_path)!r}; "
                     f"logged keys: {available}")
  fig, axes = plt.subplots(len(present), 1, figsize=(6.0, 2.6 * len(present)), sharex=True,
                           squeeze=False)
  for ax, key in zip(axes[:, 0], present):
    points = [(row["step"], row[key]) for row in rows if key in row and row[key] is not None]
    steps, values = zip(*points)
    ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
  axes[-1, 0].set_xlabel("step")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return present


def _format_cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    value = float(value)
    if math.isfinite(value) and (value == 0 or 1e-3 <= abs(value) < 1e6):
      return f"{value:.4f}"
    return f"{value:.4g}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """A markdown table of `rows` restricted to `columns` (missing cells are left empty).

  Floats are written with 4 decimals (`0.4531`), or 4 significant digits when very
  large or small.
  """
  if not columns:
    raise ValueError("columns must name at least one column")
  lines = ["| " + " | ".join(_format_cell(c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_format_cell(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


__all__ = ["MetricsLogger", "read_metrics", "plot_curves", "format_table", "METRICS_FILE",
           "TENSORBOARD_DIR", "DEFAULT_PLOT_KEYS", "NONFINITE_KEY"]
