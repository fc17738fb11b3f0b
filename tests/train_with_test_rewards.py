"""`python -m experiments.train` with extra reward functions registered, as a user's own script
would do: `python tests/train_with_test_rewards.py --config=... --workdir=...`."""
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402

from experiments import train  # noqa: E402
from jaxrl_reward import config_cli  # noqa: E402
from jaxrl_reward.rewards import base  # noqa: E402


@base.register_reward("test_always_none")
def always_none(prompts, completions, **columns):
  return [None] * len(completions)


@base.register_reward("test_raises")
def raises(prompts, completions, **columns):
  raise ZeroDivisionError("the reward's own bug")


@base.register_reward("test_sleeps_forever")
def sleeps_forever(prompts, completions, **columns):
  time.sleep(10**6)


if __name__ == "__main__":
  config_cli.check_argv()
  app.run(train.main)
