"""Math answer reward: a completion's final answer, checked for equivalence with `math-verify`.

Extraction (`extract_answer`), first rule that applies:

1. the content of the last `\\boxed{...}` (or `\\fbox{...}`, braces balanced; also the
   brace-less `\\boxed 5`). When the completion has a `\\boxed` whose braces never
   close (a truncated answer), there is no answer: earlier boxes are not used.
2. the text after the last `####`, up to the end of its line (GSM8K), with thousands
   commas, a leading `$` and a trailing `.` removed;
3. the last number in the text (`-3`, `1,234`, `0.5`, `3/4`).

Equivalence (`MathVerifyReward.equivalent`): two plain decimal numbers are compared
exactly in the calling process (as fractions: `"72" == "72.0"`, `"1,000" == "1000"`,
no rounding). Anything else is parsed and compared by `math_verify.parse` /
`math_verify.verify` (sympy; `\\frac{1}{2}` == `0.5`, `2\\sqrt{2}` == `\\sqrt{8}`,
`x=2` == `2`), each answer parsed as `\\boxed{answer}`.

Time limit: math-verify's own timeouts use signals, which work only in the main thread,
and some inputs (`9^{9^{9^{9}}}`) make sympy run for hours. So every math-verify check
runs in a `TimedWorker` child process with a per-check deadline (`timeout_s`, 5 s by
default) and an address-space limit; a check that passes its deadline is killed and
scores `timeout_reward`, 0.0 by default: a completion whose answer cannot be shown
equivalent in time is treated like a wrong one (pass `timeout_reward=None` to leave it
out of the advantages instead). The child is restarted in the background and later checks
go on normally. Results, timeouts included, are cached by (gold, predicted) text, so a
repeated pathological answer costs its deadline once.
"""
from __future__ import annotations

import collections
import fractions
import functools
import re
from typing import Any, Sequence

from jaxrl_reward.rewards.base import completion_text, register_reward
from jaxrl_reward.rewards.timed_worker import TimedWorker

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_LIMIT_MB = 4096
ANSWER_MARKER = "####"

_BOXED = re.compile(r"\\(?:boxed|fbox)")
_BRACELESS = re.compile(r"\s+([^\s$]+)")
_NUMBER = re.compile(r"(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def last_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` / `\\fbox{...}` in `text`, stripped.

  None when there is no box, when the last box's braces are not balanced, or when it is
  empty.
  """
  matches = list(_BOXED.finditer(text))
  if not matches:
    return None
  start = matches[-1].end()
  if start < len(text) and text[start] == "{":
    depth = 0
    for i in range(start, len(text)):
      if text[i] == "{":
        depth += 1
      elif text[i] == "}":
        depth -= 1
        if depth == 0:
          return text[start + 1:i].strip() or None
    return None
  braceless = _BRACELESS.match(text, start)
  return braceless.group(1) if braceless else None


def _after_marker(text: str) -> str | None:
  tail = text.rsplit(ANSWER_MARKER, 1)[1].strip()
  line = tail.split("\n", 1)[0].strip().rstrip(".").strip()
  line = _THOUSANDS_COMMA.sub("", line.removeprefix("$").strip())
  return line or None


def extract_answer(completion: str) -> str | None:
  """The final answer of a completion (see the module docstring), or None when it has none.

  `"so \\boxed{\\frac{1}{2}}."` -> `"\\frac{1}{2}"`; `"... #### 1,234"` -> `"1234"`;
  `"it is 12, or 13"` -> `"13"`.
  """
  if _BOXED.search(completion):
    return last_boxed(completion)
  if ANSWER_MARKER in completion:
    return _after_marker(completion)
  numbers = _NUMBER.findall(completion)
  return numbers[-1].replace(",", "") if numbers else None


def _reference_answer(answer: Any) -> str | None:
  """The gold answer of the `answer` column: as given, or extracted from a worked solution."""
  if answer is None:
    return None
  text = str(answer).strip()
  if _BOXED.search(text) or ANSWER_MARKER in text:
    text = extract_answer(text) or ""
  return text or None


def _as_fraction(text: str) -> fractions.Fraction | None:
  if _PLAIN_NUMBER.fullmatch(text) is None:
    return None
  return fractions.Fraction(text.replace(",", ""))


def verify_equivalent(gold: str, predicted: str) -> bool:
  """math-verify equivalence of two answers, each parsed as `\\boxed{answer}`, with no time limit.

  False when either side does not parse. Runs in the worker process (`MathVerifyReward`);
  calling it directly on untrusted text can take unbounded time.
  """
  import math_verify  # imported lazily: heavy, and needed only where checks run

  gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
  predicted_parsed = math_verify.parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
  if not gold_parsed or not predicted_parsed:
    return False
  return bool(math_verify.verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def warm_up() -> None:
  """Worker start-up: quiets math-verify's "timeout is disabled" warning and fills its caches."""
  import logging

  logging.getLogger("math_verify").setLevel(logging.ERROR)
  verify_equivalent("\\frac{1}{2}", "0.5")


class MathVerifyReward:
  """Reward 1.0 when a completion's final answer is equivalent to the `answer` column.

  Args:
    timeout_s: deadline of each math-verify check, in seconds; None runs the checks in
      this process with no time limit (only for trusted text, e.g. in a notebook).
    timeout_reward: the reward of a completion whose check passed its deadline (or
      crashed the worker): 0.0 by default, None to leave it out.
    memory_limit_mb: address-space limit of the worker process (None: no limit).
    cache_size: number of (gold, predicted) results kept.

  Attributes:
    num_timeouts: checks that passed their deadline (or crashed) so far.
  """

  def __init__(
      self,
      *,
      timeout_s: float | None = DEFAULT_TIMEOUT_S,
      timeout_reward: float | None = 0.0,
      memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
      cache_size: int = 4096,
  ):
    if timeout_s is not None and not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0 or None, got timeout_s={timeout_s}")
    self.timeout_s = timeout_s
    self.timeout_reward = timeout_reward
    self.cache_size = cache_size
    self.num_timeouts = 0
    self._cache: collections.OrderedDict[tuple[str, str], bool | None] = collections.OrderedDict()
    self._worker = None
    if timeout_s is not None:
      self._worker = TimedWorker(preload=(f"{__name__}:warm_up",), memory_limit_mb=memory_limit_mb)

  def equivalent(self, gold: str, predicted: str) -> bool | None:
    """True / False, or None when the check passed its deadline or crashed the worker."""
    gold_number, predicted_number = _as_fraction(gold), _as_fraction(predicted)
    if gold_number is not None and predicted_number is not None:
      return gold_number == predicted_number
    key = (gold, predicted)
    if key in self._cache:
      self._cache.move_to_end(key)
      return self._cache[key]
    if self._worker is None:
      try:
        result = verify_equivalent(gold, predicted)
      except Exception:  # an answer math-verify cannot handle is not a match
        result = False
    else:
      outcome = self._worker.call(verify_equivalent, gold, predicted, timeout_s=self.timeout_s)
      if outcome.status in ("timeout", "crashed"):
        self.num_timeouts += 1
        result = None
      else:
        result = bool(outcome.value) if outcome.ok else False  # "error": an answer that does not parse
    self._cache[key] = result
    if len(self._cache) > self.cache_size:
      self._cache.popitem(last=False)
    return result

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Any],
      answer: Sequence[Any] | None = None,
      **kwargs,
  ) -> list[float | None]:
    """TRL-style reward: B completions against the B reference answers of `answer`.

    Args:
      prompts: B prompts (unused).
      completions: B completions (strings or TRL conversational messages).
      answer: the dataset's `answer` column: final answers (`"72"`, `"\\frac{1}{2}"`), or
        worked solutions ending in `#### 72` or `\\boxed{...}`, which are extracted.

    Returns:
      B rewards: 1.0 (equivalent), 0.0 (not equivalent, or no answer found),
      `timeout_reward` (check timed out), None where the reference answer is None or "".

    Raises:
      ValueError when the `answer` column is missing.
    """
    del prompts, kwargs
    if answer is None:
      raise ValueError("math_verify needs the dataset column 'answer' (got answer=None)")
    rewards: list[float | None] = []
    for completion, expected in zip(completions, answer, strict=True):
      gold = _reference_answer(expected)
      if gold is None:
        rewards.append(None)
        continue
      predicted = extract_answer(completion_text(completion))
      if predicted is None:
        rewards.append(0.0)
        continue
      same = self.equivalent(gold, predicted)
      rewards.append(self.timeout_reward if same is None else float(same))
    return rewards

  def close(self) -> None:
    """Stops the worker process (a later call starts a new one)."""
    if self._worker is not None:
      self._worker.close()


@functools.cache
def default_reward() -> MathVerifyReward:
  """The shared `MathVerifyReward()` behind the registered "math_verify" reward."""
  return MathVerifyReward()


@register_reward("math_verify")
def math_verify_correctness(
    prompts: Sequence[str],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    **kwargs,
) -> list[float | None]:
  """`MathVerifyReward()` with the defaults (5 s per check, 0.0 on timeout); see its call."""
  return default_reward()(prompts, completions, answer=answer, **kwargs)
