"""Where the time of the GRPO step goes: a jax.profiler trace, summed by XLA operation kind.

    python -m experiments.profile_ops --model=tiny --vocab_size=1024 --dtype=bfloat16
    python -m experiments.profile_ops --part=sample --top=10 --trace_dir=/tmp/trace

Traces one call of each part of the step of experiments/bench.py (same flags for the
shape: --model, --vocab_size, --prompts, --group_size, --prompt_length,
--completion_length, --dtype; its other flags are not used here): `sample`
(prefill + decode loop of the sampler) and `update` (forward + backward + optimizer step of
the GRPO loss), after a warm-up call. The trace's events on XLA's worker threads are
grouped by operation kind (the HLO name without its numeric suffix: `ynn_fusion` for
matrix products and reductions handed to the YNNPACK library, `*_convert_fusion` for dtype
conversions fused with other element-wise work, `dynamic-update-slice_*` for cache
writes, ...). Thread time can exceed wall time: both cores run parts of one operation.
Prints one JSON line per part: wall seconds, thread-milliseconds and call counts per kind,
and the largest single operations. The trace itself stays in `--trace_dir` for
TensorBoard / XProf.
"""
from __future__ import annotations

import collections
import glob
import json
import re
import shutil
import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags
from jax.profiler import ProfileData

import objectives  # noqa: F401  (registers the objectives)
from experiments import bench  # the step's shape flags and pieces: --model, --vocab_size, --prompts, ...

_PART = flags.DEFINE_list("part", ["sample", "update"], "Parts of the step to trace.")
_TOP = flags.DEFINE_integer("top", 12, "Operation kinds and single operations to list.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "/tmp/jaxrl_reward_trace", "Where traces are written.")


def _kind(name: str) -> str:
  return re.sub(r"\.\d+$", "", name)


def summarise_trace(trace_dir: str, top: int) -> dict:
  """Thread time per operation kind from the newest trace under `trace_dir`."""
  path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  by_kind, calls, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # XLA's CPU worker threads
        continue
      for event in line.events:
        if event.name.startswith(("ThunkExecutor", "end:", "Slinky")):
          continue
        by_kind[_kind(event.name)] += event.duration_ns
        calls[_kind(event.name)] += 1
        by_op[event.name] += event.duration_ns
  total = sum(by_kind.values())
  return {
      "thread_ms": round(total / 1e6, 1),
      "kinds": [{"kind": k, "thread_ms": round(v / 1e6, 1), "share": round(v / total, 3),
                 "calls": calls[k]} for k, v in by_kind.most_common(top)],
      "largest_ops": [{"op": k, "thread_ms": round(v / 1e6, 2)} for k, v in by_op.most_common(top)],
  }


def traced(fn, next_args, *, trace_dir: str) -> float:
  """Wall seconds of one traced call of `fn(*next_args())`, after an untraced warm-up call.

  `next_args()` gives fresh arguments per call (the update step donates its state)."""
  jax.block_until_ready(fn(*next_args()))  # compile and warm up outside the trace
  args = next_args()
  shutil.rmtree(trace_dir, ignore_errors=True)
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  return wall


def main(argv):
  del argv
  b = bench._PROMPTS.value * bench._GROUP.value
  p, n = bench._PROMPT_LEN.value, bench._COMPLETION_LEN.value
  policy, params, opt_state, conditions, score, update = bench.grpo_step_parts(
      bench._MODEL.value, vocab_size=bench._VOCAB.value, prompts=bench._PROMPTS.value,
      group_size=bench._GROUP.value, prompt_length=p, completion_length=n, dtype=bench._DTYPE.value)
  rollout = score(policy.sample(params, conditions, jax.random.PRNGKey(0)))
  # The update step donates params and optimizer state: each call gets its own copies.
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
  parts = {"sample": (policy.sample, lambda: (params, conditions, jax.random.PRNGKey(1))),
           "update": (update, lambda: (copy(params), copy(opt_state), rollout))}
  for part in _PART.value:
    if part not in parts:
      raise ValueError(f"--part: unknown part {part!r}; expected some of {sorted(parts)}")
    fn, next_args = parts[part]
    trace_dir = f"{_TRACE_DIR.value}/{part}"
    wall = traced(fn, next_args, trace_dir=trace_dir)
    print(json.dumps({"case": "profile", "part": part, "model": bench._MODEL.value,
                      "dtype": bench._DTYPE.value,
                      "batch": b, "prompt_length": p, "completion_length": n,
                      "wall_s": round(wall, 4), **summarise_trace(trace_dir, _TOP.value),
                      "device": jax.devices()[0].device_kind, "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
