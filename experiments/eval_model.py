"""Greedy held-out accuracy of a config's policy: the initial model, or a run's checkpoint.

    python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu --num=100
    python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu --num=100 \\
        --workdir=runs/smollm2_cpu        # the parameters of the run's latest checkpoint

The problems are the first `--num` of the config's held-out split (`task.num_eval` is set
to `--num`; the split depends on the seed, the dataset and `task.num_train`, so with the
variant a run used and `--num` equal to its `task.num_eval` these are the run's eval
problems). Decoding is greedy with the trainer's sampler, up to
`task.max_completion_length` tokens; scores are the config's `rewards.eval_name` reward.

Prints one JSON line: `accuracy` (mean score, the trainer's `eval/accuracy_greedy`),
`exact` (fraction scoring 1), `answer_tags` (fraction with an <answer>...</answer> pair),
the mean completion length, and the compile and run times (s); then `--show` examples.
"""
from __future__ import annotations

import json
import pathlib
import re
import tempfile
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:variant]).",
                                          lock_config=False)
_NUM = flags.DEFINE_integer("num", 100, "Held-out problems to evaluate.")
_WORKDIR = flags.DEFINE_string("workdir", "", "A run directory: evaluate its latest checkpoint "
                               "(default: the config's initial parameters).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Rows per sampler call (0: config.eval.batch_size).")
_SHOW = flags.DEFINE_integer("show", 5, "Completions to print.")
flags.mark_flags_as_required(["config"])

_TAGS = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def load_params(trainer, workdir: str):
  """The policy parameters of `workdir`'s latest checkpoint, and its step."""
  from jaxrl_reward import checkpoint as checkpoint_lib  # noqa: PLC0415

  with checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints") as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
    state, _ = ckpt.restore(trainer._abstract_state(step), step=step)  # noqa: SLF001
  return state["params"], step


def greedy_scores(trainer, params, examples: list[dict], batch_size: int):
  """(scores [n], completions, lengths [n], compile_s, run_s) of greedy decoding on `examples`.

  `lengths` counts each completion's tokens up to and including its EOS.
  """
  from jaxrl_reward.data import batching  # noqa: PLC0415
  from jaxrl_reward.trainer import _columns  # noqa: PLC0415

  cfg = trainer.config
  n = len(examples)
  padded = examples + [examples[-1]] * (-n % batch_size)
  key = jax.random.PRNGKey(0)
  scores, completions, lengths = [], [], []
  compile_s = run_s = 0.0
  for start in range(0, len(padded), batch_size):
    chunk = padded[start:start + batch_size]
    prompts = [e["prompt"] for e in chunk]
    ids, mask = batching.encode_prompts(trainer.tokenizer, prompts, max_length=cfg.task.max_prompt_length,
                                        padding_side="left")
    if start == 0:  # the first call compiles: time a second call on the same batch
      t0 = time.perf_counter()
      jax.block_until_ready(trainer.greedy_sampler(params, ids, mask, key))
      compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.device_get(trainer.greedy_sampler(params, ids, mask, key))
    run_s += time.perf_counter() - t0
    if start == 0:
      compile_s -= run_s
    texts = batching.decode_completions(trainer.tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
    r = trainer.eval_reward(prompts, texts, **_columns(chunk))
    scores.extend(0.0 if v is None else float(v) for v in r)
    completions.extend(texts)
    lengths.extend(np.asarray(out.mask).sum(-1).tolist())
  return np.asarray(scores[:n]), completions[:n], np.asarray(lengths[:n]), compile_s, run_s


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxrl_reward import trainer as trainer_lib  # noqa: PLC0415  (after flag parsing)

  config = _CONFIG.value
  config.task.num_eval = _NUM.value
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants a workdir; nothing is written
    trainer = trainer_lib.Trainer(config, scratch)
  if _WORKDIR.value:
    params, step = load_params(trainer, _WORKDIR.value)
  else:
    params, step = trainer.c.init_params(), 0
  setup_s = time.perf_counter() - t0
  examples = trainer.c.task.eval
  scores, completions, lengths, compile_s, run_s = greedy_scores(
      trainer, params, examples, _BATCH.value or config.eval.batch_size)
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
  app.run(main)
