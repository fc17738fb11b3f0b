"""What a task gives the engine: a tokenizer, train and held-out examples, warm-up targets.

Each example is a dict with at least `prompt`; its other fields (`answer`, `solution`, ...)
reach the reward functions as keyword columns, as in TRL. The task sources
(`arithmetic`, `reasoning_gym_source`, `math_files`) build a `Task`; `tasks` selects one
by `config.task.name`.

Process rewards need a task's steps: `Task.step_ends` gives, for a completion's text, the
character offset of the last character of each step (where a process reward model's step
score is read), and `Task.solution_pair` gives, for an example, a worked solution and a flawed
one with a known first wrong step (step-error localisation, for evaluation only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np


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


def final_answer(answer_format: AnswerFormat, text: str) -> str | None:
  """The answer written after the last `marker` of `text` (up to `suffix`, stripped), or None.

  `final_answer(AnswerFormat("<answer>", suffix="</answer>"), "1 + 2 = 3\\n<answer> 3 </answer>")`
  is `"3"`; a text without the marker, or with nothing after it, has no answer.
  """
  if answer_format.marker not in text:
    return None
  tail = text.rsplit(answer_format.marker, 1)[1]
  if answer_format.suffix and answer_format.suffix in tail:
    tail = tail.split(answer_format.suffix, 1)[0]
  return tail.strip() or None


def line_step_ends(marker: str) -> Callable[[str], list[int]]:
  """Steps as lines: text -> the offset of the last non-space character of each non-blank line
  before the first `marker` (the answer; text after it holds no step).

  `line_step_ends("<answer>")("1 + 2 = 3\\n3 + 4 = 7 \\n<answer>7</answer>") == [8, 18]`.
  """
  if not marker:
    raise ValueError("marker must be a non-empty string (where the steps end)")

  def step_ends(text: str) -> list[int]:
    body, ends, start = text.split(marker, 1)[0], [], 0
    for line in body.split("\n"):
      stripped = line.rstrip()
      if stripped.strip():
        ends.append(start + len(stripped) - 1)
      start += len(line) + 1
    return ends

  return step_ends


# (example, rng) -> (worked solution, flawed solution, index of the flawed one's first wrong step)
SolutionPair = Callable[[dict, np.random.Generator], tuple[str, str, int]]


@dataclasses.dataclass
class Task:
  tokenizer: Any  # a transformers tokenizer
  train: list[dict]
  eval: list[dict]
  # sft_targets(examples, step) -> the warm-up targets of a batch (deterministic in step).
  sft_targets: Callable[[list[dict], int], list[str]] = solutions
  # Where the final answer sits in a completion; None when the task has no marker.
  answer_format: AnswerFormat | None = None
  # text -> character offsets of the last character of each step; None: the task has no steps.
  step_ends: Callable[[str], list[int]] | None = None
  # Worked and flawed solutions of an example, with the first wrong step; None: no step labels.
  solution_pair: SolutionPair | None = None
