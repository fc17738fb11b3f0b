"""Host reward functions under a deadline (rewards.timeout_s), stopped by Ctrl-C, type-checked, and
named in their errors (jaxrl_reward/rewards/base.py)."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import support
from jaxrl_reward import interrupts
from jaxrl_reward.rewards import base as rewards_base
from jaxrl_reward.rewards import timed_worker

PROMPTS, COMPLETIONS = ["p0", "p1", "p2"], ["1+1=2", "#### 3", "x"]

_RELEASE = threading.Event()  # set after each test, so that the threads of abandoned calls end


@pytest.fixture(autouse=True)
def release_hung_rewards():
  _RELEASE.clear()
  yield
  _RELEASE.set()


def hangs(prompts, completions, **columns):
  _RELEASE.wait(timeout=60)  # "forever": until the test is over (60 s: a broken deadline fails, not hangs)
  return [1.0] * len(completions)


def constant(prompts, completions, **columns):
  return [0.5] * len(completions)


def test_a_hung_reward_is_an_error_naming_it_within_its_deadline():
  start = time.monotonic()
  with pytest.raises(rewards_base.RewardTimeout, match=r"reward function 'hangs' did not return within 0.5 s "
                                                       r"\(rewards.timeout_s\)"):
    rewards_base.compute_rewards([constant, hangs], PROMPTS, COMPLETIONS, timeout_s=0.5)
  assert time.monotonic() - start < 3.0
  assert issubclass(rewards_base.RewardTimeout, RuntimeError)


def test_on_timeout_missing_gives_nan_for_the_hung_function_only_and_warns(capfd):
  out = rewards_base.compute_rewards([constant, hangs], PROMPTS, COMPLETIONS, timeout_s=0.3, on_timeout="missing",
                                     step=7)
  np.testing.assert_array_equal(out[:, 0], [0.5, 0.5, 0.5])
  assert np.isnan(out[:, 1]).all()
  err = capfd.readouterr().err
  assert "warning: reward function 'hangs' did not return within 0.3 s" in err and "at step 7" in err
  # The next call gets a fresh thread: the abandoned one is still blocked in `hangs`.
  np.testing.assert_array_equal(rewards_base.compute_rewards([constant], PROMPTS, COMPLETIONS, timeout_s=0.3),
                                [[0.5]] * 3)


def test_no_deadline_with_zero_or_none_and_bad_settings_are_refused():
  slow = lambda prompts, completions: (time.sleep(0.3), [2.0] * len(completions))[1]  # noqa: E731
  for timeout_s in (0, None):
    np.testing.assert_array_equal(rewards_base.compute_rewards([slow], PROMPTS, COMPLETIONS, timeout_s=timeout_s),
                                  [[2.0]] * 3)
  with pytest.raises(ValueError, match="rewards.on_timeout='skip'"):
    rewards_base.compute_rewards([constant], PROMPTS, COMPLETIONS, on_timeout="skip")
  with pytest.raises(ValueError, match="rewards.timeout_s=-1"):
    rewards_base.compute_rewards([constant], PROMPTS, COMPLETIONS, timeout_s=-1)


def test_ctrl_c_during_a_hung_reward_abandons_the_step_within_the_grace(capfd):
  with interrupts.StopRequests():
    ctrl_c = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))  # while the reward hangs
    ctrl_c.start()
    start = time.monotonic()
    with pytest.raises(interrupts.StepAbandoned, match="SIGINT while waiting for reward function 'hangs'") as info:
      rewards_base.compute_rewards([hangs], PROMPTS, COMPLETIONS, timeout_s=10)  # 10 s: a backstop
    assert time.monotonic() - start < 0.3 + rewards_base._STOP_GRACE_S + 0.7  # pylint: disable=protected-access
    ctrl_c.join()
  assert info.value.signum == signal.SIGINT
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  capfd.readouterr()  # the handler's "stopping after this step" line


def test_a_hung_reward_does_not_keep_the_interpreter_alive():
  script = ("import time\n"
            "from jaxrl_reward.rewards import base\n"
            "hang = lambda prompts, completions: time.sleep(10**6)\n"
            "print(base.compute_rewards([hang], ['p'], ['c'], timeout_s=0.2, on_timeout='missing'))\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert "[[nan]]" in done.stdout and "'<lambda>' did not return within 0.2 s" in done.stderr


@pytest.mark.parametrize("value", ["1.0", b"1", [1.0], object(), 1j, np.array([1.0]), np.array("1.0")])
def test_a_reward_that_is_not_a_real_number_is_a_type_error_naming_it(value):
  def returns_odd_value(prompts, completions, **columns):
    return [0.0, value, 1.0]

  with pytest.raises(TypeError, match=r"reward function 'returns_odd_value' returned .* at index 1; expected a real"):
    rewards_base.compute_rewards([returns_odd_value], PROMPTS, COMPLETIONS)


def test_a_reward_that_raises_is_an_error_naming_it_with_the_cause():
  def parses_answers(prompts, completions, **columns):
    return [float(c) for c in completions]

  with pytest.raises(RuntimeError, match=r"^reward function 'parses_answers' raised ValueError: could not convert "
                                         r"string to float: '1\+1=2'$") as info:
    rewards_base.compute_rewards([parses_answers], PROMPTS, COMPLETIONS)
  assert isinstance(info.value.__cause__, ValueError)
  # The wrong-count error is unchanged.
  def three_rewards(prompts, completions, **columns):
    return [1.0, 1.0, 1.0]

  with pytest.raises(ValueError, match="reward function 'three_rewards' returned 3 rewards for 2 completions"):
    rewards_base.compute_rewards([three_rewards], PROMPTS[:2], COMPLETIONS[:2], timeout_s=5)


def test_real_numbers_of_every_kind_give_the_same_numbers_as_before():
  values = [1, 0.25, True, np.float32(-0.5), np.int64(3), np.array(2.5), None]

  def mixed(prompts, completions, **columns):
    return values

  def correct(prompts, completions, answer):
    return [float(c.split("####")[-1].strip() == a) for c, a in zip(completions, answer)]

  completions = ["#### 4", "#### 5", "4", "#### 4", "#### 3", "#### 4", "####4"]
  out = rewards_base.compute_rewards([mixed, correct, "arithmetic_correctness"], ["2+2="] * 7, completions,
                                     {"answer": ["4"] * 7})
  assert out.dtype == np.float32 and out.shape == (7, 3)
  np.testing.assert_array_equal(out[:, 0], [1.0, 0.25, 1.0, -0.5, 3.0, 2.5, np.nan])
  np.testing.assert_array_equal(out[:, 1], [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
  reference = rewards_base.get_reward("arithmetic_correctness")(["2+2="] * 7, completions, answer=["4"] * 7)
  np.testing.assert_array_equal(out[:, 2], np.asarray(reference, np.float32))


def test_a_worker_process_started_by_a_reward_outlives_the_call():
  # Linux kills a PR_SET_PDEATHSIG child when the *thread* that started it exits: the calls must share
  # one long-lived thread, or math_verify's worker would restart at every step.
  worker = timed_worker.TimedWorker()

  def child_pid(prompts, completions, **columns):
    return [worker.call(os.getpid, timeout_s=60).value] * len(completions)

  try:
    first = rewards_base.compute_rewards([child_pid], ["p"], ["c"])
    time.sleep(0.3)
    second = rewards_base.compute_rewards([child_pid], ["p"], ["c"])
    assert worker.starts == 1 and first[0, 0] == second[0, 0]
  finally:
    worker.close()


@rewards_base.register_reward("test_hangs", overwrite=True)
def registered_hangs(prompts, completions, **columns):
  return hangs(prompts, completions)


def test_rl_step_reads_the_deadline_from_the_config(capfd):
  t = support.experiment(support.micro_config(**{
      "warmup.steps": 1, "rewards.names": ("test_hangs",), "rewards.weights": (1.0,), "rewards.timeout_s": 0.5,
      "rewards.on_timeout": "missing", "rewards.stop_after_missing_steps": 0}))
  rl = t.stage("rl")
  _, metrics = rl.step(rl.enter({}), rl.start)
  assert metrics["train/rewards/missing_frac"] == 1.0 and metrics["train/frac_valid"] == 0.0
  assert "reward function 'test_hangs' did not return within 0.5 s" in capfd.readouterr().err
