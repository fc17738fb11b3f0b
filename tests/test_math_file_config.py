"""Tests for configs/grpo_math_file.py: the `math_file` task reached from a shipped config.

Each test writes what the `tiny` variant needs into its tmp dir (a character-level
tokenizer folder and small GSM8K-style jsonl files) and passes the paths as config
overrides: no model folder and no download.
"""
import json
import os

import pytest

import support
from configs import grpo_arithmetic
from configs import grpo_math_file
from configs import grpo_smollm2
from jaxrl_reward import config_cli
from jaxrl_reward import experiment
from jaxrl_reward.data import batching
from jaxrl_reward.data import tasks
from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer, save_tokenizer

VARIANTS = (None, "tiny")
TASK_KEYS = ("train_file", "eval_file", "num_eval", "question_field", "answer_field", "answer_format",
             "prompt_template", "tokenizer_dir")
# Keys of the arithmetic config that only its synthetic task reads.
ARITHMETIC_TASK_ONLY = {"task.num_train", "task.max_value", "task.answer_noise", "task.answer_shift"}


def _gsm8k_rows(count, start=0):
  """GSM8K-layout rows: a question and a worked answer ending in `#### <answer>`."""
  return [{"question": f"what is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
          for i in range(start, start + count)]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
  return path


@pytest.fixture
def files(tmp_path):
  """Config overrides pointing the task at a tokenizer folder and train / eval files in tmp_path."""
  tokenizer_dir = tmp_path / "tokenizer"
  save_tokenizer(build_arithmetic_tokenizer(), tokenizer_dir)
  return {"task.train_file": str(_write_jsonl(tmp_path / "train.jsonl", _gsm8k_rows(24))),
          "task.eval_file": str(_write_jsonl(tmp_path / "test.jsonl", _gsm8k_rows(10, start=100))),
          "task.tokenizer_dir": str(tokenizer_dir)}


def _tiny(files, **overrides):
  return support.with_keys(grpo_math_file.get_config("tiny"), **{**files, **overrides})


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_build_and_validate(variant):
  config = grpo_math_file.get_config(variant)
  experiment.check_config(config)
  assert config.task.name == "math_file"
  assert all(key in config.task for key in TASK_KEYS)
  assert config.rewards.names == ("math_verify",) and config.rewards.eval_name == "math_verify"
  assert config.task.prompt_template.format(question="Q?").count("Q?") == 1
  if variant is None:
    assert config.model.hf_path == config.task.tokenizer_dir == grpo_math_file.model_dir()
    assert config.task.train_file == os.path.join(grpo_math_file.data_dir(), "train.jsonl")
    assert config.task.eval_file == os.path.join(grpo_math_file.data_dir(), "test.jsonl")
  else:
    assert config.model.hf_path == "" and config.model.name == "micro"


@pytest.mark.parametrize("variant", VARIANTS)
def test_has_every_key_of_the_arithmetic_config(variant):
  reference = config_cli.flat_keys(grpo_arithmetic.get_config()) - ARITHMETIC_TASK_ONLY
  missing = reference - config_cli.flat_keys(grpo_math_file.get_config(variant))
  assert not missing, f"keys the trainer may read are missing: {sorted(missing)}"


def test_unknown_variant_raises():
  with pytest.raises(ValueError, match="unknown variant 'cpu'.*known: tiny"):
    grpo_math_file.get_config("cpu")


def test_paths_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(grpo_math_file.MODEL_DIR_ENV, str(tmp_path / "model"))
  monkeypatch.setenv(grpo_math_file.DATA_DIR_ENV, str(tmp_path / "data"))
  config = grpo_math_file.get_config()
  assert config.model.hf_path == config.task.tokenizer_dir == str(tmp_path / "model")
  assert config.task.train_file == str(tmp_path / "data" / "train.jsonl")
  monkeypatch.delenv(grpo_math_file.MODEL_DIR_ENV)
  monkeypatch.delenv(grpo_math_file.DATA_DIR_ENV)
  monkeypatch.delenv(grpo_smollm2.MODEL_DIR_ENV, raising=False)
  config = grpo_math_file.get_config()
  assert config.model.hf_path == os.path.expanduser(grpo_smollm2.DEFAULT_MODEL_DIR)
  assert config.task.train_file == os.path.join(os.path.expanduser(grpo_math_file.DEFAULT_DATA_DIR),
                                                "train.jsonl")


def test_tiny_task_loads_the_files(files):
  config = _tiny(files, **{"task.num_eval": 6})
  experiment.check_config(config)
  task = tasks.build_task(config.task, seed=config.seed)
  assert [e["answer"] for e in task.train] == [str(2 * i) for i in range(24)]
  assert [e["answer"] for e in task.eval] == [str(2 * i) for i in range(100, 106)]  # the first num_eval rows
  assert task.train[3]["prompt"] == "what is 3 + 3?\n"
  assert task.sft_targets(task.train[3:4], 0) == ["3 + 3 = 6\n#### 6"]
  prompts = [e["prompt"] for e in task.train + task.eval]
  ids, mask = batching.encode_prompts(task.tokenizer, prompts, max_length=config.task.max_prompt_length)
  assert ids.shape == (len(prompts), config.task.max_prompt_length) and mask.sum(-1).min() > 0


def test_tiny_without_eval_file_holds_out_train_rows(files):
  config = _tiny(files, **{"task.eval_file": "", "task.num_eval": 4})
  task = tasks.build_task(config.task, seed=0)
  assert len(task.train) == 20 and len(task.eval) == 4
  assert not {e["answer"] for e in task.train} & {e["answer"] for e in task.eval}


def test_empty_train_file_is_a_one_line_error(files, tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_bytes(b"")
  config = _tiny(files, **{"task.train_file": str(empty)})
  with pytest.raises(ValueError) as exc_info:
    tasks.build_task(config.task, seed=0)
  assert str(exc_info.value) == f"math data file {str(empty)!r} is empty"
  missing = tmp_path / "missing.jsonl"
  with pytest.raises(FileNotFoundError, match=f"{str(missing)!r} does not exist"):
    tasks.build_task(_tiny(files, **{"task.eval_file": str(missing)}).task, seed=0)
