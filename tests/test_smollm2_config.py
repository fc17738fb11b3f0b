"""Tests for configs/grpo_smollm2.py and the chat prompts of reasoning-gym tasks.

Only `test_prompts_fit_max_prompt_length` needs the SmolLM2 folder (scripts/get_smollm2.sh);
it is skipped, with the reason, when the folder is missing.
"""
import os
import types

import pytest

from configs import grpo_arithmetic
from configs import grpo_smollm2
from jaxrl_reward import config_cli
from jaxrl_reward import experiment

VARIANTS = (None, "cpu")
# Keys of the arithmetic config that only its synthetic task reads.
ARITHMETIC_TASK_ONLY = {"task.max_value", "task.answer_noise", "task.answer_shift"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_build_and_validate(variant):
  config = grpo_smollm2.get_config(variant)
  experiment.check_config(config)
  assert config.task.name == "reasoning_gym" and config.task.chat_template
  assert config.rewards.names == ("reasoning_gym",) and config.rewards.eval_name == "reasoning_gym"
  assert config.warmup.steps == 0
  assert config.model.hf_path == config.task.tokenizer_dir == grpo_smollm2.model_dir()
  assert config.eval.every <= config.train.steps


def test_variants_differ_where_they_should():
  full, cpu = grpo_smollm2.get_config(), grpo_smollm2.get_config("cpu")
  assert full.model.dtype == "bfloat16" and cpu.model.dtype == "float32"
  rows = lambda c: c.rollout.prompts_per_step * c.rollout.group_size  # noqa: E731
  assert rows(cpu) < rows(full) and cpu.train.steps < full.train.steps
  assert cpu.task.max_completion_length <= full.task.max_completion_length


def test_unknown_variant_raises():
  with pytest.raises(ValueError, match="unknown variant 'gpu'.*known: cpu"):
    grpo_smollm2.get_config("gpu")


@pytest.mark.parametrize("variant", VARIANTS)
def test_has_every_key_of_the_arithmetic_config(variant):
  reference = config_cli.flat_keys(grpo_arithmetic.get_config()) - ARITHMETIC_TASK_ONLY
  missing = reference - config_cli.flat_keys(grpo_smollm2.get_config(variant))
  assert not missing, f"keys the trainer may read are missing: {sorted(missing)}"


def test_model_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(grpo_smollm2.MODEL_DIR_ENV, str(tmp_path))
  config = grpo_smollm2.get_config("cpu")
  assert config.model.hf_path == config.task.tokenizer_dir == str(tmp_path)
  monkeypatch.delenv(grpo_smollm2.MODEL_DIR_ENV)
  assert grpo_smollm2.get_config().model.hf_path == os.path.expanduser(grpo_smollm2.DEFAULT_MODEL_DIR)


# ----------------------------------------------------------------------------- chat prompts

_TOY_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _toy_tokenizer(template):
  pytest.importorskip("reasoning_gym")
  from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer

  tokenizer = build_arithmetic_tokenizer()
  tokenizer.chat_template = template
  return tokenizer


def test_chat_prompt_renders_system_examples_and_question():
  from jaxrl_reward.data import reasoning_gym_source as source

  tokenizer = _toy_tokenizer(_TOY_TEMPLATE)
  text = source.chat_prompt(tokenizer, "1 + 1?", system="be brief", examples=[("2 + 3?", "<answer>5</answer>")])
  assert text == ("<system>be brief</system><user>2 + 3?</user><assistant><answer>5</answer></assistant>"
                  "<user>1 + 1?</user><assistant>")
  assert source.chat_prompt(tokenizer, "1 + 1?", system="s") == "<system>s</system><user>1 + 1?</user><assistant>"


def test_chat_prompt_without_a_template_is_plain_text():
  from jaxrl_reward.data import reasoning_gym_source as source

  tokenizer = _toy_tokenizer(None)
  assert source.chat_prompt(tokenizer, "q", system="s", examples=[("u", "a")]) == "s\n\nu\na\n\nq"
  assert source.chat_prompt(tokenizer, "q", system="s") == "s\n\nq"


def test_task_with_chat_template():
  from jaxrl_reward.data import reasoning_gym_source as source

  tokenizer = _toy_tokenizer(_TOY_TEMPLATE)
  config = types.SimpleNamespace(
      dataset="chain_sum", dataset_config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
      num_train=6, num_eval=3, prompt_template="Q: {question}", chat_template=True, system_prompt="sys",
      chat_examples=(("Q: 1 + 1 =", "<answer>2</answer>"),))
  task = source.build_reasoning_gym_task(config, 0, tokenizer=tokenizer)
  for example in task.train + task.eval:
    question = example["entry"]["question"]
    assert example["prompt"] == (f"<system>sys</system><user>Q: 1 + 1 =</user><assistant><answer>2</answer>"
                                 f"</assistant><user>Q: {question}</user><assistant>")
  config.chat_template = False
  with pytest.raises(ValueError, match="chat_examples needs"):
    source.build_reasoning_gym_task(config, 0, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- real tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_prompts_fit_max_prompt_length(variant):
  pytest.importorskip("reasoning_gym")
  config = grpo_smollm2.get_config(variant)
  folder = config.task.tokenizer_dir
  if not os.path.exists(os.path.join(folder, "tokenizer.json")):
    pytest.skip(f"no SmolLM2 folder at {folder} (run scripts/get_smollm2.sh or set "
                f"{grpo_smollm2.MODEL_DIR_ENV})")
  from jaxrl_reward.data import batching
  from jaxrl_reward.data import tasks

  task = tasks.build_task(config.task, seed=config.seed)
  assert len(task.train) == config.task.num_train and len(task.eval) == config.task.num_eval
  prompts = [e["prompt"] for e in task.train + task.eval]
  lengths = [len(ids) for ids in task.tokenizer(prompts)["input_ids"]]
  assert max(lengths) <= config.task.max_prompt_length
  assert max(lengths) > config.task.max_prompt_length // 2  # not wastefully wide
  ids, mask = batching.encode_prompts(task.tokenizer, prompts[:8], max_length=config.task.max_prompt_length)
  assert ids.shape == (8, config.task.max_prompt_length) and mask.sum(-1).min() > 0
  assert task.tokenizer.eos_token == "<|im_end|>"  # what the chat template ends a turn with
  assert all(p.endswith("<|im_start|>assistant\n") for p in prompts[:8])
