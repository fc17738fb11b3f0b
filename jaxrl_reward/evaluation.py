"""Held-out evaluation of the policy: accuracy with greedy decoding and with the rollout's
sampling settings, scored by the verifier (`config.rewards.eval_name`).

`decode_and_score` is the building block (also used by `experiments/eval_model.py`);
`policy_accuracy` is what the stages report as `eval/accuracy_greedy` and
`eval/accuracy_sampled`, and with `config.eval.answer_perplexity` also
`eval/answer_perplexity`: exp of the mean negative log-prob per token of the reference
answers (the task's answer format, then EOS) spliced after each greedy chain of thought
(after the whole completion when it has no marker). With several processes each one decodes and scores its rows; the
scores are gathered, so every process returns the same numbers.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import sharding
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import likelihood
from jaxrl_reward.rewards import scoring


@dataclasses.dataclass
class Scores:
  """Per-example results of one decoding mode over a list of examples (in order)."""
  scores: np.ndarray  # [n] the verifier's score (None -> 0; a NaN/inf or a wrong count is an error)
  completions: list[str]  # this process's completions (all of them on one process)
  lengths: np.ndarray  # [n] completion tokens, EOS included
  answer_perplexity: float | None = None  # with `answer_perplexity=True`


def answer_splice_options(context, examples: list[dict]) -> dict:
  """Splice options that score every row's reference answer ("append"), wide enough for `examples`."""
  task, tokenizer = context.task, context.roles.policy.tokenizer
  if task.answer_format is None:
    raise ValueError("config.eval.answer_perplexity needs a task with an answer marker (Task.answer_format)")
  column = dict(context.config.rewards.get("options", {}).get("likelihood", {})).get("answer_column", "answer")
  answers = likelihood._answers(scoring.columns_of(examples), column)
  width = max(len(ids) for ids in likelihood.answer_tokens(tokenizer, answers, task.answer_format, eos=True))
  return dict(kind="logprob", no_marker="append", max_answer_tokens=width, answer_column=column, append_eos=True)


def decode_and_score(context, params, examples: list[dict], key, *, greedy: bool, batch_size: int,
                     answer_perplexity: bool = False) -> Scores:
  """Samples one completion per example (batches of `batch_size`, the last one padded) and scores it."""
  policy = context.roles.policy
  rewards_config = context.config.rewards
  reward = rewards_config.eval_name
  n = len(examples)
  padded = examples + [examples[-1]] * (-n % batch_size)
  scores, completions, lengths = [], [], []
  options = answer_splice_options(context, examples) if answer_perplexity else None
  answer_nll, answer_tokens = 0.0, 0.0
  for start in range(0, len(padded), batch_size):
    rows = context.host_rows(batch_size)
    chunk = padded[start:start + batch_size][rows]
    conditions = policy.conditions([e["prompt"] for e in chunk], np.arange(batch_size)[rows], batch_size)
    rollout = policy.sample(params, conditions, jax.random.fold_in(key, start), greedy=greedy)
    texts = policy.decode(rollout)
    values = host_rewards.compute_rewards([reward], [e["prompt"] for e in chunk], texts, scoring.columns_of(chunk),
                                          timeout_s=rewards_config.get("timeout_s", host_rewards.DEFAULT_TIMEOUT_S),
                                          on_timeout=rewards_config.get("on_timeout", "error"))
    local = np.nan_to_num(values[:, 0], nan=0.0)  # a missing score counts as wrong
    scores.extend(sharding.gather_rows(local).tolist())
    lengths.extend(sharding.gather_rows(sharding.local_rows(rollout.mask).sum(-1)).tolist())
    completions.extend(texts)
    if options is not None:
      nll, count = _answer_nll(context, params, rollout, chunk, options, real=max(0, min(batch_size, n - start)))
      answer_nll, answer_tokens = answer_nll + nll, answer_tokens + count
  perplexity = float(np.exp(answer_nll / answer_tokens)) if options is not None else None
  return Scores(np.asarray(scores[:n]), completions[:n], np.asarray(lengths[:n]), perplexity)


def _answer_nll(context, params, rollout, chunk: list[dict], options: dict, *, real: int) -> tuple[float, float]:
  """Summed negative log-prob and count of the reference-answer tokens of the batch's first `real` rows."""
  policy = context.roles.policy
  spliced, _ = likelihood.prepare(rollout, policy=policy, task=context.task, columns=scoring.columns_of(chunk),
                                  options=options)
  logp = policy.compute_logprobs(params, spliced)
  keep = (jnp.arange(rollout.num_rows) < real)[:, None]  # the padding rows of the last batch do not count
  mask = spliced["answer_mask"] * keep
  return float(-jnp.sum(logp * mask)), float(jnp.sum(mask))


def policy_accuracy(context, params, step: int) -> dict[str, float]:
  """Mean verifier score on the held-out split, greedy and sampled (key from the seed and step)."""
  cfg = context.config
  key = jax.random.fold_in(jax.random.fold_in(context.key, step), 1 << 20)
  out = {}
  for mode in ("greedy", "sampled"):
    perplexity = mode == "greedy" and bool(cfg.eval.get("answer_perplexity", False))
    scores = decode_and_score(context, params, context.task.eval, key, greedy=mode == "greedy",
                              batch_size=cfg.eval.batch_size, answer_perplexity=perplexity)
    out[f"eval/accuracy_{mode}"] = float(np.mean(scores.scores))
    if perplexity:
      out["eval/answer_perplexity"] = scores.answer_perplexity
  return out
