"""Likelihood rewards: the policy's own probability of the reference answer after its chain of thought.

After sampling, each completion is cut right after the task's answer marker
(`Task.answer_format`); the tokens up to there are the chain of thought z. The reference
answer a* (`prefix + answer + suffix`, then EOS) replaces what the policy wrote after the
marker, and the reward is computed from log pi(a*_t | p, z, a*_<t) in one jitted,
teacher-forced pass over prompt + z + a* (the lean log-prob path; ragged lengths, left-
padded prompts, rows sharded like the update). The formulas are `objectives.logprob_rewards`.

The splice rewrites the rollout's layout for every later step of the RL stage: `actions`
become z || a* || padding (`T + max_answer_tokens` columns), `mask` covers z only (the RL
term trains the chain of thought, as in VeriFree and RLPR), `token_mask` the tokens present
and `answer_mask` a*'s tokens (the SFT term of the `likelihood` objective). Per-step arrays
computed before the splice (the sampler's log-probs) keep their values on z, which is a
prefix of the sample.

Kinds (`config.rewards.options.likelihood.kind`): "logprob" log pi(a*|p,z); "avg_logprob"
its per-token mean; "prob" pi(a*|p,z) (VeriFree); "avg_prob" the mean per-token probability
(RLPR); "rlpr" RLPR's debiased reward clip(avg_prob(z) - avg_prob(no reasoning), 0, 1), the
no-reasoning score computed with the same parameters on prompt + marker + a*. JEPO is the
"logprob" kind with the `jepo` advantage estimator.

A completion without the marker (`no_marker`):
- "zero" (default, VeriFree): the reward of probability 0. For "prob", "avg_prob" and "rlpr"
  that is 0; log-probs of 0 are -inf, so "logprob" and "avg_logprob" give the lowest reward
  of the step's rows that have a marker (those rows rank last, advantages stay finite; 0 when
  no row has one). The whole completion stays in the RL term and no SFT term applies.
- "append": the marker and a* are scored after the completion (its EOS dropped), as if the
  policy had written the marker at its end.

`train/rewards/likelihood/marker_frac` logs the fraction of rows with a marker; a step where
no completion has it warns.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import sharding
from jaxrl_reward.data.task import AnswerFormat
from jaxrl_reward.rewards import model_rewards
from jaxrl_reward.rollout import Rollout
from objectives import logprob_rewards

KINDS = logprob_rewards.KINDS + ("rlpr",)
NO_MARKER = ("zero", "append")
_PROBABILITY_KINDS = ("prob", "avg_prob", "rlpr")


def cot_lengths(tokenizer, actions: np.ndarray, mask: np.ndarray, marker: str) -> np.ndarray:
  """`[b]` number of completion tokens up to the one that completes the first `marker`, 0
  for a row without it.

  The decoded text of a prefix contains the marker from one length on, so a binary search
  over prefix lengths needs about log2(T) decodes per row.
  """
  out = np.zeros((actions.shape[0],), np.int32)
  for i, (row, m) in enumerate(zip(actions, mask)):
    tokens = row[: int(np.sum(m))].tolist()
    # Special tokens stay in the text: a marker may be one (e.g. "</think>" in some vocabularies).
    decode = lambda n: tokenizer.decode(tokens[:n], skip_special_tokens=False)  # noqa: E731
    if marker not in decode(len(tokens)):
      continue
    lo, hi = 1, len(tokens)  # invariant: decode(hi) holds the marker, decode(lo - 1) does not
    while lo < hi:
      mid = (lo + hi) // 2
      if marker in decode(mid):
        hi = mid
      else:
        lo = mid + 1
    out[i] = lo
  return out


def answer_tokens(tokenizer, answers: Sequence[str], fmt: AnswerFormat, *, eos: bool) -> list[list[int]]:
  """Token ids of `prefix + answer + suffix` (then EOS) for each reference answer."""
  out = []
  for a in answers:
    ids = tokenizer.encode(f"{fmt.prefix}{a}{fmt.suffix}", add_special_tokens=False)
    out.append(list(ids) + ([tokenizer.eos_token_id] if eos else []))
  return out


def extra_columns(tokenizer, fmt: AnswerFormat, max_answer_tokens: int, no_marker: str) -> int:
  """Columns the splice adds to the completion's T."""
  marker = len(tokenizer.encode(fmt.marker, add_special_tokens=False)) if no_marker == "append" else 0
  return int(max_answer_tokens) + marker


def splice(actions: np.ndarray, mask: np.ndarray, answers: Sequence[str], *, tokenizer, fmt: AnswerFormat,
           max_answer_tokens: int, no_marker: str = "zero", eos: bool = True, pad_id: int = 0,
           answer_ids: list[list[int]] | None = None) -> dict[str, np.ndarray]:
  """The z || a* layout of this process's rows (numpy, see the module docstring).

  Args:
    actions, mask: `[b, T]` sampled completion tokens and their mask (1 up to and including EOS).
    answers: b reference answers.
    tokenizer, fmt: the task's tokenizer and answer format.
    max_answer_tokens: the most tokens of a* (EOS included); the layout adds Ta = that many
      columns (plus the marker's tokens with no_marker="append", `extra_columns`).
    no_marker: "zero" or "append" (module docstring).
    eos: append the end-of-sequence token to a*.
    pad_id: the id written in unused columns.
    answer_ids: the token ids of each answer (default: `answer_tokens`).

  Returns:
    `actions` int32 `[b, T + Ta]`, `mask` / `token_mask` / `answer_mask` float32 `[b, T + Ta]`,
    `has_marker` bool `[b]`, and of the sample as drawn `completion_length` float32 `[b]` and
    `completion_ended` bool `[b]` (it ends with EOS).
  """
  if no_marker not in NO_MARKER:
    raise ValueError(f"no_marker={no_marker!r} is not one of {NO_MARKER}")
  b, t = actions.shape
  width = t + extra_columns(tokenizer, fmt, max_answer_tokens, no_marker)
  ids = answer_ids if answer_ids is not None else answer_tokens(tokenizer, answers, fmt, eos=eos)
  marker_ids = tokenizer.encode(fmt.marker, add_special_tokens=False)
  cuts = cot_lengths(tokenizer, actions, mask, fmt.marker)
  lengths = np.sum(mask, axis=-1).astype(np.int32)
  eos_id = tokenizer.eos_token_id
  ended = np.array([n > 0 and actions[i, n - 1] == eos_id for i, n in enumerate(lengths)])
  out = {"actions": np.full((b, width), pad_id, np.int32), "mask": np.zeros((b, width), np.float32),
         "token_mask": np.zeros((b, width), np.float32), "answer_mask": np.zeros((b, width), np.float32),
         "has_marker": cuts > 0, "completion_length": lengths.astype(np.float32), "completion_ended": ended}
  for i in range(b):
    if cuts[i] > 0:
      cut, appended, scored_from = int(cuts[i]), list(ids[i]), 0
    elif no_marker == "append":
      cut = int(lengths[i]) - int(ended[i])
      appended, scored_from = list(marker_ids) + list(ids[i]), len(marker_ids)
    else:  # "zero": the sample as drawn, no answer to score
      cut, appended, scored_from = int(lengths[i]), [], 0
      out["actions"][i, :cut] = actions[i, :cut]
      out["mask"][i, :cut] = out["token_mask"][i, :cut] = 1.0
      continue
    if len(appended) - scored_from > max_answer_tokens:
      raise ValueError(
          f"a reference answer takes {len(appended) - scored_from} tokens (answer {answers[i]!r}), more than "
          f"rewards.options.likelihood.max_answer_tokens={max_answer_tokens}; raise it")
    end = cut + len(appended)
    out["actions"][i, :cut] = actions[i, :cut]
    out["actions"][i, cut:end] = appended
    out["mask"][i, :cut] = 1.0
    out["token_mask"][i, :end] = 1.0
    out["answer_mask"][i, cut + scored_from:end] = 1.0
  return out


def no_reasoning(answer_ids: list[list[int]], marker_ids: list[int], width: int, *, pad_id: int = 0
                 ) -> dict[str, np.ndarray]:
  """RLPR's baseline layout: the marker and a* right after the prompt, no chain of thought
  (`[b, width]`, width >= the marker's tokens + max_answer_tokens)."""
  b = len(answer_ids)
  out = {"noreason_ids": np.full((b, width), pad_id, np.int32),
         "noreason_token_mask": np.zeros((b, width), np.float32),
         "noreason_answer_mask": np.zeros((b, width), np.float32)}
  for i, ids in enumerate(answer_ids):
    row = list(marker_ids) + list(ids)
    if len(row) > width:
      raise ValueError(f"the marker and reference answer take {len(row)} tokens, more than "
                       f"rewards.options.likelihood.max_answer_tokens={width}; raise it")
    out["noreason_ids"][i, :len(row)] = row
    out["noreason_token_mask"][i, :len(row)] = 1.0
    out["noreason_answer_mask"][i, len(marker_ids):len(row)] = 1.0
  return out


def _answers(columns: dict[str, Sequence[Any]], column: str) -> list[str]:
  if column not in columns:
    raise ValueError(f"the likelihood reward reads the reference answers from the task's column {column!r} "
                     f"(rewards.options.likelihood.answer_column), but the examples have {sorted(columns)}")
  answers = [None if a is None else str(a) for a in columns[column]]
  if any(a is None or a == "" for a in answers):
    raise ValueError(f"the likelihood reward needs a reference answer in column {column!r} for every example; "
                     "some are empty")
  return answers


def prepare(rollout: Rollout, *, policy, task, columns: dict[str, Sequence[Any]], options: dict[str, Any]
            ) -> tuple[Rollout, dict[str, float]]:
  """Splices a* after each chain of thought (host side, this process's rows; see `splice`)."""
  fmt = task.answer_format
  if fmt is None:
    raise ValueError("the likelihood reward needs a task with an answer marker (Task.answer_format); "
                     "this task has none")
  tokenizer = policy.tokenizer
  answers = _answers(columns, options["answer_column"])
  ids = answer_tokens(tokenizer, answers, fmt, eos=options["append_eos"])
  local = splice(sharding.local_rows(rollout.actions), sharding.local_rows(rollout.mask), answers,
                 tokenizer=tokenizer, fmt=fmt, max_answer_tokens=options["max_answer_tokens"],
                 no_marker=options["no_marker"], pad_id=policy.pad_id, answer_ids=ids)
  if options["kind"] == "rlpr":
    marker = tokenizer.encode(fmt.marker, add_special_tokens=False)
    local.update(no_reasoning(ids, marker, len(marker) + int(options["max_answer_tokens"]), pad_id=policy.pad_id))
  placement = policy.placement
  b = rollout.num_rows
  arrays = sharding.to_global(local, placement.mesh, placement.rules, b)
  marker_frac = float(np.mean(sharding.gather_rows(local["has_marker"].astype(np.float32))))
  if marker_frac == 0.0:
    print(f"warning: no completion of this step has the answer marker {fmt.marker!r}; the likelihood reward "
          f"falls back to no_marker={options['no_marker']!r} for every row", file=sys.stderr, flush=True)
  width = arrays["actions"].shape[1]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])))  # noqa: E731  (keeps the row sharding)
  rollout = rollout.replace(actions=arrays.pop("actions"), mask=arrays.pop("mask"), old_logp=pad(rollout.old_logp))
  return rollout.update(**arrays), {"train/rewards/likelihood/marker_frac": marker_frac}


def check_answer_lengths(options: dict[str, Any], task) -> None:
  """Raises, naming the row, when a training example's reference answer takes more tokens than
  max_answer_tokens: `prepare` would fail on it only when a batch first draws it. (Held-out
  answers are not bound by it: `evaluation.answer_splice_options` sizes their own width.)"""
  answers = _answers({k: [e.get(k) for e in task.train] for k in task.train[0]}, options["answer_column"])
  unique = list(dict.fromkeys(answers))  # answers repeat: tokenize each once
  ids = answer_tokens(task.tokenizer, unique, task.answer_format, eos=options["append_eos"])
  lengths = dict(zip(unique, map(len, ids)))
  row = max(range(len(answers)), key=lambda i: lengths[answers[i]])
  longest, limit = lengths[answers[row]], int(options["max_answer_tokens"])
  if longest > limit:
    eos = " (EOS included)" if options["append_eos"] else ""
    raise ValueError(f"the reference answer of training example {row} ({answers[row][:80]!r}) takes {longest} "
                     f"tokens{eos}, more than rewards.options.likelihood.max_answer_tokens={limit}; raise it to at "
                     f"least {longest}")


def layout(options: dict[str, Any], task) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
  """Columns and extras that `prepare` adds (for the start-up traces), after checking the
  options and that the task has an answer marker and reference answers."""
  for key, allowed in (("kind", KINDS), ("no_marker", NO_MARKER)):
    if options[key] not in allowed:
      raise ValueError(f"rewards.options.likelihood.{key}={options[key]!r} is not one of {allowed}")
  if int(options["max_answer_tokens"]) < 1:
    raise ValueError(f"rewards.options.likelihood.max_answer_tokens must be >= 1, got {options['max_answer_tokens']}")
  if task.answer_format is None:
    raise ValueError("the likelihood reward needs a task with an answer marker (Task.answer_format); "
                     "this task has none")
  check_answer_lengths(options, task)
  # (The no-reasoning rows of "rlpr" are read by the reward only, not by any loss.)
  per_step = ("token_mask", "answer_mask")
  per_row = ("has_marker", "completion_length", "completion_ended")
  return extra_columns(task.tokenizer, task.answer_format, options["max_answer_tokens"], options["no_marker"]), \
      per_step, per_row


@model_rewards.register_model_reward("likelihood", level="sequence", roles=("policy",), prepare=prepare,
                                     layout=layout)
def likelihood(rollout, roles, *, kind: str = "logprob", no_marker: str = "zero", max_answer_tokens: int = 16,
               answer_column: str = "answer", append_eos: bool = True):
  """The policy's likelihood of the reference answer after its chain of thought (module docstring).

  Reads the policy's teacher-forced log-probs of the spliced rollout (`rollout["policy_logp"]`
  when the engine already computed them with the same parameters, else one pass here).
  """
  if kind not in KINDS:
    raise ValueError(f"rewards.options.likelihood.kind={kind!r} is not one of {KINDS}")
  if no_marker not in NO_MARKER:
    raise ValueError(f"rewards.options.likelihood.no_marker={no_marker!r} is not one of {NO_MARKER}")
  del max_answer_tokens, answer_column, append_eos  # used by `prepare`
  logp = rollout.get("policy_logp")
  if logp is None:
    logp = roles["policy"].outputs(rollout)
  answer_mask = rollout["answer_mask"]
  reward = logprob_rewards.answer_reward(logp, answer_mask, kind="avg_prob" if kind == "rlpr" else kind)
  if kind == "rlpr":
    baseline = rollout.replace(actions=rollout["noreason_ids"], mask=rollout["noreason_token_mask"]).without(
        "token_mask")
    base_logp = roles["policy"].outputs(baseline)
    reward = logprob_rewards.rlpr_debiased(
        reward, logprob_rewards.answer_reward(base_logp, rollout["noreason_answer_mask"], kind="avg_prob"))
  scored = jnp.any(answer_mask > 0, axis=-1)
  if kind in _PROBABILITY_KINDS:
    floor = jnp.zeros((), reward.dtype)
  else:
    floor = jnp.where(jnp.any(scored), jnp.min(jnp.where(scored, reward, jnp.inf)), 0.0)
  return jnp.where(scored, reward, jax.lax.stop_gradient(floor))
