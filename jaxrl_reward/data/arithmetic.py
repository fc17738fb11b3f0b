"""Seeded synthetic arithmetic task with digit-by-digit worked solutions.

A prompt is an expression followed by "=", e.g. `"47+38="`. The answer is the integer
value of the expression as a string (`"85"`). The worked solution, which a small model
is warm-up trained on before RL, does column arithmetic from the least significant
digit, one column per space-separated item, and ends with the final answer marker:

    47+38=   ->  7+8+0=15 4+3+1=8 #### 85
    47-38=   ->  17-8-0=9 4-3-1=0 #### 9
    38-47=   ->  -(47-38) 17-8-0=9 4-3-1=0 #### -9
    5+0=     ->  5+0+0=5 #### 5

Columns (operands are zero-padded to the same number of digits):

- addition `a+b+c=s`: digits `a`, `b`, carry-in `c` in {0, 1}; `s = a + b + c` written in
  full (0..19), so the result digit is `s % 10` and the carry-out is `s // 10`.
- subtraction `a-b-c=d`: borrow-in `c` in {0, 1}; when `a - b - c < 0` the column borrows
  and is written with a leading 1 (`17-8-0=9`, i.e. `a + 10`); `d` is the result digit,
  and the borrow-out is 1 exactly when the column starts with the extra 1.

The answer is read back from the columns in reverse order (the last addition column is
written whole, so its carry becomes the leading digit; leading zeros of a difference are
dropped). When a difference is negative, the work is done on the swapped operands and
announced by a prefix `-(b-a) `.

With more than two operands the expression is evaluated left to right, one binary step
at a time; every step but the last ends with ` => R; ` where `R` is the running value:

    47+38-12=  ->  7+8+0=15 4+3+1=8 => 85; 5-2-0=3 8-1-0=7 #### 73

A step on a negative running value `x` is reduced to magnitudes and announced by a
prefix: `x + y` with `x < 0` is `(y-|x|) ` (negated when `y < |x|`: `-(|x|-y) `), and
`x - y` with `x < 0` is `-(|x|+y) `.

Every solution matches `jaxrl_reward.rewards.format.SOLUTION_PATTERN`.

For the default task (two operands in 0..99, `+` and `-`) prompts are at most 6
characters and solutions at most 34 characters (negative two-digit differences such as
`-(85-39) 15-9-0=6 8-3-1=4 #### -46` are the longest).

Train and eval splits are disjoint (no prompt appears in both) and are a deterministic
function of the seed and the task parameters.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

OPERATIONS = ("+", "-")
ANSWER_MARKER = "####"

Example = dict  # {"prompt": str, "answer": str, "solution": str}


def _digits(value: int, width: int) -> list[int]:
  """Least-significant-first digits of `value` (>= 0), zero-padded to `width`."""
  return [int(ch) for ch in reversed(str(value).zfill(width))]


def column_addition(a: int, b: int) -> tuple[str, int]:
  """Worked column addition of two non-negative integers: (`"7+8+0=15 4+3+1=8"`, a + b)."""
  if a < 0 or b < 0:
    raise ValueError(f"column_addition expects non-negative operands, got a={a}, b={b}")
  width = max(len(str(a)), len(str(b)))
  columns, carry = [], 0
  for da, db in zip(_digits(a, width), _digits(b, width)):
    total = da + db + carry
    columns.append(f"{da}+{db}+{carry}={total}")
    carry = total // 10
  return " ".join(columns), a + b


def column_subtraction(a: int, b: int) -> tuple[str, int]:
  """Worked column subtraction `a - b` with `a >= b >= 0`: (`"17-8-0=9 4-3-1=0"`, a - b)."""
  if not a >= b >= 0:
    raise ValueError(f"column_subtraction expects a >= b >= 0, got a={a}, b={b}")
  width = len(str(a))
  columns, borrow = [], 0
  for da, db in zip(_digits(a, width), _digits(b, width)):
    diff = da - db - borrow
    if diff < 0:
      columns.append(f"1{da}-{db}-{borrow}={diff + 10}")
      borrow = 1
    else:
      columns.append(f"{da}-{db}-{borrow}={diff}")
      borrow = 0
  return " ".join(columns), a - b


def worked_step(x: int, op: str, y: int) -> tuple[str, int]:
  """One binary step `x op y` (`y >= 0`, `x` any sign) as column work; returns (text, value)."""
  if op not in OPERATIONS:
    raise ValueError(f"op must be one of {OPERATIONS}, got op={op!r}")
  if y < 0:
    raise ValueError(f"worked_step expects y >= 0, got y={y}")
  if x >= 0 and op == "+":
    return column_addition(x, y)
  if x >= 0 and op == "-":
    if x >= y:
      return column_subtraction(x, y)
    work, value = column_subtraction(y, x)
    return f"-({y}-{x}) {work}", -value
  magnitude = -x
  if op == "-":  # x - y = -(|x| + y)
    work, value = column_addition(magnitude, y)
    return f"-({magnitude}+{y}) {work}", -value
  if y >= magnitude:  # x + y = y - |x|
    work, value = column_subtraction(y, magnitude)
    return f"({y}-{magnitude}) {work}", value
  work, value = column_subtraction(magnitude, y)  # x + y = -(|x| - y)
  return f"-({magnitude}-{y}) {work}", -value


def parse_prompt(prompt: str) -> tuple[list[int], list[str]]:
  """Splits `"47+38-12="` into operands `[47, 38, 12]` and operations `["+", "-"]`."""
  if not prompt.endswith("="):
    raise ValueError(f"prompt must end with '=', got prompt={prompt!r}")
  body = prompt[:-1]
  operands, ops, current = [], [], ""
  for ch in body:
    if ch.isdigit():
      current += ch
    elif ch in OPERATIONS and current:
      operands.append(int(current))
      ops.append(ch)
      current = ""
    else:
      raise ValueError(f"cannot parse prompt={prompt!r}: unexpected character {ch!r}")
  if not current:
    raise ValueError(f"cannot parse prompt={prompt!r}: missing final operand")
  operands.append(int(current))
  return operands, ops


def solve(prompt: str) -> tuple[str, str]:
  """Returns `(solution, answer)` for an arithmetic prompt such as `"47+38="`."""
  operands, ops = parse_prompt(prompt)
  value = operands[0]
  parts = []
  for op, y in zip(ops, operands[1:]):
    work, value = worked_step(value, op, y)
    parts.append((work, value))
  if not parts:
    raise ValueError(f"prompt={prompt!r} needs at least two operands")
  text = "".join(f"{work} => {value}; " for work, value in parts[:-1])
  text += f"{parts[-1][0]} {ANSWER_MARKER} {value}"
  return text, str(value)


def make_example(operands: Sequence[int], ops: Sequence[str]) -> Example:
  """Builds `{"prompt", "answer", "solution"}` for `operands[0] ops[0] operands[1] ...`."""
  if len(ops) != len(operands) - 1:
    raise ValueError(f"need len(ops) == len(operands) - 1, got {len(ops)} ops, {len(operands)} operands")
  prompt = str(operands[0]) + "".join(f"{op}{y}" for op, y in zip(ops, operands[1:])) + "="
  solution, answer = solve(prompt)
  return {"prompt": prompt, "answer": answer, "solution": solution}


def _running_values(operands: Sequence[int], ops: Sequence[str]) -> list[int]:
  values, value = [], operands[0]
  for op, y in zip(ops, operands[1:]):
    value = value + y if op == "+" else value - y
    values.append(value)
  return values


class SeededSplits:
  """Disjoint, seeded train / eval splits of distinct prompts, for a frozen dataclass with `seed`,
  `num_train`, `num_eval` and `_draw(rng) -> example or None` (None: draw again)."""

  def _generate(self) -> list[Example]:
    """Draws `num_train + num_eval` distinct examples, in a seed-determined order."""
    rng = np.random.default_rng(self.seed)
    total = self.num_train + self.num_eval
    seen: set[str] = set()
    examples: list[Example] = []
    attempts, max_attempts = 0, 100 * total + 1000
    while len(examples) < total:
      attempts += 1
      if attempts > max_attempts:
        raise ValueError(f"could not draw {total} distinct prompts from {self!r}; lower num_train / num_eval "
                         "or widen the value range")
      example = self._draw(rng)
      if example is None or example["prompt"] in seen:
        continue
      seen.add(example["prompt"])
      examples.append(example)
    return examples

  @functools.cached_property
  def _examples(self) -> tuple[Example, ...]:
    return tuple(self._generate())

  def splits(self) -> tuple[list[Example], list[Example]]:
    """Returns `(train, eval)` lists of example dicts (fresh copies)."""
    examples = [dict(ex) for ex in self._examples]
    return examples[:self.num_train], examples[self.num_train:]

  @property
  def train(self) -> list[Example]:
    return self.splits()[0]

  @property
  def eval(self) -> list[Example]:
    return self.splits()[1]


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(SeededSplits):
  """Synthetic arithmetic task: disjoint, seeded train / eval splits.

  Attributes:
    seed: the only source of randomness; same seed and parameters -> same splits.
    num_train: number of training examples.
    num_eval: number of held-out examples (no prompt shared with train).
    min_value, max_value: operands are drawn uniformly from [min_value, max_value].
    operations: operations drawn uniformly for each position, a subset of ("+", "-").
    num_operands: number of operands per prompt (>= 2), evaluated left to right.
    allow_negative: if False, expressions with a negative running value are re-drawn.
  """

  seed: int = 0
  num_train: int = 5000
  num_eval: int = 500
  min_value: int = 0
  max_value: int = 99
  operations: tuple[str, ...] = OPERATIONS
  num_operands: int = 2
  allow_negative: bool = True

  def __post_init__(self):
    object.__setattr__(self, "operations", tuple(self.operations))
    if not self.operations or any(op not in OPERATIONS for op in self.operations):
      raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations!r}")
    if not 0 <= self.min_value <= self.max_value:
      raise ValueError(f"need 0 <= min_value <= max_value, got min_value={self.min_value}, "
                       f"max_value={self.max_value}")
    if self.num_operands < 2:
      raise ValueError(f"num_operands must be >= 2, got {self.num_operands}")
    if self.num_train < 0 or self.num_eval < 0:
      raise ValueError(f"num_train and num_eval must be >= 0, got {self.num_train}, {self.num_eval}")
    space = (self.max_value - self.min_value + 1) ** self.num_operands * len(self.operations) ** (
        self.num_operands - 1)
    if self.num_train + self.num_eval > space:
      raise ValueError(f"num_train + num_eval = {self.num_train + self.num_eval} exceeds the {space} "
                       "distinct prompts of this task")

  def _draw(self, rng: np.random.Generator) -> Example | None:
    operands = [int(v) for v in rng.integers(self.min_value, self.max_value + 1, size=self.num_operands)]
    ops = [self.operations[i] for i in rng.integers(0, len(self.operations), size=self.num_operands - 1)]
    if not self.allow_negative and min(_running_values(operands, ops)) < 0:
      return None
    return make_example(operands, ops)

  def datasets(self):
    """Returns `(train, eval)` as `datasets.Dataset` with columns prompt, answer, solution."""
    train, held_out = self.splits()
    return to_dataset(train), to_dataset(held_out)


def make_splits(seed: int = 0, **task_kwargs) -> tuple[list[Example], list[Example]]:
  """`ArithmeticTask(seed=seed, **task_kwargs).splits()`."""
  return ArithmeticTask(seed=seed, **task_kwargs).splits()


def to_dataset(examples: Sequence[Example]):
  """Wraps examples in a `datasets.Dataset` with string columns prompt, answer, solution."""
  import datasets  # imported lazily: heavy, and only the loaders need it

  features = datasets.Features({name: datasets.Value("string") for name in ("prompt", "answer", "solution")})
  columns = {name: [ex[name] for ex in examples] for name in ("prompt", "answer", "solution")}
  return datasets.Dataset.from_dict(columns, features=features)


def corrupt_final_answer(solution: str, rng: np.random.Generator, shift: int = 0) -> str:
  """The same worked solution with a wrong final answer (for noisy demonstrations).

  The value after the last `####` is shifted by `shift`, or, when `shift` is 0, by a random
  non-zero amount in [-9, 9]; the column work stays right and only the answer line
  disagrees with it.
  """
  head, sep, value = solution.rpartition(ANSWER_MARKER)
  if not sep:
    raise ValueError(f"solution has no {ANSWER_MARKER!r} marker: {solution!r}")
  if not shift:
    shift = int(rng.choice([d for d in range(-9, 10) if d != 0]))
  return f"{head}{ANSWER_MARKER} {int(value) + shift}"


def noisy_solutions(examples: Sequence[Example], *, noise: float, seed: int, step: int,
                    shift: int = 0, corrupt=None) -> list[str]:
  """Worked solutions of `examples`, each with a wrong final answer with probability `noise`.

  `shift` 0 moves a corrupted answer by a random amount (diffuse noise: the right answer stays
  the most common one); a non-zero `shift` always moves it by that amount (a systematic
  error: with noise > 0.5 the demonstrations' most common answer is the wrong one).
  Deterministic in (seed, step), so a resumed run sees the same noisy batch. `corrupt(solution,
  rng, shift)` corrupts one solution (default `corrupt_final_answer`).
  """
  corrupt = corrupt or corrupt_final_answer
  if not 0.0 <= noise < 1.0:
    raise ValueError(f"noise must be in [0, 1), got noise={noise}")
  rng = np.random.default_rng([seed, step, 7])
  flips = rng.random(len(examples)) < noise
  return [corrupt(ex["solution"], rng, shift) if flip else ex["solution"] for ex, flip in zip(examples, flips)]
