"""Format reward: does a completion follow the worked-solution format of the arithmetic task?

The format (see `jaxrl_reward.data.arithmetic`) is a sequence of binary steps, the steps
but the last each followed by ` => R; `, then ` #### ` and an integer at the very end:

    COLUMN  = \\d\\+\\d\\+[01]=1?\\d            addition column, e.g. 7+8+0=15
            | 1?\\d-\\d-[01]=\\d               subtraction column, e.g. 17-8-0=9
    PREFIX  = -?\\(\\d+[+-]\\d+\\)<space>      optional rewrite, e.g. -(85-39)
    STEP    = PREFIX? COLUMN (<space> COLUMN)*
    FORMAT  = ^STEP( => -?\\d+; STEP)* #### -?\\d+\\s*$

so "####" occurs exactly once and is followed only by an integer (and optional trailing
whitespace). The reward checks the shape only, not the arithmetic: correctness is
`arithmetic_correctness`.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from jaxrl_reward.rewards.base import completion_text, register_reward

_COLUMN = r"(?:\d\+\d\+[01]=1?\d|1?\d-\d-[01]=\d)"
_PREFIX = r"(?:-?\(\d+[+-]\d+\) )?"
_STEP = rf"{_PREFIX}{_COLUMN}(?: {_COLUMN})*"
SOLUTION_PATTERN = re.compile(rf"^{_STEP}(?: => -?\d+; {_STEP})* #### -?\d+\s*$")


def matches_format(completion: str) -> bool:
  """True when `completion` matches `SOLUTION_PATTERN` in full."""
  return SOLUTION_PATTERN.fullmatch(completion) is not None


@register_reward("format")
def format_reward(prompts: Sequence[str], completions: Sequence[Any], **kwargs) -> list[float]:
  """1.0 for each completion in the worked-solution format (`SOLUTION_PATTERN`), else 0.0.

  Args:
    prompts: B prompts (unused).
    completions: B completions (strings or TRL conversational messages).

  Returns:
    B rewards in {0.0, 1.0}.
  """
  del prompts, kwargs
  return [1.0 if matches_format(completion_text(c)) else 0.0 for c in completions]
