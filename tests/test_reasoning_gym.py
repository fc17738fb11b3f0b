"""Tests for reasoning-gym tasks and their reward.

Covers jaxrl_reward/data/reasoning_gym_source.py and jaxrl_reward/rewards/reasoning_gym_reward.py.
"""
import time
import types

import pytest

pytest.importorskip("reasoning_gym")

from jaxrl_reward.data import reasoning_gym_source as source  # noqa: E402
from jaxrl_reward.rewards import compute_rewards, get_reward  # noqa: E402
from jaxrl_reward.rewards import reasoning_gym_reward  # noqa: E402
from jaxrl_reward.rewards.reasoning_gym_reward import ReasoningGymReward, extract_answer  # noqa: E402

SMALL_CHAIN_SUM = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # ~200 prompts


@pytest.fixture(scope="module")
def reward():
  r = ReasoningGymReward(timeout_s=2.0)
  yield r
  r.close()


def _columns(examples):
  return {k: [e[k] for e in examples] for k in examples[0] if k != "prompt"}


def test_known_datasets():
  names = source.known_datasets()
  assert {"basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic"} <= set(names)
  assert names == sorted(names) and len(names) > 50


def test_examples_carry_what_scoring_needs():
  train, held_out = source.make_splits("basic_arithmetic", num_train=20, num_eval=5, seed=0)
  assert len(train) == 20 and len(held_out) == 5
  example = train[0]
  assert set(example) == {"prompt", "answer", "entry", "reasoning_gym_dataset"}
  assert example["prompt"] == example["entry"]["question"] and example["answer"] == example["entry"]["answer"]
  assert example["entry"]["metadata"]["source_dataset"] == "basic_arithmetic"
  assert example["reasoning_gym_dataset"] == {"name": "basic_arithmetic", "config": {}}


def test_splits_are_deterministic_and_disjoint():
  a = source.make_splits("chain_sum", num_train=40, num_eval=10, seed=3)
  b = source.make_splits("chain_sum", num_train=40, num_eval=10, seed=3)
  c = source.make_splits("chain_sum", num_train=40, num_eval=10, seed=4)
  assert a == b
  assert [e["prompt"] for e in a[0]] != [e["prompt"] for e in c[0]]
  train_prompts = {e["prompt"] for e in a[0]}
  assert not train_prompts & {e["prompt"] for e in a[1]}
  # seed s + 1 is a shifted copy of seed s in reasoning-gym: eval must not come from there
  shifted = source.make_examples("chain_sum", size=100, seed=4)
  assert [e["prompt"] for e in shifted[:39]] == [e["prompt"] for e in a[0][1:]]
  assert not {e["prompt"] for e in shifted} & {e["prompt"] for e in a[1]}
  assert a[1] == source.make_examples("chain_sum", size=10, seed=3 + source.EVAL_SEED_OFFSET)


def test_small_task_space_eval_avoids_train_prompts():
  train, held_out = source.make_splits("chain_sum", num_train=150, num_eval=30, seed=0, config=SMALL_CHAIN_SUM)
  train_prompts = {e["prompt"] for e in train}
  eval_prompts = [e["prompt"] for e in held_out]
  assert len(train_prompts) < 150  # the space is small: train itself repeats prompts
  assert len(set(eval_prompts)) == 30 and not train_prompts & set(eval_prompts)
  assert all(e["entry"]["metadata"]["num_terms"] == 2 for e in train + held_out)
  assert held_out[0]["reasoning_gym_dataset"] == {"name": "chain_sum", "config": SMALL_CHAIN_SUM}
  with pytest.raises(ValueError, match="too small"):
    source.make_splits("chain_sum", num_train=3000, num_eval=60, seed=0, config=SMALL_CHAIN_SUM)


def test_bad_names_and_configs():
  with pytest.raises(ValueError, match=r"chain_sums.*'chain_sum'.*basic_arithmetic"):
    source.make_splits("chain_sums", num_train=1, num_eval=1)
  with pytest.raises(ValueError, match=r"no config field\(s\) \['nope'\].*min_terms"):
    source.make_splits("chain_sum", num_train=1, num_eval=1, config={"nope": 1})
  with pytest.raises(ValueError, match="seed"):
    source.make_examples("chain_sum", size=1, seed=0, config={"seed": 1})


def test_extract_answer():
  assert extract_answer("<think>2+2</think> <answer> 4 </answer>") == "4"
  assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
  assert extract_answer("so \\boxed{7}") == "7"
  assert extract_answer("work\n#### 12\n") == "12"
  assert extract_answer("work\n-4\n\n") == "-4"
  assert extract_answer("so \\boxed{7}", fallback=False) is None
  assert extract_answer("   ") is None


@pytest.mark.parametrize("name, config", [
    ("basic_arithmetic", {}),
    ("chain_sum", SMALL_CHAIN_SUM),
    ("gsm_symbolic", {}),
    ("countdown", {}),
])
def test_right_answer_scores_one_wrong_scores_less(reward, name, config):
  examples = source.make_examples(name, size=3, seed=1, config=config)
  right = [f"<think>...</think><answer>{e['answer']}</answer>" for e in examples]
  wrong = ["<answer>123456</answer>"] * 3
  columns = _columns(examples)
  assert reward(["p"] * 3, right, **columns) == [1.0, 1.0, 1.0]
  assert all(score < 1.0 for score in reward(["p"] * 3, wrong, **columns))


def test_extraction_fallback_and_strict(reward):
  example = source.make_examples("basic_arithmetic", size=1, seed=2)[0]
  columns = _columns([example] * 3)
  completions = [f"work\n{example['answer']}", f"so \\boxed{{{example['answer']}}}", "no answer here"]
  assert reward(["p"] * 3, completions, **columns) == [1.0, 1.0, 0.0]
  strict = ReasoningGymReward(fallback=False, timeout_s=None)
  assert strict(["p"], completions[:1], **_columns([example])) == [0.0]


def test_entry_alone_and_missing_entries(reward):
  examples = source.make_examples("gsm_symbolic", size=2, seed=0)
  entries = [e["entry"] for e in examples] + [None]
  completions = [f"<answer>{e['answer']}</answer>" for e in examples] + ["<answer>1</answer>"]
  assert reward(["p"] * 3, completions, entry=entries) == [1.0, 1.0, None]  # scorer from metadata
  with pytest.raises(ValueError, match="entry"):
    reward(["p"], ["<answer>1</answer>"])


def test_registered_reward_through_compute_rewards(reward, monkeypatch):
  monkeypatch.setattr(reasoning_gym_reward, "default_reward", lambda: reward)  # reuse the fixture's worker
  assert get_reward("reasoning_gym") is reasoning_gym_reward.reasoning_gym_score
  examples = source.make_examples("chain_sum", size=2, seed=5)
  completions = [f"<answer>{examples[0]['answer']}</answer>", "<answer>999999</answer>"]
  out = compute_rewards(["reasoning_gym"], ["p", "p"], completions, _columns(examples))
  assert out.shape == (2, 1) and out[0, 0] == 1.0 and out[1, 0] < 1.0


def test_pathological_answer_times_out_and_later_calls_work(reward):
  example = source.make_examples("countdown", size=1, seed=1)[0]
  columns = _columns([example])
  assert reward(["p"], [f"<answer>{example['answer']}</answer>"], **columns) == [1.0]
  timeouts = reward.num_timeouts
  start = time.monotonic()
  # countdown's scorer evaluates the expression with sympy: a power tower never returns
  assert reward(["p"], ["<answer>9**9**9**9</answer>"], **columns) == [0.0]
  assert time.monotonic() - start < 6.0
  assert reward.num_timeouts == timeouts + 1
  assert reward(["p"], [f"<answer>{example['answer']}</answer>"], **columns) == [1.0]


def test_build_reasoning_gym_task(reward):
  from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer

  config = types.SimpleNamespace(dataset="chain_sum", dataset_config=SMALL_CHAIN_SUM, num_train=30, num_eval=8,
                                 prompt_template="{question}\nAnswer in <answer></answer> tags.")
  task = source.build_reasoning_gym_task(config, 7, tokenizer=build_arithmetic_tokenizer())
  assert len(task.train) == 30 and len(task.eval) == 8
  assert task.train[0]["prompt"] == task.train[0]["entry"]["question"] + "\nAnswer in <answer></answer> tags."
  targets = task.sft_targets(task.train[:4], 0)
  assert targets[0] == f"<answer>{task.train[0]['answer']}</answer>"
  assert reward(["p"] * 4, targets, **_columns(task.train[:4])) == [1.0] * 4  # warm-up targets score 1
  with pytest.raises(ValueError, match="tokenizer"):
    source.build_reasoning_gym_task(config, 7)
