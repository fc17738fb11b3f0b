"""Reward from a reasoning-gym dataset's own `score_answer(answer, entry)`.

The examples come from `jaxrl_reward.data.reasoning_gym_source`: each carries the
reasoning-gym `entry` and `reasoning_gym_dataset` (`{"name", "config"}`), which reach the
reward as keyword columns. The dataset is rebuilt from its name and config (once, cached)
and its `score_answer` scores the answer extracted from the completion; without
`reasoning_gym_dataset`, the scorer of `entry["metadata"]["source_dataset"]` with its
default config is used. Scores are in [0, 1]; partial credit is the dataset's choice
(e.g. countdown gives 0.05 for a well-formed wrong expression).

Extraction (`extract_answer`), first rule that applies:

1. the content of the last `<answer>...</answer>` pair (the format of reasoning-gym's
   system prompts), stripped;
2. with `fallback=True` (the default of the registered reward): the content of the last
   `\\boxed{...}`, else the text after the last `####` on its line, else the last
   non-empty line of the completion, stripped.

No answer found scores as `score_answer(None, entry)` (0.0 or the dataset's floor). A
scorer that raises on an answer scores 0.0, with one RuntimeWarning per dataset.

Time limit: some scorers evaluate the answer with sympy (countdown's `parse_expr` on
`9**9**9**9` never returns), so each score runs in a `TimedWorker` child with a deadline
(`timeout_s`, 10 s by default); a score that passes it scores `timeout_reward` (0.0 by
default: treated like a wrong answer; None leaves it out), and later calls go on normally.
"""
from __future__ import annotations

import functools
import json
import re
import warnings
from typing import Any, Mapping, Sequence

from jaxrl_reward.rewards.base import completion_text, register_reward
from jaxrl_reward.rewards.math_verify_reward import last_boxed
from jaxrl_reward.rewards.timed_worker import TimedWorker

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_LIMIT_MB = 4096
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(completion: str, *, fallback: bool = True) -> str | None:
  """The answer in a completion (see the module docstring), or None.

  `"<think>..</think><answer> 42 </answer>"` -> `"42"`; with `fallback`, `"so \\boxed{7}"`
  -> `"7"`, `"... #### 12"` -> `"12"`, `"work\\n-4\\n"` -> `"-4"`.
  """
  tags = _ANSWER_TAG.findall(completion)
  if tags:
    return tags[-1].strip()
  if not fallback:
    return None
  if "\\boxed" in completion or "\\fbox" in completion:
    return last_boxed(completion)
  if "####" in completion:
    return completion.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip() or None
  lines = [line.strip() for line in completion.splitlines() if line.strip()]
  return lines[-1] if lines else None


@functools.lru_cache(maxsize=64)
def _scorer(name: str, config_json: str):
  """`score_answer` of dataset `name` built with config `config_json` (cached)."""
  import reasoning_gym

  if name not in reasoning_gym.factory.DATASETS:
    raise ValueError(f"unknown reasoning-gym dataset {name!r}")
  return reasoning_gym.create_dataset(name, **json.loads(config_json)).score_answer


def prepare_scorer(name: str, config_json: str) -> None:
  """Builds (and caches) a scorer, so that its first score does not pay for building it."""
  _scorer(name, config_json)


def score_answer(name: str, config_json: str, answer: str | None, entry: dict) -> float:
  """`score_answer(answer, entry)` of dataset `name` with config `config_json`, as a float."""
  return float(_scorer(name, config_json)(answer, entry))


def _scorer_key(entry: Mapping[str, Any], dataset: Mapping[str, Any] | None) -> tuple[str, str]:
  """(dataset name, config as sorted JSON) of the scorer for `entry`."""
  if dataset is not None:
    return str(dataset["name"]), json.dumps(dict(dataset.get("config") or {}), sort_keys=True)
  metadata = entry.get("metadata") or {}
  if "source_dataset" not in metadata:
    raise ValueError("cannot tell which reasoning-gym dataset scores this entry: pass the "
                     "'reasoning_gym_dataset' column or an entry with metadata['source_dataset']")
  return str(metadata["source_dataset"]), "{}"


class ReasoningGymReward:
  """Scores completions with their reasoning-gym dataset's `score_answer`.

  Args:
    fallback: extraction falls back from `<answer>` tags to boxed / `####` / last line.
    timeout_s: deadline of each score in seconds; None scores in this process with no
      time limit (only for trusted text).
    timeout_reward: the reward of a score that passed its deadline (or crashed the worker).
    memory_limit_mb: address-space limit of the worker process (None: no limit).
    startup_timeout_s: deadline for building a dataset's scorer the first time.

  Attributes:
    num_timeouts: scores that passed their deadline (or crashed) so far.
    num_errors: scores whose `score_answer` raised (scored 0.0, with one warning per dataset).
  """

  def __init__(
      self,
      *,
      fallback: bool = True,
      timeout_s: float | None = DEFAULT_TIMEOUT_S,
      timeout_reward: float | None = 0.0,
      memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
      startup_timeout_s: float = 120.0,
  ):
    if timeout_s is not None and not timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0 or None, got timeout_s={timeout_s}")
    self.fallback = fallback
    self.timeout_s = timeout_s
    self.timeout_reward = timeout_reward
    self.startup_timeout_s = startup_timeout_s
    self.num_timeouts = 0
    self.num_errors = 0
    self._warned: set[str] = set()
    self._worker = None
    self._prepared: set[tuple[int, tuple[str, str]]] = set()  # (worker start, scorer key)
    if timeout_s is not None:
      self._worker = TimedWorker(preload=("reasoning_gym",), memory_limit_mb=memory_limit_mb,
                                 startup_timeout_s=startup_timeout_s)

  def _score(self, key: tuple[str, str], answer: str | None, entry: dict) -> float | None:
    """The score, or None when it timed out; a scorer that raises scores 0.0 (with a warning)."""
    if self._worker is None:
      try:
        return score_answer(*key, answer, entry)
      except Exception as e:  # the scorer could not handle this answer: not a right one
        self._record_error(key, f"{type(e).__name__}: {e}")
        return 0.0
    self._prepare(key)
    outcome = self._worker.call(score_answer, *key, answer, entry, timeout_s=self.timeout_s)
    if outcome.ok:
      return outcome.value
    if outcome.status == "error":
      self._record_error(key, outcome.error)
      return 0.0
    self.num_timeouts += 1
    return None

  def _record_error(self, key: tuple[str, str], error: str) -> None:
    self.num_errors += 1
    if key[0] not in self._warned:
      self._warned.add(key[0])
      warnings.warn(f"score_answer of reasoning-gym dataset {key[0]!r} raised {error}; scoring 0.0 "
                    "(warned once per dataset)", RuntimeWarning, stacklevel=3)

  def _prepare(self, key: tuple[str, str]) -> None:
    """Builds the scorer for `key` in the current worker (under `startup_timeout_s`)."""
    for _ in range(2):  # a crash while building restarts the worker: try once more
      starts = self._worker.start()
      if (starts, key) in self._prepared:
        return
      outcome = self._worker.call(prepare_scorer, *key, timeout_s=self.startup_timeout_s)
      if outcome.status == "error":
        raise ValueError(f"cannot build the scorer of reasoning-gym dataset {key[0]!r}: {outcome.error}")
      if outcome.ok:
        self._prepared.add((starts, key))
        return
    raise RuntimeError(f"building the scorer of reasoning-gym dataset {key[0]!r} timed out twice")

  def __call__(
      self,
      prompts: Sequence[str],
      completions: Sequence[Any],
      entry: Sequence[Mapping[str, Any] | None] | None = None,
      reasoning_gym_dataset: Sequence[Mapping[str, Any] | None] | None = None,
      **kwargs,
  ) -> list[float | None]:
    """TRL-style reward over B completions.

    Args:
      prompts: B prompts (unused).
      completions: B completions (strings or TRL conversational messages).
      entry: the `entry` column: B reasoning-gym entries (None where the reward does not
        apply, e.g. a math example in a mixed dataset).
      reasoning_gym_dataset: the `reasoning_gym_dataset` column, B `{"name", "config"}`.

    Returns:
      B scores in [0, 1]; `timeout_reward` for a score that timed out; None where
      `entry` is None.

    Raises:
      ValueError when the `entry` column is missing or names no dataset, or when a
      dataset's scorer cannot be built (unknown name, bad config).
    """
    del prompts, kwargs
    if entry is None:
      raise ValueError("reasoning_gym needs the dataset column 'entry' (got entry=None)")
    specs = reasoning_gym_dataset if reasoning_gym_dataset is not None else [None] * len(entry)
    rewards: list[float | None] = []
    for completion, item, spec in zip(completions, entry, specs, strict=True):
      if item is None:
        rewards.append(None)
        continue
      answer = extract_answer(completion_text(completion), fallback=self.fallback)
      score = self._score(_scorer_key(item, spec), answer, dict(item))
      rewards.append(self.timeout_reward if score is None else score)
    return rewards

  def close(self) -> None:
    """Stops the worker process (a later call starts a new one)."""
    if self._worker is not None:
      self._worker.close()


@functools.cache
def default_reward() -> ReasoningGymReward:
  """The shared `ReasoningGymReward()` behind the registered "reasoning_gym" reward."""
  return ReasoningGymReward()


@register_reward("reasoning_gym")
def reasoning_gym_score(
    prompts: Sequence[str],
    completions: Sequence[Any],
    entry: Sequence[Mapping[str, Any] | None] | None = None,
    reasoning_gym_dataset: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs,
) -> list[float | None]:
  """`ReasoningGymReward()` with the defaults (fallback extraction, 10 s per score); see its call."""
  return default_reward()(prompts, completions, entry=entry, reasoning_gym_dataset=reasoning_gym_dataset,
                          **kwargs)
