"""Tests for the long free-form answer arithmetic task and its verifier rewards."""
import collections
import re
import types

import numpy as np
import pytest

from jaxrl_reward.data import arithmetic, arithmetic_long
from jaxrl_reward.data.arithmetic_long import TEMPLATES, long_answer, make_long_examples, noisy_long_solutions
from jaxrl_reward.data.tokenizer import CHARACTERS
from jaxrl_reward.rewards import base
from jaxrl_reward.rewards.long_answer import long_answer_exact, long_answer_result

_SOLUTION = re.compile(r"(.+ #### )(.+)")


def _config(**overrides):
  values = dict(num_train=300, num_eval=100, max_value=99, answer_noise=0.0, answer_shift=0)
  values.update(overrides)
  return types.SimpleNamespace(**values)


def _template_index(example):
  """Which template of its operation produced `example["answer"]` (exactly one must)."""
  op = "+" if "+" in example["prompt"] else "-"
  matches = [i for i in range(len(TEMPLATES[op]))
             if long_answer(example["prompt"], int(example["result"]), i) == example["answer"]]
  assert len(matches) == 1, (example, matches)
  return op, matches[0]


def test_known_phrasings():
  assert [long_answer("47+38=", 85, i) for i in range(4)] == [
      "the sum of 47 and 38 is 85", "adding 38 to 47 gives 85", "47 plus 38 equals 85",
      "so the total is 85"]
  assert [long_answer("47-38=", 9, i) for i in range(4)] == [
      "the difference of 47 and 38 is 9", "taking 38 from 47 leaves 9", "47 minus 38 equals 9",
      "so the result is 9"]
  assert long_answer("38-47=", -9, 0) == "the difference of 38 and 47 is -9"
  assert long_answer("38-47=", -9, 2) == "38 minus 47 equals -9"


def test_templates_are_plain_and_end_with_the_result():
  for op, templates in TEMPLATES.items():
    assert len(templates) >= 4 and len(set(templates)) == len(templates)
    for template in templates:
      assert template.endswith(" {r}"), template
      assert re.fullmatch(r"[a-z0-9 {}-]+", template), template


def test_only_two_operands():
  with pytest.raises(ValueError, match="47\\+38-12="):
    long_answer("47+38-12=", 73, 0)
  examples = arithmetic.make_splits(seed=0, num_train=5, num_eval=0, num_operands=3)[0]
  with pytest.raises(ValueError, match=re.escape(examples[0]["prompt"])):
    make_long_examples(examples, seed=0)
  with pytest.raises(ValueError, match="template_index"):
    long_answer("47+38=", 85, 4)


def test_every_solution_is_column_work_then_the_phrase():
  task = arithmetic_long.build_task(_config(), seed=1)
  plain_train, plain_eval = arithmetic.make_splits(seed=1, num_train=300, num_eval=100)
  assert len(task.train) == 300 and len(task.eval) == 100
  for example, plain in zip(task.train + task.eval, plain_train + plain_eval, strict=True):
    assert set(example) == {"prompt", "answer", "result", "solution"}
    assert example["prompt"] == plain["prompt"]
    assert example["result"] == plain["answer"] == str(eval(example["prompt"][:-1]))
    match = _SOLUTION.fullmatch(example["solution"])
    assert match, example
    work, phrase = match.groups()
    assert phrase == example["answer"]
    assert re.search(r"-?\d+$", phrase).group() == example["result"]
    assert re.search(r"(^|[^-\d])-?\d+$", phrase), phrase  # the number is whole, e.g. not "1-9"
    # The column work is the plain task's, marker included.
    assert work == plain["solution"].rpartition("#### ")[0] + "#### "
    _template_index(example)
  assert task.sft_targets(task.train, 0) == [ex["solution"] for ex in task.train]  # noise 0


def test_every_template_is_used():
  task = arithmetic_long.build_task(_config(num_train=200, num_eval=0), seed=0)
  counts = collections.Counter(_template_index(ex) for ex in task.train)
  assert set(counts) == {(op, i) for op, templates in TEMPLATES.items() for i in range(len(templates))}
  assert min(counts.values()) >= 5, counts


def test_deterministic_in_the_seed():
  a = arithmetic_long.build_task(_config(), seed=3)
  b = arithmetic_long.build_task(_config(), seed=3)
  assert (a.train, a.eval) == (b.train, b.eval)
  examples = arithmetic.make_splits(seed=3, num_train=200, num_eval=0)[0]
  x, y = make_long_examples(examples, seed=3), make_long_examples(examples, seed=4)
  assert x == make_long_examples(examples, seed=3)
  assert [ex["result"] for ex in x] == [ex["result"] for ex in y]
  assert [ex["answer"] for ex in x] != [ex["answer"] for ex in y]
  # The draw of an example depends on its position, not on the others.
  assert make_long_examples(examples[:50], seed=3) == x[:50]


def test_characters_round_trip_through_the_tokenizer():
  task = arithmetic_long.build_task(_config(), seed=0)
  tok = task.tokenizer
  for example in task.train + task.eval:
    for field in ("prompt", "answer", "result", "solution"):
      text = example[field]
      assert set(text) <= set(CHARACTERS), (field, text)
      ids = tok(text, add_special_tokens=False)["input_ids"]
      assert len(ids) == len(text) and tok.unk_token_id not in ids
      assert tok.decode(ids, skip_special_tokens=True) == text


def test_rewards_on_hand_made_completions():
  answer = ["adding 38 to 47 gives 85"] * 6 + ["the difference of 38 and 47 is -9"] * 3
  result = ["85"] * 6 + ["-9"] * 3
  completions = [
      "7+8+0=15 4+3+1=8 #### adding 38 to 47 gives 85",  # the reference phrasing
      "7+8+0=15 4+3+1=8 #### the sum of 47 and 38 is 85",  # right number, other phrasing
      "7+8+0=15 4+3+1=8 #### adding 38 to 47 gives 86",  # wrong number
      "7+8+0=15 4+3+1=8 adding 38 to 47 gives 85",  # no marker
      "#### 85 #### adding 38 to 47 gives",  # no integer after the last marker
      "#### so the total is 85 ",  # trailing space stripped
      "-(47-38) 17-8-0=9 4-3-1=0 #### the difference of 38 and 47 is -9",
      "-(47-38) 17-8-0=9 4-3-1=0 #### the difference of 38 and 47 is 9",  # sign lost
      [{"role": "assistant", "content": "#### 38 minus 47 equals -9"}],  # conversational
  ]
  kwargs = dict(prompts=["p"] * 9, completions=completions, answer=answer, result=result)
  assert long_answer_exact(**kwargs) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
  assert long_answer_result(**kwargs) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
  # An integer answer column, and an example the reward does not apply to.
  assert long_answer_result(["p"] * 2, ["#### is 85", "#### is 85"], result=[85, None]) == [1.0, None]
  assert long_answer_exact(["p"], ["#### x"], answer=[""]) == [None]


def test_rewards_need_their_columns():
  with pytest.raises(ValueError, match="'answer'"):
    long_answer_exact(["p"], ["#### so the total is 85"], result=["85"])
  with pytest.raises(ValueError, match="'result'"):
    long_answer_result(["p"], ["#### so the total is 85"], answer=["so the total is 85"])


def test_rewards_are_registered():
  assert base.get_reward("long_answer_exact") is long_answer_exact
  assert base.get_reward("long_answer_result") is long_answer_result
  task = arithmetic_long.build_task(_config(num_train=0), seed=0)
  columns = {k: [ex[k] for ex in task.eval] for k in ("answer", "result")}
  prompts = [ex["prompt"] for ex in task.eval]
  rewards = base.compute_rewards(["long_answer_exact", "long_answer_result"], prompts,
                                 [ex["solution"] for ex in task.eval], columns)
  assert (rewards == 1.0).all()  # the reference solutions themselves


def test_exact_match_rewards_a_correct_policy_by_luck_of_the_phrasing():
  # A policy that always gets the number right but always uses its own favourite phrasing.
  task = arithmetic_long.build_task(_config(num_train=2000, num_eval=0), seed=0)
  completions = []
  for ex in task.train:
    work = _SOLUTION.fullmatch(ex["solution"]).group(1)
    completions.append(work + long_answer(ex["prompt"], int(ex["result"]), 0))
  columns = dict(answer=[ex["answer"] for ex in task.train], result=[ex["result"] for ex in task.train])
  exact = np.mean(long_answer_exact([ex["prompt"] for ex in task.train], completions, **columns))
  assert np.mean(long_answer_result([ex["prompt"] for ex in task.train], completions, **columns)) == 1.0
  assert abs(exact - 1 / len(TEMPLATES["+"])) < 0.05, exact


@pytest.mark.parametrize("shift", [1, -3, 0])
def test_noisy_solutions_shift_the_final_number(shift):
  task = arithmetic_long.build_task(_config(num_train=2000, num_eval=0), seed=2)
  noisy = noisy_long_solutions(task.train, noise=0.6, seed=2, step=5, shift=shift)
  assert noisy == noisy_long_solutions(task.train, noise=0.6, seed=2, step=5, shift=shift)
  assert noisy != noisy_long_solutions(task.train, noise=0.6, seed=2, step=6, shift=shift)
  corrupted = 0
  for ex, target in zip(task.train, noisy, strict=True):
    if target == ex["solution"]:
      continue
    corrupted += 1
    number = re.search(r"-?\d+$", target).group()
    head = target[:len(target) - len(number)]
    # Only the final number moved: column work and the rest of the phrase are unchanged.
    assert ex["solution"] == head + ex["result"]
    delta = int(number) - int(ex["result"])
    assert delta == shift if shift else (delta != 0 and -9 <= delta <= 9), (ex, target)
    assert long_answer_result(["p"], [target], result=[ex["result"]]) == [0.0]
  assert abs(corrupted / len(noisy) - 0.6) < 0.05, corrupted
  # The same examples are corrupted by the same amounts as in the plain task.
  plain = arithmetic.noisy_solutions(
      [{"solution": _SOLUTION.fullmatch(ex["solution"]).group(1) + ex["result"]} for ex in task.train],
      noise=0.6, seed=2, step=5, shift=shift)
  assert [p.rpartition(" ")[2] for p in plain] == [re.search(r"-?\d+$", t).group() for t in noisy]


def test_noise_zero_and_bounds():
  task = arithmetic_long.build_task(_config(num_train=50, num_eval=0), seed=0)
  assert noisy_long_solutions(task.train, noise=0.0, seed=0, step=0) == [ex["solution"] for ex in task.train]
  with pytest.raises(ValueError, match="noise"):
    noisy_long_solutions(task.train, noise=1.0, seed=0, step=0)
  noisy_task = arithmetic_long.build_task(_config(num_train=50, num_eval=0, answer_noise=0.5, answer_shift=1), seed=0)
  assert noisy_task.sft_targets(noisy_task.train, 3) == noisy_long_solutions(
      noisy_task.train, noise=0.5, seed=0, step=3, shift=1)


def test_max_lengths_for_max_value_99():
  # Over every prompt of the default task and every phrasing, not just a sampled split.
  longest_solution, longest_answer = "", ""
  for a in range(100):
    for b in range(100):
      for op in TEMPLATES:
        solution, result = arithmetic.solve(f"{a}{op}{b}=")
        work = solution.rpartition("#### ")[0] + "#### "
        for i in range(len(TEMPLATES[op])):
          phrase = long_answer(f"{a}{op}{b}=", int(result), i)
          longest_answer = max(longest_answer, phrase, key=len)
          longest_solution = max(longest_solution, work + phrase, key=len)
  print(f"max_value=99: longest solution {len(longest_solution)} chars {longest_solution!r}, "
        f"longest answer {len(longest_answer)} chars {longest_answer!r}")
  assert len(longest_solution) == 65 and len(longest_answer) == 34  # as in the module docstring
  task = arithmetic_long.build_task(_config(num_train=2000, num_eval=500), seed=0)
  assert max(len(ex["solution"]) for ex in task.train + task.eval) <= 65
