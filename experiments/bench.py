"""Benchmarks: the full GRPO step (sampling, update, whole step) in completion tokens/s.

    python -m experiments.bench --model=tiny --prompts=4 --group_size=8 --completion_length=64
    python -m experiments.bench --case=forward_backward --model=tiny   # where the update's time goes
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m experiments.bench --mesh=data=2,fsdp=2,tensor=2      # the step under a mesh

The default shape matches a common TRL GRPOTrainer setup: hidden 256, 4 layers, 4 heads
/ 2 KV heads, intermediate 1024, 32 completions of 64 tokens (8 per prompt). Sampling
never stops early (no EOS), so every completion has exactly `completion_length` tokens.
Compile time is the first call minus a steady-state call. Prints one JSON line per case.
"""
from __future__ import annotations

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

import objectives  # noqa: F401  (registers the objectives)
from jaxrl_reward import learner
from jaxrl_reward import logprobs as logprobs_lib
from jaxrl_reward import optim
from jaxrl_reward import provenance
from jaxrl_reward import sharding
from jaxrl_reward.policies import lm
from objectives import estimators
from objectives import registry
from models import transformer

_MODEL = flags.DEFINE_string("model", "tiny", "Model size in models.transformer.get_config.")
_VOCAB = flags.DEFINE_integer("vocab_size", 1024, "Vocabulary size.")
_PROMPTS = flags.DEFINE_integer("prompts", 4, "Prompts per step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Completions per prompt.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens.")
_COMPLETION_LEN = flags.DEFINE_integer("completion_length", 64, "Completion tokens.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions after the warm-up call.")
_CASE = flags.DEFINE_enum("case", "grpo_step", ["grpo_step", "forward_backward"], "What to time.")
_MESH = flags.DEFINE_string("mesh", "", "Mesh axes as name=size,... (e.g. fsdp=8); empty: one device.")


def parse_mesh(text: str):
  """"data=2,fsdp=4" -> (("data", 2), ("fsdp", 4)); "" -> None."""
  if not text:
    return None
  axes = []
  for part in text.split(","):
    name, _, size = part.partition("=")
    if not size:
      raise ValueError(f"--mesh: expected name=size pairs separated by commas, got {text!r}")
    axes.append((name.strip(), int(size)))
  return tuple(axes)


def _timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


class _NoEos:
  """Token ids of a benchmark without a tokenizer: no EOS, so every completion is full length."""
  eos_token_id = None
  pad_token_id = 0


def grpo_step_parts(model_name, *, vocab_size, prompts, group_size, prompt_length, completion_length,
                    dtype, mesh_axes=None):
  """The engine's pieces of one GRPO step on random prompts: (policy, params, opt_state,
  conditions, score, update), where `score(rollout)` adds a cheap stand-in reward and
  group advantages and `update` is the learner step of the registered "grpo" objective."""
  cfg = transformer.get_config(model_name, vocab_size=vocab_size, dtype=dtype)
  graphdef, abstract, _ = nnx.split(nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0))),
                                    nnx.Param, ...)
  mesh = sharding.make_mesh(mesh_axes) if mesh_axes else sharding.make_mesh((("data", 1),), jax.devices()[:1])
  optimizer = optim.make_optimizer(1e-5, total_steps=1000)
  placement = sharding.placement_for(abstract, mesh, sharding.merge_rules(())).with_optimizer(optimizer, abstract)
  params = jax.jit(lambda: nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)[1],
                   out_shardings=placement.params)()
  opt_state = jax.jit(optimizer.init, out_shardings=placement.opt_state)(params)
  policy = lm.LanguageModel(graphdef, placement, _NoEos(), max_prompt_length=prompt_length,
                            max_new_tokens=completion_length)
  batch = prompts * group_size
  rng = np.random.default_rng(0)
  conditions = sharding.to_global({
      "prompt_ids": rng.integers(1, vocab_size, (batch, prompt_length)).astype(np.int32),
      "prompt_mask": np.ones((batch, prompt_length), np.int32),
      "group_ids": np.repeat(np.arange(prompts), group_size).astype(np.int32)}, mesh, placement.rules, batch)

  @jax.jit
  def score(rollout):
    rewards = jnp.mean(rollout.actions % 2, axis=-1).astype(jnp.float32)  # a cheap stand-in reward
    rollout = rollout.update(rewards=rewards, outcome_rewards=rewards)
    return rollout.update(advantages=estimators.compute("group", rollout, group_size=group_size))

  loss = learner.objective_loss(policy, registry.get("grpo"), registry.resolve_options("grpo"))
  update = learner.make_update(loss, optimizer, placement, group_size=group_size)
  return policy, params, opt_state, conditions, score, update


def bench_grpo_step(model_name, *, vocab_size, prompts, group_size, prompt_length, completion_length,
                    dtype, repeats, mesh_axes=None) -> dict:
  policy, params, opt_state, conditions, score, update = grpo_step_parts(
      model_name, vocab_size=vocab_size, prompts=prompts, group_size=group_size, prompt_length=prompt_length,
      completion_length=completion_length, dtype=dtype, mesh_axes=mesh_axes)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  batch = prompts * group_size

  def whole_step(params, opt_state, key):
    return update(params, opt_state, score(policy.sample(params, conditions, key)))

  key = jax.random.PRNGKey(0)
  rollout, t_sample_first = _timed(policy.sample, params, conditions, key)
  rollout = jax.block_until_ready(score(rollout))
  (params, opt_state, _), t_update_first = _timed(update, params, opt_state, rollout)
  sample_times, update_times, whole_times = [], [], []
  for i in range(repeats):
    k = jax.random.fold_in(key, i + 1)
    rollout, t = _timed(policy.sample, params, conditions, k)
    sample_times.append(t)
    rollout = jax.block_until_ready(score(rollout))
    (params, opt_state, _), t = _timed(update, params, opt_state, rollout)
    update_times.append(t)
    (params, opt_state, _), t = _timed(whole_step, params, opt_state, k)
    whole_times.append(t)
  tokens = batch * completion_length
  t_sample, t_update, t_whole = (float(np.median(x)) for x in (sample_times, update_times, whole_times))
  return {
      "case": "grpo_step", "model": model_name, "params_M": round(n_params / 1e6, 2), "dtype": dtype,
      "batch": batch, "prompt_length": prompt_length, "completion_length": completion_length,
      "sample_tokens_per_s": round(tokens / t_sample, 1),
      "update_tokens_per_s": round(tokens / t_update, 1),
      "step_tokens_per_s": round(tokens / t_whole, 1),
      "step_s": round(t_whole, 4),
      # Model FLOPs of the update (forward + backward = 6 N per token over prompt + completion).
      "update_tflops_per_s": round(6 * n_params * batch * (prompt_length + completion_length) / t_update / 1e12, 3),
      "compile_s": round(t_sample_first - t_sample + t_update_first - t_update, 2),
      "mesh": dict(policy.placement.mesh.shape) if mesh_axes else None,
      # Parameters + optimizer state held by one device.
      "state_MB_per_device": round(sharding.per_device_bytes((params, opt_state)) / 2**20, 2),
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "host": platform.processor() or platform.machine(), "jax": jax.__version__,
      "commit": (provenance.git_info() or {}).get("commit"),
  }


def bench_forward_backward(model_name, *, vocab_size, batch, length, dtype, repeats) -> dict:
  """Splits the update's cost: forward to hidden states, forward + backward, and with log-probs."""
  cfg = transformer.get_config(model_name, vocab_size=vocab_size, dtype=dtype)
  graphdef, params, rest = nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, vocab_size, (batch, length)), jnp.int32)
  mask = jnp.ones_like(ids)

  def hidden_sum(p):
    return jnp.sum(nnx.merge(graphdef, p, rest)(ids, mask, return_hidden=True).astype(jnp.float32))

  def logp_sum(p):
    model = nnx.merge(graphdef, p, rest)
    hidden = model(ids, mask, return_hidden=True)
    return jnp.sum(logprobs_lib.token_logprobs(hidden[:, :-1], model.unembedding(), ids[:, 1:]))

  cases = {"forward_s": jax.jit(hidden_sum), "forward_backward_s": jax.jit(jax.grad(hidden_sum)),
           "forward_backward_logprobs_s": jax.jit(jax.grad(logp_sum))}
  result = {"case": "forward_backward", "model": model_name, "dtype": dtype, "batch": batch, "length": length}
  for name, fn in cases.items():
    jax.block_until_ready(fn(params))
    times = [_timed(fn, params)[1] for _ in range(repeats)]
    result[name] = round(float(np.median(times)), 4)
  result["device"] = jax.devices()[0].device_kind
  return result


def main(argv):
  del argv
  if _CASE.value == "forward_backward":
    print(json.dumps(bench_forward_backward(
        _MODEL.value, vocab_size=_VOCAB.value, batch=_PROMPTS.value * _GROUP.value,
        length=_PROMPT_LEN.value + _COMPLETION_LEN.value, dtype=_DTYPE.value, repeats=_REPEATS.value)))
    return
  result = bench_grpo_step(_MODEL.value, vocab_size=_VOCAB.value, prompts=_PROMPTS.value,
                           group_size=_GROUP.value, prompt_length=_PROMPT_LEN.value,
                           completion_length=_COMPLETION_LEN.value, dtype=_DTYPE.value, repeats=_REPEATS.value,
                           mesh_axes=parse_mesh(_MESH.value))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
