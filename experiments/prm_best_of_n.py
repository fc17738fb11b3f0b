"""Evaluate an implicit PRM run: Best-of-N reranking and step-error localisation on held-out problems.

    python -m experiments.prm_best_of_n --config=configs/implicit_prm.py:chain_sums \\
        --workdir=/tmp/implicit_prm --num=128 --samples=64 [--results=FILE.jsonl]

Reads the newest checkpoint of the run in `--workdir` (its policy, reference and `prm` roles;
the config must be the run's) and, on the task's first `--num` held-out problems:

1. **Best-of-N**: samples `--samples` (M) solutions per problem from the policy, scores each step
   with the PRM (`jaxrl_reward.process_rewards`: step reward = beta x the sum of the PRM's
   log-ratio to the reference over the step's tokens) and each solution by an aggregation of its
   step rewards (`--aggregations`, min first: the implicit PRM paper's default), and reports the
   exact expected accuracy of picking the best of N random draws for N in `--ns`
   (`jaxrl_reward.prm_eval.best_of_n`), beside majority vote over the final answers, random
   choice (pass@1) and the oracle (pass@N).
2. **Step-error localisation** (ProcessBench's metric): each problem's worked solution and a
   flawed one whose first wrong step is drawn at random (`chain_sums.flawed_solution`) are scored
   teacher-forced; the prediction is the first step whose reward is below a threshold, chosen on
   the first half of the problems and applied to the second; F1 is the harmonic mean of the
   accuracies on erroneous and on correct solutions.

One JSON line goes to stdout (and is appended to `--results`). Single process.
"""
from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import prm_eval
from jaxrl_reward import process_rewards
from jaxrl_reward import stages
from jaxrl_reward.data import chain_sums
from jaxrl_reward.rewards import arithmetic
from jaxrl_reward.rollout import Rollout

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The implicit-PRM run.", required=True)
_NUM = flags.DEFINE_integer("num", 128, "Held-out problems.")
_SAMPLES = flags.DEFINE_integer("samples", 64, "Solutions sampled per problem (M).")
_NS = flags.DEFINE_list("ns", ["1", "4", "16", "64"], "N of Best-of-N (each <= M).")
_AGGREGATIONS = flags.DEFINE_list("aggregations", ["min", "sum", "mean", "last"], "Step-score aggregations.")
_PROBLEMS_PER_BATCH = flags.DEFINE_integer("problems_per_batch", 4, "Problems per sampler call.")
_RESULTS = flags.DEFINE_string("results", "", "A JSONL file to append the result line to.")


def _check(ns, samples, num):
  bad = [n for n in ns if not 1 <= n <= samples]
  if bad:
    raise ValueError(f"--ns {bad} must be in [1, --samples={samples}]: Best-of-N draws N of the M samples")
  if num < 2:
    raise ValueError(f"--num={num} must be >= 2 (localisation chooses its threshold on one half)")


def role_logprobs(context, state, rollout):
  """(PRM log-probs, reference log-probs) `[B, T]` of a rollout's completion tokens."""
  roles = context.roles
  return (roles["prm"].scorer.compute_logprobs(state["prm"]["params"], rollout),
          roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout))


def sample_and_score(context, state, examples, samples: int, key, *, beta: float, problems_per_batch: int):
  """Per problem: step rewards `[M, S]`, steps `[M]`, correctness `[M]` and final answers (lists)."""
  policy, tokenizer = context.roles.policy, context.task.tokenizer
  out = []
  for start in range(0, len(examples), problems_per_batch):
    chunk = examples[start:start + problems_per_batch]
    conditions, local = stages.prompt_groups(context, chunk, samples)
    rollout = policy.sample(state["policy"]["params"], conditions, jax.random.fold_in(key, start))
    texts = policy.decode(rollout)
    prm_logp, ref_logp = role_logprobs(context, state, rollout)
    actions, mask = np.asarray(rollout.actions), np.asarray(rollout.mask)
    ends = process_rewards.step_end_mask(tokenizer, actions, mask, texts, chain_sums.step_end_offsets)
    rewards, step_mask, _ = process_rewards.step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
    rewards, steps = np.asarray(rewards), np.asarray(step_mask).sum(-1)
    correct = np.asarray(arithmetic.arithmetic_correctness([e["prompt"] for e in local], texts,
                                                           answer=[e["answer"] for e in local]), float)
    answers = [_as_int(arithmetic.extract_final_answer(t)) for t in texts]
    for i in range(len(chunk)):
      rows = slice(i * samples, (i + 1) * samples)
      out.append((rewards[rows], steps[rows], correct[rows], answers[rows]))
  return out


def _as_int(answer):
  """An answer as an int (None when there is none), so equal numbers vote together."""
  try:
    return int(answer)
  except (TypeError, ValueError):
    return None


def teacher_forced_step_rewards(context, state, prompts, solutions, *, beta: float):
  """Step rewards `[B, S]` and step counts `[B]` of given solutions (each must have steps)."""
  policy, tokenizer = context.roles.policy, context.task.tokenizer
  t = context.config.task.max_completion_length
  ids, mask = _encode(tokenizer, solutions, t)
  b = len(prompts)
  conditions = policy.conditions(prompts, np.arange(b), b)
  rollout = Rollout(actions=jax.numpy.asarray(ids), mask=jax.numpy.asarray(mask, jax.numpy.float32),
                    old_logp=jax.numpy.zeros(ids.shape, jax.numpy.float32), group_ids=conditions["group_ids"],
                    extras={"prompt_ids": conditions["prompt_ids"], "prompt_mask": conditions["prompt_mask"]})
  prm_logp, ref_logp = role_logprobs(context, state, rollout)
  ends = process_rewards.step_end_mask(tokenizer, ids, mask, solutions, chain_sums.step_end_offsets, require_steps=True)
  rewards, step_mask, _ = process_rewards.step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
  return np.asarray(rewards), np.asarray(step_mask).sum(-1)


def _encode(tokenizer, texts, length: int):
  """Right-padded completion tokens (text then EOS) `[B, length]` and their mask."""
  ids = np.full((len(texts), length), tokenizer.pad_token_id or tokenizer.eos_token_id, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(tokens) > length:
      raise ValueError(f"solution {i} has {len(tokens)} tokens, more than task.max_completion_length={length}")
    ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
  return ids, mask


def localisation(context, state, examples, *, beta: float, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  prompts, solutions, truth = [], [], []
  for e in examples:
    flawed, labels = chain_sums.flawed_solution(e, int(rng.integers(0, e["num_steps"])), rng)
    prompts += [e["prompt"], e["prompt"]]
    solutions += [e["solution"], flawed]
    truth += [-1, chain_sums.first_error(labels)]
  rewards, steps = teacher_forced_step_rewards(context, state, prompts, solutions, beta=beta)
  truth = np.asarray(truth)
  half = 2 * (len(examples) // 2)
  threshold, f1_fit = prm_eval.choose_threshold(rewards[:half], steps[:half], truth[:half])
  pred = prm_eval.predict_first_error(rewards[half:], steps[half:], threshold)
  return {"threshold": float(threshold), "f1_threshold_split": float(f1_fit),
          **{k: float(v) for k, v in prm_eval.localisation_scores(pred, truth[half:]).items()}}


def evaluate(config, workdir, *, num: int, samples: int, ns, aggregations, problems_per_batch: int = 4) -> dict:
  ns = [int(n) for n in ns]
  _check(ns, samples, num)
  e = experiment_lib.Experiment(config)
  state, step = e.restore(workdir)
  if "prm" not in state:
    raise ValueError(f"{workdir}: the checkpoint of step {step} has no 'prm' role (roles: {sorted(state)})")
  context = e.context
  beta = float(dict(config.objective.options).get("beta", 0.05))
  examples = context.task.eval[:num]
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1 << 22)
  scored = sample_and_score(context, state, examples, samples, key, beta=beta, problems_per_batch=problems_per_batch)
  correct = np.stack([c for _, _, c, _ in scored])
  result = {"workdir": str(workdir), "step": step, "objective": config.objective.name, "seed": config.seed,
            "num": len(examples), "samples": samples, "frac_correct": float(correct.mean()),
            "random": prm_eval.random_choice(correct),
            "pass_at_n": {n: prm_eval.pass_at_n(correct, n) for n in ns},
            "majority_vote": {n: prm_eval.majority_vote(np.asarray([a for *_, a in scored], object),
                                                        [_as_int(ex["answer"]) for ex in examples], n) for n in ns}}
  for how in aggregations:
    scores = np.stack([prm_eval.aggregate_steps(r, s, how=how) for r, s, _, _ in scored])
    result[f"best_of_n/{how}"] = {n: prm_eval.best_of_n(scores, correct, n) for n in ns}
  result["localisation"] = localisation(context, state, examples, beta=beta, seed=config.seed)
  return result


def main(argv):
  del argv
  result = evaluate(_CONFIG.value, pathlib.Path(_WORKDIR.value), num=_NUM.value, samples=_SAMPLES.value,
                    ns=_NS.value, aggregations=_AGGREGATIONS.value, problems_per_batch=_PROBLEMS_PER_BATCH.value)
  line = json.dumps(result)
  print(line)
  if _RESULTS.value:
    with open(_RESULTS.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  try:
    app.run(main)
  except (ValueError, FileNotFoundError) as err:
    sys.exit(f"error: {err}")
