"""Greedy held-out accuracy of a config's policy: the initial model, or a run's checkpoint.

    python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu --num=100
    python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu --num=100 \\
        --workdir=runs/smollm2_cpu        # the parameters of the run's latest checkpoint

The problems are the first `--num` of the config's held-out split (`task.num_eval` is set
to `--num`; the split depends on the seed, the dataset and `task.num_train`, so with the
variant a run used and `--num` equal to its `task.num_eval` these are the run's eval
problems). Decoding is greedy with the policy's sampler (`jaxrl_reward.evaluation`, as the
training run's evaluation), up to `task.max_completion_length` tokens; scores are the
config's `rewards.eval_name` reward.

Prints one JSON line: `accuracy` (mean score, the trainer's `eval/accuracy_greedy`),
`exact` (fraction scoring 1), `answer_tags` (fraction with an <answer>...</answer> pair),
the mean completion length, and the compile and run times (s); then `--show` examples.
"""
from __future__ import annotations

import json
import re
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from jaxrl_reward import config_cli
from jaxrl_reward import evaluation
from jaxrl_reward import experiment as experiment_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                          lock_config=False, accept_new_attributes=True)
_NUM = flags.DEFINE_integer("num", 100, "Held-out problems to evaluate.")
_WORKDIR = flags.DEFINE_string("workdir", "", "A run directory: evaluate its latest checkpoint "
                               "(default: the config's initial parameters).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Rows per sampler call (0: config.eval.batch_size).")
_SHOW = flags.DEFINE_integer("show", 5, "Completions to print.")
flags.mark_flags_as_required(["config"])

_TAGS = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def greedy_scores(experiment, params, examples: list[dict], batch_size: int):
  """(scores [n], completions, lengths [n], compile_s, run_s) of greedy decoding on `examples`.

  `lengths` counts each completion's tokens up to and including its EOS. Compile time is
  the first batch's time minus a second call's on the same batch.
  """
  key = jax.random.PRNGKey(0)
  first = examples[:batch_size]
  t0 = time.perf_counter()
  evaluation.decode_and_score(experiment.context, params, first, key, greedy=True, batch_size=batch_size)
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  evaluation.decode_and_score(experiment.context, params, first, key, greedy=True, batch_size=batch_size)
  compile_s = first_s - (time.perf_counter() - t0)
  t0 = time.perf_counter()
  result = evaluation.decode_and_score(experiment.context, params, examples, key, greedy=True,
                                       batch_size=batch_size)
  return result.scores, result.completions, result.lengths, compile_s, time.perf_counter() - t0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  config.task.num_eval = _NUM.value
  config.lock()
  t0 = time.perf_counter()
  experiment = experiment_lib.Experiment(config)
  params, step = experiment.policy_params(_WORKDIR.value)
  setup_s = time.perf_counter() - t0
  examples = experiment.context.task.eval
  scores, completions, lengths, compile_s, run_s = greedy_scores(
      experiment, params, examples, _BATCH.value or config.eval.batch_size)
  result = {
      "workdir": _WORKDIR.value or None, "step": step, "num": len(examples),
      "dataset": config.task.get("dataset", config.task.name),
      "accuracy": round(float(scores.mean()), 4),
      "exact": round(float((scores == 1.0).mean()), 4),
      "answer_tags": round(float(np.mean([bool(_TAGS.search(c)) for c in completions])), 4),
      "mean_completion_tokens": round(float(lengths.mean()), 2),
      "setup_s": round(setup_s, 1), "compile_s": round(compile_s, 1), "run_s": round(run_s, 1),
      "backend": jax.default_backend(),
  }
  print(json.dumps(result))
  for example, completion, score in list(zip(examples, completions, scores))[:_SHOW.value]:
    question = example.get("entry", {}).get("question", example["prompt"][-60:])
    print(f"  {question!r} -> {completion!r} (answer {example.get('answer')!r}, score {score:.2f})")


if __name__ == "__main__":
  config_cli.check_argv()
  app.run(main)
