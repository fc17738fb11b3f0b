"""Tests for the math-verify reward and its time-limited worker process.

Covers jaxrl_reward/rewards/math_verify_reward.py and jaxrl_reward/rewards/timed_worker.py.
"""
import math
import os
import time

import pytest

pytest.importorskip("math_verify")

from jaxrl_reward.rewards import get_reward  # noqa: E402
from jaxrl_reward.rewards import math_verify_reward  # noqa: E402,F401  (registers "math_verify")
from jaxrl_reward.rewards.math_verify_reward import MathVerifyReward, extract_answer  # noqa: E402
from jaxrl_reward.rewards.timed_worker import TimedWorker  # noqa: E402

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate the power tower: hours


@pytest.fixture(scope="module")
def reward():
  r = MathVerifyReward(timeout_s=5.0)
  yield r
  r.close()


def test_extract_answer():
  assert extract_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert extract_answer("\\boxed{1} then \\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
  assert extract_answer("\\fbox{7}") == "7"
  assert extract_answer("\\boxed 7 is it") == "7"
  assert extract_answer("\\boxed{3} but \\boxed{4") is None  # truncated last box: no answer
  assert extract_answer("48/2 = 24\n#### 1,072\nextra") == "1072"
  assert extract_answer("#### $18.") == "18"
  assert extract_answer("it is 12, or 1,300") == "1300"
  assert extract_answer("x = -3") == "-3"
  assert extract_answer("5-3 = 2") == "2"
  assert extract_answer("3/4 of them") == "3/4"
  assert extract_answer("no number") is None


@pytest.mark.parametrize("gold, completion", [
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}."),
    ("0.5", "so $\\boxed{\\frac{1}{2}}$"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
    ("\\frac{3}{4}", "\\boxed{\\dfrac{3}{4}}"),
    ("x^2+1", "\\boxed{1+x^2}"),
    ("2", "\\boxed{x = 2}"),
    ("1000", "\\boxed{1,000}"),
    ("72", "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"),
    ("3000", "#### 3,000"),
    ("72", "so the total is 72.0"),
])
def test_equivalent_answers_score_one(reward, gold, completion):
  assert reward(["p"], [completion], answer=[gold]) == [1.0]


@pytest.mark.parametrize("gold, completion", [
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{6}}"),
    ("\\pi", "\\boxed{3.14159}"),
    ("72", "#### 73"),
    ("72", "#### 7,2000"),
    ("72", "I am not sure."),
    ("5", "\\boxed{5"),
])
def test_different_answers_score_zero(reward, gold, completion):
  assert reward(["p"], [completion], answer=[gold]) == [0.0]


def test_reference_answer_forms(reward):
  completions = ["#### 72", "\\boxed{\\frac{3}{4}}", "#### 5", "[{}]"]
  answers = ["Natalia sold 48+24=72.\n#### 72", "So $\\boxed{0.75}$.", None, ""]
  assert reward(["p"] * 4, completions, answer=answers) == [1.0, 1.0, None, None]
  conversational = [[{"role": "assistant", "content": "\\boxed{\\frac{2}{4}}"}]]
  assert reward(["p"], conversational, answer=["0.5"]) == [1.0]
  with pytest.raises(ValueError, match="answer"):
    reward(["p"], ["#### 1"])


def test_registered_reward():
  fn = get_reward("math_verify")
  assert fn is math_verify_reward.math_verify_correctness
  assert fn(["p", "p"], ["#### 1,234", "#### 1234.5"], answer=["1234", "1234"]) == [1.0, 0.0]  # no worker needed


def test_pathological_input_times_out_and_later_calls_work():
  reward = MathVerifyReward(timeout_s=1.0)
  try:
    assert reward(["p"], ["\\boxed{\\frac{1}{2}}"], answer=["0.5"]) == [1.0]  # the worker is up and warm
    start = time.monotonic()
    rewards = reward(["p"] * 3, [PATHOLOGICAL, "#### 7", PATHOLOGICAL], answer=["1", "7", "1"])
    elapsed = time.monotonic() - start
    assert rewards == [0.0, 1.0, 0.0]  # killed at 1 s; the repeat is answered from the cache
    assert elapsed < 5.0, elapsed
    assert reward.num_timeouts == 1
    # later checks go on in the restarted worker
    assert reward(["p"] * 2, ["\\boxed{\\sqrt{8}}", "\\boxed{\\frac{1}{3}}"],
                  answer=["2\\sqrt{2}", "\\frac{2}{5}"]) == [1.0, 0.0]
    reward.timeout_reward = None  # a timed-out check left out instead of scored 0.0
    assert reward(["p"], [PATHOLOGICAL], answer=["2"]) == [None]
    assert reward.num_timeouts == 2
  finally:
    reward.close()


def test_worker_outcomes_and_restart():
  worker = TimedWorker()
  try:
    assert worker.call(math.sqrt, 16.0, timeout_s=10).value == 4.0
    first_pid = worker.call(os.getpid, timeout_s=10).value
    start = time.monotonic()
    outcome = worker.call(time.sleep, 60, timeout_s=0.5)
    assert outcome.status == "timeout" and time.monotonic() - start < 3.0
    error = worker.call(math.sqrt, -1.0, timeout_s=10)
    assert error.status == "error" and "math domain error" in error.error
    assert worker.call(os.getpid, timeout_s=10).value != first_pid  # a new child after the timeout
    crashed = worker.call(os._exit, 3, timeout_s=10)
    assert crashed.status == "crashed"
    assert worker.call(math.sqrt, 9.0, timeout_s=10).value == 3.0
    assert worker.starts == 3
    with pytest.raises(ValueError, match="timeout_s"):
      worker.call(math.sqrt, 1.0, timeout_s=0)
  finally:
    worker.close()


def test_worker_memory_limit_and_startup_failure():
  with TimedWorker(memory_limit_mb=1024) as worker:
    outcome = worker.call(bytearray, 2 * 1024**3, timeout_s=10)
    assert outcome.status == "error" and "MemoryError" in outcome.error
    assert worker.call(len, "abc", timeout_s=10).value == 3
  broken = TimedWorker(preload=("no_such_module_for_the_test",))
  with pytest.raises(RuntimeError, match="no_such_module_for_the_test"):
    broken.call(len, "abc", timeout_s=10)
