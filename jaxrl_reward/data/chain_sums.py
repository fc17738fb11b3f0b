"""Chain sums: a synthetic multi-step task whose every step is known right or wrong.

Why: process reward models (implicit PRM, PURE, ProcessBench-style localisation of the first
wrong step) need completions whose step correctness is known exactly. Here a step is one line
of running arithmetic, so a grader can check each line against the prompt.

A prompt is a left-to-right chain of `k` operands (`min_terms <= k <= max_terms`, default
3..5) in 0..max_value (default 99), joined by `+` and `-` and ending with `=`. The solution
has one step per operation, one step per line, then the answer line:

    12+7+30-5=  ->  12+7=19
                    19+30=49
                    49-5=44
                    #### 44

(as a string: `"12+7=19\\n19+30=49\\n49-5=44\\n#### 44"`). Exact format, no spaces inside a
step: `f"{running}{op}{operand}={result}"`, where `running` is the value so far (the first
operand for step 0), written as Python writes an int (negative values with a leading `-`,
e.g. `"-5+3=-2"`, `"3-12=-9"`); steps are joined by `STEP_SEPARATOR` ("\\n"); the last line is
`"#### " + answer`. Every character is in `tokenizer.CHARACTERS`. For the defaults prompts are
at most 15 characters and solutions at most 57 (`"10-20-90-10+10="` ->
`"10-20=-10\\n-10-90=-100\\n-100-10=-110\\n-110+10=-100\\n#### -100"`; checked exhaustively
in `tests/test_chain_sums.py`); a flawed solution can be one character longer (58: a slip
can add a digit).

Error model (`flawed_solution`): step `i` writes a result off by a non-zero amount in
[-9, 9]; later steps are computed correctly from that wrong running value (the slip
propagates, as a real one does), so the final answer is off by the same amount. Its labels
are `[1] * i + [0] * (num_steps - i)`.

Grading (`grade_steps`): a written step is correct (1) iff it is exactly the canonical step
at that position: left operand = the TRUE running value, operator and operand = the
prompt's, result right. Anything else (extra spaces, leading zeros, garbage, a skipped or
extra step) is wrong (0), and so is every step after the first wrong one: a solution is
judged by its first error (ProcessBench). `first_error(labels)` is that index, -1 if none.

The step labels are for evaluating process rewards only; training never sees them (the
warm-up targets are the correct solutions).

Train and eval splits are disjoint (no prompt in both) and a deterministic function of the
seed and the task parameters, as in `arithmetic.ArithmeticTask`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxrl_reward.data import arithmetic
from jaxrl_reward.data import tokenizer as tokenizer_lib
from jaxrl_reward.data.task import AnswerFormat, Task

OPERATIONS = ("+", "-")
ANSWER_MARKER = "####"
STEP_SEPARATOR = "\n"
ERROR_SHIFTS = tuple(d for d in range(-9, 10) if d != 0)

Example = dict  # {"prompt": str, "answer": str, "solution": str, "num_steps": int}


def _apply(running: int, op: str, operand: int) -> int:
  if op not in OPERATIONS:
    raise ValueError(f"op must be one of {OPERATIONS}, got op={op!r}")
  return running + operand if op == "+" else running - operand


def format_step(running: int, op: str, operand: int, result: int, *, spaced: bool = False) -> str:
  """One step line, e.g. `format_step(19, "+", 30, 49) == "19+30=49"`; with `spaced`,
  `"19 + 30 = 49"` (the natural-language form a pretrained model writes)."""
  if spaced:
    return f"{running} {op} {operand} = {result}"
  return f"{running}{op}{operand}={result}"


def format_solution(steps: Sequence[str], answer: int) -> str:
  """Step lines joined by `STEP_SEPARATOR`, then the `"#### <answer>"` line."""
  return STEP_SEPARATOR.join([*steps, f"{ANSWER_MARKER} {answer}"])


def _check_chain(operands: Sequence[int], ops: Sequence[str]) -> None:
  if len(operands) < 2:
    raise ValueError(f"operands must hold at least 2 values, got operands={list(operands)}")
  if len(ops) != len(operands) - 1:
    raise ValueError(f"need len(ops) == len(operands) - 1, got {len(ops)} ops, {len(operands)} operands")
  if any(not isinstance(v, (int, np.integer)) or v < 0 for v in operands):
    raise ValueError(f"operands must be non-negative integers, got operands={list(operands)}")
  if any(op not in OPERATIONS for op in ops):
    raise ValueError(f"ops must be drawn from {OPERATIONS}, got ops={list(ops)}")


def chain_steps(operands: Sequence[int], ops: Sequence[str], shift_at: int = -1,
                shift: int = 0, *, spaced: bool = False) -> tuple[list[str], int]:
  """Step lines and final value; step `shift_at` writes its result off by `shift` (later steps
  go on from the wrong value)."""
  running, steps = int(operands[0]), []
  for index, (op, operand) in enumerate(zip(ops, operands[1:])):
    result = _apply(running, op, int(operand)) + (shift if index == shift_at else 0)
    steps.append(format_step(running, op, int(operand), result, spaced=spaced))
    running = result
  return steps, running


def make_example(operands: Sequence[int], ops: Sequence[str]) -> Example:
  """`{"prompt", "answer", "solution", "num_steps"}` for `operands[0] ops[0] operands[1] ...`."""
  _check_chain(operands, ops)
  prompt = str(int(operands[0])) + "".join(f"{op}{int(y)}" for op, y in zip(ops, operands[1:])) + "="
  steps, answer = chain_steps(operands, ops)
  return {"prompt": prompt, "answer": str(answer), "solution": format_solution(steps, answer),
          "num_steps": len(steps)}


def _parse_chain(prompt: str) -> tuple[list[int], list[str]]:
  operands, ops = arithmetic.parse_prompt(prompt)
  if len(operands) < 2:
    raise ValueError(f"prompt must chain at least 2 operands, got prompt={prompt!r}")
  return operands, ops


def flawed_solution(example: Example, first_wrong_step: int,
                    rng: np.random.Generator) -> tuple[str, list[int]]:
  """A solution whose first slip is at step `first_wrong_step` (0-based), and its step labels.

  The slip shifts that step's result by a non-zero amount in [-9, 9] drawn from `rng`; later
  steps are right given the wrong running value, so the final answer is wrong too. Labels:
  `[1] * first_wrong_step + [0] * (num_steps - first_wrong_step)` (1 = correct).
  """
  operands, ops = _parse_chain(example["prompt"])
  num_steps = len(ops)
  if isinstance(first_wrong_step, bool) or not isinstance(first_wrong_step, (int, np.integer)) \
      or not 0 <= first_wrong_step < num_steps:
    raise ValueError(f"first_wrong_step must be an int in [0, {num_steps}) for prompt "
                     f"{example['prompt']!r}, got first_wrong_step={first_wrong_step!r}")
  shift = int(rng.choice(ERROR_SHIFTS))
  steps, answer = chain_steps(operands, ops, shift_at=int(first_wrong_step), shift=shift)
  labels = [1] * int(first_wrong_step) + [0] * (num_steps - int(first_wrong_step))
  return format_solution(steps, answer), labels


def solution_pair(example: Example, rng: np.random.Generator) -> tuple[str, str, int]:
  """(worked solution, flawed solution, its first wrong step): the first wrong step is drawn
  uniformly from `rng`, then the slip (`flawed_solution`)."""
  first_wrong = int(rng.integers(0, example["num_steps"]))
  flawed, labels = flawed_solution(example, first_wrong, rng)
  return example["solution"], flawed, first_error(labels)


def step_spans(text: str) -> list[tuple[int, int]]:
  """`(start, end)` character spans (`text[start:end]` is the line) of each step of `text`.

  Steps are the non-empty lines before the answer line (the first line starting with
  "####"); that line and anything after it are not steps. Empty lines hold no step.
  """
  spans, start = [], 0
  for line in text.split(STEP_SEPARATOR):
    if line.startswith(ANSWER_MARKER):
      break
    if line:
      spans.append((start, start + len(line)))
    start += len(line) + len(STEP_SEPARATOR)
  return spans


def step_end_offsets(text: str) -> list[int]:
  """Offset of the last character of each step: where a PRM's step score is read."""
  return [end - 1 for _, end in step_spans(text)]


def grade_steps(prompt: str, completion: str) -> list[int]:
  """1/0 per written step of `completion` (see `step_spans`): 1 iff the step is exactly the
  canonical step at that position and every earlier step is correct."""
  operands, ops = _parse_chain(prompt)
  running, labels, ok = operands[0], [], True
  for index, (start, end) in enumerate(step_spans(completion)):
    if ok and index < len(ops):
      result = _apply(running, ops[index], operands[index + 1])
      ok = completion[start:end] == format_step(running, ops[index], operands[index + 1], result)
      running = result
    else:
      ok = False
    labels.append(int(ok))
  return labels


def first_error(labels: Sequence[int]) -> int:
  """Index of the first 0 in `labels`, or -1 when every step is correct."""
  for index, label in enumerate(labels):
    if label not in (0, 1):
      raise ValueError(f"labels must be 0/1, got labels={list(labels)}")
    if label == 0:
      return index
  return -1


@dataclasses.dataclass(frozen=True)
class ChainSumsTask(arithmetic.SeededSplits):
  """Chain-sum task: disjoint, seeded train / eval splits.

  Attributes:
    seed: the only source of randomness; same seed and parameters -> same splits.
    num_train: number of training examples.
    num_eval: number of held-out examples (no prompt shared with train).
    max_value: operands are drawn uniformly from [0, max_value].
    min_terms, max_terms: the number of operands is drawn uniformly from [min_terms, max_terms].
  """

  seed: int = 0
  num_train: int = 5000
  num_eval: int = 500
  max_value: int = 99
  min_terms: int = 3
  max_terms: int = 5

  def __post_init__(self):
    if self.max_value < 0:
      raise ValueError(f"max_value must be >= 0, got max_value={self.max_value}")
    if not 2 <= self.min_terms <= self.max_terms:
      raise ValueError(f"need 2 <= min_terms <= max_terms, got min_terms={self.min_terms}, "
                       f"max_terms={self.max_terms}")
    if self.num_train < 0 or self.num_eval < 0:
      raise ValueError(f"num_train and num_eval must be >= 0, got num_train={self.num_train}, "
                       f"num_eval={self.num_eval}")
    space = sum((self.max_value + 1) ** k * len(OPERATIONS) ** (k - 1)
                for k in range(self.min_terms, self.max_terms + 1))
    if self.num_train + self.num_eval > space:
      raise ValueError(f"num_train + num_eval = {self.num_train + self.num_eval} exceeds the {space} "
                       "distinct prompts of this task")

  def _draw(self, rng: np.random.Generator) -> Example:
    k = int(rng.integers(self.min_terms, self.max_terms + 1))
    operands = [int(v) for v in rng.integers(0, self.max_value + 1, size=k)]
    ops = [OPERATIONS[i] for i in rng.integers(0, len(OPERATIONS), size=k - 1)]
    return make_example(operands, ops)


def build_task(task_config, seed: int) -> Task:
  """The chain-sums `Task` (task_config: num_train, num_eval, max_value, min_terms, max_terms);
  warm-up targets are the correct solutions; steps are lines (`step_end_offsets`)."""
  task = ChainSumsTask(
      seed=seed, num_train=task_config.num_train, num_eval=task_config.num_eval,
      max_value=task_config.max_value, min_terms=task_config.min_terms,
      max_terms=task_config.max_terms)
  train, held_out = task.splits()
  return Task(tokenizer_lib.build_arithmetic_tokenizer(), train, held_out,
              answer_format=AnswerFormat(marker=ANSWER_MARKER, prefix=" "), step_ends=step_end_offsets,
              solution_pair=solution_pair)
