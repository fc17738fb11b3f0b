"""Benchmark: lean (chunked) vs naive (full-logit) log-probs + GRPO-style loss + gradients.

    python -m experiments.bench_logprobs --out=/tmp/logprobs.jsonl   # default sweep, bf16 (3-5 min, 2 CPU cores)
    python -m experiments.bench_logprobs --dtypes=float32 --time_budget_tflop=0.25   # float32 variant
    python -m experiments.bench_tables /tmp/logprobs.jsonl              # Markdown tables

Each case starts from final hidden states [B, T, D] and an unembedding [D, V] and computes

    logp = log_softmax(hidden @ unembedding)[targets]                     # [B, T]
    loss = -sum(logp * advantages[:, None] * mask) / sum(mask)           # GRPO-style
    grads = d loss / d (hidden, unembedding)

with right-padded rows (a random length per row) and per-row advantages.

- `lean`: `jaxrl_reward.logprobs.token_logprobs` (vocabulary chunks of `--chunk_size`
  columns, 0 = chosen from B x T; an online logsumexp forward and a custom VJP).
- `naive`: logits = hidden @ unembedding as one [B, T, V] float32 array, then
  `naive_token_logprobs`.

Both matmuls take the inputs in `dtype` with float32 accumulation
(`preferred_element_type=float32`) and do the log-softmax in float32. The main setting is
bfloat16 hidden states and unembedding (`--dtypes=bfloat16`); `--dtypes=float32` is optional.

Peak memory is read from XLA's compiled memory analysis
(`jax.jit(f).lower(...).compile().memory_analysis()`: argument + output + temp bytes - alias),
which needs no run, so it covers cases far larger than this machine's RAM. Time (median of
`--repeats` calls after one warm-up call) is measured only where the analysed peak is at most
`--max_run_gib` and the case's matmul FLOPs fit `--time_budget_tflop`; otherwise the JSON
says why it was not run. `cpu_s` is the process's CPU time per call (all threads), steadier
than wall time when other processes share the machine. The lean path does four
[B*T, D] x [D, V] matmuls (forward, backward recompute, d hidden, d unembedding), the
naive path three, so a matmul-bound lean path costs at least 4/3 of the naive one unless
its matmuls run faster (its weight-gradient product takes a pre-transposed left operand,
which XLA:CPU's bfloat16 kernels need; the naive backward's does not).

By default only the cases with at most `--time_budget_tflop` = 1.2 matmul TFLOP are timed:
on 2 CPU cores that is V=32,000 at B x T <= 4,096 and V=151,936 at B=1, T=1,024.

Prints one JSON line per case (`"case": "logprobs_grad"`) and one per shape with the
lean/naive ratios (`"case": "logprobs_ratio"`), which checks the goals: lean peak <= 1/8 of
naive at V=151,936, T=4,096, and lean time <= 1.2x naive.
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from jaxrl_reward import logprobs as logprobs_lib
from jaxrl_reward import provenance

_VOCAB = flags.DEFINE_list("vocab", ["32000", "151936"], "Vocabulary sizes V.")
_LENGTH = flags.DEFINE_list("length", ["1024", "4096"], "Sequence lengths T.")
_BATCH = flags.DEFINE_list("batch", ["1", "4"], "Batch sizes B.")
_HIDDEN = flags.DEFINE_integer("hidden", 896, "Hidden size D (Qwen2.5-0.5B: 896).")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16"], "Dtypes of hidden and unembedding.")
_IMPLS = flags.DEFINE_list("impls", ["lean", "naive"], "Implementations.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Vocabulary columns per chunk of the lean path (0: automatic).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the warm-up call.")
_MAX_RUN_GIB = flags.DEFINE_float("max_run_gib", 12.0, "Run only cases whose analysed peak fits this.")
_TIME_BUDGET = flags.DEFINE_float(
    "time_budget_tflop", 1.2,
    "Time only cases whose matmul TFLOPs per call are at most this (0: time nothing).")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")

GIB = 2.0**30
GOAL_PEAK_RATIO = 1 / 8  # at V = 151,936, T = 4,096
GOAL_TIME_RATIO = 1.2


def matmuls(impl: str) -> int:
  """[B*T, D] x [D, V]-sized matmuls per call: forward (+ recompute), d hidden, d unembedding."""
  return 4 if impl == "lean" else 3


def make_loss(impl: str, chunk_size: int):
  def loss(hidden, unembedding, targets, mask, advantages):
    if impl == "lean":
      logp = logprobs_lib.token_logprobs(hidden, unembedding, targets, chunk_size=chunk_size or None,
                                         mask=mask)
    else:
      b, t, d = hidden.shape
      logits = jnp.dot(hidden.reshape(b * t, d), unembedding,
                       preferred_element_type=jnp.float32).reshape(b, t, -1)  # [B, T, V] f32
      logp = logprobs_lib.naive_token_logprobs(logits, targets, mask=mask)
    mask = mask.astype(jnp.float32)
    return -jnp.sum(logp * advantages[:, None] * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def abstract_inputs(b, t, d, v, dtype):
  return (jax.ShapeDtypeStruct((b, t, d), dtype), jax.ShapeDtypeStruct((d, v), dtype),
          jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32),
          jax.ShapeDtypeStruct((b,), jnp.float32))


def concrete_inputs(b, t, d, v, dtype, seed=0):
  k_h, k_w, k_y, k_len, k_adv = jax.random.split(jax.random.PRNGKey(seed), 5)
  hidden = jax.random.normal(k_h, (b, t, d), jnp.float32).astype(dtype)
  unembedding = (jax.random.normal(k_w, (d, v), jnp.float32) / np.sqrt(d)).astype(dtype)
  targets = jax.random.randint(k_y, (b, t), 0, v, jnp.int32)
  lengths = jax.random.randint(k_len, (b,), t // 2, t + 1)  # right padding
  mask = (jnp.arange(t)[None, :] < lengths[:, None]).astype(jnp.int32)
  advantages = jax.random.normal(k_adv, (b,), jnp.float32)
  return hidden, unembedding, targets, mask, advantages


def memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  arg, out, temp = stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.temp_size_in_bytes
  peak = arg + out + temp - stats.alias_size_in_bytes
  return {"peak_GiB": round(peak / GIB, 3), "temp_GiB": round(temp / GIB, 3),
          "argument_GiB": round(arg / GIB, 3), "output_GiB": round(out / GIB, 3)}


def bench_case(impl, b, t, d, v, dtype, *, chunk_size, repeats, max_run_gib, time_budget_tflop) -> dict:
  fn = make_loss(impl, chunk_size)
  start = time.perf_counter()
  compiled = fn.lower(*abstract_inputs(b, t, d, v, dtype)).compile()
  compile_s = time.perf_counter() - start
  tflop = matmuls(impl) * 2 * b * t * d * v / 1e12
  result = {"case": "logprobs_grad", "impl": impl, "dtype": jnp.dtype(dtype).name, "B": b, "T": t,
            "D": d, "V": v,
            "chunk_size": (chunk_size or logprobs_lib.vocab_chunk_for(b * t, v)) if impl == "lean" else None,
            "full_logits_f32_GiB": round(b * t * v * 4 / GIB, 3), **memory(compiled),
            "matmul_tflop": round(tflop, 3), "compile_s": round(compile_s, 2)}
  peak = result.get("peak_GiB")
  if peak is not None and peak > max_run_gib:
    result["not_run"] = f"would need {peak:.1f} GiB (limit {max_run_gib:g} GiB)"
    return result
  if tflop > time_budget_tflop:
    result["not_run"] = (f"{tflop:.2f} matmul TFLOP per call is over the time budget "
                         f"({time_budget_tflop:g} TFLOP)")
    return result
  args = concrete_inputs(b, t, d, v, dtype)
  jax.block_until_ready(compiled(*args))
  times, cpu_times = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  result["time_s"] = round(float(np.median(times)), 4)
  result["times_s"] = [round(x, 4) for x in times]
  # CPU seconds of this process (all threads): less sensitive than wall time to other
  # processes on a shared machine (not to their use of caches and memory bandwidth).
  result["cpu_s"] = round(float(np.median(cpu_times)), 4)
  result["matmul_gflop_per_s"] = round(tflop * 1e3 / result["time_s"], 1)
  return result


def ratio(lean: dict, naive: dict) -> dict:
  out = {"case": "logprobs_ratio", "dtype": lean["dtype"], "B": lean["B"], "T": lean["T"],
         "V": lean["V"]}
  if "peak_GiB" in lean and "peak_GiB" in naive:
    out["peak_ratio"] = round(lean["peak_GiB"] / naive["peak_GiB"], 4)
    if lean["V"] == 151936 and lean["T"] == 4096:
      out["goal_peak_le_1/8"] = out["peak_ratio"] <= GOAL_PEAK_RATIO
  if "time_s" in lean and "time_s" in naive:
    out["time_ratio"] = round(lean["time_s"] / naive["time_s"], 3)
    out["cpu_time_ratio"] = round(lean["cpu_s"] / naive["cpu_s"], 3)
    out["goal_time_le_1.2x"] = out["time_ratio"] <= GOAL_TIME_RATIO
  else:
    out["time_ratio"] = None
  return out


def main(argv):
  del argv
  sink = open(_OUT.value, "a") if _OUT.value else None

  def emit(record):
    line = json.dumps(record)
    print(line, flush=True)
    if sink:
      sink.write(line + "\n")
      sink.flush()

  d = _HIDDEN.value
  env = {"device": jax.devices()[0].device_kind, "host": platform.processor() or platform.machine(),
         "jax": jax.__version__, "commit": (provenance.git_info() or {}).get("commit")}
  for dtype_name in _DTYPES.value:
    dtype = jnp.dtype(dtype_name)
    for v in map(int, _VOCAB.value):
      for t in map(int, _LENGTH.value):
        for b in map(int, _BATCH.value):
          results = {}
          for impl in _IMPLS.value:
            results[impl] = bench_case(impl, b, t, d, v, dtype, chunk_size=_CHUNK.value,
                                       repeats=_REPEATS.value, max_run_gib=_MAX_RUN_GIB.value,
                                       time_budget_tflop=_TIME_BUDGET.value)
            # The 1-minute load average after the case: timings on a shared machine.
            emit({**results[impl], **env, "load_avg_1m": round(os.getloadavg()[0], 2)})
          if "lean" in results and "naive" in results:
            emit(ratio(results["lean"], results["naive"]))
  if sink:
    sink.close()


if __name__ == "__main__":
  app.run(main)
