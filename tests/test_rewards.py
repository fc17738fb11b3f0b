"""Tests for the reward interface, registry and built-in rewards (jaxrl_reward/rewards)."""
import numpy as np
import pytest

from jaxrl_reward.rewards import (
    arithmetic_correctness,
    compute_rewards,
    extract_final_answer,
    format_reward,
    get_reward,
    register_reward,
    reward_names,
)


def test_registry_has_builtin_rewards():
  assert {"arithmetic_correctness", "format"} <= set(reward_names())
  assert get_reward("arithmetic_correctness") is arithmetic_correctness
  assert get_reward("format") is format_reward


def test_unknown_reward_name():
  with pytest.raises(KeyError, match="no_such_reward") as info:
    get_reward("no_such_reward")
  assert "arithmetic_correctness" in str(info.value) and "format" in str(info.value)


def test_register_twice_raises_unless_overwrite():
  @register_reward("test_constant")
  def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)

  with pytest.raises(ValueError, match="test_constant"):
    register_reward("test_constant")(lambda prompts, completions, **kw: [])
  assert get_reward("test_constant") is constant


def test_extract_final_answer():
  assert extract_final_answer("7+8+0=15 4+3+1=8 #### 85") == "85"
  assert extract_final_answer("a #### 1 b #### -9") == "-9"
  assert extract_final_answer("#### 1,234") == "1234"
  assert extract_final_answer("the answer is 12, or 13") == "13"
  assert extract_final_answer("#### x 12") is None
  assert extract_final_answer("no digits") is None


def test_arithmetic_correctness():
  completions = ["5+3+0=8 #### 8", "#### 9", "8", "#### 08", "nothing", "1 #### -3", "x"]
  answers = ["8", "8", 8, "8", "8", "-3", None]
  rewards = arithmetic_correctness(["p"] * 7, completions, answer=answers)
  assert rewards == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, None]
  with pytest.raises(ValueError, match="answer"):
    arithmetic_correctness(["p"], ["#### 1"])
  conversational = [[{"role": "assistant", "content": "#### 4"}]]
  assert arithmetic_correctness(["p"], conversational, answer=["4"]) == [1.0]


@pytest.mark.parametrize("completion", [
    "7+8+0=15 4+3+1=8 #### 85",
    "17-8-0=9 4-3-1=0 #### 9",
    "-(47-38) 17-8-0=9 4-3-1=0 #### -9",
    "5+0+0=5 #### 5",
    "7+8+0=15 4+3+1=8 => 85; 5-2-0=3 8-1-0=7 #### 73",
    "7+8+0=15 #### 3",  # wrong arithmetic, right format
    "5+0+0=5 #### 5 \n",
])
def test_format_positive(completion):
  assert format_reward(["p"], [completion]) == [1.0]


@pytest.mark.parametrize("completion", [
    "",
    "85",
    "#### 85",
    "7+8+0=15 4+3+1=8",
    "7+8+0=15 4+3+1=8 ####",
    "7+8+0=15 4+3+1=8 #### 85 #### 85",
    "7+8+0=15 #### 4+3+1=8 #### 85",
    "7+8+0=15 4+3+1=8 #### 85x",
    "7+8+0=15 4+3+1=8 #### eighty",
    "7+8+2=17 #### 17",
    " 5+0+0=5 #### 5",
    "5+0+0=5  #### 5",
    "7+8+0=154+3+1=8 #### 85",
])
def test_format_negative(completion):
  assert format_reward(["p"], [completion]) == [0.0]


def test_compute_rewards_stacks_and_nans():
  def half(prompts, completions, **kwargs):
    return [0.5 if i % 2 else None for i in range(len(completions))]

  prompts = ["1+1=", "1+1=", "2+2="]
  completions = ["1+1+0=2 #### 2", "#### 3", "2+2+0=4 #### 4"]
  columns = {"answer": ["2", "2", "4"], "solution": ["s", "s", "s"]}
  out = compute_rewards(["arithmetic_correctness", format_reward, half], prompts, completions, columns)
  assert out.dtype == np.float32 and out.shape == (3, 3)
  np.testing.assert_array_equal(out[:, 0], [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(out[:, 1], [1.0, 0.0, 1.0])
  assert np.isnan(out[0, 2]) and out[1, 2] == 0.5 and np.isnan(out[2, 2])


def test_compute_rewards_passes_columns_by_keyword():
  seen = {}

  def spy(prompts, completions, answer, **kwargs):
    seen.update(prompts=prompts, completions=completions, answer=answer, **kwargs)
    return [0.0] * len(completions)

  compute_rewards([spy], ["p"], ["c"], {"answer": ["a"], "extra": [3]})
  assert seen == {"prompts": ["p"], "completions": ["c"], "answer": ["a"], "extra": [3]}


def test_compute_rewards_length_error_names_the_function():
  def short_reward(prompts, completions, **kwargs):
    return [1.0]

  with pytest.raises(ValueError, match="short_reward"):
    compute_rewards([short_reward], ["a", "b"], ["c", "d"], {})


def test_compute_rewards_type_and_column_errors():
  def bad_value(prompts, completions, **kwargs):
    return ["high"] * len(completions)

  with pytest.raises(TypeError, match="bad_value"):
    compute_rewards([bad_value], ["a"], ["b"], {})
  with pytest.raises(ValueError, match="answer"):
    compute_rewards(["format"], ["a", "b"], ["c", "d"], {"answer": ["1"]})
  with pytest.raises(KeyError, match="nope"):
    compute_rewards(["nope"], ["a"], ["b"], {})
