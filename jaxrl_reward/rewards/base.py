"""Host-side reward functions: the TRL-compatible interface and a registry by name.

A reward function has the signature of TRL's `GRPOTrainer` reward functions:

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

- `prompts`, `completions`: B strings (group-major: the G completions of a prompt are
  consecutive, and `prompts` repeats each prompt G times).
- `columns`: the other dataset columns, each a list of B values, passed by keyword (e.g.
  `answer=[...]`); a function takes the columns it needs and ignores the rest (`**kwargs`).
- Returns B rewards; `None` means "not applicable to this example" (e.g. a math verifier
  on a code prompt). `compute_rewards` turns `None` into NaN (missing), and the advantage
  step (`objectives.advantages.combine_rewards`) skips missing entries. A NaN or inf that a
  function returns itself is a bug, not a missing reward: by default it is an error naming
  the function (`nonfinite="missing"` treats it as missing instead).

A function written for TRL works unchanged, and one registered here can be selected from
a config by name:

    @register_reward("length_penalty")
    def length_penalty(prompts, completions, **kwargs):
      return [-len(c) / 100 for c in completions]
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

RewardFn = Callable[..., Sequence["float | None"]]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[RewardFn], RewardFn]:
  """Decorator that registers a reward function under `name`."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"reward name must be a non-empty string, got name={name!r}")

  def decorator(fn: RewardFn) -> RewardFn:
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
      raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fn
    return fn

  return decorator


def get_reward(name: str) -> RewardFn:
  """Returns the reward function registered under `name`, or raises naming the known ones."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown reward name={name!r}; registered rewards: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def reward_names() -> list[str]:
  return sorted(_REGISTRY)


def reward_fn_name(fn: RewardFn | str) -> str:
  """A readable name for a reward function (its registry name when given one)."""
  if isinstance(fn, str):
    return fn
  return getattr(fn, "__name__", None) or getattr(type(fn), "__name__", repr(fn))


def completion_text(completion: Any) -> str:
  """The text of a completion: a string, or TRL's conversational `[{"role", "content"}, ...]`."""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
    return str(completion[-1].get("content", ""))
  raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


NONFINITE = ("error", "missing")


def compute_rewards(
    reward_fns: Sequence[RewardFn | str],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    nonfinite: str = "error",
) -> np.ndarray:
  """Calls every reward function on the batch and stacks the results.

  Args:
    reward_fns: F reward functions, or names registered with `register_reward`.
    prompts: B prompts.
    completions: B completions.
    columns: other dataset columns, each a sequence of B values, passed by keyword.
    nonfinite: what a NaN or inf returned by a function is: "error" (default) or
      "missing" (like None).

  Returns:
    [B, F] float32 rewards; NaN where a reward is missing.

  Raises:
    ValueError naming the reward function when it returns the wrong number of rewards or
    (with nonfinite="error") a NaN or inf, TypeError naming it when a reward is neither a
    number nor None.
  """
  if nonfinite not in NONFINITE:
    raise ValueError(f"rewards.nonfinite={nonfinite!r} is not one of {NONFINITE}")
  columns = dict(columns or {})
  batch = len(prompts)
  if len(completions) != batch:
    raise ValueError(f"prompts and completions must have the same length, got {batch} and {len(completions)}")
  for key in ("prompts", "completions"):
    if key in columns:
      raise ValueError(f"columns must not contain {key!r}; it is passed separately")
  for key, values in columns.items():
    if len(values) != batch:
      raise ValueError(f"column {key!r} has {len(values)} values, expected {batch} (one per completion)")
  if isinstance(reward_fns, str) or callable(reward_fns):
    reward_fns = [reward_fns]
  out = np.full((batch, len(reward_fns)), np.nan, dtype=np.float32)
  prompts, completions = list(prompts), list(completions)
  for j, fn in enumerate(reward_fns):
    name = reward_fn_name(fn)
    if isinstance(fn, str):
      fn = get_reward(fn)
    values = fn(prompts=prompts, completions=completions, **{k: list(v) for k, v in columns.items()})
    if values is None or not hasattr(values, "__len__"):
      raise ValueError(f"reward function {name!r} must return a list of {batch} rewards, got {type(values).__name__}")
    if len(values) != batch:
      raise ValueError(f"reward function {name!r} returned {len(values)} rewards for {batch} completions")
    for i, value in enumerate(values):
      if value is None:
        continue
      try:
        value = float(value)
      except (TypeError, ValueError) as e:
        raise TypeError(f"reward function {name!r} returned {value!r} at index {i}; expected a float or None") from e
      if not np.isfinite(value):
        if nonfinite == "error":
          raise ValueError(f"reward function {name!r} returned {value} at index {i} (completion {completions[i]!r:.80}); "
                           "return None for a missing reward, or set rewards.nonfinite='missing'")
        continue
      out[i, j] = value
  return out
