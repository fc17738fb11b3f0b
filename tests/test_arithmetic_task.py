"""Tests for the synthetic arithmetic task (jaxrl_reward/data/arithmetic.py)."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_reward.data import arithmetic
from jaxrl_reward.data.arithmetic import ArithmeticTask, make_splits, solve
from jaxrl_reward.rewards import arithmetic_correctness, format_reward, matches_format


def _eval_prompt(prompt):
  assert re.fullmatch(r"\d+([+-]\d+)+=", prompt), prompt
  return eval(prompt[:-1])  # the reference: Python's own integer arithmetic


def test_known_examples():
  assert solve("47+38=") == ("7+8+0=15 4+3+1=8 #### 85", "85")
  assert solve("47-38=") == ("17-8-0=9 4-3-1=0 #### 9", "9")
  assert solve("38-47=") == ("-(47-38) 17-8-0=9 4-3-1=0 #### -9", "-9")
  assert solve("99+99=") == ("9+9+0=18 9+9+1=19 #### 198", "198")
  assert solve("5+0=") == ("5+0+0=5 #### 5", "5")
  assert solve("0-0=") == ("0-0-0=0 #### 0", "0")
  assert solve("47+38-12=") == ("7+8+0=15 4+3+1=8 => 85; 5-2-0=3 8-1-0=7 #### 73", "73")


def test_borrow_through_zero():
  # 100 - 1: units borrow, tens 0 - 0 - 1 borrows again, hundreds 1 - 0 - 1 = 0.
  assert solve("100-1=") == ("10-1-0=9 10-0-1=9 1-0-1=0 #### 99", "99")


def test_splits_are_disjoint_and_sized():
  train, held_out = make_splits(seed=0, num_train=3000, num_eval=400)
  assert len(train) == 3000 and len(held_out) == 400
  train_prompts = {ex["prompt"] for ex in train}
  eval_prompts = {ex["prompt"] for ex in held_out}
  assert len(train_prompts) == 3000 and len(eval_prompts) == 400
  assert not train_prompts & eval_prompts


def test_splits_are_deterministic_in_the_seed():
  a = make_splits(seed=3, num_train=200, num_eval=50)
  b = make_splits(seed=3, num_train=200, num_eval=50)
  c = make_splits(seed=4, num_train=200, num_eval=50)
  assert a == b
  assert [ex["prompt"] for ex in a[0]] != [ex["prompt"] for ex in c[0]]
  assert [ex["prompt"] for ex in a[1]] != [ex["prompt"] for ex in c[1]]


@pytest.mark.parametrize("kwargs", [
    {},
    {"operations": ("+",)},
    {"allow_negative": False},
    {"num_operands": 3},
    {"num_operands": 4, "max_value": 999},
])
def test_every_solution_is_correct_and_rewarded(kwargs):
  train, held_out = make_splits(seed=1, num_train=300, num_eval=100, **kwargs)
  examples = train + held_out
  for ex in examples:
    value = _eval_prompt(ex["prompt"])
    assert ex["answer"] == str(value), ex
    assert ex["solution"].endswith(f"#### {value}"), ex
    assert ex["solution"].count("####") == 1
    assert matches_format(ex["solution"]), ex
  prompts = [ex["prompt"] for ex in examples]
  solutions = [ex["solution"] for ex in examples]
  answers = [ex["answer"] for ex in examples]
  assert arithmetic_correctness(prompts, solutions, answer=answers) == [1.0] * len(examples)
  assert format_reward(prompts, solutions) == [1.0] * len(examples)
  if not kwargs.get("allow_negative", True) or kwargs.get("operations") == ("+",):
    assert all(int(a) >= 0 for a in answers)


def test_corrupted_solution_gets_zero_reward():
  train, _ = make_splits(seed=0, num_train=50, num_eval=0)
  prompts = [ex["prompt"] for ex in train]
  answers = [ex["answer"] for ex in train]
  corrupted = [ex["solution"].rsplit("####", 1)[0] + f"#### {int(ex['answer']) + 1}" for ex in train]
  assert arithmetic_correctness(prompts, corrupted, answer=answers) == [0.0] * len(train)


def test_default_lengths_and_negatives():
  train, held_out = ArithmeticTask(seed=0).splits()
  examples = train + held_out
  assert max(len(ex["prompt"]) for ex in examples) <= 6
  assert max(len(ex["solution"]) for ex in examples) <= 40
  assert any(ex["answer"].startswith("-") for ex in examples)
  assert any("+" in ex["prompt"] for ex in examples) and any("-" in ex["prompt"] for ex in examples)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 9999), st.sampled_from("+-"), st.integers(0, 9999))
def test_solve_matches_python(a, op, b):
  solution, answer = solve(f"{a}{op}{b}=")
  assert int(answer) == (a + b if op == "+" else a - b)
  assert matches_format(solution)


def test_dataset_columns():
  task = ArithmeticTask(seed=0, num_train=20, num_eval=5)
  train_ds, eval_ds = task.datasets()
  assert train_ds.column_names == ["prompt", "answer", "solution"]
  assert len(train_ds) == 20 and len(eval_ds) == 5
  assert train_ds[0] == task.train[0]
  assert arithmetic.to_dataset(task.eval)["prompt"] == [ex["prompt"] for ex in task.eval]


def test_invalid_arguments():
  with pytest.raises(ValueError, match="operations"):
    ArithmeticTask(operations=("*",))
  with pytest.raises(ValueError, match="num_operands"):
    ArithmeticTask(num_operands=1)
  with pytest.raises(ValueError, match="exceeds"):
    ArithmeticTask(max_value=3, num_train=30, num_eval=10)
  with pytest.raises(ValueError, match="prompt"):
    solve("47+38")


def test_noisy_solutions_corrupt_only_the_answer():
  train, _ = arithmetic.ArithmeticTask(seed=3, num_train=400, num_eval=0).splits()
  clean = [e["solution"] for e in train]
  assert arithmetic.noisy_solutions(train, noise=0.0, seed=0, step=5) == clean
  noisy = arithmetic.noisy_solutions(train, noise=0.4, seed=0, step=5)
  assert noisy == arithmetic.noisy_solutions(train, noise=0.4, seed=0, step=5)
  assert noisy != arithmetic.noisy_solutions(train, noise=0.4, seed=0, step=6)
  rewards = arithmetic_correctness(None, noisy, answer=[e["answer"] for e in train])
  wrong = [r == 0.0 for r in rewards]
  assert 0.3 < np.mean(wrong) < 0.5  # about `noise` of them
  for sol, bad, is_wrong in zip(clean, noisy, wrong):
    assert matches_format(bad)
    assert sol.rpartition("####")[0] == bad.rpartition("####")[0]  # the column work is kept
    assert (sol != bad) == is_wrong
  with pytest.raises(ValueError, match="noise"):
    arithmetic.noisy_solutions(train, noise=1.0, seed=0, step=0)


def test_systematic_shift_moves_every_corrupted_answer_by_the_same_amount():
  train, _ = arithmetic.ArithmeticTask(seed=3, num_train=400, num_eval=0).splits()
  noisy = arithmetic.noisy_solutions(train, noise=0.6, seed=0, step=5, shift=1)
  shifts = [int(bad.rpartition("####")[2]) - int(e["answer"]) for e, bad in zip(train, noisy)]
  assert set(shifts) == {0, 1}
  assert 0.5 < np.mean(shifts) < 0.7  # about `noise` of them, all off by +1
  # The diffuse default moves answers by many different amounts.
  diffuse = arithmetic.noisy_solutions(train, noise=0.6, seed=0, step=5)
  assert len({int(b.rpartition("####")[2]) - int(e["answer"]) for e, b in zip(train, diffuse)}) > 10
