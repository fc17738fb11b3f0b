"""What a task gives the engine: a tokenizer, train and held-out examples, warm-up targets.

Each example is a dict with at least `prompt`; its other fields (`answer`, `solution`, ...)
reach the reward functions as keyword columns, as in TRL. The task sources
(`arithmetic`, `reasoning_gym_source`, `math_files`) build a `Task`; `tasks` selects one
by `config.task.name`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
  """Where a completion's final answer sits, for rewards that score a reference answer in its
  place (`rewards.likelihood`): the chain of thought ends right after `marker`, and the
  answer is written as `prefix + answer + suffix` (then the end-of-sequence token)."""
  marker: str
  prefix: str = ""
  suffix: str = ""


def solutions(examples: list[dict], step: int) -> list[str]:
  """The default warm-up targets: each example's `solution` field."""
  del step
  return [e["solution"] for e in examples]


@dataclasses.dataclass
class Task:
  tokenizer: Any  # a transformers tokenizer
  train: list[dict]
  eval: list[dict]
  # sft_targets(examples, step) -> the warm-up targets of a batch (deterministic in step).
  sft_targets: Callable[[list[dict], int], list[str]] = solutions
  # Where the final answer sits in a completion; None when the task has no marker.
  answer_format: AnswerFormat | None = None
