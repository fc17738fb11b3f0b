"""Held-out evaluation of the policy: accuracy with greedy decoding and with the rollout's
sampling settings, scored by the verifier (`config.rewards.eval_name`).

`greedy_scores` is the building block (also used by `experiments/eval_model.py`);
`policy_accuracy` is what the stages report as `eval/accuracy_greedy` and
`eval/accuracy_sampled`. With several processes each one decodes and scores its rows; the
scores are gathered, so every process returns the same numbers.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrl_reward import sharding
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import scoring


@dataclasses.dataclass
class Scores:
  """Per-example results of one decoding mode over a list of examples (in order)."""
  scores: np.ndarray  # [n] the verifier's score (None -> 0; a NaN/inf or a wrong count is an error)
  completions: list[str]  # this process's completions (all of them on one process)
  lengths: np.ndarray  # [n] completion tokens, EOS included


def decode_and_score(context, params, examples: list[dict], key, *, greedy: bool, batch_size: int) -> Scores:
  """Samples one completion per example (batches of `batch_size`, the last one padded) and scores it."""
  policy = context.roles.policy
  reward = context.config.rewards.eval_name
  n = len(examples)
  padded = examples + [examples[-1]] * (-n % batch_size)
  scores, completions, lengths = [], [], []
  for start in range(0, len(padded), batch_size):
    rows = context.host_rows(batch_size)
    chunk = padded[start:start + batch_size][rows]
    conditions = policy.conditions([e["prompt"] for e in chunk], np.arange(batch_size)[rows], batch_size)
    rollout = policy.sample(params, conditions, jax.random.fold_in(key, start), greedy=greedy)
    texts = policy.decode(rollout)
    values = host_rewards.compute_rewards([reward], [e["prompt"] for e in chunk], texts, scoring.columns_of(chunk))
    local = np.nan_to_num(values[:, 0], nan=0.0)  # a missing score counts as wrong
    scores.extend(sharding.gather_rows(local).tolist())
    lengths.extend(sharding.gather_rows(sharding.local_rows(rollout.mask).sum(-1)).tolist())
    completions.extend(texts)
  return Scores(np.asarray(scores[:n]), completions[:n], np.asarray(lengths[:n]))


def policy_accuracy(context, params, step: int) -> dict[str, float]:
  """Mean verifier score on the held-out split, greedy and sampled (key from the seed and step)."""
  cfg = context.config
  key = jax.random.fold_in(jax.random.fold_in(context.key, step), 1 << 20)
  return {f"eval/accuracy_{mode}": float(np.mean(decode_and_score(
      context, params, context.task.eval, key, greedy=mode == "greedy", batch_size=cfg.eval.batch_size).scores))
          for mode in ("greedy", "sampled")}
