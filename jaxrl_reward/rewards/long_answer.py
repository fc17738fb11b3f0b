"""Verifier rewards for the long free-form answer task (`data.arithmetic_long`).

- "long_answer_exact": the text after the last "####" must equal the reference phrasing
  (`answer`). This is the exact-match verifier that fails on free-form answers: a correct
  completion in another valid phrasing gets 0.
- "long_answer_result": the last integer after the last "####" must equal `result`; the
  oracle for whether the completion got the number right, whatever its phrasing.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from jaxrl_reward.rewards.base import completion_text, register_reward

ANSWER_MARKER = "####"
_INTEGER = re.compile(r"[-+]?\d+")


def final_text(completion: str) -> str | None:
  """The stripped text after the last "####", or None when there is no marker."""
  if ANSWER_MARKER not in completion:
    return None
  return completion.rsplit(ANSWER_MARKER, 1)[1].strip()


def _missing(expected: Any) -> bool:
  return expected is None or str(expected).strip() == ""


@register_reward("long_answer_exact")
def long_answer_exact(
    prompts: Sequence[str],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    result: Sequence[Any] | None = None,
    **kwargs,
) -> list[float | None]:
  """1.0 iff the completion's stripped text after the last "####" equals `answer`, else 0.0.

  Args:
    prompts: B prompts (unused).
    completions: B completions (strings or TRL conversational messages), EOS removed.
    answer: the dataset's `answer` column, B reference phrasings.
    result: unused (accepted so both rewards take the same columns).

  Returns:
    B rewards in {0.0, 1.0}; None where the reference is None or "" (not applicable).

  Raises:
    ValueError when the `answer` column is missing: a configuration error, not a zero reward.
  """
  del prompts, result, kwargs
  return _score_each("long_answer_exact", "answer", answer, completions,
                     lambda text, expected: text == str(expected))


@register_reward("long_answer_result")
def long_answer_result(
    prompts: Sequence[str],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    result: Sequence[Any] | None = None,
    **kwargs,
) -> list[float | None]:
  """1.0 iff the last integer after the last "####" equals `int(result)`, else 0.0.

  0.0 when the completion has no "####" or no integer after it.

  Args:
    prompts: B prompts (unused).
    completions: B completions (strings or TRL conversational messages), EOS removed.
    answer: unused (the phrasing does not matter here).
    result: the dataset's `result` column, B integer answers (str or int).

  Returns:
    B rewards in {0.0, 1.0}; None where the result is None or "" (not applicable).

  Raises:
    ValueError when the `result` column is missing: a configuration error, not a zero reward.
  """
  del prompts, answer, kwargs

  def same_number(text, expected):
    numbers = _INTEGER.findall(text) if text is not None else []
    return bool(numbers) and int(numbers[-1]) == int(str(expected).strip())
  return _score_each("long_answer_result", "result", result, completions, same_number)


def _score_each(name: str, column: str, values, completions, match) -> list[float | None]:
  """1.0 / 0.0 per completion from `match(final text, expected)`; None where the expected value is
  missing; an error naming the reward when the column is absent."""
  if values is None:
    raise ValueError(f"{name} needs the dataset column {column!r} (got {column}=None)")
  return [None if _missing(expected) else (1.0 if match(final_text(completion_text(c)), expected) else 0.0)
          for c, expected in zip(completions, values, strict=True)]
