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
- Each reward is None or a real number: a Python `int`, `float` or `bool` (True = 1.0), a
  numpy number or bool, or a 0-d numeric array. Anything else (a string such as `"1.0"`,
  a list, ...) is a TypeError naming the function, the row and the value: nothing is
  converted silently.

`compute_rewards` runs each function under a deadline (`timeout_s`, `config.rewards.timeout_s`,
600 s by default; 0 or None: none) and stops waiting on a stop request of the training loop:

- The calls run one at a time in a daemon thread, while the calling thread waits in
  0.1 s slices. A call past its deadline raises `RewardTimeout` naming the function, or,
  with `on_timeout="missing"`, gives NaN (missing) for all of that function's rows with a
  warning on stderr. A pending Ctrl-C or SIGTERM (`interrupts.pending()`) raises
  `interrupts.StepAbandoned`: the loop then stops with the state of the last finished step.
- The call that is given up on is abandoned, not stopped: Python cannot kill a thread, so it
  keeps running in the background until it returns (the daemon thread never delays the
  interpreter's exit), and the next call gets a new thread. A check that must really be
  stopped belongs in a `timed_worker.TimedWorker` child process, as math_verify and
  reasoning_gym do.
- A function that raises is a RuntimeError naming it, with the original error chained
  (`__cause__`).

A function written for TRL works unchanged, and one registered here can be selected from
a config by name:

    @register_reward("length_penalty")
    def length_penalty(prompts, completions, **kwargs):
      return [-len(c) / 100 for c in completions]
"""
from __future__ import annotations

import queue
import sys
import threading
import time
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
ON_TIMEOUT = ("error", "missing")
DEFAULT_TIMEOUT_S = 600.0  # generous: a sane reward takes seconds; this only catches a hang
_WAIT_SLICE_S = 0.1  # how often a wait looks at its deadline and at stop requests
_STOP_GRACE_S = 1.0  # how long a call may still run after a stop request before its step is abandoned


class RewardTimeout(RuntimeError):
  """A host reward function did not return within its deadline (`rewards.timeout_s`)."""


class _Call:
  """One reward call, run in a reward thread; `done` is set when it returned or raised."""

  def __init__(self, fn: RewardFn, kwargs: dict):
    self.fn, self.kwargs = fn, kwargs
    self.done = threading.Event()
    self.value: Any = None
    self.error: BaseException | None = None

  def run(self) -> None:
    try:
      self.value = self.fn(**self.kwargs)
    except BaseException as e:  # handed to the waiting thread, which raises it naming the function
      self.error = e
    finally:
      self.done.set()


class _RewardThread:
  """A long-lived daemon thread that runs reward calls one at a time.

  Long-lived rather than one thread per call: Linux kills a child process started with
  PR_SET_PDEATHSIG (a `TimedWorker` child, started lazily from inside a reward call) when the
  *thread* that started it exits, so a thread per call would restart those children every call.
  """

  def __init__(self):
    self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
    threading.Thread(target=self._serve, name="host-reward", daemon=True).start()

  def _serve(self) -> None:
    _thread_state.in_reward_thread = True
    while (call := self._calls.get()) is not None:
      call.run()

  def submit(self, call: _Call) -> None:
    self._calls.put(call)

  def abandon(self) -> None:
    """The thread exits when the call it runs returns (if ever)."""
    self._calls.put(None)


_thread_state = threading.local()
_reward_thread: _RewardThread | None = None
_reward_thread_lock = threading.Lock()  # one call at a time, whichever thread asks


def _call_with_deadline(fn: RewardFn, name: str, kwargs: dict, timeout_s: float | None) -> Any:
  """`fn(**kwargs)` run in the reward thread, waited for at most `timeout_s` s (None: no limit)
  and no longer than a pending stop request; raises RewardTimeout or StepAbandoned, or a
  RuntimeError naming the function when it raised."""
  global _reward_thread
  if getattr(_thread_state, "in_reward_thread", False):
    # A reward that computes other rewards: already in the reward thread, under the outer deadline.
    call = _Call(fn, kwargs)
    call.run()
  else:
    with _reward_thread_lock:
      if _reward_thread is None:
        _reward_thread = _RewardThread()
      call = _Call(fn, kwargs)
      _reward_thread.submit(call)
      try:
        _wait(call, name, timeout_s)
      except BaseException:  # a deadline, a stop request, a second Ctrl-C: leave the call running
        _reward_thread.abandon()
        _reward_thread = None
        raise
  if call.error is not None:
    if not isinstance(call.error, Exception):  # SystemExit and the like: not a reward's bug
      raise call.error
    first_line = (str(call.error).splitlines() or [""])[0]
    raise RuntimeError(f"reward function {name!r} raised {type(call.error).__name__}: {first_line}") from call.error
  return call.value


def _wait(call: _Call, name: str, timeout_s: float | None) -> None:
  # Imported here: interrupts imports jax, which the TimedWorker children (they import this
  # package) need not load.
  from jaxrl_reward import interrupts

  deadline = time.monotonic() + timeout_s if timeout_s else None
  while True:
    left = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
    if call.done.wait(max(left, 0.0)):
      return
    signum = interrupts.pending()
    # A call that ends within the grace after a stop request finishes its step (a healthy reward,
    # or one that is returning just as the signal came); one still running then is abandoned.
    if signum is not None and not call.done.wait(_STOP_GRACE_S):
      raise interrupts.StepAbandoned(signum, f"reward function {name!r}")
    if call.done.is_set():
      return
    if deadline is not None and time.monotonic() >= deadline:
      raise RewardTimeout(f"reward function {name!r} did not return within {timeout_s:g} s (rewards.timeout_s); "
                          "it keeps running in a background thread")


def _is_real_number(value: Any) -> bool:
  """None excluded: a Python or numpy int / float / bool, or a 0-d numeric array (numpy, jax)."""
  if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):  # bool is an int
    return True
  kind = getattr(getattr(value, "dtype", None), "kind", None)
  return getattr(value, "shape", None) == () and kind in ("b", "i", "u", "f")


def compute_rewards(
    reward_fns: Sequence[RewardFn | str],
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    nonfinite: str = "error",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    on_timeout: str = "error",
    step: int | None = None,
) -> np.ndarray:
  """Calls every reward function on the batch, each under a deadline, and stacks the results.

  Args:
    reward_fns: F reward functions, or names registered with `register_reward`.
    prompts: B prompts.
    completions: B completions.
    columns: other dataset columns, each a sequence of B values, passed by keyword.
    nonfinite: what a NaN or inf returned by a function is: "error" (default) or
      "missing" (like None).
    timeout_s: the deadline of each function's call in seconds; 0 or None: none. A call
      past it keeps running in a background thread (see the module docstring).
    on_timeout: what a call past its deadline is: "error" (default, `RewardTimeout`) or
      "missing" (NaN for all of that function's rows, with a warning on stderr).
    step: the step being scored, named in the warning of on_timeout="missing".

  Returns:
    [B, F] float32 rewards; NaN where a reward is missing.

  Raises:
    ValueError naming the reward function when it returns the wrong number of rewards or
    (with nonfinite="error") a NaN or inf; TypeError naming it, the row and the value when
    a reward is neither a real number nor None; RuntimeError naming it when it raises (the
    original error is the `__cause__`); `RewardTimeout` (with on_timeout="error");
    `interrupts.StepAbandoned` when a stop request comes while a function runs.
  """
  if nonfinite not in NONFINITE:
    raise ValueError(f"rewards.nonfinite={nonfinite!r} is not one of {NONFINITE}")
  if on_timeout not in ON_TIMEOUT:
    raise ValueError(f"rewards.on_timeout={on_timeout!r} is not one of {ON_TIMEOUT}")
  if timeout_s is not None and not timeout_s >= 0:
    raise ValueError(f"rewards.timeout_s={timeout_s!r} must be >= 0 (0 or None: no deadline)")
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
    kwargs = dict(prompts=prompts, completions=completions, **{k: list(v) for k, v in columns.items()})
    try:
      values = _call_with_deadline(fn, name, kwargs, timeout_s)
    except RewardTimeout as e:
      if on_timeout == "error":
        raise
      at_step = f" at step {step}" if step is not None else ""
      print(f"warning: {e}{at_step}; its {batch} rewards are missing (rewards.on_timeout='missing')",
            file=sys.stderr, flush=True)
      continue
    if values is None or not hasattr(values, "__len__"):
      raise ValueError(f"reward function {name!r} must return a list of {batch} rewards, got {type(values).__name__}")
    if len(values) != batch:
      raise ValueError(f"reward function {name!r} returned {len(values)} rewards for {batch} completions")
    for i, value in enumerate(values):
      if value is None:
        continue
      if not _is_real_number(value):
        raise TypeError(f"reward function {name!r} returned {value!r} ({type(value).__name__}) at index {i}; "
                        "expected a real number (int, float, bool, numpy number) or None")
      value = float(value)
      if not np.isfinite(value):
        if nonfinite == "error":
          raise ValueError(f"reward function {name!r} returned {value} at index {i} (completion {completions[i]!r:.80}); "
                           "return None for a missing reward, or set rewards.nonfinite='missing'")
        continue
      out[i, j] = value
  return out
