"""What the likelihood reward costs in an RL step: the splice on the host, the longer teacher-forced
pass, and the whole step against the same step with the verifier's reward.

    python -m experiments.bench_likelihood                       # configs/likelihood_rewards.py
    python -m experiments.bench_likelihood --variant=long        # the long-answer task

Each RL step of `configs/likelihood_rewards.py` (16 prompts x 8 samples, the `mini` model)
is timed on freshly initialised parameters with `no_marker="append"`, so every row has a
reference answer to score (a trained policy writes the marker itself). Parts, in seconds
per step (median of `--repeats` after a warm-up step):
- `sample_s`: the policy's sampler alone;
- `splice_s`: finding the marker and splicing the reference answers (host side), on completions
  that all have the marker (the task's worked solutions);
- `teacher_forced_s`: one teacher-forced pass over the spliced rows (`T + max_answer_tokens`
  columns); the engine runs it once per step for the old log-probs and the sampler gap, and
  the reward reads it, so the reward adds no forward pass of its own;
- `step_s`: the whole RL step, and `verifier_step_s` the same step with the verifier's reward
  and the GRPO objective (`:verifier`), whose teacher-forced pass covers T columns only.
Prints one JSON line.
"""
from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np
from absl import app
from absl import flags

from configs import likelihood_rewards
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import sharding
from jaxrl_reward import stages
from jaxrl_reward.rewards import scoring

_VARIANT = flags.DEFINE_enum("variant", "", ["", "long"], "Config variant (the verifier one is `verifier`/`long_verifier`).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps after the warm-up step.")


def _rl(variant: str):
  config = likelihood_rewards.get_config(variant)
  if "likelihood" in config.rewards.options:
    config.rewards.options.likelihood.no_marker = "append"
  config.stages = ("rl",)
  mesh = sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])
  t = experiment_lib.Experiment(config, mesh=mesh)
  rl = t.stage("rl")
  return t, rl, rl.enter({})


def _median(fn, repeats: int) -> float:
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _step_time(rl, state, repeats: int) -> float:
  holder = {"state": state, "step": 0}

  def one():
    holder["state"], metrics = rl.step(holder["state"], holder["step"])
    holder["step"] += 1
    return metrics["loss/total"]
  return _median(one, repeats)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  variant, repeats = _VARIANT.value, _REPEATS.value
  t, rl, state = _rl(variant)
  ctx = t.context
  params = state["policy"]["params"]
  policy = ctx.roles.policy
  examples = ctx.task.train[:rl.prompts]
  conditions, local = stages.prompt_groups(ctx, examples, rl.group_size)
  key = jax.random.PRNGKey(0)
  sampled = policy.sample(params, conditions, key)
  sample_s = _median(lambda: policy.sample(params, conditions, key).actions, repeats)
  # The splice on completions that have the marker (the task's worked solutions, as a trained
  # policy writes them): the marker search then runs its binary search on every row.
  t = sampled.actions.shape[1]
  actions = np.full(sampled.actions.shape, policy.pad_id, np.int32)
  mask = np.zeros(sampled.actions.shape, np.float32)
  for i, e in enumerate(local):
    ids = policy.tokenizer.encode(e["solution"], add_special_tokens=False)[:t - 1] + [policy.eos_id]
    actions[i, :len(ids)], mask[i, :len(ids)] = ids, 1.0
  with_marker = sampled.replace(actions=jax.numpy.asarray(actions), mask=jax.numpy.asarray(mask))
  columns = scoring.columns_of(local)
  splice_s = _median(lambda: rl.rewards.prepare(with_marker, policy=policy, task=ctx.task, columns=columns)[0].actions,
                     repeats)
  rollout, stats = rl.rewards.prepare(with_marker, policy=policy, task=ctx.task, columns=columns)
  assert stats["train/rewards/likelihood/marker_frac"] == 1.0
  teacher_forced_s = _median(lambda: policy.compute_logprobs(params, rollout), repeats)
  step_s = _step_time(rl, state, repeats)
  _, verifier_rl, verifier_state = _rl("long_verifier" if variant == "long" else "verifier")
  verifier_step_s = _step_time(verifier_rl, verifier_state, repeats)
  result = {
      "case": "likelihood_step", "variant": variant or "default", "rows": rollout.num_rows,
      "completion_tokens": int(ctx.config.task.max_completion_length), "spliced_columns": int(rollout.actions.shape[1]),
      "sample_s": round(sample_s, 4), "splice_s": round(splice_s, 4), "teacher_forced_s": round(teacher_forced_s, 4),
      "step_s": round(step_s, 4), "verifier_step_s": round(verifier_step_s, 4),
      "splice_frac_of_step": round(splice_s / step_s, 3),
      "extra_vs_verifier_frac": round((step_s - verifier_step_s) / step_s, 3),
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "host": platform.machine(),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
