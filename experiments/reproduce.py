"""Reproductions: named sets of training runs, their kept results and REPRODUCTIONS.md.

    python -m experiments.reproduce main_job                  # the README's main job, seeds 0, 1, 2
    python -m experiments.reproduce main_job --quick          # its small variant, 1 seed (a smoke test)
    python -m experiments.reproduce likelihood_rewards        # likelihood rewards vs the verifier
    python -m experiments.reproduce --render_only             # rewrite REPRODUCTIONS.md, run nothing

A reproduction is a named set of runs (config file, variant and overrides, each run once
per seed 0..N-1 with `--config.seed=S`) and a function that renders its Markdown section
from the runs' kept result lines, with a published paper's numbers beside ours where there
is a paper. Each run is `python -m experiments.train` in a subprocess (repository root as
working directory) into `<root>/<NAME>/<label>/seed<S>` (quick runs: `<root>/<NAME>.quick/...`);
its output goes to `train.log` in that directory, and a failing run is an error that shows
the log's last lines. Running again on the same workdir resumes from its last checkpoint
(a finished run re-finishes quickly): delete the workdir for a fresh run.

After each run one JSON line is appended to `<results_dir>/<NAME>.jsonl` (quick runs:
`<NAME>.quick.jsonl`): the run's `results.json` rows, its eval and train-reward curves from
`metrics.jsonl`, wall time, git commit, jax version, host and UTC date. `REPRODUCTIONS.md`
is generated from the full (non-quick) files alone, the latest line of each (label, seed)
winning, with a PNG of the eval curves written next to each file (`<NAME>.png`).

Adding a reproduction: `register(Reproduction(...))` with its runs, quick runs, optional
`Paper` numbers and claims; `render` defaults to `stage_table` (one row per results row,
mean ± sample std over seeds) and can be any function of the reproduction and its lines.
Relative paths in the flags are taken from the repository root.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import app
from absl import flags

from experiments import verdicts
from jaxrl_reward import metrics as metrics_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LOG_FILE = "train.log"
TAIL_LINES = 40
METRICS = ("accuracy_greedy", "accuracy_sampled")
METRIC_NAMES = {"accuracy_greedy": "greedy accuracy", "accuracy_sampled": "sampled accuracy"}
DEFAULT_ROOT = "runs/reproductions"
DEFAULT_RESULTS_DIR = "experiments/results/reproductions"
DEFAULT_OUTPUT = "REPRODUCTIONS.md"

Record = dict  # one kept JSON line (see `collect_record`)


# -- what a reproduction is ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training command of a reproduction, run once per seed.

  Attributes:
    label: names the run in tables and plots, and its workdir (`<root>/<NAME>/<label>/seed<S>`).
    config: `experiments.train`'s `--config`: a config file, optionally `:VARIANT`.
    overrides: config keys and values, passed as `--config.KEY=VALUE` (the seed is not one;
      "{seed}" in a string value becomes the run's seed and "{runs}" the directory of the
      reproduction's runs, e.g. `init_from="{runs}/pretrain/seed{seed}"`).
    then: an evaluation to run after training, `(module, flag, ...)`: `python -m module` with the
      run's `--config`, `--workdir` and overrides, then these flags; the JSON object on the last
      line of its standard output is kept in the record as "evaluation".
  """
  label: str
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  then: tuple[str, ...] = ()

  def __post_init__(self):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.label):
      raise ValueError(f"run label {self.label!r}: use letters, digits, '_', '.', '-' (it names a directory)")
    if "seed" in self.overrides:
      raise ValueError(f"run {self.label!r}: the seed comes from --seeds, not from the overrides")

  def args(self, workdir: str, seed: int) -> list[str]:
    """The arguments after `python -m experiments.train`."""
    args = [f"--config={self.config}", f"--workdir={workdir}"]
    runs = str(pathlib.PurePath(workdir).parent.parent)  # <root>/<NAME>
    args += [f"--config.{key}={_flag_value(value).replace('{seed}', str(seed)).replace('{runs}', runs)}"
             for key, value in self.overrides.items()]
    return args + [f"--config.seed={seed}"]


def _flag_value(value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):  # a tuple literal with double quotes, e.g. ("rl",)
    return "(" + ", ".join(json.dumps(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


@dataclasses.dataclass(frozen=True)
class Paper:
  """Published numbers to set beside ours.

  Attributes:
    citation: where the numbers come from, e.g. "Author et al. (2025), Table 2".
    numbers: `(label, stage, metric) -> value`; `stage` is a stage string of the results rows
      (the last row of that stage) or an int position among the label's rows (-1: the last).
  """
  citation: str
  numbers: Mapping[tuple[str, str | int, str], float]


@dataclasses.dataclass(frozen=True)
class Reproduction:
  """A named set of runs and how its kept results become a section of REPRODUCTIONS.md.

  Attributes:
    name: registry key, the results file's name and the workdirs' parent.
    title, description: the section's heading and its opening paragraph.
    runs: the full runs, each repeated for seeds 0..seeds-1.
    quick: a small variant of the runs for smoke tests (written to `<NAME>.quick.jsonl`).
    seeds, quick_seeds: default number of seeds of each.
    render: `(reproduction, records) -> Markdown` of the results (a table); records are the
      latest line of each (label, seed), in the order of `runs`, then of seeds.
    paper: published numbers, or None when the numbers are this project's own.
    claims: a plain statement under the table: fixed text, or `(records) -> text` computed
      from the numbers.
    plot: `(reproduction, records, png_path) -> bool` (False: nothing plotted), or None.
  """
  name: str
  title: str
  description: str
  runs: tuple[RunSpec, ...]
  quick: tuple[RunSpec, ...] = ()
  seeds: int = 3
  quick_seeds: int = 1
  render: Callable[["Reproduction", list[Record]], str] | None = None
  paper: Paper | None = None
  claims: str | Callable[[list[Record]], str] = ""
  plot: Callable[["Reproduction", list[Record], pathlib.Path], bool] | None = None

  def __post_init__(self):
    labels = [spec.label for spec in self.runs]
    if len(set(labels)) != len(labels):
      raise ValueError(f"reproduction {self.name!r}: run labels must differ, got {labels}")
    if self.render is None:
      object.__setattr__(self, "render", stage_table)
    if self.plot is None:
      object.__setattr__(self, "plot", plot_eval_curves)


REGISTRY: dict[str, Reproduction] = {}


def register(reproduction: Reproduction) -> Reproduction:
  if reproduction.name in REGISTRY:
    raise ValueError(f"reproduction {reproduction.name!r} is already registered")
  REGISTRY[reproduction.name] = reproduction
  return reproduction


def get(name: str, registry: Mapping[str, Reproduction] | None = None) -> Reproduction:
  """The registered reproduction `name`; an unknown name is an error that lists the known ones."""
  registry = REGISTRY if registry is None else registry
  if name not in registry:
    raise ValueError(f"unknown reproduction {name!r}; known: {', '.join(sorted(registry)) or 'none'}")
  return registry[name]


# -- kept result lines -----------------------------------------------------------------------


def results_path(results_dir: str | os.PathLike, name: str, quick: bool = False) -> pathlib.Path:
  return pathlib.Path(results_dir) / f"{name}{'.quick' if quick else ''}.jsonl"


def read_records(path: str | os.PathLike) -> list[Record]:
  """Every kept line of a results file, in file order ([] when the file does not exist)."""
  path = pathlib.Path(path)
  return metrics_lib.read_metrics(path) if path.is_file() else []


def latest_records(reproduction: Reproduction, records: Sequence[Record]) -> list[Record]:
  """The latest line of each (label, seed), ordered by the reproduction's runs, then by seed.

  Labels no longer among the runs come after, in the order they first appear.
  """
  latest = {}
  for r in records:
    if not r.get("quick"):
      latest[(r["label"], r["seed"])] = r
  order = [spec.label for spec in reproduction.runs]
  order += [label for label in dict.fromkeys(label for label, _ in latest) if label not in order]
  return [latest[key] for key in sorted(latest, key=lambda k: (order.index(k[0]), k[1]))]


def _workdir_curves(workdir: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """(eval curve, train reward curve) from the run's metrics.jsonl; the last line of a step wins."""
  path = workdir / "metrics.jsonl"
  rows = metrics_lib.read_metrics(path) if path.is_file() else []
  evals, rewards = {}, {}
  for row in rows:
    if "step" not in row:
      continue
    step = int(row["step"])
    point = {m: row[f"eval/{m}"] for m in METRICS if f"eval/{m}" in row}
    if point:
      evals[step] = {"step": step, **point}
    if "train/reward" in row:
      rewards[step] = {"step": step, "reward": row["train/reward"]}
  return [evals[s] for s in sorted(evals)], [rewards[s] for s in sorted(rewards)]


def _device(provenance: Mapping[str, Any]) -> str | None:
  jax_info = provenance.get("jax")
  kinds = jax_info.get("device_kinds") if isinstance(jax_info, dict) else None
  if not isinstance(kinds, dict) or not kinds:
    return None
  return ", ".join(f"{count} x {kind}" if count != 1 else str(kind) for kind, count in kinds.items())


def collect_record(reproduction: Reproduction, spec: RunSpec, seed: int, workdir: pathlib.Path, *,
                   wall_s: float, quick: bool, resumed: bool) -> Record:
  """The kept line of one finished run, read from the files it left in `workdir`."""
  results = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
  eval_curve, train_reward = _workdir_curves(workdir)
  provenance_file = workdir / "provenance.json"
  provenance = json.loads(provenance_file.read_text(encoding="utf-8")) if provenance_file.is_file() else {}
  git = provenance.get("git") if isinstance(provenance.get("git"), dict) else {}
  packages = provenance.get("packages") if isinstance(provenance.get("packages"), dict) else {}
  jax_version = packages.get("jax")
  if not jax_version:
    try:
      jax_version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
      jax_version = None
  return {
      "reproduction": reproduction.name, "label": spec.label, "seed": seed, "quick": quick,
      "config": spec.config, "overrides": dict(spec.overrides),
      "results": results, "eval_curve": eval_curve, "train_reward": train_reward,
      "wall_s": round(wall_s, 1), "resumed": resumed,
      "commit": git.get("commit"), "dirty": git.get("dirty"), "jax": jax_version,
      # Every segment of a resumed run: the code that trained each part of its steps.
      "segments": [{k: seg.get(k) for k in ("commit", "dirty", "start_step", "end_step")}
                   for seg in provenance.get("segments") or []],
      "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "device": _device(provenance), "workdir": _display(workdir),  # relative to the repository
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def append_record(path: pathlib.Path, record: Record) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


# -- running ---------------------------------------------------------------------------------


class RunFailed(RuntimeError):
  """A training run exited with an error or left no results; the message holds its log's tail."""


def _tail(path: pathlib.Path, start: int, lines: int = TAIL_LINES) -> str:
  """The last `lines` lines written to `path` after byte `start` (progress-bar updates split)."""
  with open(path, "rb") as f:
    f.seek(start)
    text = f.read().decode("utf-8", errors="replace")
  kept = [line.rstrip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
  return "\n".join(kept[-lines:])


def run_one(reproduction: Reproduction, spec: RunSpec, seed: int, workdir: pathlib.Path, *,
            quick: bool = False) -> Record:
  """Runs one (spec, seed) into `workdir` and returns its kept line (not yet appended)."""
  workdir.mkdir(parents=True, exist_ok=True)
  resumed = (workdir / "metrics.jsonl").exists()
  log_path = workdir / LOG_FILE
  command = [sys.executable, "-m", "experiments.train", *spec.args(str(workdir), seed)]
  with open(log_path, "ab") as log:
    log.write(f"# {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} "
              f"{shlex.join(command)}\n".encode())
    log.flush()
    start_offset = log.tell()
    start = time.perf_counter()
    returncode = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False).returncode
    wall_s = time.perf_counter() - start
  what = f"reproduction {reproduction.name!r}, run {spec.label!r}, seed {seed}"
  if returncode != 0:
    raise RunFailed(f"{what} failed (exit status {returncode}): {shlex.join(command)}\n"
                    f"last lines of {log_path}:\n{_tail(log_path, start_offset)}")
  if not (workdir / "results.json").is_file():
    raise RunFailed(f"{what} finished without writing {workdir / 'results.json'}\n"
                    f"last lines of {log_path}:\n{_tail(log_path, start_offset)}")
  record = collect_record(reproduction, spec, seed, workdir, wall_s=wall_s, quick=quick, resumed=resumed)
  if spec.then:
    record["evaluation"], record["evaluation_wall_s"] = run_evaluation(spec, seed, workdir, what)
  return record


def run_evaluation(spec: RunSpec, seed: int, workdir: pathlib.Path, what: str) -> tuple[dict, float]:
  """Runs `spec.then` on the finished run; (its JSON result, wall seconds). Its stderr goes to the log."""
  module, *flags_ = spec.then
  command = [sys.executable, "-m", module, *spec.args(str(workdir), seed), *flags_]
  start = time.perf_counter()
  with open(workdir / LOG_FILE, "ab") as log:
    log.write(f"# {shlex.join(command)}\n".encode())
    log.flush()
    proc = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                          check=False)
  lines = proc.stdout.decode(errors="replace").strip().splitlines()
  try:
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
  except json.JSONDecodeError:
    result = None
  if not isinstance(result, dict):
    raise RunFailed(f"{what}: the evaluation {shlex.join(command)} failed (exit status {proc.returncode}) or "
                    f"printed no JSON object last; see {workdir / LOG_FILE}")
  if "workdir" in result:  # kept relative to the repository, as the record's own
    result["workdir"] = _display(workdir)
  return result, round(time.perf_counter() - start, 1)


def run_reproduction(reproduction: Reproduction, *, seeds: int | None = None, quick: bool = False,
                     only: Sequence[str] = (), root: str | os.PathLike = DEFAULT_ROOT,
                     results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
                     echo: Callable[[str], None] = print) -> list[Record]:
  """Runs every (spec, seed) of the reproduction (or of its quick variant), one after the other.

  Each finished run's line is appended to the results file at once, so an interrupted
  reproduction keeps the runs it finished; `only` (run labels) runs just those.
  """
  specs = reproduction.quick if quick else reproduction.runs
  unknown = sorted(set(only) - {s.label for s in specs})
  if unknown:
    raise ValueError(f"--runs: {unknown} are not runs of {reproduction.name!r}: {[s.label for s in specs]}")
  specs = tuple(s for s in specs if not only or s.label in only)
  if not specs:
    raise ValueError(f"reproduction {reproduction.name!r} has no {'quick ' if quick else ''}runs")
  seeds = (reproduction.quick_seeds if quick else reproduction.seeds) if seeds is None else seeds
  if seeds < 1:
    raise ValueError(f"seeds must be at least 1, got {seeds}")
  base = _from_repo(root) / (f"{reproduction.name}.quick" if quick else reproduction.name)
  out = results_path(_from_repo(results_dir), reproduction.name, quick)
  records = []
  for spec in specs:
    for seed in range(seeds):
      workdir = base / spec.label / f"seed{seed}"
      echo(f"{reproduction.name}: {spec.label} seed {seed} -> {workdir}")
      record = run_one(reproduction, spec, seed, workdir, quick=quick)
      append_record(out, record)
      echo(f"  {record['wall_s']:.0f} s; " + "; ".join(
          f"{row.get('stage')} (step {row.get('step')}): "
          + ", ".join(f"{m} {row[m]:.3f}" for m in METRICS if isinstance(row.get(m), (int, float)))
          for row in record["results"]))
      records.append(record)
  return records


def _from_repo(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  return path if path.is_absolute() else REPO_ROOT / path


# -- numbers, tables and plots ---------------------------------------------------------------


def summarise(values: Sequence[float]) -> tuple[float, float | None, int]:
  """(mean, sample standard deviation with ddof=1 or None for one value, n)."""
  array = np.asarray(values, dtype=np.float64)
  if array.size == 0:
    raise ValueError("summarise needs at least one value")
  std = float(np.std(array, ddof=1)) if array.size > 1 else None
  return float(np.mean(array)), std, int(array.size)


def _num(x: float | None) -> str:
  return "-" if x is None else f"{x:.3f}"


def format_mean_std(values: Sequence[float]) -> str:
  """`0.875 ± 0.012` (sample std); a single value alone."""
  mean, std, _ = summarise(values)
  return _num(mean) if std is None else f"{_num(mean)} ± {_num(std)}"


@dataclasses.dataclass
class StageRow:
  """One results row (stage, step) of one run label, with each metric's value per seed."""
  label: str
  stage: str
  step: Any
  position: int  # among the label's rows, in results.json order
  values: dict[str, dict[int, float]]  # metric -> seed -> value


def stage_rows(records: Sequence[Record], metrics: Sequence[str] = METRICS) -> list[StageRow]:
  """The results rows of the records grouped across seeds by (label, stage, step), in order."""
  rows: dict[tuple, StageRow] = {}
  per_label: dict[str, int] = {}
  for record in records:
    for result in record["results"]:
      key = (record["label"], str(result.get("stage")), result.get("step"))
      if key not in rows:
        rows[key] = StageRow(key[0], key[1], key[2], per_label.get(key[0], 0), {m: {} for m in metrics})
        per_label[key[0]] = per_label.get(key[0], 0) + 1
      for m in metrics:
        if isinstance(result.get(m), (int, float)):
          rows[key].values[m][record["seed"]] = float(result[m])
  return list(rows.values())


def paper_value(paper: Paper | None, rows: Sequence[StageRow], row: StageRow, metric: str) -> float | None:
  """The paper's number for `row` and `metric` (see `Paper.numbers`), or None."""
  if paper is None:
    return None
  same_label = [r for r in rows if r.label == row.label]
  for (label, stage, m), value in paper.numbers.items():
    if label != row.label or m != metric:
      continue
    if isinstance(stage, int):
      if -len(same_label) <= stage < len(same_label) and same_label[stage] is row:
        return value
    elif stage == row.stage and [r for r in same_label if r.stage == stage][-1] is row:
      return value
  return None


def _per_seed(values: Mapping[int, float]) -> str:
  return ", ".join(f"{seed}: {_num(values[seed])}" for seed in sorted(values))


def _cell(text: Any) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def stage_table(reproduction: Reproduction, records: Sequence[Record],
                metrics: Sequence[str] = METRICS) -> str:
  """One row per results row (stage, step): each metric's mean ± sample std over the seeds,
  its value per seed (`seed: value`) and, where the reproduction has one, the paper's number."""
  rows = stage_rows(records, metrics)
  several = len({r.label for r in rows}) > 1
  paper_metrics = [m for m in metrics
                   if any(paper_value(reproduction.paper, rows, r, m) is not None for r in rows)]
  header = (["run"] if several else []) + ["stage", "step", "seeds"]
  for m in metrics:
    header += [f"{m} (mean ± std)", f"{m} per seed"]
  header += [f"paper: {m}" for m in paper_metrics]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    n = max((len(v) for v in r.values.values()), default=0)
    cells = ([r.label] if several else []) + [r.stage, r.step, n]
    for m in metrics:
      values = r.values[m]
      cells += [format_mean_std(list(values.values())), _per_seed(values)] if values else ["-", "-"]
    cells += [_num(paper_value(reproduction.paper, rows, r, m)) for m in paper_metrics]
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  return "\n".join(lines)


def _band(curves: Sequence[Sequence[tuple[float, float]]]):
  """Steps and the mean, min and max across curves at each step (of the curves that have it)."""
  by_step: dict[float, list[float]] = {}
  for curve in curves:
    for step, value in curve:
      if value is not None:
        by_step.setdefault(step, []).append(value)
  steps = sorted(by_step)
  return (steps, [float(np.mean(by_step[s])) for s in steps], [min(by_step[s]) for s in steps],
          [max(by_step[s]) for s in steps])


def plot_eval_curves(reproduction: Reproduction, records: Sequence[Record], out_png: pathlib.Path) -> bool:
  """Eval accuracy (and train reward, when logged) against the step: per run label the mean
  over seeds, with the min-max range across seeds shaded. False when there is no curve."""
  panels = [(m, [[(p["step"], p.get(m)) for p in r.get("eval_curve", [])] for r in records], f"eval {m}")
            for m in METRICS]
  rewards = [[(p["step"], p.get("reward")) for p in r.get("train_reward", [])] for r in records]
  if any(rewards):
    panels.append(("reward", rewards, "train reward"))
  panels = [p for p in panels if any(curve for curve in p[1])]
  if not panels:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  labels = list(dict.fromkeys(r["label"] for r in records))
  width = 6.4 if len(labels) <= 3 else 9.0  # room for the legend beside the curves
  fig, axes = plt.subplots(len(panels), 1, figsize=(width, max(2.6 * len(panels), 3.2)), sharex=True, squeeze=False)
  for ax, (_, curves, ylabel) in zip(axes[:, 0], panels):
    for i, label in enumerate(labels):
      mine = [c for c, r in zip(curves, records) if r["label"] == label and c]
      if not mine:
        continue
      steps, mean, low, high = _band(mine)
      color = f"C{i}"
      ax.plot(steps, mean, color=color, marker="." if len(steps) < 50 else None, linewidth=1.2,
              label=f"{label} (mean of {len(mine)} seed{'s' if len(mine) != 1 else ''})")
      if len(mine) > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
  axes[0, 0].legend(fontsize="small", title="shaded: min-max over seeds", title_fontsize="small",
                    **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if len(labels) > 3 else {}))
  axes[-1, 0].set_xlabel("step")
  fig.suptitle(reproduction.title)
  fig.tight_layout()
  out_png.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return True


# -- REPRODUCTIONS.md --------------------------------------------------------------------------


def _commands(reproduction: Reproduction, records: Sequence[Record]) -> list[str]:
  """The reproduce command and the training commands behind the records (what they ran)."""
  seeds = max(r["seed"] for r in records) + 1
  lines = [f"`python -m experiments.reproduce {reproduction.name} --seeds={seeds}` runs, for S in "
           f"{', '.join(str(s) for s in range(seeds))}:"]
  runs = dict.fromkeys((r["label"], r["config"], json.dumps(r.get("overrides") or {}, sort_keys=True))
                       for r in records)
  for label, config, overrides in runs:
    spec = RunSpec(label, config, json.loads(overrides))
    workdir = f"{DEFAULT_ROOT}/{reproduction.name}/{label}/seed$S"
    args = " ".join(shlex.quote(a) if "$S" not in a else a
                    for a in RunSpec(spec.label, spec.config, {k: v.replace("{seed}", "$S") if isinstance(v, str) else v
                                                               for k, v in spec.overrides.items()}).args(workdir, 0)[:-1])
    lines.append(f"`python -m experiments.train {args} --config.seed=$S`")
    then = next((r.then for r in reproduction.runs if r.label == label), ())
    if then:
      lines.append(f"then `python -m {then[0]} {args} --config.seed=$S {' '.join(then[1:])}`")
  return lines


def _range(values: Sequence[str]) -> str:
  values = sorted(set(values))
  return values[0] if len(values) == 1 else f"{values[0]} to {values[-1]}"


def _duration(seconds: float) -> str:
  minutes, secs = divmod(round(seconds), 60)
  return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def provenance_line(records: Sequence[Record]) -> str:
  """Machine, jax version, commits, dates and wall time of the records."""
  machines = []
  for r in records:
    machine = r.get("host") or "unknown host"
    details = [d for d in (r.get("device"), f"{r['cpu_count']} CPUs" if r.get("cpu_count") else None) if d]
    machines.append(f"{machine} ({', '.join(details)})" if details else machine)
  commits = [(seg.get("commit") or "unknown")[:7] + (" + uncommitted changes" if seg.get("dirty") else "")
             for r in records for seg in (r.get("segments") or [r])]
  dates = [(r.get("date_utc") or "")[:10] or "unknown" for r in records]
  seeds = sorted({r["seed"] for r in records})
  versions = dict.fromkeys(str(r.get("jax")) for r in records)
  line = (f"{len(records)} run{'s' if len(records) != 1 else ''} (seeds {', '.join(map(str, seeds))}) on "
          f"{'; '.join(dict.fromkeys(machines))}, jax {', '.join(versions)}; "
          f"commit {', '.join(dict.fromkeys(commits))}; {_range(dates)} (UTC)")
  fresh = [r["wall_s"] for r in records if not r.get("resumed") and isinstance(r.get("wall_s"), (int, float))]
  if fresh:
    line += f"; wall time per run {_duration(float(np.mean(fresh)))} on average"
    if len(fresh) < len(records):
      line += f" (over the {len(fresh)} runs not resumed from a checkpoint)"
  return line + "."


def render_section(reproduction: Reproduction, records: Sequence[Record], png: pathlib.Path,
                   output: pathlib.Path) -> str:
  """The Markdown section of one reproduction from its latest records (writes the plot `png`)."""
  parts = [f"## {reproduction.title}", reproduction.description.strip(),
           "**Command.** " + "\n".join(_commands(reproduction, records)),
           "**Runs.** " + provenance_line(records),
           reproduction.render(reproduction, list(records))]
  claims = reproduction.claims(list(records)) if callable(reproduction.claims) else reproduction.claims
  if claims:
    parts.append(claims.strip())
  if reproduction.paper is not None:
    columns = " (the `paper:` columns)" if reproduction.paper.numbers else ""
    parts.append(f"**Paper.** {reproduction.paper.citation}{columns}.")
  else:
    parts.append("**Paper.** None: there is no published number to compare with; these are this "
                 "project's own.")
  if reproduction.plot(reproduction, list(records), png):
    link = os.path.relpath(png, output.parent).replace(os.sep, "/")
    parts.append(f"![{reproduction.name}: eval curves]({link})")
  return "\n\n".join(parts)


def _display(path: pathlib.Path) -> str:
  try:
    return str(path.resolve().relative_to(REPO_ROOT))
  except ValueError:
    return str(path)


def _size(text: str) -> tuple[int, int]:
  """(sections, lines) of a document."""
  lines = text.splitlines()
  return sum(line.startswith("## ") for line in lines), len(lines)


def render_document(results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
                    output: str | os.PathLike = DEFAULT_OUTPUT,
                    registry: Mapping[str, Reproduction] | None = None, *, allow_shrink: bool = False) -> str:
  """Writes `output` from the full results files of the registered reproductions; returns it.

  Quick files (`<NAME>.quick.jsonl`) are never read. A reproduction without results has no
  section. Nothing is written, and a one-line error says why, when no reproduction has results
  (FileNotFoundError: a wrong `results_dir`), or, unless `allow_shrink`, when the new document
  has fewer sections or lines than the one it would replace (ValueError: results missing).
  """
  registry = REGISTRY if registry is None else registry
  results_dir, output = _from_repo(results_dir), _from_repo(output)
  sections = []
  for name, reproduction in registry.items():
    records = latest_records(reproduction, read_records(results_path(results_dir, name)))
    if records:
      sections.append(render_section(reproduction, records, results_dir / f"{name}.png", output))
  if not sections:
    raise FileNotFoundError(f"no kept result lines in {_display(results_dir)} (none of "
                            f"{', '.join(f'{name}.jsonl' for name in registry)}); {_display(output)} left as it was")
  text = "\n\n".join([
      "# Reproductions",
      f"Generated by `python -m experiments.reproduce --render_only` from the kept result lines in "
      f"`{_display(results_dir)}/*.jsonl`; do not edit this file by hand. Each number is the mean ± "
      "sample standard deviation (ddof=1) over seeds of the latest run of each seed.",
      *sections,
  ]) + "\n"
  if output.is_file() and not allow_shrink:
    (old_sections, old_lines), (new_sections, new_lines) = _size(output.read_text(encoding="utf-8")), _size(text)
    if new_sections < old_sections or new_lines < old_lines:
      raise ValueError(f"refusing to replace {_display(output)} ({old_lines} lines, {old_sections} sections) with "
                       f"{new_lines} lines, {new_sections} sections from {_display(results_dir)}; pass "
                       "--allow_shrink to write it anyway")
  output.parent.mkdir(parents=True, exist_ok=True)
  tmp = output.with_name(f"{output.name}.tmp.{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, output)  # atomic: a failed render leaves the document as it was
  return text


# -- the main job ----------------------------------------------------------------------------


def _compare(first: StageRow, last: StageRow, metric: str) -> str:
  """`metric` from `first` to `last`, paired by seed (the same run's two evaluations): each seed's
  change, their mean, the 90% interval and whether a rise is shown (`verdicts`)."""
  name = METRIC_NAMES.get(metric, metric)
  a, b = first.values[metric], last.values[metric]
  result = verdicts.paired(b, a, direction=1) if a and b else None
  if result is None:
    return f"No {name} was kept for both stages of one seed."
  mean_a, mean_b = (float(np.mean([v[s] for s in result.differences])) for v in (a, b))
  return (f"Mean {name} goes from {_num(mean_a)} ({first.stage}, step {first.step}) to {_num(mean_b)} "
          f"({last.stage}, step {last.step}): {verdicts.describe(result, 'the change')}; a rise: "
          f"**{verdicts.verdict_text(result)}**.")


def main_job_claims(records: Sequence[Record]) -> str:
  """First vs last results row of the main job, for each accuracy, computed from the numbers."""
  rows = stage_rows(records)
  if len(rows) < 2:
    return "Only one evaluation was kept per run: there is nothing to compare."
  return " ".join(_compare(rows[0], rows[-1], m) for m in METRICS)


MAIN_JOB = register(Reproduction(
    name="main_job",
    title="The main job: GRPO on synthetic arithmetic",
    description=(
        "The README's main job (`configs/grpo_arithmetic.py`, no overrides): a randomly initialised "
        "0.75M-parameter transformer is warmed up on worked solutions whose answer is off by +1 in 60% "
        "of them, then trained with GRPO against the arithmetic verifier. Held-out accuracy on 256 "
        "problems, greedy and sampled at T = 1, is kept after each stage. These numbers are this "
        "project's own default experiment, repeated over seeds."),
    runs=(RunSpec("default", "configs/grpo_arithmetic.py"),),
    quick=(RunSpec("default", "configs/grpo_arithmetic.py:tiny"),),
    seeds=3,
    quick_seeds=1,
    claims=main_job_claims,
))


# -- likelihood rewards ----------------------------------------------------------------------

LIKELIHOOD_CONFIG = "configs/likelihood_rewards.py"
LIKELIHOOD_METRICS = ("accuracy_greedy", "answer_perplexity", "accuracy_sampled")
AUC_FILE = "likelihood_auc.jsonl"  # lines of `python -m experiments.likelihood_auc --results=...`
LIKELIHOOD_PAPER = Paper("Kwiatkowski et al. (2026), arXiv 2602.03979: Qwen2.5-3B on MATH, 32 samples per prompt; "
                         "accuracies as fractions",
                         {("logprob", -1, "accuracy_greedy"): 0.5684, ("verifier", -1, "accuracy_greedy"): 0.5585,
                          ("logprob", -1, "answer_perplexity"): 1.55, ("verifier", -1, "answer_perplexity"): 8.25})


def _final(records: Sequence[Record], label: str, metric: str) -> dict[int, float]:
  """seed -> `metric` of the label's last results row."""
  out = {}
  for r in records:
    if r["label"] == label and r["results"] and isinstance(r["results"][-1].get(metric), (int, float)):
      out[r["seed"]] = float(r["results"][-1][metric])
  return out


def _delta(records: Sequence[Record], label: str, metric: str) -> dict[int, float]:
  """seed -> change of `metric` from the label's first to its last results row."""
  out = {}
  for r in records:
    rows = r["results"]
    if r["label"] == label and len(rows) >= 2 and all(isinstance(x.get(metric), (int, float)) for x in (rows[0], rows[-1])):
      out[r["seed"]] = float(rows[-1][metric]) - float(rows[0][metric])
  return out


def _paired(records: Sequence[Record], a: str, b: str, metric: str, *,
            direction: int = 1) -> verdicts.Paired | None:
  """`a` minus `b` on the final `metric`, seed by seed (the arms share each seed's warm-up)."""
  return verdicts.paired(_final(records, a, metric), _final(records, b, metric), direction=direction)


def _claim(result: verdicts.Paired | None, what: str, *, comparison: bool = True) -> str:
  """`**verdict**: what per seed (...), mean, interval`: a claim's verdict and every number behind it."""
  if result is None:
    return "**not decided**: no seed has both arms kept"
  return f"**{verdicts.verdict_text(result, comparison=comparison)}**: {verdicts.describe(result, what)}"


def _versus(records: Sequence[Record], a: str, b: str, metric: str) -> str:
  """`a` against `b` on the final `metric`: each arm's mean ± std, and their paired difference per
  seed with its 90% interval, read as above, below or not decided (no claimed direction)."""
  va, vb = _final(records, a, metric), _final(records, b, metric)
  result = verdicts.observed(va, vb)
  if result is None:
    return f"({a} or {b} has no {metric} kept.)"
  side = {1: "above", -1: "below", 0: f"not decided, {result.n} seed{'s' if result.n != 1 else ''}"}[result.side]
  return (f"{a} {format_mean_std(list(va.values()))} vs {b} {format_mean_std(list(vb.values()))} "
          f"({side}: {verdicts.describe(result, f'{a} minus {b}')})")


def _change(records: Sequence[Record], label: str, metric: str = "accuracy_greedy") -> str:
  rows = [r for r in stage_rows(records, (metric,)) if r.label == label]
  return f"`{label}`: " + (_compare(rows[0], rows[-1], metric) if len(rows) >= 2 else "fewer than two evaluations kept.")


def likelihood_table(reproduction: Reproduction, records: Sequence[Record]) -> str:
  """The stage table (greedy accuracy, reference-answer perplexity, sampled accuracy) and, when
  kept, the ROC-AUC of each reward kind against the verifier on the warmed-up policies."""
  text = stage_table(reproduction, records, LIKELIHOOD_METRICS)
  auc_lines = read_records(_from_repo(DEFAULT_RESULTS_DIR) / AUC_FILE)
  latest = {}
  for line in auc_lines:
    latest[(line.get("task"), line.get("seed"))] = line
  if latest:
    keys = [k for k in latest[next(iter(latest))] if k.startswith("auc/")]
    header = ["task", "seeds", "samples per seed", "fraction correct"] + [k[4:] for k in keys]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in dict.fromkeys(t for t, _ in latest):
      lines = [v for (t, _), v in latest.items() if t == task]
      rows.append("| " + " | ".join(_cell(c) for c in [
          task, len(lines), lines[0]["samples"], format_mean_std([v["frac_correct"] for v in lines]),
          *[format_mean_std([v[k] for v in lines]) for k in keys]]) + " |")
    command = ("`python -m experiments.likelihood_auc --config=configs/likelihood_rewards.py:VARIANT "
               "--config.seed=$S --workdir=runs/reproductions/likelihood_rewards/RUN/seed$S --num=128 --samples=8 "
               f"--results={DEFAULT_RESULTS_DIR}/{AUC_FILE}` with (VARIANT, RUN) = (verifier, verifier) and "
               "(long_verifier, long_verifier): the final policy of each verifier run, which was never trained "
               "on a likelihood reward.")
    text += ("\n\n**ROC-AUC of each reward against the verifier** on a fixed set of policy samples, 8 per "
             "held-out problem (P(reward of a correct completion > reward of an incorrect one); 0.5 is "
             "chance). " + command +
             "\n\n" + "\n".join(rows))
  return text


def likelihood_verdicts(records: Sequence[Record]) -> str:
  """One sentence per claim of the paper, with its paired verdict (the runs of a task share each
  seed's warm-up)."""
  paper = LIKELIHOOD_PAPER.numbers
  out = []
  acc = _paired(records, "logprob", "verifier", "accuracy_greedy", direction=1)
  if acc is not None:
    out.append("(1) Log-prob reward at least as good as the verifier on greedy accuracy (paper: "
               f"{100 * paper[('logprob', -1, 'accuracy_greedy')]:.2f} vs "
               f"{100 * paper[('verifier', -1, 'accuracy_greedy')]:.2f}): {_claim(acc, 'log-prob minus verifier')}.")
  ppl = _paired(records, "logprob", "verifier", "answer_perplexity", direction=-1)
  if ppl is not None:
    out.append("(2) Log-prob reward gives a much lower reference-answer perplexity than verifier RL (paper: "
               f"{paper[('logprob', -1, 'answer_perplexity')]:.2f} vs "
               f"{paper[('verifier', -1, 'answer_perplexity')]:.2f}): "
               f"{_claim(ppl, 'log-prob minus verifier')}.")
  learns = verdicts.paired(_delta(records, "long_logprob", "accuracy_greedy"), direction=1)
  beats = _paired(records, "long_logprob", "long_prob", "accuracy_greedy", direction=1)
  if learns is not None and beats is not None:
    out.append("(3) Probability rewards flatline on long answers while log-prob rewards learn (read as: log-prob's "
               "greedy accuracy rises from the warm-up, and ends above the probability reward's, which starts from "
               f"the same warm-up): **{verdicts.combine([learns, beats])}**: "
               f"{verdicts.describe(learns, 'long_logprob change from the warm-up')} ({learns.verdict}); "
               f"{verdicts.describe(beats, 'long_logprob minus long_prob')} ({beats.verdict}); our long answers are "
               "one short sentence, far shorter than the paper's.")
  return "**In short.** " + " ".join(out) if out else ""


def likelihood_claims(records: Sequence[Record]) -> str:
  """The paper's claims against our numbers, computed from the records."""
  return "\n\n".join([
      likelihood_verdicts(records),
      "**Verifiable task.** Greedy accuracy after RL: " + _versus(records, "logprob", "verifier", "accuracy_greedy")
      + ". Reference-answer perplexity: " + _versus(records, "logprob", "verifier", "answer_perplexity")
      + ". Probability reward: " + _versus(records, "prob", "verifier", "accuracy_greedy")
      + ". Sampled accuracy (T = 1): " + _versus(records, "logprob", "verifier", "accuracy_sampled") + "; "
      + _versus(records, "prob", "verifier", "accuracy_sampled") + ".",
      "**Long-answer task.** Greedy accuracy (the sentence's last integer) after RL: "
      + _versus(records, "long_logprob", "long_verifier", "accuracy_greedy") + "; "
      + _versus(records, "long_prob", "long_logprob", "accuracy_greedy") + ". Perplexity: "
      + _versus(records, "long_logprob", "long_verifier", "answer_perplexity") + ".",
      "**Against the warm-up.** " + " ".join(_change(records, label) for label in
                                             ("logprob", "prob", "verifier", "long_logprob", "long_prob",
                                              "long_verifier")),
      "**What this shows and what it does not.** The paper's claims are about a 3B model on MATH with 32 "
      "samples per prompt; ours are about a 0.75M-parameter model on two-operand arithmetic, where the "
      "warm-up's error is a systematic off-by-one final answer after a chain of thought that is usually "
      "right. The sentences above say, from the per-seed differences of runs that share a warm-up, whether "
      "the log-prob reward matches or beats "
      "the verifier on accuracy and perplexity here, and whether the probability reward learns less than "
      "the log-prob reward on long answers (the paper's 'flatline'). They do not say which term of the "
      "likelihood objective does the work: the SFT term trains the reference answer directly, and no run "
      "with the SFT term off (`objective.options.sft_coef=0`) was made. Read them as statements about this "
      "toy setting only.",
  ])


LIKELIHOOD_REWARDS = register(Reproduction(
    name="likelihood_rewards",
    title="Likelihood rewards vs the verifier, on short and long answers",
    description=(
        "Likelihood-Based Reward Designs (arXiv 2602.03979) train with the policy's own log-probability of "
        "the reference answer after its chain of thought, with no verifier. Here the default experiment's "
        "warmed-up model (60% of its demonstrations end with an answer off by +1) is trained for 200 RL "
        "steps (16 prompts x 8 samples, RLOO) with the likelihood objective (RL term on the chain of "
        "thought + SFT term on the reference answer) and the log-prob (`logprob`) or probability "
        "(`prob`, VeriFree) reward, or with the binary verifier reward and the GRPO loss (`verifier`). "
        "The `long_` runs (100 RL steps, for time) use the long-answer task (`arithmetic_long`): the reference answer is a "
        "sentence in one of four phrasings, so the exact-match verifier (`long_verifier`'s reward) fails "
        "a correct policy three times in four; accuracy there is the sentence's last integer. "
        "`answer_perplexity` is the reference answers' perplexity after greedy chains of thought. The "
        "paper's numbers (Qwen2.5-3B on MATH, greedy accuracy and perplexity) sit beside the runs they "
        "correspond to; the model, task and scale differ by orders of magnitude."),
    runs=(RunSpec("logprob", LIKELIHOOD_CONFIG),
          RunSpec("prob", LIKELIHOOD_CONFIG, {"rewards.options.likelihood.kind": "prob"}),
          RunSpec("verifier", f"{LIKELIHOOD_CONFIG}:verifier"),
          RunSpec("long_logprob", f"{LIKELIHOOD_CONFIG}:long", {"train.steps": 100}),
          RunSpec("long_prob", f"{LIKELIHOOD_CONFIG}:long", {"rewards.options.likelihood.kind": "prob",
                                                             "train.steps": 100}),
          RunSpec("long_verifier", f"{LIKELIHOOD_CONFIG}:long_verifier", {"train.steps": 100})),
    quick=(RunSpec("logprob", f"{LIKELIHOOD_CONFIG}:tiny"),
           RunSpec("long_logprob", f"{LIKELIHOOD_CONFIG}:long_tiny")),
    seeds=3,
    render=likelihood_table,
    paper=LIKELIHOOD_PAPER,
    claims=likelihood_claims,
))


# -- PRDP on digits --------------------------------------------------------------------------

PRDP_CONFIG = "configs/prdp_digits.py"
PRDP_METRICS = ("reward", "guard", "log_ratio")
PRDP_PAPER = Paper("Deng et al. (2024), arXiv 2402.08714, Tables 1-2: HPSv2 of Stable Diffusion 1.4 fine-tuned on "
                   "HPDv2 prompts (a different reward, model and scale)",
                   {("prdp_styles", 0, "reward"): 0.2685, ("prdp_styles", -1, "reward"): 0.3175,
                    ("ddpo_styles", -1, "reward"): 0.2464, ("prdp", -1, "reward"): 0.3471,
                    ("ddpo", -1, "reward"): 0.3398})


def _from_pretrained(run: str = "pretrain") -> dict:
  """Overrides of an RL-only run that starts from the seed's pre-trained run (`run`)."""
  return {"stages": ("rl",), "init_from": f"{{runs}}/{run}/seed{{seed}}"}


def prdp_table(reproduction: Reproduction, records: Sequence[Record]) -> str:
  return stage_table(reproduction, records, PRDP_METRICS)


def _change_claim(records: Sequence[Record], label: str, metric: str, direction: int) -> str:
  """The claim that `metric` of `label` moves in `direction` from its first to its last row."""
  return _claim(verdicts.paired(_delta(records, label, metric), direction=direction),
                f"`{label}` {metric} change")


def _mean(values: Mapping[int, float]) -> float | None:
  return float(np.mean(list(values.values()))) if values else None


def _rl_settings(records: Sequence[Record], config: str) -> dict[str, dict[int, tuple[float, float]]]:
  """label -> seed -> (final log_ratio, final reward) of the RL runs of `config` that start from a
  pre-trained model: each label one setting (a beta, a clip range, a learning rate) of a method."""
  out: dict[str, dict[int, tuple[float, float]]] = {}
  for r in records:
    last = r["results"][-1] if r["results"] else {}
    if (r["config"] == config and (r.get("overrides") or {}).get("init_from")
        and all(isinstance(last.get(k), (int, float)) for k in ("log_ratio", "reward"))):
      out.setdefault(r["label"], {})[r["seed"]] = (float(last["log_ratio"]), float(last["reward"]))
  return out


def matched_kl_claim(records: Sequence[Record], config_a: str, config_b: str, name_a: str, name_b: str) -> str:
  """The verdict on "`name_a` reaches a higher reward than `name_b`" read at matched log-ratio.

  Each method's settings (its runs of `config_a` / `config_b`) give, per seed, points (final
  log-ratio, final reward); the per-seed difference is `verdicts.matched_gap` of the two methods'
  frontiers, and the paired verdict is read off those. With fewer than 2 settings of a method
  there is no frontier: not decided, with the one-setting numbers beside.
  """
  a, b = _rl_settings(records, config_a), _rl_settings(records, config_b)

  def names(settings):
    return ", ".join(f"`{label}`" for label in settings) or "none"

  if len(a) < 2 or len(b) < 2:
    text = ("**not decided**: methods that trade reward against distance from the reference are compared at "
            "matched log-ratio, on each one's reward-vs-log-ratio frontier (at least 2 settings per method), and "
            f"the records hold {len(a)} setting{'s' if len(a) != 1 else ''} of {name_a} ({names(a)}) and {len(b)} of "
            f"{name_b} ({names(b)}): the sweep that gives {name_b if len(b) < 2 else name_a} a frontier has not "
            "been run")
    if a and b:  # the first setting of each (the runs' order puts the default first)
      la, lb = next(iter(a)), next(iter(b))
      text += (f". At one setting of each, reward {_versus(records, la, lb, 'reward')}; log-ratio "
               f"{_versus(records, la, lb, 'log_ratio')}")
    return text + "."
  seeds = sorted(set.intersection(*(set(v) for v in (*a.values(), *b.values()))))
  gaps = {}
  for seed in seeds:
    gap = verdicts.matched_gap([v[seed] for v in a.values()], [v[seed] for v in b.values()])
    if gap is not None:
      gaps[seed] = gap
  apart = [s for s in seeds if s not in gaps]
  text = _claim(verdicts.paired(gaps, direction=1) if gaps else None,
                f"{name_a} minus {name_b} reward at matched log-ratio (the mean gap between the frontiers over the "
                f"log-ratios both reach; {name_a}: {names(a)}, {name_b}: {names(b)})")
  return text + (f"; the frontiers do not overlap in seed{'s' if len(apart) > 1 else ''} "
                 f"{', '.join(map(str, apart))}" if apart else "")


def prdp_claims(records: Sequence[Record]) -> str:
  """The paper's claims against the kept numbers, each with a paired verdict (every RL run starts
  from its seed's pre-trained model)."""
  labels = ("prdp", "ddpo", "rdp", "prdp_styles", "ddpo_styles", "rdp_styles")
  final = {label: _final(records, label, "reward") for label in labels}
  change = {label: _delta(records, label, "reward") for label in ("prdp_styles", "ddpo_styles")}
  if not all(final.values()) or not all(change.values()):
    return "**Claims.** Not every run of the reproduction is kept yet: no verdict."
  paper = PRDP_PAPER.numbers
  beta = [verdicts.paired(_final(records, a, "log_ratio"), _final(records, b, "log_ratio"), direction=1)
          for a, b in (("prdp_beta1", "prdp"), ("prdp", "prdp_beta100"))]
  guard = {label: _mean(_final(records, label, "guard")) for label in ("prdp", "ddpo", "prdp_styles", "ddpo_styles")}
  guard0 = {label: _mean({r["seed"]: r["results"][0]["guard"] for r in records  # before fine-tuning
                          if r["label"] == label and r["results"]
                          and isinstance(r["results"][0].get("guard"), (int, float))})
            for label in ("prdp", "prdp_styles")}
  beta_text = "; ".join(verdicts.describe(r, f"final log-ratio beta {x} minus beta {y}") + f" ({r.verdict})"
                        for r, (x, y) in zip(beta, (("1", "10"), ("10", "100"))) if r is not None)
  return (
      "**Claims.** (1) *Small scale (K > 1): PRDP matches or beats DDPO's reward* (paper: HPSv2 "
      f"{paper[('prdp', -1, 'reward')]:.4f} vs {paper[('ddpo', -1, 'reward')]:.4f}): "
      f"{matched_kl_claim(records, PRDP_CONFIG, f'{PRDP_CONFIG}:ddpo', 'PRDP', 'DDPO')} "
      "(2) *Large scale (at least 100 prompts, K = 1): DDPO becomes unstable and ends below the base model* "
      f"(paper: {paper[('ddpo_styles', -1, 'reward')]:.4f} from {paper[('prdp_styles', 0, 'reward')]:.4f}): "
      f"{_change_claim(records, 'ddpo_styles', 'reward', -1)}; *PRDP keeps improving* (paper: "
      f"{paper[('prdp_styles', -1, 'reward')]:.4f}): {_change_claim(records, 'prdp_styles', 'reward', 1)}. Final "
      f"reward {_versus(records, 'prdp_styles', 'ddpo_styles', 'reward')}, at log-ratio "
      f"{_versus(records, 'prdp_styles', 'ddpo_styles', 'log_ratio')} (one setting each, not a frontier); "
      f"{_versus(records, 'prdp_styles', 'rdp_styles', 'reward')}. The same on the 10 digits alone (`_large`): "
      f"{_versus(records, 'prdp_large', 'ddpo_large', 'reward')}. "
      f"(3) *A larger beta keeps the model nearer the reference* (the paper's KL ablation; beta 1, 10 (default), "
      f"100): **{verdicts.combine(beta)}**: {beta_text}. "
      "(4) *RDP without the proximal clip is unstable when a snapshot's samples are reused (K > 1)*: "
      f"{_versus(records, 'prdp', 'rdp', 'reward')}; final log-ratio {_versus(records, 'rdp', 'prdp', 'log_ratio')}."
      f"\n\nThe guard tells what the reward does not: its final mean is {guard['prdp']:.3f} (PRDP) and "
      f"{guard['ddpo']:.3f} (DDPO) at small scale, {guard['prdp_styles']:.3f} and {guard['ddpo_styles']:.3f} at large "
      f"scale, from {guard0['prdp']:.3f} and {guard0['prdp_styles']:.3f} before fine-tuning: where a run's reward "
      "rises most, its samples stop reading as their digit (reward hacking by thickening strokes into blobs), and "
      "the KL estimate grows with it. "
      "What these runs do not show: anything about text-to-image models, human-preference rewards (HPSv2, "
      "PickScore) or the paper's scale (its epochs and 50-step sampler); our reward is a learned "
      "stroke-thickness regressor on 8x8 digits, 10 DDIM steps, 40 snapshots, on a CPU.")


PRDP = register(Reproduction(
    name="prdp",
    title="PRDP vs RDP vs DDPO: reward fine-tuning of a diffusion model on digits",
    description=(
        "PRDP (Deng et al., CVPR 2024, arXiv 2402.08714) turns reward fine-tuning of a diffusion model into "
        "regression of reward differences (RDP) with a per-step proximal clip. Here a 135k-parameter DiT "
        "is pre-trained on scikit-learn's 8x8 digits (1,500 DDPM steps, `pretrain`, once per seed), with a "
        "reward model (an MLP regressor of stroke thickness, in units of its std on the data) and a guard "
        "(an MLP digit classifier; `guard` is its probability of the conditioned digit). Each RL run starts "
        "from that seed's pre-trained model (`config.init_from`) and trains its 10-step DDIM sampler "
        "(eta = 1) for 40 snapshots: small scale 4 digits x 8 samples per snapshot with K = 4 gradient "
        "steps per snapshot; `_large`: all 10 digits x 8 samples, K = 1 pass in 2 optimizer steps; `_styles` "
        "(the paper's large-scale setting: at least 100 prompts, K = 1): (digit, stroke width, slant) conditions "
        "(4 x 3 style buckets fitted on the training images, about 105 present), 64 of them x 8 samples per "
        "snapshot, K = 1 pass in 2 optimizer steps, its own pre-training (`pretrain_styles`). "
        "`log_ratio` is the mean over "
        "evaluation trajectories of sum_t log pi_theta / pi_ref (a KL estimate), on 16 samples per condition (4 for `_styles`) "
        "with fixed noise. The paper's HPSv2 numbers (Stable Diffusion 1.4, HPDv2 prompts) sit beside "
        "the runs they correspond to; their reward and scale are not ours. Samples of seed 0 after each run, "
        "with the same noise: [prdp_samples.png](experiments/results/reproductions/prdp_samples.png) (RDP's "
        "collapse to a checkerboard that the reward model scores as thick strokes; PRDP with beta = 1 thickening "
        "every digit into a blob; beta = 100 staying near the pre-trained samples)."),
    runs=(RunSpec("pretrain", PRDP_CONFIG, {"stages": ("pretrain",)}),
          RunSpec("prdp", PRDP_CONFIG, _from_pretrained()),
          RunSpec("rdp", f"{PRDP_CONFIG}:rdp", _from_pretrained()),
          RunSpec("ddpo", f"{PRDP_CONFIG}:ddpo", _from_pretrained()),
          RunSpec("prdp_large", f"{PRDP_CONFIG}:large", _from_pretrained()),
          RunSpec("rdp_large", f"{PRDP_CONFIG}:large,rdp", _from_pretrained()),
          RunSpec("ddpo_large", f"{PRDP_CONFIG}:large,ddpo", _from_pretrained()),
          RunSpec("pretrain_styles", f"{PRDP_CONFIG}:styles", {"stages": ("pretrain",)}),
          RunSpec("prdp_styles", f"{PRDP_CONFIG}:styles", _from_pretrained(run="pretrain_styles")),
          RunSpec("rdp_styles", f"{PRDP_CONFIG}:styles,rdp", _from_pretrained(run="pretrain_styles")),
          RunSpec("ddpo_styles", f"{PRDP_CONFIG}:styles,ddpo", _from_pretrained(run="pretrain_styles")),
          RunSpec("prdp_beta1", PRDP_CONFIG, {**_from_pretrained(), "objective.options.beta": 1.0}),
          RunSpec("prdp_beta100", PRDP_CONFIG, {**_from_pretrained(), "objective.options.beta": 100.0})),
    quick=(RunSpec("pretrain", f"{PRDP_CONFIG}:tiny", {"stages": ("pretrain",)}),
           RunSpec("prdp", f"{PRDP_CONFIG}:tiny", _from_pretrained())),
    seeds=3,
    render=prdp_table,
    paper=PRDP_PAPER,
    claims=prdp_claims,
))


PRM_CONFIG = "configs/implicit_prm.py:chain_sums"
PRM_STEPS = 100  # reward-model steps per scorer: 100 x 16 problems x 8 samples = 12,800 labelled samples
PRM_BON = ("experiments.prm_best_of_n", "--num=32", "--samples=64", "--ns=1,4,16,64")
# The implicit PRMs' learning rate: at the config's 1e-4 (kept by the ORM, whose head starts at
# zero) a PRM drifted by about -0.5 nats per token from its reference within 50 steps on seed 0.
PRM_LR = 1e-5


def _prm_run(label: str, modifier: str = "", quick: bool = False) -> RunSpec:
  """A scorer trained on the outcome labels of the seed's warmed-up policy, then evaluated."""
  config = PRM_CONFIG + ("_tiny" if quick else "") + (f",{modifier}" if modifier else "")
  overrides = {"stages": ("reward_model",), "init_from": "{runs}/warmup/seed{seed}"}
  if not quick:
    overrides.update({"reward_model.steps": PRM_STEPS, "reward_model.eval_every": PRM_STEPS})
    if modifier != "orm":  # see PRM_LR
      overrides["roles.prm.lr"] = PRM_LR
  then = ("experiments.prm_best_of_n", "--num=4", "--samples=4", "--ns=1,4") if quick else PRM_BON
  return RunSpec(label, config, overrides, then=then)


PRM_SCORERS = ("ce", "dpo", "kto", "orm")
PRM_NS = ("1", "4", "16", "64")


def _prm_score(evaluation: Mapping[str, Any]) -> Mapping[str, float] | None:
  """N -> Best-of-N accuracy of a scorer's evaluation: min-aggregated steps, or the ORM's one score."""
  return evaluation.get("best_of_n/min") or evaluation.get("best_of_n/outcome")


def _prm_values(records: Sequence[Record]) -> dict[str, dict[str, dict[int, float]]]:
  """row name -> column -> seed -> value, from the kept evaluations (a seed's scorers share its
  warmed-up policy and score the same samples of it)."""
  rows: dict[str, dict[str, dict[int, float]]] = {}

  def put(row, column, seed, value):
    if isinstance(value, (int, float)):
      rows.setdefault(row, {}).setdefault(column, {})[seed] = float(value)

  for r in records:
    ev, seed = r.get("evaluation"), r["seed"]
    if not ev or r["label"] not in PRM_SCORERS:
      continue
    last = r["results"][-1] if r["results"] else {}
    put(r["label"], "pair accuracy", seed, last.get("pair_accuracy"))
    for n, v in (_prm_score(ev) or {}).items():
      put(r["label"], f"BoN@{n}", seed, v)
    if ev.get("localisation"):
      put(r["label"], "step-error F1", seed, ev["localisation"].get("f1"))
    if r["label"] == "ce":  # the same policy samples for every scorer of a seed: count them once
      for n in PRM_NS:
        put("majority vote", f"BoN@{n}", seed, (ev.get("majority_vote") or {}).get(n))
        put("policy likelihood", f"BoN@{n}", seed, (ev.get("best_of_n/policy_likelihood") or {}).get(n))
        put("random (pass@1)", f"BoN@{n}", seed, ev.get("random"))
        put("oracle (pass@N)", f"BoN@{n}", seed, (ev.get("pass_at_n") or {}).get(n))
  return rows


def prm_table(records: Sequence[Record]) -> str:
  rows = _prm_values(records)
  if not rows:
    return "No run of this reproduction is kept yet."
  columns = ["pair accuracy", *(f"BoN@{n}" for n in PRM_NS), "step-error F1"]
  seeds = sorted({r["seed"] for r in records})
  lines = [f"Mean ± std over seeds {', '.join(map(str, seeds))}; BoN@N is Best-of-N accuracy on 32 held-out "
           "problems (64 samples each).", "", "| scorer | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name in (*PRM_SCORERS, "majority vote", "policy likelihood", "random (pass@1)", "oracle (pass@N)"):
    if name in rows:
      cells = [format_mean_std(list(rows[name][c].values())) if rows[name].get(c) else "-" for c in columns]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _prm_paired(rows, a: str, b: str, column: str, direction: int = 1, *,
                column_b: str | None = None) -> verdicts.Paired | None:
  """Row `a` minus row `b` (in `column_b`, default `column`), seed by seed; None when either has none."""
  va, vb = rows.get(a, {}).get(column), rows.get(b, {}).get(column_b or column)
  return verdicts.paired(va, vb, direction=direction) if va and vb else None


def _prm_mean(rows, name: str, column: str) -> float:
  return float(np.mean(list(rows[name][column].values())))


def _any_shown(results: Mapping[str, verdicts.Paired | None]) -> str:
  """The verdict text of "some of these holds": shown for those shown, contradicted when every one
  is, else the first open one's `verdicts.verdict_text`."""
  shown = [s for s, r in results.items() if r is not None and r.verdict == "shown"]
  if shown:
    return f"shown for {', '.join(shown)}"
  if results and all(r is not None and r.verdict == "contradicted" for r in results.values()):
    return "contradicted"
  return next(verdicts.verdict_text(r) for r in results.values() if r is None or r.verdict == "not decided")


def prm_claims(records: Sequence[Record]) -> str:
  """The paper's claims against the kept numbers, each with a paired verdict (a seed's scorers
  share its warmed-up policy and score the same samples)."""
  rows = _prm_values(records)
  if not all(s in rows for s in PRM_SCORERS) or "random (pass@1)" not in rows:
    return "**Claims.** Not every run of the reproduction is kept yet: no verdict."
  col = "BoN@64"
  implicit = ("ce", "dpo", "kto")
  scorers = (*implicit, "orm")

  def listed(results, against=None):
    return "; ".join(f"{verdicts.describe(r, f'{s} minus {against}' if against else s)} ({r.verdict})"
                     for s, r in results.items() if r is not None)

  vs_orm = {s: _prm_paired(rows, s, "orm", col) for s in implicit}
  # (2) Against random choice (pass@1, which BoN@1 equals); a scorer whose Best-of-N falls as N
  # grows (BoN@64 below BoN@1) ranks wrong samples first: anti-correlated with correctness.
  vs_random = {s: _prm_paired(rows, s, "random (pass@1)", col) for s in scorers}
  falls = {s: _prm_paired(rows, s, s, col, -1, column_b="BoN@1") for s in scorers}
  anti = [s for s, r in falls.items() if r is not None and r.verdict == "shown"]
  useful = [s for s, r in vs_random.items() if r is not None and r.verdict == "shown"]
  undecided = [s for s in scorers if s not in useful and s not in anti]
  if useful:
    two = f"**shown** for {', '.join(useful)}"
  elif not undecided:
    two = "**contradicted**: every scorer is anti-correlated with correctness"
  else:
    two = f"**{verdicts.verdict_text(vs_random[undecided[0]])}** for {', '.join(undecided)}"
  for s in anti:
    curve = ", ".join(f"{_prm_mean(rows, s, f'BoN@{n}'):.3f}" for n in PRM_NS)
    two += (f"; {s} is **anti-correlated**: its Best-of-N falls as N grows (mean BoN@{', '.join(PRM_NS)}: {curve}; "
            f"{verdicts.describe(falls[s], 'BoN@64 minus BoN@1')})")
  vs_vote = {s: _prm_paired(rows, s, "majority vote", col) for s in implicit}
  likelihood = _prm_paired(rows, "policy likelihood", "random (pass@1)", col)
  strongest = {f"dpo minus {s}": _prm_paired(rows, "dpo", s, col) for s in implicit if s != "dpo"}
  pair = {s: _prm_mean(rows, s, "pair accuracy") for s in scorers if rows[s].get("pair accuracy")}
  f1 = {s: _prm_mean(rows, s, "step-error F1") for s in implicit if rows[s].get("step-error F1")}
  return (
      f"**Claims.** (1) *An implicit PRM trained on outcome labels reranks better than an outcome reward model "
      f"trained on the same labels* (the paper's Best-of-N tables): **{_any_shown(vs_orm)}**: {col} "
      f"{listed(vs_orm, 'orm')}. "
      f"(2) *Any learned scorer beats random choice* (a precondition of every other claim): {two}"
      + (f"; {col} {listed({s: vs_random[s] for s in scorers if s not in anti}, 'random')}. "
         if len(anti) < len(scorers) else ". ") +
      f"(3) *Against majority vote over the final answers*: {col} {listed(vs_vote, 'majority vote')}; the policy's "
      f"own mean log-prob per token as the scorer, against random: "
      f"{_claim(likelihood, f'policy likelihood minus random, {col}')}. "
      f"(4) *The DPO variant is the strongest implicit PRM* (the paper, for Llama-3.1-8B): "
      f"**{verdicts.combine(list(strongest.values()))}**: {col} {listed(strongest)}"
      + ("" if "dpo" in useful else "; dpo is not shown above random choice, so this ranks scorers none of which is "
         "shown to do better than chance") + ". "
      "Held-out pair accuracy (0.5 = chance): " + ", ".join(f"{s} {v:.3f}" for s, v in pair.items())
      + "; step-error F1: " + ", ".join(f"{s} {v:.3f}" for s, v in f1.items()) + ". "
      "What these runs do not show: anything at the paper's scale (7-70B generators, MATH-500, "
      "hundreds of thousands of labelled samples) or its data-cost claim (38.8x cheaper than a "
      "Math-Shepherd-style PRM, which is not built here); our scorers are 0.75M-parameter character-level "
      f"transformers that saw {PRM_STEPS * 128:,} labelled samples of a policy whose samples are right "
      f"{_prm_mean(rows, 'random (pass@1)', col):.3f} of the time (pass@1).")


IMPLICIT_PRM = register(Reproduction(
    name="implicit_prm",
    title="Implicit PRM from outcome labels: Best-of-N and step-error localisation on chain sums",
    description=(
        "The implicit process reward model (Yuan et al., arXiv 2412.01981) is trained from outcome labels "
        "only and read per step. Here the `mini` policy is warmed up on correct worked solutions of chain "
        "sums (3-4 operands in 0..20, one line per step; 600 SFT steps, `warmup`, once per seed), then each "
        "scorer starts from that policy (`config.init_from`) and trains for "
        f"{PRM_STEPS} steps on 16 problems x 8 of the policy's own samples per step, labelled by the verifier "
        "(final answer right or wrong): the implicit PRM with the cross-entropy loss (`ce`, beta 0.05, the paper's "
        "default), the DPO loss over (correct, incorrect) pairs of a problem (`dpo`), the KTO loss (`kto`), and "
        "the baseline, an outcome reward model of the same size (`orm`: the policy's backbone and a scalar head, "
        "binary cross-entropy on the label at the last token). Each is then evaluated by "
        "`experiments/prm_best_of_n.py` on 32 held-out problems with 64 samples each: Best-of-N accuracy (exact "
        "expectation over draws of N of the 64) for N = 1, 4, 16, 64 with min-aggregated step rewards (the "
        "ORM: its one score), against majority vote over the final answers, random choice (pass@1) and the "
        "oracle (pass@N); and ProcessBench's step-error F1 on each problem's worked solution and a flawed one "
        "with a known first wrong step (threshold chosen on half of the problems, scored on the other half). "
        "`pair_accuracy` is the fraction of (correct, incorrect) pairs of samples of a held-out problem that "
        "the scorer orders right (0.5 = chance)."),
    runs=(RunSpec("warmup", PRM_CONFIG, {"stages": ("sft",)}),
          _prm_run("ce"), _prm_run("dpo", "dpo"), _prm_run("kto", "kto"), _prm_run("orm", "orm")),
    quick=(RunSpec("warmup", PRM_CONFIG + "_tiny", {"stages": ("sft",)}), _prm_run("ce", quick=True),
           _prm_run("orm", "orm", quick=True)),
    seeds=3,
    render=lambda reproduction, records: prm_table(records),
    paper=Paper("Yuan et al. (2024), arXiv 2412.01981: in Best-of-N on MATH-500 with 7-70B generators the implicit "
                "PRM beats outcome reward models and Math-Shepherd-style PRMs at 1/38.8 of the data-collection and "
                "training cost, and its DPO variant was the strongest PRM for Llama-3.1-8B; no row here "
                "corresponds to one of its numbers", {}),
    claims=lambda records: prm_claims(records),
))


PRIME_CONFIG = "configs/prime.py"
# PRIME starts from the implicit_prm reproduction's warmed-up policies (the same config blocks):
# run `python -m experiments.reproduce implicit_prm --runs warmup` first.
_FROM_PRM_WARMUP = {"stages": ("rl",), "init_from": "{runs}/../implicit_prm/warmup/seed{seed}"}


def _curve_mean(records: Sequence[Record], label: str, metric: str) -> dict[int, float]:
  """seed -> mean of `metric` over the label's evaluations after the first (area under its curve)."""
  out = {}
  for r in records:
    points = [p[metric] for p in r.get("eval_curve", [])[1:] if isinstance(p.get(metric), (int, float))]
    if r["label"] == label and points:
      out[r["seed"]] = float(np.mean(points))
  return out


def prime_claims(records: Sequence[Record]) -> str:
  """PRIME's claims against the kept numbers, each with a paired verdict (both arms start from the
  seed's warmed-up policy). The comparison with RLOO is gated on an RLOO baseline that learns."""
  metric = "accuracy_greedy"
  gain = {label: verdicts.paired(_delta(records, label, metric), direction=1) for label in ("prime", "rloo")}
  area = {label: _curve_mean(records, label, metric) for label in ("prime", "rloo")}
  if None in gain.values() or not all(area.values()):
    return "**Claims.** Not every run of the reproduction is kept yet: no verdict."
  efficient = verdicts.paired(area["prime"], area["rloo"], direction=1)
  if gain["rloo"].verdict == "shown":
    two = _claim(efficient, "PRIME minus RLOO")
  else:
    two = (f"**not decided**: the RLOO baseline is not shown to learn here ("
           f"{verdicts.describe(gain['rloo'], 'its change from the warmed-up policy')}: {gain['rloo'].verdict}), so "
           f"the comparison cannot test the claim either way; {verdicts.describe(efficient, 'PRIME minus RLOO')}")
  return (
      f"**Claims.** (1) *PRIME improves the SFT model* (paper: +16.7% on average over its benchmarks): "
      f"{_claim(gain['prime'], 'greedy accuracy change from the warmed-up policy')}. "
      f"(2) *Better than outcome rewards alone at equal samples* (the paper's RLOO comparison), read on the mean "
      f"greedy accuracy over the evaluations after the start (the area under the curve, a sample-efficiency "
      f"measure): {two}. Final {_versus(records, 'prime', 'rloo', metric)}. "
      "What these runs do not show: anything at the paper's scale (Qwen2.5-Math-7B, competition maths, "
      "hundreds of steps of 256 prompts x 4 samples); the PRM here is the implicit PRM of the implicit_prm "
      "reproduction's setting (see that section for how well it ranks the policy's samples).")


PRIME = register(Reproduction(
    name="prime",
    title="PRIME vs outcome-only RLOO on chain sums",
    description=(
        "PRIME (Cui et al., arXiv 2502.01456) adds an implicit PRM, initialised from the SFT policy and updated "
        "online with the cross-entropy loss on the verifier's outcomes, whose per-token rewards join the "
        "outcome reward in leave-one-out advantages (5 x process + 5 x outcome, whitened), with groups of "
        "accuracy outside [0.2, 0.8] filtered out (`configs/prime.py`). The baseline `rloo` is the same run "
        "without the PRM (RLOO on the outcome reward, the same filter): equal samples. Both start from the "
        "warmed-up `mini` policies of the implicit_prm reproduction (`config.init_from`, per seed) and take "
        "100 RL steps of 16 chain-sums problems x 8 samples; held-out greedy and sampled accuracy on 64 "
        "problems every 25 steps (the first row is the warmed-up policy). The PRM scores each batch before "
        "its update on it (PRIME's update=\"after\"; `configs/prime.py:update_first` is the other order) and "
        "its CE loss averages over the samples the filter keeps."),
    runs=(RunSpec("prime", PRIME_CONFIG, _FROM_PRM_WARMUP), RunSpec("rloo", f"{PRIME_CONFIG}:rloo", _FROM_PRM_WARMUP)),
    seeds=3,
    paper=Paper("Cui et al. (2025), arXiv 2502.01456: PRIME improves Qwen2.5-Math-7B's SFT model by 16.7% on "
                "average over competition-maths benchmarks and is more sample-efficient than RLOO with outcome "
                "rewards alone; no row here corresponds to one of its numbers", {}),
    claims=prime_claims,
))


PURE_CONFIG = "configs/pure.py"
PURE_STEPS = 50
# PURE fine-tunes the implicit_prm reproduction's warmed-up policy with its DPO PRM (the best
# ranker there by pair accuracy), frozen: run that reproduction first.
_FROM_DPO_PRM = {"stages": ("rl",), "init_from": "{runs}/../implicit_prm/dpo/seed{seed}", "train.steps": PURE_STEPS}
PURE_LABELS = ("sum", "min", "sum_verified", "min_verified")


def _first_last(records: Sequence[Record], label: str, metric: str, curve: str = "eval_curve",
                window: int = 1) -> dict[int, float]:
  """seed -> mean of the last `window` values of `metric` on the label's curve minus the mean of
  its first `window` (a window smooths a per-step training curve)."""
  out = {}
  for r in records:
    points = [p[metric] for p in r.get(curve, []) if isinstance(p.get(metric), (int, float))]
    if r["label"] == label and len(points) >= 2 * window:
      out[r["seed"]] = float(np.mean(points[-window:]) - np.mean(points[:window]))
  return out


def pure_claims(records: Sequence[Record]) -> str:
  """PURE's claims against the kept numbers, each with a paired verdict (every arm starts from the
  seed's warmed-up policy, with its frozen PRM)."""
  metric = "accuracy_greedy"
  acc = {label: _first_last(records, label, metric) for label in PURE_LABELS}
  reward = {label: _first_last(records, label, "reward", curve="train_reward", window=5) for label in PURE_LABELS}
  final = {label: _final(records, label, metric) for label in PURE_LABELS}
  if not all(acc.values()) or not all(final.values()):
    return "**Claims.** Not every run of the reproduction is kept yet: no verdict."

  def describe(label):
    text = verdicts.describe(verdicts.observed(acc[label]), f"`{label}` greedy accuracy change")
    if reward[label]:
      text += "; " + verdicts.describe(verdicts.observed(reward[label]), "train reward change")
    return text

  collapse = [verdicts.paired(acc["sum"], direction=-1), verdicts.paired(reward["sum"], direction=1)
              if reward["sum"] else None]
  min_change = verdicts.paired(acc["min"], direction=1)
  min_vs_sum = verdicts.paired(acc["min"], acc["sum"], direction=1)
  stable = "contradicted" if min_change.verdict == "contradicted" else verdicts.verdict_text(min_vs_sum)
  best = [verdicts.paired(final["min_verified"], final[label], direction=1)
          for label in PURE_LABELS if label != "min_verified"]
  return (
      "**Claims.** (1) *Sum-form credit with a PRM alone collapses through reward hacking* (read as: the PRM's "
      f"reward rises while accuracy falls, both paired by seed): **{verdicts.combine(collapse)}**: {describe('sum')}. "
      "(2) *Min-form credit stays stable* (read as: min-form's accuracy does not fall, and changes more than "
      f"sum-form's): **{stable}**: {describe('min')}; "
      f"{verdicts.describe(min_vs_sum, 'min-form minus sum-form accuracy change')} ({min_vs_sum.verdict}). "
      "(3) *Best with verifiable rewards on 10% of the problems* (min-form; read as: `min_verified`'s final greedy "
      f"accuracy above each other arm's): **{verdicts.combine(best)}**: "
      + "; ".join(verdicts.describe(r, f"`min_verified` minus `{label}`")
                  for r, label in zip(best, [x for x in PURE_LABELS if x != "min_verified"]))
      + f" ({describe('sum_verified')}; {describe('min_verified')}). A train reward change is the mean of a "
      "run's last 5 steps minus its first 5. "
      "Our min-form differs from PURE's in two documented ways (`objectives/estimators.py::pure_min_form`): "
      "the soft minimum runs over every token's reward rather than over step-end rewards, and the process "
      "rewards get no leave-one-out baseline. What these runs do not show: anything at the paper's scale "
      "(Qwen2.5-Math-7B, a PRM trained on PRM800K); the PRM here is the DPO implicit PRM of the implicit_prm "
      f"reproduction (see that section for how well it ranks the policy's samples), and each run is {PURE_STEPS} "
      "RL steps.")


PURE = register(Reproduction(
    name="pure",
    title="PURE: min-form vs sum-form credit with a process reward model",
    description=(
        "PURE (Cheng et al., arXiv 2504.15275) credits each token with a soft minimum of the process rewards "
        "that follow it instead of their sum, to stop the policy from collecting PRM reward without solving "
        "the problem (`configs/pure.py`: `pure_min_form`, temperature 0.1; sum-form: leave-one-out returns of "
        "the same rewards). The PRM is frozen: the DPO implicit PRM of the implicit_prm reproduction (per "
        "seed, `config.init_from`), whose per-token rewards beta log pi_prm / pi_ref are the reward; the "
        "`_verified` runs add the verifier's outcome reward on 10% of the problems (a fixed set). "
        f"{PURE_STEPS} RL steps of 16 chain-sums problems x 8 samples from the warmed-up policy; held-out "
        "accuracy on 64 problems every 25 steps (the first row is the starting policy)."),
    runs=(RunSpec("sum", f"{PURE_CONFIG}:sum", _FROM_DPO_PRM), RunSpec("min", PURE_CONFIG, _FROM_DPO_PRM),
          RunSpec("sum_verified", f"{PURE_CONFIG}:sum,verified", _FROM_DPO_PRM),
          RunSpec("min_verified", f"{PURE_CONFIG}:verified", _FROM_DPO_PRM)),
    seeds=3,
    paper=Paper("Cheng et al. (2025), arXiv 2504.15275: with a PRM alone, sum-form credit collapses through reward "
                "hacking early in training while min-form stays stable, and the best run adds verifiable rewards "
                "on 10% of the problems (Qwen2.5-Math-7B); no row here corresponds to one of its numbers", {}),
    claims=pure_claims,
))


# -- command line ----------------------------------------------------------------------------

_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds 0..N-1 per run (default: the reproduction's, 3; "
                              "1 with --quick).")
_QUICK = flags.DEFINE_bool("quick", False, "Run the reproduction's small variant into "
                           "<results_dir>/<NAME>.quick.jsonl (never rendered).")
_ROOT = flags.DEFINE_string("root", DEFAULT_ROOT, "Workdirs go to <root>/<NAME>/<label>/seed<S>.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", DEFAULT_RESULTS_DIR, "Where the kept lines and plots go.")
_OUTPUT = flags.DEFINE_string("output", DEFAULT_OUTPUT, "The generated Markdown document.")
_RUNS = flags.DEFINE_list("runs", [], "Only these run labels (default: all), e.g. to finish an interrupted "
                          "reproduction.")
_RENDER_ONLY = flags.DEFINE_bool("render_only", False, "Re-render the document from the kept lines; "
                                 "run nothing.")
_ALLOW_SHRINK = flags.DEFINE_bool("allow_shrink", False, "Write the document even when it has fewer sections "
                                  "or lines than the one it replaces.")


def main(argv):
  names = argv[1:]
  if len(names) > 1:
    raise app.UsageError(f"expected one reproduction name, got {names}")
  if not names and not _RENDER_ONLY.value:
    raise app.UsageError(f"name a reproduction (known: {', '.join(sorted(REGISTRY))}) or pass --render_only")
  try:
    reproduction = get(names[0]) if names else None
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if reproduction is not None and not _RENDER_ONLY.value:
    run_reproduction(reproduction, seeds=_SEEDS.value, quick=_QUICK.value, only=_RUNS.value, root=_ROOT.value,
                     results_dir=_RESULTS_DIR.value)
  try:
    render_document(_RESULTS_DIR.value, _OUTPUT.value, allow_shrink=_ALLOW_SHRINK.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")  # one line on stderr, exit status 1
  print(f"wrote {_display(_from_repo(_OUTPUT.value))}")


if __name__ == "__main__":
  app.run(main)
