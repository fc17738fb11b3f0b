"""Tasks selectable by `config.task.name` (see `task.Task` for what a task holds).

The sources import only `task`; this registry imports the sources, so nothing in
`jaxrl_reward.data` imports in a cycle.
"""
from __future__ import annotations

from typing import Any, Callable

from jaxrl_reward.data import arithmetic, arithmetic_long, chain_sums, image_task
from jaxrl_reward.data import tokenizer as tokenizer_lib
from jaxrl_reward.data.task import AnswerFormat, Task

ARITHMETIC_ANSWER = AnswerFormat(marker=arithmetic.ANSWER_MARKER, prefix=" ")


def _arithmetic(task_config, seed: int) -> Task:
  task = arithmetic.ArithmeticTask(
      seed=seed, num_train=task_config.num_train, num_eval=task_config.num_eval,
      max_value=task_config.max_value)
  train, held_out = task.splits()

  def sft_targets(examples: list[dict], step: int) -> list[str]:
    return arithmetic.noisy_solutions(examples, noise=task_config.answer_noise, seed=seed, step=step,
                                      shift=task_config.answer_shift)

  return Task(tokenizer_lib.build_arithmetic_tokenizer(), train, held_out, sft_targets,
              answer_format=ARITHMETIC_ANSWER)


def _reasoning_gym(task_config, seed: int) -> Task:
  from jaxrl_reward.data import reasoning_gym_source  # imports reasoning_gym lazily
  return reasoning_gym_source.build_reasoning_gym_task(task_config, seed)


def _math_file(task_config, seed: int) -> Task:
  from jaxrl_reward.data import math_files
  return math_files.build_math_file_task(task_config, seed)


TASKS: dict[str, Callable[[Any, int], Task]] = {
    "arithmetic": _arithmetic,
    "arithmetic_long": arithmetic_long.build_task,
    "chain_sums": chain_sums.build_task,
    "reasoning_gym": _reasoning_gym,
    "math_file": _math_file,
    "digits": image_task.build_task,
    "mnist_subset": image_task.build_task,
}


def build_task(task_config, *, seed: int) -> Task:
  """Builds the task named `task_config.name` (one of `TASKS`)."""
  if task_config.name not in TASKS:
    raise KeyError(f"unknown task.name={task_config.name!r}; known tasks: {sorted(TASKS)}")
  return TASKS[task_config.name](task_config, seed)
