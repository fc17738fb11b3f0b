"""A run: the stages of a config over one state and one step counter, resumable.

    experiment = Experiment(config)          # task, roles, stages; every start-up check
    result = experiment.run(workdir)         # trains, or resumes from the workdir's checkpoint

`config.stages` names the stages in order (`("sft", "rl")` for the default experiment); a
stage with 0 steps is skipped. Steps [s.start, s.end) belong to stage s. At the end of a
stage the policy (or the stage's model) is evaluated, the next stage is entered (it builds
its state from the previous one: fresh optimizers, a reference copy of the policy, new
roles), and a checkpoint is written, so a checkpoint of step k always holds the state of the
stage that runs step k and a resumed run lands inside whichever stage was running.

Everything random derives from `config.seed` and the step, so a resumed run gives the same
numbers as an uninterrupted one. Only process 0 writes logs; every process takes part in
checkpoints (orbax is multi-host safe).
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import pathlib
import signal
from typing import Any

import jax
from tqdm import auto as tqdm

import objectives  # noqa: F401  (registers the objectives and estimators)
from jaxrl_reward import checkpoint as checkpoint_lib
from jaxrl_reward import interrupts
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import peers
from jaxrl_reward import provenance
from jaxrl_reward import sharding
from jaxrl_reward import stages as stages_lib
from jaxrl_reward import workdir_lock
from jaxrl_reward.data import tasks as tasks_lib
from jaxrl_reward.state import Roles, model_kind
from objectives import estimators
from objectives import registry


class Experiment:
  """Everything built from a config before any step runs (see the module docstring)."""

  def __init__(self, config, *, mesh=None):
    self.config = config
    check_config(config)
    known = stages_lib.registry(model_kind(config))
    task = tasks_lib.build_task(config.task, seed=config.seed)
    mesh = sharding.mesh_from_config(config) if mesh is None else mesh
    self.context = stages_lib.Context(config, task, Roles(config, task.tokenizer, mesh, task=task))
    stages_lib.check_divides("eval.batch_size", config.eval.batch_size, self.context.placement.batch_shards)
    self.stages: list[stages_lib.Stage] = []
    start = 0
    for name in config.stages:
      stage = known[name](self.context, start)
      stage.check()
      if stage.steps:
        self.stages.append(stage)
        start = stage.end
    if not self.stages:
      raise ValueError(f"config.stages={tuple(config.stages)!r}: every stage has 0 steps")
    self.total_steps = start
    self.init_source = None  # the run of config.init_from: its path, commit and step
    if config.get("init_from", ""):
      self.check_init_from(config.init_from)

  @property
  def roles(self) -> Roles:
    return self.context.roles

  @property
  def mesh(self):
    return self.context.placement.mesh

  def stage_index(self, step: int) -> int:
    """The stage that runs step `step` (0-based); the last stage once every step is done."""
    for i, stage in enumerate(self.stages):
      if step < stage.end:
        return i
    return len(self.stages) - 1

  def stage(self, name: str) -> stages_lib.Stage:
    for stage in self.stages:
      if stage.name == name:
        return stage
    raise KeyError(f"no stage {name!r} with steps in this run; its stages: {[s.name for s in self.stages]}")

  def initial_state(self):
    """The first stage's state: fresh, or built on the trained roles of `config.init_from`."""
    source = self.config.get("init_from", "")
    return self.stages[0].enter(self.trained_roles(source) if source else {})

  def check_init_from(self, workdir) -> pathlib.Path:
    """Raises unless `workdir` holds a complete run of this config's models and data (see
    `trained_roles`); sets `init_source` (its path, commit and the step this run starts from)."""
    workdir = pathlib.Path(workdir).absolute()
    if not (workdir / provenance.CONFIG_FILE).is_file():
      raise FileNotFoundError(f"config.init_from={str(workdir)!r} holds no run ({provenance.CONFIG_FILE} missing)")
    changes = provenance.config_changes(workdir, self.config)
    source_roles = set(provenance.read_recorded(workdir).get("roles") or {})
    differ = sorted(k for k in changes if k.split(".")[0] in INIT_FROM_BLOCKS
                    and not _free_for_init_from(k, self.config, source_roles))
    if differ:
      raise ConfigMismatch(f"config.init_from={str(workdir)!r} was trained with other models or data: "
                           + "; ".join(f"{k}: {changes[k][0]!r} there, {changes[k][1]!r} here" for k in differ))
    self.init_source = _source_run(workdir, int(self.config.get("init_from_step", 0) or 0))
    return workdir

  def trained_roles(self, workdir) -> dict[str, Any]:
    """`{role: {"params": ...}}` of the newest checkpoint of the run in `workdir`, for the roles this
    run has: a run of the same models (the `INIT_FROM_BLOCKS` of its config.json equal this
    config's) whose stages (e.g. only pre-training) this run continues with others."""
    workdir = self.check_init_from(workdir)
    # The run's own config (its roles and stages lay out its checkpoints), from the models and
    # data on (which `check_init_from` found equal to this config's).
    source = provenance.recorded_config(workdir, self.config)
    with source.unlocked():
      source.init_from = ""
      if "allow_untrained_reward" in source:  # it was checked when the source itself ran
        source.allow_untrained_reward = True
    wanted = self.init_source["step"]
    state, _ = Experiment(source, mesh=self.mesh).restore(workdir, step=wanted)
    return {n: {"params": v["params"]} for n, v in state.items() if n in self.roles.specs and "params" in v}

  def abstract_state(self, step: int):
    """ShapeDtypeStructs (with target shardings) of the state a checkpoint of `step` holds."""
    stage = self.stages[self.stage_index(step)]
    shapes = jax.eval_shape(lambda: stage.enter({}))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, stage.state_shardings())

  def restore(self, workdir, *, step: int | None = None) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint of `workdir` that reads back whole (or of checkpoint
    `step`), read only (an evaluation or `init_from` never changes the run it reads)."""
    with checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
      if step is not None:
        found = (*ckpt.restore(self.abstract_state(step), step=step), step)
      else:
        found = ckpt.restore_newest_readable(self.abstract_state, set_aside=False)
    if found is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    state, extra, step = found
    self._check_stage(extra, step, workdir)
    return state, step

  def policy_params(self, workdir=None) -> tuple[Any, int]:
    """(policy parameters, step): of `workdir`'s newest readable checkpoint, or the config's
    initial policy (step 0) without a workdir."""
    if workdir:
      state, step = self.restore(workdir)
      return state["policy"]["params"], step
    return self.roles.create("policy", {}), 0

  def _check_stage(self, extra, step: int, workdir) -> None:
    stage = self.stages[self.stage_index(step)].name
    if extra.get("stage", stage) != stage:
      raise ConfigMismatch(f"the checkpoint of step {step} in {workdir} was taken in stage {extra['stage']!r}, but "
                           f"this config puts step {step} in stage {stage!r} (config.stages or a stage's steps "
                           "changed); use a new workdir")

  def check_workdir(self, workdir, allow_config_change=()) -> dict[str, tuple[Any, Any]]:
    """The config changes against the run already in `workdir`; raises unless they are allowed.

    A workdir whose run has a checkpoint resumes it, so its `config.json` must match this config,
    except for the keys (or blocks) in `allow_config_change`. Returns the allowed changes.
    """
    workdir = pathlib.Path(workdir)
    if not (workdir / "checkpoints").is_dir() or not any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir()):
      return {}  # nothing to resume: a fresh run
    if not (workdir / provenance.CONFIG_FILE).is_file():
      raise ConfigMismatch(f"{workdir} holds checkpoints but no {provenance.CONFIG_FILE}, so its config cannot be "
                           "checked against this one; use a new workdir, or put back the run's config file")
    changes = provenance.config_changes(workdir, self.config)
    # A key added to the configs after the run started, left at its empty default, changes nothing.
    changes = {k: v for k, v in changes.items() if not (v[0] is None and v[1] in ("", None, [], 0))}
    refused = {k: v for k, v in changes.items() if not provenance.allowed_change(k, allow_config_change)}
    if refused:
      listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:8])
      more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
      raise ConfigMismatch(
          f"{workdir} holds a run with another config: {listed}{more}; resume with the same config, use a new "
          f"workdir, or allow the change with --allow_config_change={','.join(list(refused)[:8])}")
    if changes:
      self._check_boundaries(workdir, changes)
    return changes

  def _check_boundaries(self, workdir: pathlib.Path, changes) -> None:
    """Refuses changes that move a stage boundary below the newest checkpoint (or the start of a
    stage to it): the steps already trained, and the checkpoints that hold them, belong to the
    stages as they were."""
    newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    try:
      recorded = json.loads((workdir / provenance.PROVENANCE_FILE).read_text()).get("stages")
    except (OSError, ValueError):
      recorded = None
    if not recorded:
      return  # a run from before the stages were recorded: `_check_stage` still compares the stage name
    was = {name: (start, end) for name, start, end in recorded}
    now = {s.name: (s.start, s.end) for s in self.stages}
    none = (None, None)
    for name in list(was) + [n for n in now if n not in was]:
      for i, what in enumerate(("start", "end")):
        a, b = was.get(name, none)[i], now.get(name, none)[i]
        first = min(x for x in (a, b) if x is not None)
        # A stage's end may move where the checkpoint is (a finished run trained for longer).
        if a != b and (first < newest or (first == newest and what == "start")):
          keys = ", ".join(f"{k} {x!r} -> {y!r}" for k, (x, y) in changes.items())
          places = [f"step {x}" if x is not None else "nowhere" for x in (a, b)]
          raise ConfigMismatch(
              f"the change ({keys}) moves the {what} of stage {name!r} from {places[0]} to {places[1]}, at or "
              f"below the newest checkpoint (step {newest}) in {workdir}; steps already trained cannot change "
              "stage: use a new workdir")

  # -- the loop ----------------------------------------------------------------------------

  def run(self, workdir, *, stop_at: int | None = None, allow_config_change=()) -> dict[str, Any]:
    """Trains until the last step (or until `stop_at` steps are done, as a preempted job would).

    Resumes from the newest readable checkpoint of `workdir` (see `check_workdir` for a
    changed config), holding the workdir's lock (`workdir_lock`) for the whole run. A SIGINT or
    SIGTERM stops the run after the current step with a checkpoint and raises
    `interrupts.Interrupted` (within seconds, with the last finished step's checkpoint, when a
    host reward is still running). Any other error in the loop finishes the save in flight
    and raises `RunFailed`, whose one-line message names the step, the stage and the newest
    checkpoint; the original error is its `__cause__`.
    """
    workdir = provenance.prepare_workdir(workdir)
    with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
      return self._run(workdir, stop_at=stop_at, allow_config_change=allow_config_change)

  def _run(self, workdir: pathlib.Path, *, stop_at, allow_config_change) -> dict[str, Any]:
    cfg = self.config
    is_main = jax.process_index() == 0
    end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
    changes = self.check_workdir(workdir, allow_config_change)
    logger = metrics_lib.MetricsLogger(workdir, enabled=is_main)
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", max_to_keep=2)
    found = ckpt.restore_newest_readable(self.abstract_state)
    if is_main:
      provenance.write_config(workdir, cfg)
      if changes:
        provenance.record_config_changes(workdir, found[2] if found else 0, changes)
      provenance.write_provenance(workdir, extra=self._provenance(), start_step=found[2] if found else 0)
    if found is None:
      start, state = 0, self.initial_state()
      logger.truncate_after(-1)
      if self.stages[0].evaluates_initial_policy:  # no warm-up: measure the starting policy
        logger.log(0, {**self.stages[0].evaluate(state, 0), "eval/stage": -1.0})
    else:
      state, extra, start = found
      self._check_stage(extra, start, workdir)
      logger.truncate_after(start)

    bar = tqdm.tqdm(range(start, end), initial=start, total=self.total_steps, disable=not is_main,
                    desc="train", dynamic_ncols=True)
    postfix: dict[str, float] = {}
    # `state` holds the state of step `at` (None inside a step: half updated, nothing to save).
    position = {"step": start, "saved": found[2] if found else None, "at": start}

    def where() -> str:
      saved = position["saved"]
      last = f"step {saved} in {workdir}/checkpoints" if saved is not None else "none yet"
      return f"during step {position['step'] + 1}; the last checkpoint: {last}"

    def save(step: int, state) -> None:
      ckpt.save(step, state, extra={"stage": self.stages[self.stage_index(step)].name}, force=True)
      position["saved"] = step
      if is_main:
        provenance.end_segment(workdir, step)

    watch = peers.PeerWatch(cfg.get("multihost_timeout_s", 60), where)
    try:
      with interrupts.StopRequests() as stops, watch, _peer_failures(watch):
        for step in bar:
          position.update(step=step, at=step)
          i = self.stage_index(step)
          stage = self.stages[i]
          state, metrics = stage.step(state, step)
          done = step + 1
          position["at"] = None
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          metrics["train/stage"] = float(i)
          if done % cfg.log_every == 0 or done == self.total_steps:
            logger.log(done, metrics)
          if done == stage.end or (stage.eval_every and (done - stage.start) % stage.eval_every == 0):
            evaluation = stage.evaluate(state, done)
            logger.log(done, {**evaluation, "eval/stage": float(i)})
            if done == stage.end:
              stage.save_artifacts(state, workdir, done)
            postfix.update({k.split("/")[-1]: v for k, v in evaluation.items() if "accuracy" in k})
          if done == stage.end and i + 1 < len(self.stages):
            state = self.stages[i + 1].enter(state)
          signum = stops.requested()
          if (done == stage.end or signum or done % cfg.checkpoint_every == 0 or done == self.total_steps):
            save(done, state)
          position["at"] = done
          if signum:
            raise interrupts.Interrupted(signum, done, f"stopped by {signal.Signals(signum).name} after step {done}: "
                                         f"checkpoint saved in {workdir}/checkpoints; run the same command to resume")
          for key in ("loss/total", "loss/sft", "train/reward"):
            if key in metrics:
              postfix[key.split("/")[-1]] = metrics[key]
          bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()})
    except interrupts.Interrupted:
      _finish(ckpt, logger, bar)
      raise
    except interrupts.StepAbandoned as e:
      at = position["at"]
      if at is not None and position["saved"] != at:  # the state before the abandoned step
        save(at, state)
      _finish(ckpt, logger, bar)
      saved = position["saved"]
      kept = f"the checkpoint of step {saved} is in {workdir}/checkpoints" if saved is not None else "no checkpoint yet"
      raise interrupts.Interrupted(e.signum, saved or 0, f"stopped by {signal.Signals(e.signum).name} during step "
                                   f"{position['step'] + 1} ({e.what} was still running): {kept}; run the same "
                                   "command to resume") from None
    except Exception as e:
      failed_save = _finish(ckpt, logger, bar)
      saved = position["saved"]
      last = f"step {saved} in {workdir}/checkpoints" if saved is not None else "none (the run restarts from step 0)"
      stage = self.stages[self.stage_index(position["step"])].name
      also = f" (and finishing the checkpoint failed: {failed_save})" if failed_save else ""
      raise RunFailed(f"step {position['step'] + 1} (stage {stage!r}) failed: {_first_line(e)}{also}; "
                      f"the last checkpoint: {last}") from e
    _finish(ckpt, logger, bar)
    self.state = state
    return self.summarise(workdir)

  def _provenance(self) -> dict[str, Any]:
    cfg = self.config
    return {
        "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
        "mesh": dict(self.mesh.shape), "stages": [[s.name, s.start, s.end] for s in self.stages],
        **({"init_from": self.init_source} if self.init_source else {}),
        # What the open blocks resolved to: the objective's and estimator's full options.
        "objective": {"name": cfg.objective.name,
                      "options": registry.resolve_options(cfg.objective.name, cfg.objective.options)},
        **({"advantage": {"estimator": cfg.advantage.estimator, "options": estimators.resolve_options(
            cfg.advantage.estimator, cfg.advantage.get("options") or {})}}
           if "rl" in cfg.stages and cfg.advantage.estimator in estimators.names() else {})}

  def summarise(self, workdir) -> dict[str, Any]:
    """The results table (the last evaluation of each stage) -> results.md/json and the plot."""
    workdir = pathlib.Path(workdir)
    history = metrics_lib.read_metrics(workdir / "metrics.jsonl")
    labels = {-1.0: "initial", **{float(i): f"after {s.label}" for i, s in enumerate(self.stages)}}
    rows = []
    for stage, label in labels.items():
      evals = [r for r in history if r.get("eval/stage") == stage]
      if evals:
        last = evals[-1]
        rows.append({"stage": label, "step": last["step"],
                     **{k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("eval/") and k != "eval/stage"}})
    columns = ["stage", "step"] + list(dict.fromkeys(k for r in rows for k in r if k not in ("stage", "step")))
    table = metrics_lib.format_table(rows, columns)
    if jax.process_index() == 0:
      (workdir / "results.md").write_text(table + "\n")
      finite = [{k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()} for r in rows]
      (workdir / "results.json").write_text(json.dumps(finite, indent=2, allow_nan=False))  # strict JSON
      metrics_lib.plot_curves(workdir / "metrics.jsonl", workdir / "reward_curve.png",
                              title=f"{self.config.objective.name} on {self.config.task.name}", missing_ok=True)
    return {"rows": rows, "table": table}


def _first_line(error: BaseException, limit: int = 400) -> str:
  """`Type: first line of the message` of `error` itself (its causes stay in `__cause__`)."""
  text = (str(error).strip().splitlines() or [""])[0]
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _finish(ckpt: checkpoint_lib.Checkpointer, logger, bar) -> str | None:
  """Finishes the checkpoint in flight and closes the run's files; the error of a save that
  failed, as one line (None when it finished), so that a run ending on another error keeps it."""
  bar.close()
  logger.close()
  if jax.process_count() > 1:
    return None  # saves are synchronous there: nothing in flight, and closing would wait for the peers
  try:
    ckpt.close()
  except Exception as e:  # noqa: BLE001  (reported beside the run's own error)
    return checkpoint_lib.one_line(e)
  return None


@contextlib.contextmanager
def _peer_failures(watch: peers.PeerWatch):
  """With several processes, a collective that fails (a dead peer's connection reset) ends the
  run with the peer watch's one line instead of a traceback and a hung shutdown."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() > 1:
      watch.collective_failed(checkpoint_lib.one_line(e))
    raise


# The config blocks a run continued from `config.init_from` must share with it (its models and data).
INIT_FROM_BLOCKS = ("model", "task", "roles", "diffusion", "pretrain", "warmup", "seed")
# Keys of those blocks that are not part of the models: which conditions the RL stage samples, and
# how a role trains (its learning rate, objective, and an LM role's objective options).
INIT_FROM_FREE = ("task.num_prompts", "roles.*.lr", "roles.*.objective", "roles.*.trainable",
                  "roles.*.score_after_update")


def _free_for_init_from(key: str, config, source_roles=None) -> bool:
  """Whether `key` may differ between a run and the run of its `config.init_from` (whose
  config.roles names `source_roles`; None: the same roles as `config`)."""
  if any(fnmatch.fnmatchcase(key, pattern) for pattern in INIT_FROM_FREE):
    return True
  parts = key.split(".")
  if parts[0] == "roles" and len(parts) > 1 and source_roles is not None \
      and (parts[1] not in source_roles or parts[1] not in config.roles):
    return True  # a role only one of the runs has: nothing of it is carried over
  if len(parts) > 3 and parts[0] == "roles" and parts[2] == "options":
    role = config.roles.get(parts[1])  # an image role's options say what it models; an LM role's, how it trains
    return role is not None and role.get("kind", "lm") in ("lm", "value")
  return False


class ConfigMismatch(ValueError):
  """The workdir holds a run that this config cannot resume as it stands."""


class RunFailed(RuntimeError):
  """An error inside the run loop; the message names the step, the stage and the last checkpoint."""


def _source_run(workdir: pathlib.Path, accept_step: int) -> dict[str, Any]:
  """Path, commit and step of the run of `config.init_from`; raises unless that run is complete
  (every step of its stages) or `accept_step` names one of its checkpoints."""
  folder = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"config.init_from={str(workdir)!r} holds no checkpoint")
  try:
    record = json.loads((workdir / provenance.PROVENANCE_FILE).read_text())
  except (OSError, ValueError):
    record = {}
  stages = record.get("stages") or []
  if accept_step:
    if accept_step not in steps:
      raise ValueError(f"config.init_from_step={accept_step}: {workdir} has no checkpoint of that step; "
                       f"its checkpoints: {steps}")
    step = accept_step
  else:
    step = steps[-1]
    if stages and step < stages[-1][2]:
      stage = next((name for name, a, b in stages if a <= step < b), "?")
      raise ValueError(f"config.init_from={str(workdir)!r} stopped at step {step} of {stages[-1][2]} (in stage "
                       f"{stage!r}); finish it (run its command again), or start from that step with "
                       f"config.init_from_step={step}")
  git = record.get("git") or {}
  return {"path": str(workdir), "step": step, "commit": git.get("commit"), "dirty": git.get("dirty"),
          "segments": record.get("segments") or []}


def check_config(config) -> None:
  """Every check that needs only the config (names, options, batch arithmetic), in seconds:
  `Experiment` runs it before building the task and the models."""
  known = stages_lib.registry(model_kind(config))
  names = tuple(config.stages)
  unknown = [n for n in names if n not in known]
  if not names or unknown:
    raise ValueError(f"config.stages={names!r}: unknown stage(s) {unknown}; known: {sorted(known)}")
  # config.objective trains the run's RL or reward-model stage: it must be of that stage.
  kind = registry.spec(config.objective.name).stage
  if kind not in names and {"rl", "reward_model"} & set(names):
    raise ValueError(f"config.objective.name={config.objective.name!r} is an objective of the {kind!r} stage, "
                     f"but config.stages={tuple(names)!r} has no {kind!r} stage; objectives of its stages: "
                     f"{[n for s in names for n in registry.names(s)]}")
  for name in names:
    known[name].check_config(config)


def train(config, workdir, *, mesh=None, stop_at: int | None = None, allow_config_change=()) -> dict[str, Any]:
  """Builds the experiment of `config` and runs it in `workdir` (resuming from its checkpoint)."""
  return Experiment(config, mesh=mesh).run(workdir, stop_at=stop_at, allow_config_change=allow_config_change)
