"""Tests for the chain-sums task with known step correctness (jaxrl_reward/data/chain_sums.py)."""
import re
import types

import numpy as np
import pytest

from jaxrl_reward.data import chain_sums
from jaxrl_reward.data.chain_sums import (
    ChainSumsTask,
    first_error,
    flawed_solution,
    grade_steps,
    make_example,
    step_end_offsets,
    step_spans,
)
from jaxrl_reward.data.tokenizer import CHARACTERS
from jaxrl_reward.rewards.arithmetic import arithmetic_correctness

_STEP = re.compile(r"(-?\d+)([+-])(\d+)=(-?\d+)")
PROMPT = "12+7+30-5="


def _eval_prompt(prompt):
  assert re.fullmatch(r"\d+([+-]\d+)+=", prompt), prompt
  return eval(prompt[:-1])  # the reference: Python's own integer arithmetic


def _config(**overrides):
  values = dict(num_train=300, num_eval=100, max_value=99, min_terms=3, max_terms=5)
  values.update(overrides)
  return types.SimpleNamespace(**values)


def _correctness(examples, solutions):
  return arithmetic_correctness([ex["prompt"] for ex in examples], list(solutions),
                                answer=[ex["answer"] for ex in examples])


@pytest.fixture(scope="module")
def task():
  return chain_sums.build_task(_config(), seed=0)


def test_known_examples():
  assert make_example([12, 7, 30, 5], ["+", "+", "-"]) == {
      "prompt": PROMPT, "answer": "44", "solution": "12+7=19\n19+30=49\n49-5=44\n#### 44",
      "num_steps": 3}
  assert make_example([3, 12, 4, 0], ["-", "-", "+"])["solution"] == "3-12=-9\n-9-4=-13\n-13+0=-13\n#### -13"
  assert make_example([0, 5, 8], ["-", "+"])["solution"] == "0-5=-5\n-5+8=3\n#### 3"
  assert make_example([5, 0], ["+"])["solution"] == "5+0=5\n#### 5"


def test_every_solution_is_correct_and_rewarded(task):
  examples = task.train + task.eval
  for ex in examples:
    num_terms = ex["prompt"].count("+") + ex["prompt"].count("-") + 1
    assert 3 <= num_terms <= 5 and ex["num_steps"] == num_terms - 1
    assert int(ex["answer"]) == _eval_prompt(ex["prompt"])
    assert grade_steps(ex["prompt"], ex["solution"]) == [1] * ex["num_steps"]
    assert ex["solution"].endswith(f"\n#### {ex['answer']}")
  assert _correctness(examples, [ex["solution"] for ex in examples]) == [1.0] * len(examples)
  assert {ex["num_steps"] for ex in examples} == {2, 3, 4}
  assert any(int(ex["answer"]) < 0 for ex in examples)


def test_sft_targets_are_the_correct_solutions(task):
  batch = task.train[:8]
  assert task.sft_targets(batch, 0) == [ex["solution"] for ex in batch]
  assert task.answer_format.marker == "####" and task.answer_format.prefix == " "


def test_flawed_solutions_have_the_returned_labels_and_a_wrong_answer(task):
  rng = np.random.default_rng(0)
  examples, flawed = [], []
  for ex in task.train[:150]:
    correct_lines = ex["solution"].split("\n")
    for index in range(ex["num_steps"]):
      solution, labels = flawed_solution(ex, index, rng)
      assert labels == [1] * index + [0] * (ex["num_steps"] - index)
      assert grade_steps(ex["prompt"], solution) == labels
      assert first_error(labels) == index
      lines = solution.split("\n")
      assert len(lines) == ex["num_steps"] + 1 and lines[:index] == correct_lines[:index]
      steps = [_STEP.fullmatch(line).groups() for line in lines[:-1]]
      running = int(steps[0][0])
      for i, (left, op, operand, result) in enumerate(steps):  # later steps follow the wrong value
        assert int(left) == running
        right = running + int(operand) if op == "+" else running - int(operand)
        assert (int(result) - right != 0) == (i == index) and abs(int(result) - right) <= 9
        running = int(result)
      assert lines[-1] == f"#### {running}"
      examples.append(ex)
      flawed.append(solution)
  assert _correctness(examples, flawed) == [0.0] * len(flawed)


def test_flawed_solution_is_deterministic_in_the_rng():
  ex = make_example([12, 7, 30, 5], ["+", "+", "-"])
  a = [flawed_solution(ex, i, np.random.default_rng(5)) for i in range(3)]
  b = [flawed_solution(ex, i, np.random.default_rng(5)) for i in range(3)]
  assert a == b
  shifts = {flawed_solution(ex, 0, np.random.default_rng(s))[0].split("\n")[0] for s in range(60)}
  assert "12+7=19" not in shifts and len(shifts) > 5  # many different slips, never the right one


def test_step_spans_and_end_offsets():
  text = "12+7=19\n19+30=49\n49-5=44\n#### 44"
  assert step_spans(text) == [(0, 7), (8, 16), (17, 24)]
  assert step_end_offsets(text) == [6, 15, 23]
  assert [text[i] for i in step_end_offsets(text)] == ["9", "9", "4"]
  # Empty lines are no step; nothing at or after the answer line is a step.
  assert step_spans("ab\n\ncd\n") == [(0, 2), (4, 6)]
  assert step_spans("ab\n#### 4\ncd") == [(0, 2)]
  assert step_spans("#### 4") == [] and step_spans("") == []
  assert step_spans("12+7=19\n19+3") == [(0, 7), (8, 12)]  # a truncated last step still counts
  assert step_end_offsets(" x \ny") == [2, 4]


def test_step_end_offsets_of_solutions_end_each_step(task):
  for ex in task.eval:
    offsets = step_end_offsets(ex["solution"])
    assert len(offsets) == ex["num_steps"]
    assert all(ex["solution"][i + 1] == "\n" and ex["solution"][i] != "\n" for i in offsets)


@pytest.mark.parametrize("completion, labels", [
    ("12+7=19\n19+30=49\n49-5=44\n#### 44", [1, 1, 1]),
    ("12+7=19\n19+30=49\n49-5=44", [1, 1, 1]),                  # no answer line: steps still graded
    ("12+7=19\n\n19+30=49\n49-5=44\n#### 44", [1, 1, 1]),       # a blank line is no step
    ("12+7=19\n19+30=49\n#### 49", [1, 1]),                     # stops early: no wrong step written
    ("12+7=19\n49-5=44\n#### 44", [1, 0]),                      # skipped a step
    ("12+7=19\n19 + 30 = 49\n49-5=44\n#### 44", [1, 0, 0]),     # extra spaces
    (" 12+7=19\n19+30=49\n49-5=44\n#### 44", [0, 0, 0]),        # leading space
    ("12+7=19 \n19+30=49\n49-5=44\n#### 44", [0, 0, 0]),        # trailing space
    ("12+7=19\nblah blah\n49-5=44\n#### 44", [1, 0, 0]),        # garbage
    ("12+7=19\n19+30=049\n49-5=44\n#### 44", [1, 0, 0]),        # leading zero
    ("12+7=19\n19+3", [1, 0]),                                  # truncated
    ("12+7=20\n20+30=50\n50-5=45\n#### 45", [0, 0, 0]),         # wrong result, propagated
    ("12+7=18\n19+30=49\n49-5=44\n#### 44", [0, 0, 0]),         # judged by the first error
    ("12-7=5\n5+30=35\n35-5=30\n#### 30", [0, 0, 0]),           # wrong operator
    ("12+8=20\n20+30=50\n50-5=45\n#### 45", [0, 0, 0]),         # wrong operand
    ("12+7=19\n19+30=49\n49-5=44\n44+0=44\n#### 44", [1, 1, 1, 0]),  # an extra step
    ("#### 44", []),
    ("", []),
])
def test_grade_steps_of_written_completions(completion, labels):
  assert grade_steps(PROMPT, completion) == labels


def test_grade_steps_with_negative_running_values():
  assert grade_steps("3-12-4=", "3-12=-9\n-9-4=-13\n#### -13") == [1, 1]
  assert grade_steps("3-12-4=", "3-12=9\n9-4=5\n#### 5") == [0, 0]
  assert grade_steps("3-12-4=", "3-12=-9\n- 9-4=-13\n#### -13") == [1, 0]


def test_first_error():
  assert first_error([1, 1, 0, 1]) == 2
  assert first_error([0]) == 0
  assert first_error([1, 1]) == -1 and first_error([]) == -1


def test_splits_are_disjoint_deterministic_and_sized():
  train, held_out = ChainSumsTask(seed=3, num_train=400, num_eval=100).splits()
  assert len(train) == 400 and len(held_out) == 100
  train_prompts, eval_prompts = {ex["prompt"] for ex in train}, {ex["prompt"] for ex in held_out}
  assert len(train_prompts) == 400 and len(eval_prompts) == 100 and not train_prompts & eval_prompts
  assert ChainSumsTask(seed=3, num_train=400, num_eval=100).splits() == (train, held_out)
  other = ChainSumsTask(seed=4, num_train=400, num_eval=100).splits()
  assert [ex["prompt"] for ex in other[0]] != [ex["prompt"] for ex in train]


def test_small_task_uses_every_prompt_once():
  task = ChainSumsTask(seed=0, num_train=6, num_eval=2, max_value=1, min_terms=2, max_terms=2)
  prompts = [ex["prompt"] for ex in task.train + task.eval]
  assert sorted(prompts) == sorted(f"{a}{op}{b}=" for a in (0, 1) for b in (0, 1) for op in "+-")


def test_every_character_round_trips_through_the_tokenizer(task):
  tok = task.tokenizer
  rng = np.random.default_rng(1)
  texts = [ex["prompt"] for ex in task.train + task.eval] + [ex["solution"] for ex in task.train + task.eval]
  texts += [flawed_solution(ex, 0, rng)[0] for ex in task.eval]
  for text in texts:
    assert set(text) <= set(CHARACTERS), text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text


def _max_solution_length(max_value, num_terms):
  """Longest correct solution over every chain: the length of what is left to write depends
  only on the running value, so the longest prefix per running value suffices."""
  best = {a: 0 for a in range(max_value + 1)}
  for _ in range(num_terms - 1):
    nxt = {}
    for value, length in best.items():
      for op in "+-":
        for y in range(max_value + 1):
          result = value + y if op == "+" else value - y
          total = length + len(chain_sums.format_step(value, op, y, result)) + 1
          nxt[result] = max(nxt.get(result, 0), total)
    best = nxt
  return max(length + len(f"#### {value}") for value, length in best.items())


def test_max_lengths_for_the_defaults():
  """The documented bounds behind max_prompt_length / max_completion_length."""
  assert _max_solution_length(99, 5) == 57
  assert max(_max_solution_length(99, k) for k in (3, 4)) < 57
  longest = make_example([10, 20, 90, 10, 10], ["-", "-", "-", "+"])
  assert len(longest["solution"]) == 57 and len(longest["prompt"]) == 15
  assert len(make_example([99] * 5, ["+"] * 4)["prompt"]) == 15


def _flaw(first_wrong_step):
  return flawed_solution(make_example([1, 2, 3], ["+", "+"]), first_wrong_step, np.random.default_rng(0))


@pytest.mark.parametrize("call, match", [
    (lambda: make_example([1, 2], ["+", "-"]), "len\\(ops\\)"),
    (lambda: make_example([1], []), "operands"),
    (lambda: make_example([1, -2], ["+"]), "operands"),
    (lambda: make_example([1, 2], ["*"]), "ops"),
    (lambda: _flaw(2), "first_wrong_step"),
    (lambda: _flaw(-1), "first_wrong_step"),
    (lambda: _flaw(0.5), "first_wrong_step"),
    (lambda: _flaw(True), "first_wrong_step"),
    (lambda: grade_steps("12=", "12"), "prompt"),
    (lambda: grade_steps("12+x=", "12"), "prompt"),
    (lambda: first_error([1, 2]), "labels"),
    (lambda: ChainSumsTask(min_terms=1), "min_terms"),
    (lambda: ChainSumsTask(min_terms=4, max_terms=3), "max_terms"),
    (lambda: ChainSumsTask(max_value=-1), "max_value"),
    (lambda: ChainSumsTask(num_train=-1), "num_train"),
    (lambda: ChainSumsTask(num_eval=-1), "num_eval"),
    (lambda: ChainSumsTask(num_train=8, num_eval=1, max_value=1, min_terms=2, max_terms=2), "num_train"),
])
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
