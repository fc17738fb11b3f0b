"""One process of a multi-process training run, for tests/test_multihost.py.

    WORKER_LOCAL_DEVICES=4 JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 \\
    JAX_PROCESS_ID=i python tests/multihost_worker.py WORKDIR OUTPUT_NPZ

Runs `sharded_run.config` (one warm-up step, two GRPO steps, evaluation and checkpoints)
over a data 2 x fsdp 2 x tensor 2 mesh of all processes' devices, then (process 0) writes the
final parameters, gathered from every process, to OUTPUT_NPZ. `WORKER_RL_STEPS` and
`WORKER_PEER_TIMEOUT_S` override the RL steps and `multihost_timeout_s`.
"""
import os
import sys

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={os.environ.get('WORKER_LOCAL_DEVICES', '8')}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sharded_run  # noqa: E402
from jaxrl_reward import sharding  # noqa: E402
from jaxrl_reward import experiment  # noqa: E402


def main(workdir: str, output: str) -> None:
  sharding.maybe_initialize_distributed()
  config = sharded_run.config(sharded_run.MESHES["data2_fsdp2_tensor2"])
  config.train.steps = int(os.environ.get("WORKER_RL_STEPS", config.train.steps))
  config.multihost_timeout_s = float(os.environ.get("WORKER_PEER_TIMEOUT_S", config.multihost_timeout_s))
  run = experiment.Experiment(config)
  run.run(workdir)
  params = multihost_utils.process_allgather(run.state["policy"]["params"], tiled=True)
  if jax.process_index() == 0:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    np.savez(output, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
  print(f"process {jax.process_index()} of {jax.process_count()} done", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
