"""The extra cost of PRIME's process reward model: an RL step with the online PRM against the same
step with outcome rewards only (`configs/prime.py` and its `rloo` modifier), on one device.

    python -m experiments.bench_prime --steps=6 [--model=mini] [--results=FILE.jsonl]

Each case builds the RL stage of the config (stages `("rl",)`, a freshly initialised policy:
timing does not depend on what the policy knows), runs one step to compile, then times
`--steps` steps (median wall seconds; every step is blocked on its outputs). The PRM case adds
the PRM's and the reference's forward passes for the token rewards and the PRM's update on the
outcome labels. Memory is the bytes of the training state (parameters and optimizer states of
every role), which the PRM roughly doubles; peak activation memory is not measured on CPU.
Prints one JSON line per case, then the ratios.
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import jax
from absl import app
from absl import flags

from configs import prime as prime_config
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import provenance

_STEPS = flags.DEFINE_integer("steps", 6, "Timed RL steps after the compiling one.")
_MODEL = flags.DEFINE_string("model", "mini", "Model size (models.transformer.get_config).")
_RESULTS = flags.DEFINE_string("results", "", "A JSONL file to append the result lines to.")


def state_bytes(state) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype")))


def time_case(variant: str, steps: int, model: str) -> dict:
  config = prime_config.get_config(variant)
  config.stages = ("rl",)
  config.model.name = model
  e = experiment_lib.Experiment(config)
  stage = e.stages[0]
  state = e.initial_state()
  times = []
  for step in range(steps + 1):
    start = time.perf_counter()
    state, metrics = stage.step(state, step)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return {"case": "prime" if "rloo" not in variant else "rloo", "model": model,
          "rows": config.rollout.prompts_per_step * config.rollout.group_size,
          "max_completion_length": config.task.max_completion_length, "steps": steps,
          "first_step_s": round(times[0], 3), "step_s_median": round(statistics.median(times[1:]), 4),
          "state_mib": round(state_bytes(state) / 2**20, 3), "roles": sorted(state),
          "device": jax.devices()[0].device_kind, "host": platform.processor() or platform.machine(),
          "jax": provenance.package_versions().get("jax")}


def main(argv):
  del argv
  lines = [time_case(v, _STEPS.value, _MODEL.value) for v in ("", "rloo")]
  prime, rloo = lines
  lines.append({"case": "ratio", "step_time": round(prime["step_s_median"] / rloo["step_s_median"], 3),
                "state_memory": round(prime["state_mib"] / rloo["state_mib"], 3)})
  for line in lines:
    print(json.dumps(line))
    if _RESULTS.value:
      with open(_RESULTS.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  app.run(main)
