"""The arithmetic task with a long free-form final answer (for likelihood rewards).

Same prompts and column work as `arithmetic`, but the final answer after `####` is a
sentence that names the operands and ends with the result, in one of several phrasings
(`TEMPLATES`) drawn at random per example:

    47+38=  ->  7+8+0=15 4+3+1=8 #### adding 38 to 47 gives 85
    38-47=  ->  -(47-38) 17-8-0=9 4-3-1=0 #### the difference of 38 and 47 is -9

An example is `{"prompt", "answer", "result", "solution"}`: `answer` is the reference
phrasing (`"adding 38 to 47 gives 85"`), `result` the integer answer as a string (`"85"`,
the `answer` of the plain task), `solution` the column work, `"#### "` and the phrasing.

Why: the phrasings are equally valid and the reference one is a coin toss, so an
exact-match verifier (`rewards.long_answer.long_answer_exact`) rewards even a correct
policy only about once in `len(TEMPLATES[op])` (4) completions, and mostly for the luck
of the phrasing. The policy's log-prob of the reference answer after its own chain of
thought does not care which phrasing it would have written: its number is what a wrong
chain changes, so it still ranks chains of thought by whether they lead to the right
number. `long_answer_result` (the last integer of the phrase) is the oracle to compare with.

Only two-operand prompts are supported. The phrasings use lower-case ASCII letters,
digits, spaces and "-" only, so every solution is inside the tokenizer's `CHARACTERS`. For the default task (operands in
0..99) the longest answer is 34 characters (`"the difference of 39 and 85 is -46"`) and
the longest solution 65 (`"-(30-11) 10-1-0=9 3-1-1=1 #### the difference of 11 and 30 is
-19"`), against 34 for the plain task; see `tests/test_arithmetic_long.py`.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from jaxrl_reward.data import arithmetic
from jaxrl_reward.data import tokenizer as tokenizer_lib
from jaxrl_reward.data.task import AnswerFormat, Task

ANSWER_MARKER = arithmetic.ANSWER_MARKER

# Phrasings of `a op b = r`; each ends with the result so the number is the last token run.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "+": (
        "the sum of {a} and {b} is {r}",
        "adding {b} to {a} gives {r}",
        "{a} plus {b} equals {r}",
        "so the total is {r}",
    ),
    "-": (
        "the difference of {a} and {b} is {r}",
        "taking {b} from {a} leaves {r}",
        "{a} minus {b} equals {r}",
        "so the result is {r}",
    ),
}

_TRAILING_INTEGER = re.compile(r"-?\d+$")


def _two_operands(prompt: str) -> tuple[int, str, int]:
  operands, ops = arithmetic.parse_prompt(prompt)
  if len(operands) != 2:
    raise ValueError(f"the long-answer task supports two-operand prompts only, got prompt={prompt!r}")
  return operands[0], ops[0], operands[1]


def long_answer(prompt: str, result: int, template_index: int) -> str:
  """The phrasing `TEMPLATES[op][template_index]` of `prompt` (e.g. `"47+38="`) = `result`."""
  a, op, b = _two_operands(prompt)
  templates = TEMPLATES[op]
  if not 0 <= template_index < len(templates):
    raise ValueError(f"template_index must be in [0, {len(templates)}) for op {op!r}, got {template_index}")
  return templates[template_index].format(a=a, b=b, r=int(result))


def _column_work(solution: str) -> str:
  """`solution` up to and including `"#### "` (the column work and the marker)."""
  head, sep, _ = solution.rpartition(ANSWER_MARKER)
  if not sep:
    raise ValueError(f"solution has no {ANSWER_MARKER!r} marker: {solution!r}")
  return f"{head}{ANSWER_MARKER} "


def make_long_examples(examples: Sequence[dict], *, seed: int) -> list[dict]:
  """Long-answer versions of arithmetic `examples` (`{"prompt", "answer", "solution"}`).

  The phrasing of example `i` is drawn by `np.random.default_rng([seed, i])`, so it
  depends on the seed and the position only (pass train and eval together for distinct
  draws) and not on the other examples.
  """
  out = []
  for index, ex in enumerate(examples):
    _, op, _ = _two_operands(ex["prompt"])
    template_index = int(np.random.default_rng([seed, index]).integers(len(TEMPLATES[op])))
    phrase = long_answer(ex["prompt"], int(ex["answer"]), template_index)
    out.append({"prompt": ex["prompt"], "answer": phrase, "result": str(ex["answer"]),
                "solution": _column_work(ex["solution"]) + phrase})
  return out


def corrupt_long_answer(solution: str, rng: np.random.Generator, shift: int = 0) -> str:
  """`solution` with the number ending its long answer shifted (column work unchanged).

  By `shift`, or, when `shift` is 0, by a random non-zero amount in [-9, 9] (as in
  `arithmetic.corrupt_final_answer`).
  """
  match = _TRAILING_INTEGER.search(solution)
  if ANSWER_MARKER not in solution or match is None or match.start() < solution.rindex(ANSWER_MARKER):
    raise ValueError(f"solution does not end with '{ANSWER_MARKER} ... <integer>': {solution!r}")
  if not shift:
    shift = int(rng.choice([d for d in range(-9, 10) if d != 0]))
  return f"{solution[:match.start()]}{int(match.group()) + shift}"


def noisy_long_solutions(examples: Sequence[dict], *, noise: float, seed: int, step: int,
                         shift: int = 0) -> list[str]:
  """Long solutions of `examples`, each with a wrong final number with probability `noise`.

  `arithmetic.noisy_solutions` with `corrupt_long_answer` (same draws, so the same examples
  are corrupted by the same amounts); deterministic in (seed, step).
  """
  return arithmetic.noisy_solutions(examples, noise=noise, seed=seed, step=step, shift=shift,
                                    corrupt=corrupt_long_answer)


def build_task(task_config, seed: int) -> Task:
  """The long-answer arithmetic `Task` (task_config: num_train, num_eval, max_value,
  answer_noise, answer_shift); prompts and column work as the plain arithmetic task's."""
  task = arithmetic.ArithmeticTask(
      seed=seed, num_train=task_config.num_train, num_eval=task_config.num_eval,
      max_value=task_config.max_value)
  train, held_out = task.splits()
  examples = make_long_examples(train + held_out, seed=seed)
  train, held_out = examples[:len(train)], examples[len(train):]

  def sft_targets(batch: list[dict], step: int) -> list[str]:
    return noisy_long_solutions(batch, noise=task_config.answer_noise, seed=seed, step=step,
                                shift=task_config.answer_shift)

  return Task(tokenizer_lib.build_arithmetic_tokenizer(), train, held_out, sft_targets,
              answer_format=AnswerFormat(marker=ANSWER_MARKER, prefix=" "))
