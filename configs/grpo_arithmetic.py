"""GRPO on synthetic arithmetic: the project's default experiment.

A randomly initialised `mini` transformer (hidden 128, 3 layers, 0.75M parameters) is
first warmed up by supervised training on flawed worked solutions (60% end with an answer
that is off by +1 while their column work is right), then trained with GRPO against the
arithmetic verifier. Held-out accuracy (greedy and sampled) is measured after each stage:
the warm-up teaches the systematic slip, GRPO unlearns it.

    python -m experiments.train --config=configs/grpo_arithmetic.py --workdir=/tmp/grpo_arithmetic

Variants (`--config=configs/grpo_arithmetic.py:VARIANT`):
  (none)  the full default run, about 3.5 minutes on 2 CPU cores.
  tiny    a few steps of each stage, for tests and smoke runs (under a minute).
"""
from ml_collections import config_dict

from configs import grpo_base


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  c = grpo_base.grpo_config()

  c.task = config_dict.ConfigDict()
  c.task.name = "arithmetic"
  c.task.num_train = 8000
  c.task.num_eval = 256
  c.task.max_value = 99
  c.task.max_prompt_length = 8
  c.task.max_completion_length = 36
  # Fraction of warm-up solutions whose final answer is wrong (the column work stays right):
  # flawed demonstrations that the verifier-driven GRPO stage learns to see through.
  c.task.answer_noise = 0.6
  # 0: a corrupted answer is off by a random amount; k != 0: always off by k. With a
  # systematic slip in most demonstrations, the warmed-up policy's likeliest answer is wrong.
  c.task.answer_shift = 1
  c.optim.lr = 3e-5

  if variant in (None, ""):
    pass
  elif variant == "tiny":
    c.task.num_train = 512
    c.task.num_eval = 32
    c.warmup.steps = 4
    c.warmup.batch_size = 16
    c.rollout.prompts_per_step = 4  # 16 rows: 8 per mini-batch, one per device on 8 devices
    c.rollout.group_size = 4
    c.train.steps = 4
    c.train.num_iterations = 2  # exercises clipping against the rollout's log-probs
    c.train.num_minibatches = 2
    c.rewards.names = ("arithmetic_correctness", "format")
    c.rewards.weights = (1.0, 0.1)
    c.eval.every = 2
    c.eval.batch_size = 32
    c.checkpoint_every = 2
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/grpo_arithmetic.py; known: tiny")
  return c
