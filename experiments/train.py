"""Trains from an ml_collections config: the stages it names, resuming from the workdir.

    python -m experiments.train --config=configs/grpo_arithmetic.py[:VARIANT] --workdir=DIR \\
        [--config.optim.lr=3e-5 --config.objective.name=prdp --config.objective.options.clip_eps=1e-4 ...]

A key that is not in the config file is an error (one line, before anything is built),
except inside the open blocks `objective.options`, `advantage.options`, `rewards.options`
and `roles`, whose keys are checked against the selected objective, estimator and rewards
when the run starts (before the first step). Running again on the same workdir resumes
from its newest readable checkpoint, with the same config (`--allow_config_change` names the
keys that may differ). Ctrl-C or SIGTERM stops after the current step with a checkpoint
(exit status 130 / 143); a second Ctrl-C aborts at once. Any error is one line on stderr (exit
status 1): a bad config, workdir or data file at start-up, or, inside the loop, the error with
the step, the stage and the last checkpoint; `--traceback` shows where it was raised.

Several processes (TPU pod slices, multi-node GPU) run the same command on every host;
`jax.distributed` is initialised from the environment (see README, "Scale out"):
`JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID`, or
`JAX_DISTRIBUTED=auto` where JAX detects the cluster itself.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags

from jaxrl_reward import config_cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                          lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, metrics, checkpoints and plots.")
_ALLOW = flags.DEFINE_list("allow_config_change", [], "Config keys (or blocks) that may differ from the run "
                           "already in --workdir when it resumes, e.g. train.steps,eval.every; the changes are "
                           "recorded in the workdir's config_changes.jsonl.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the traceback of an error (a bad config key, option "
                               "or value, workdir, reward function, ...), not just its one-line message.")
flags.mark_flags_as_required(["config", "workdir"])


def error_line(e: BaseException) -> str:
  """The message of `e` as one line (its first line, or its type when it has none)."""
  text = str(e.args[0] if len(e.args) == 1 else e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax) would drown the progress bar
  from jaxrl_reward import experiment  # after flag parsing: keeps --help fast
  from jaxrl_reward import interrupts
  from jaxrl_reward import sharding

  config = _CONFIG.value
  config.lock()
  sharding.maybe_initialize_distributed()  # before anything touches the devices
  try:  # every start-up check: names, options, shapes, the workdir's run; nothing is written yet
    run = experiment.Experiment(config)
    run.check_workdir(_WORKDIR.value, _ALLOW.value)
    result = run.run(_WORKDIR.value, allow_config_change=_ALLOW.value)
  except interrupts.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  except Exception as e:  # noqa: BLE001  (a bad config, workdir or reward, or an error in a step: one line)
    if _TRACEBACK.value:
      raise
    sys.exit(f"error: {error_line(e)}  (--traceback shows where)")
  print(result["table"])


if __name__ == "__main__":
  config_cli.check_argv()
  app.run(main)
