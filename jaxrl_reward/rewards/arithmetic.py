"""Exact-answer reward for arithmetic (and GSM8K-style `#### answer`) completions."""
from __future__ import annotations

import re
from typing import Any, Sequence

from jaxrl_reward.rewards.base import completion_text, register_reward

ANSWER_MARKER = "####"
_INTEGER = re.compile(r"[-+]?\d+")
_LEADING_INTEGER = re.compile(r"\s*([-+]?\d+)")


def extract_final_answer(completion: str) -> str | None:
  """The final answer of a completion, as written, or None when there is none.

  The integer right after the last "####" (spaces and thousands commas skipped, e.g.
  `"... #### 1,234"` -> `"1234"`); without "####", the last integer in the text. None
  when "####" is followed by no integer, or when there is no integer at all.
  """
  if ANSWER_MARKER in completion:
    tail = completion.rsplit(ANSWER_MARKER, 1)[1].replace(",", "")
    match = _LEADING_INTEGER.match(tail)
    return match.group(1) if match else None
  matches = _INTEGER.findall(completion.replace(",", ""))
  return matches[-1] if matches else None


def _same_answer(predicted: str | None, expected: Any) -> bool:
  if predicted is None:
    return False
  expected = str(expected).strip().replace(",", "")
  try:
    return int(predicted) == int(expected)
  except ValueError:
    return predicted.strip() == expected


@register_reward("arithmetic_correctness")
def arithmetic_correctness(
    prompts: Sequence[str],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    **kwargs,
) -> list[float | None]:
  """1.0 if the completion's final answer equals `answer`, else 0.0.

  The final answer is `extract_final_answer(completion)`; it is compared as an integer
  (`"085"` == `"85"` == `85`), or as a stripped string when `answer` is not an integer.

  Args:
    prompts: B prompts (unused).
    completions: B completions (strings or TRL conversational messages).
    answer: the dataset's `answer` column, B reference answers (str or int).

  Returns:
    B rewards in {0.0, 1.0}; None for an example whose answer is None or "" (the reward
    does not apply to it, e.g. in a mixed dataset).

  Raises:
    ValueError when the `answer` column is missing: a configuration error, not a zero reward.
  """
  del prompts, kwargs
  if answer is None:
    raise ValueError("arithmetic_correctness needs the dataset column 'answer' (got answer=None)")
  rewards: list[float | None] = []
  for completion, expected in zip(completions, answer, strict=True):
    if expected is None or str(expected).strip() == "":
      rewards.append(None)
      continue
    rewards.append(1.0 if _same_answer(extract_final_answer(completion_text(completion)), expected) else 0.0)
  return rewards
