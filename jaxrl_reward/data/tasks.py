"""Tasks selectable by `config.task.name`: a tokenizer plus train and held-out examples.

Each example is a dict with at least `prompt`; its other fields (`answer`, `solution`, ...)
reach the reward functions as keyword columns, as in TRL.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxrl_reward.data import arithmetic
from jaxrl_reward.data import tokenizer as tokenizer_lib


def _solutions(examples: list[dict], step: int) -> list[str]:
  del step
  return [e["solution"] for e in examples]


@dataclasses.dataclass
class Task:
  tokenizer: Any  # a transformers tokenizer
  train: list[dict]
  eval: list[dict]
  # sft_targets(examples, step) -> the warm-up targets of a batch (deterministic in step).
  sft_targets: Callable[[list[dict], int], list[str]] = _solutions


def _arithmetic(task_config, seed: int) -> Task:
  task = arithmetic.ArithmeticTask(
      seed=seed, num_train=task_config.num_train, num_eval=task_config.num_eval,
      max_value=task_config.max_value)
  train, held_out = task.splits()

  def sft_targets(examples: list[dict], step: int) -> list[str]:
    return arithmetic.noisy_solutions(examples, noise=task_config.answer_noise, seed=seed, step=step,
                                      shift=task_config.answer_shift)

  return Task(tokenizer_lib.build_arithmetic_tokenizer(), train, held_out, sft_targets)


def _reasoning_gym(task_config, seed: int) -> Task:
  from jaxrl_reward.data import reasoning_gym_source  # imports reasoning_gym lazily
  return reasoning_gym_source.build_reasoning_gym_task(task_config, seed)


def _math_file(task_config, seed: int) -> Task:
  from jaxrl_reward.data import math_files
  return math_files.build_math_file_task(task_config, seed)


TASKS: dict[str, Callable[[Any, int], Task]] = {
    "arithmetic": _arithmetic,
    "reasoning_gym": _reasoning_gym,
    "math_file": _math_file,
}


def build_task(task_config, *, seed: int) -> Task:
  """Builds the task named `task_config.name` (one of `TASKS`)."""
  if task_config.name not in TASKS:
    raise KeyError(f"unknown task.name={task_config.name!r}; known tasks: {sorted(TASKS)}")
  return TASKS[task_config.name](task_config, seed)
