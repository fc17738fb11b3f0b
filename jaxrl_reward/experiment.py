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
    """Raises unless `workdir` holds a run of this config's models and data (see `trained_roles`)."""
    workdir = pathlib.Path(workdir)
    if not (workdir / provenance.CONFIG_FILE).is_file():
      raise FileNotFoundError(f"config.init_from={str(workdir)!r} holds no run ({provenance.CONFIG_FILE} missing)")
    changes = provenance.config_changes(workdir, self.config)
    source_roles = set(provenance.read_recorded(workdir).get("roles") or {})
    differ = sorted(k for k in changes if k.split(".")[0] in INIT_FROM_BLOCKS
                    and not _free_for_init_from(k, self.config, source_roles))
    if differ:
      raise ConfigMismatch(f"config.init_from={str(workdir)!r} was trained with other models or data: "
                           + "; ".join(f"{k}: {changes[k][0]!r} there, {changes[k][1]!r} here" for k in differ))
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
    state, _ = Experiment(source, mesh=self.mesh).restore(workdir)
    return {n: {"params": v["params"]} for n, v in state.items() if n in self.roles.specs and "params" in v}

  def abstract_state(self, step: int):
    """ShapeDtypeStructs (with target shardings) of the state a checkpoint of `step` holds."""
    stage = self.stages[self.stage_index(step)]
    shapes = jax.eval_shape(lambda: stage.enter({}))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, stage.state_shardings())

  def restore(self, workdir) -> tuple[Any, int]:
    """(state, step) of the newest checkpoint of `workdir` that reads back whole, read only (an
    evaluation or `init_from` never changes the run it reads)."""
    with checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
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
    changes = {k: v for k, v in changes.items() if not (v[0] is None and v[1] in ("", None, []))}
    refused = {k: v for k, v in changes.items() if not provenance.allowed_change(k, allow_config_change)}
    if refused:
      listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(refused.items())[:8])
      more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
      raise ConfigMismatch(
          f"{workdir} holds a run with another config: {listed}{more}; resume with the same config, use a new "
          f"workdir, or allow the change with --allow_config_change={','.join(list(refused)[:8])}")
    return changes

  # -- the loop ----------------------------------------------------------------------------

  def run(self, workdir, *, stop_at: int | None = None, allow_config_change=()) -> dict[str, Any]:
    """Trains until the last step (or until `stop_at` steps are done, as a preempted job would).

    Resumes from the newest readable checkpoint of `workdir` (see `check_workdir` for a
    changed config). A SIGINT or SIGTERM stops the run after the current step with a
    checkpoint and raises `interrupts.Interrupted`.
    """
    cfg = self.config
    workdir = provenance.prepare_workdir(workdir)
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
      provenance.write_provenance(workdir, extra=self._provenance())
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
    position = {"step": start, "saved": found[2] if found else None}

    def where() -> str:
      saved = position["saved"]
      last = f"step {saved} in {workdir}/checkpoints" if saved is not None else "none yet"
      return f"during step {position['step'] + 1}; the last checkpoint: {last}"

    watch = peers.PeerWatch(cfg.get("multihost_timeout_s", 60), where)
    with interrupts.StopRequests() as stops, watch, _peer_failures(watch):
      for step in bar:
        position["step"] = step
        i = self.stage_index(step)
        stage = self.stages[i]
        state, metrics = stage.step(state, step)
        done = step + 1
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
          ckpt.save(done, state, extra={"stage": self.stages[self.stage_index(done)].name}, force=True)
          position["saved"] = done
        if signum:
          ckpt.close()
          logger.close()
          raise interrupts.Interrupted(signum, done, f"stopped by {signal.Signals(signum).name} after step {done}: "
                                       f"checkpoint saved in {workdir}/checkpoints; run the same command to resume")
        for key in ("loss/total", "loss/sft", "train/reward"):
          if key in metrics:
            postfix[key.split("/")[-1]] = metrics[key]
        bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()})
    ckpt.wait()
    ckpt.close()
    logger.close()
    self.state = state
    return self.summarise(workdir)

  def _provenance(self) -> dict[str, Any]:
    cfg = self.config
    return {
        "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count(),
        "mesh": dict(self.mesh.shape), "stages": [[s.name, s.start, s.end] for s in self.stages],
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
