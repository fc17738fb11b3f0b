"""Trains a policy from an ml_collections config.

    python -m experiments.train --config=configs/grpo_arithmetic.py[:VARIANT] --workdir=DIR \\
        [--config.optim.lr=3e-5 ...]

The config is locked: overriding a key that does not exist is an error. Running again on
the same workdir resumes from its last checkpoint.

Several processes (TPU pod slices, multi-node GPU) run the same command on every host;
`jax.distributed` is initialised from the environment (see README, "Scale out"):
`JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID`, or
`JAX_DISTRIBUTED=auto` where JAX detects the cluster itself.
"""
from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config, metrics, checkpoints and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax) would drown the progress bar
  from jaxrl_reward import sharding  # after flag parsing: keeps --help fast
  from jaxrl_reward import trainer

  sharding.maybe_initialize_distributed()  # before anything touches the devices
  result = trainer.train(_CONFIG.value, _WORKDIR.value)
  print(result["table"])


if __name__ == "__main__":
  app.run(main)
