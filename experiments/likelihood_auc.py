"""Do likelihood rewards rank correct answers above incorrect ones? ROC-AUC against the verifier.

On a fixed set of policy samples (`--samples` completions at the rollout temperature for each
of the first `--num` held-out problems), each likelihood reward kind (`rewards.likelihood`:
logprob, avg_logprob, prob, avg_prob, rlpr) scores every completion's chain of thought, and
the verifier (`config.rewards.eval_name`) says which completions are correct. The AUC is
the probability that a correct completion gets a higher reward than an incorrect one (ties
count one half; Mann-Whitney U / (n_correct n_incorrect)), as RLPR reports; 0.5 is chance.

    python -m experiments.train --config=configs/likelihood_rewards.py:verifier --workdir=/tmp/verifier
    python -m experiments.likelihood_auc --config=configs/likelihood_rewards.py:verifier --workdir=/tmp/verifier

`--workdir` restores the run's newest checkpoint (the state of whichever stage it ended in);
without it the config's initial parameters are scored. Prints one JSON line and writes it to
`<workdir>/likelihood_auc.json` (and appends it to `--results`). One process only.
"""
from __future__ import annotations

import json

import jax
import numpy as np
import scipy.stats
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxrl_reward import config_cli
from jaxrl_reward import evaluation
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import stages
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import likelihood
from jaxrl_reward.rewards import model_rewards
from jaxrl_reward.rewards import scoring

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                          lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "A run directory whose checkpoint is scored.")
_NUM = flags.DEFINE_integer("num", 128, "Held-out problems.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "Completions per problem.")
_RESULTS = flags.DEFINE_string("results", "", "Also append the line (with the task and seed) to this JSONL file.")
flags.mark_flags_as_required(["config"])


def auc(scores: np.ndarray, correct: np.ndarray) -> float:
  """P(score of a correct row > score of an incorrect one), ties one half; NaN without both kinds."""
  pos, neg = scores[correct], scores[~correct]
  if not len(pos) or not len(neg):
    return float("nan")
  u = scipy.stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
  return float(u / (len(pos) * len(neg)))


def score_samples(experiment, params, examples: list[dict], *, samples: int, key, max_answer_tokens: int,
                  kinds=likelihood.KINDS) -> dict[str, np.ndarray]:
  """Per completion: `correct` (the verifier's score is 1), `has_marker`, and each kind's reward."""
  context = experiment.context
  policy = context.roles.policy
  batch = max(samples, context.config.eval.batch_size // samples * samples)
  options = dict(kind="rlpr", no_marker="zero", max_answer_tokens=max_answer_tokens, answer_column="answer",
                 append_eos=True)
  bound = {"policy": model_rewards.BoundRole(params, policy)}
  reward = {k: jax.jit(lambda r, k=k: likelihood.likelihood(r, bound, kind=k)) for k in kinds}
  out: dict[str, list] = {"correct": [], "has_marker": [], **{k: [] for k in kinds}}
  per_batch = batch // samples
  for start in range(0, len(examples), per_batch):
    chunk = examples[start:start + per_batch]
    conditions, local = stages.prompt_groups(context, chunk, samples)
    rollout = policy.sample(params, conditions, jax.random.fold_in(key, start))
    completions = policy.decode(rollout)
    columns = scoring.columns_of(local)
    verdict = host_rewards.compute_rewards([context.config.rewards.eval_name], [e["prompt"] for e in local],
                                           completions, columns)[:, 0]
    spliced, _ = likelihood.prepare(rollout, policy=policy, task=context.task, columns=columns, options=options)
    out["correct"].append(np.nan_to_num(verdict, nan=0.0) == 1.0)
    out["has_marker"].append(np.asarray(spliced["has_marker"]))
    for k in kinds:
      out[k].append(np.asarray(reward[k](spliced)))
  return {k: np.concatenate(v) for k, v in out.items()}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config.lock()
  experiment = experiment_lib.Experiment(config)
  params, step = experiment.policy_params(_WORKDIR.value)
  examples = experiment.context.task.eval[:_NUM.value]
  width = evaluation.answer_splice_options(experiment.context, examples)["max_answer_tokens"]
  scored = score_samples(experiment, params, examples, samples=_SAMPLES.value, key=jax.random.PRNGKey(config.seed),
                         max_answer_tokens=width)
  correct = scored["correct"]
  result = {"task": config.task.name, "seed": config.seed, "workdir": _WORKDIR.value or None, "step": step,
            "problems": len(examples), "samples": int(correct.size),
            "frac_correct": round(float(correct.mean()), 4),
            "frac_marker": round(float(scored["has_marker"].mean()), 4),
            **{f"auc/{k}": round(auc(scored[k], correct), 4) for k in likelihood.KINDS}}
  print(json.dumps(result))
  if _WORKDIR.value:
    with open(f"{_WORKDIR.value}/likelihood_auc.json", "w") as f:
      json.dump(result, f)
  if _RESULTS.value:
    with open(_RESULTS.value, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  config_cli.check_argv()
  app.run(main)
