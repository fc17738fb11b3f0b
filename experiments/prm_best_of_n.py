"""Evaluate an implicit PRM run: Best-of-N reranking and step-error localisation on held-out problems.

    python -m experiments.prm_best_of_n --config=configs/implicit_prm.py:chain_sums \\
        --workdir=/tmp/implicit_prm --num=128 --samples=64 [--results=FILE.jsonl]

Reads the newest checkpoint of the run in `--workdir` (its policy, reference and `prm` roles;
the config must be the run's: one whose model, roles, stages or task differ from the workdir's
`config.json` is a one-line error naming the keys, before anything is restored) and, on the
task's first `--num` held-out problems:

1. **Best-of-N**: samples `--samples` (M) solutions per problem from the policy (correct: a score
   of at least 0.5 from the verifier, `config.rewards.eval_name`), scores each step
   with the PRM (`jaxrl_reward.process_rewards`: step reward = beta x the sum of the PRM's
   log-ratio to the reference over the step's tokens) and each solution by an aggregation of its
   step rewards (`--aggregations`, min first: the implicit PRM paper's default), and reports the
   exact expected accuracy of picking the best of N random draws for N in `--ns`
   (`jaxrl_reward.prm_eval.best_of_n`), beside majority vote over the final answers, the
   policy's own mean log-prob per token as the scorer, random choice (pass@1) and the oracle
   (pass@N). A run whose `config.reward_model.role` is an outcome reward model (a value role)
   is scored by its one score per solution ("best_of_n/outcome") and has no localisation.
2. **Step-error localisation** (ProcessBench's metric), for a task that writes worked and flawed
   solutions (`Task.solution_pair`: chain sums, reasoning-gym chains of + and -; otherwise
   "localisation" is null): each problem's worked solution and a flawed one whose first wrong step
   is drawn at random are scored teacher-forced; the prediction is the first step whose reward
   is below a threshold, chosen on the first half of the problems and applied to the second; F1
   is the harmonic mean of the accuracies on erroneous and on correct solutions.

3. **Diagnostics** (issue 23), for every scorer (each aggregation, "policy_likelihood" and the
   untrained role, "untrained/<aggregation>": the scorer at its initial parameters, a baseline that
   shows what training added): "score_length_corr" and "score_steps_corr" (Pearson correlation of
   the score with completion length in tokens and with its number of steps: a learned length
   penalty shows as a strongly negative one), "best_of_n_well_formed/<scorer>" (Best-of-N among
   the well-formed samples only, `process_rewards.well_formed`: the final answer is written and
   the number of steps is the problem's; "well_formed" holds their fraction and the baselines on
   them) and "pair_accuracy" {"trained", "untrained"} on one held-out (worked, flawed) pair per
   problem, the positive control's metric (`configs/implicit_prm.py:control`).

One JSON line goes to stdout (and is appended to `--results`). Single process. The work is
`jaxrl_reward.process_rewards.evaluate`.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxrl_reward import process_rewards

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The implicit-PRM run.", required=True)
_NUM = flags.DEFINE_integer("num", 128, "Held-out problems.")
_SAMPLES = flags.DEFINE_integer("samples", 64, "Solutions sampled per problem (M).")
_NS = flags.DEFINE_list("ns", ["1", "4", "16", "64"], "N of Best-of-N (each <= M).")
_AGGREGATIONS = flags.DEFINE_list("aggregations", ["min", "sum", "mean", "last"], "Step-score aggregations.")
_PROBLEMS_PER_BATCH = flags.DEFINE_integer("problems_per_batch", 4, "Problems per sampler call.")
_RESULTS = flags.DEFINE_string("results", "", "A JSONL file to append the result line to.")


def main(argv):
  del argv
  result = process_rewards.evaluate(_CONFIG.value, pathlib.Path(_WORKDIR.value), num=_NUM.value,
                                    samples=_SAMPLES.value, ns=_NS.value, aggregations=_AGGREGATIONS.value,
                                    problems_per_batch=_PROBLEMS_PER_BATCH.value)
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
