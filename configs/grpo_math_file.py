"""GRPO on GSM8K-style math word problems read from local files (task `math_file`).

Data: local files read with `datasets` (jaxrl_reward/data/math_files.py): jsonl (one JSON
object a line), json (a list of objects) or parquet. The GSM8K layout, one row per problem:

    {"question": "Natalia sold clips to 48 of her friends in April, ...",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May. ...\\n#### 72"}

The final answer is the text after the last `####` (commas removed); the whole `answer`
field is the worked solution, which the supervised warm-up trains on when
`warmup.steps > 0`. `task.answer_format="auto"` also reads MATH's `\\boxed{...}` answers
and plain ones: for MATH-style files set `--config.task.question_field=problem
--config.task.answer_field=solution`. An empty, non-UTF-8 or malformed file is a one-line
error naming it, and so is a row whose prompt takes more than `task.max_prompt_length` tokens
(at start-up) or, when the warm-up runs, whose prompt, worked solution and EOS take more than
`task.max_prompt_length + task.max_completion_length` (at its first batch).

Files: `$JAXRL_MATH_DATA_DIR` (default ~/.cache/jaxrl_reward/gsm8k) holds `train.jsonl`
and `test.jsonl` (the names of the GSM8K release, `grade_school_math/data/`); or pass
`--config.task.train_file=... --config.task.eval_file=...`. Held out: the first
`task.num_eval` rows of `eval_file` (0: all of them); with `eval_file=""`, `num_eval`
rows of `train_file` drawn with the seed.

Prompts: `task.prompt_template` formatted with `question=` (plain text, no chat
template). Reward and held-out accuracy: `math_verify` (the completion's last
`\\boxed{}` / `####` / last number, symbolically equal to the answer).

Model: a local Hugging Face folder (`model.hf_path`, also the tokenizer folder):
`$JAXRL_MATH_MODEL_DIR`, else the SmolLM2-135M-Instruct folder of configs/grpo_smollm2.py
(`$JAXRL_SMOLLM2_DIR` or ~/.cache/jaxrl_reward/smollm2-135m-instruct, made by
`bash scripts/get_smollm2.sh`). Another model: `--config.model.hf_path=DIR
--config.task.tokenizer_dir=DIR`.

    python -m experiments.train --config=configs/grpo_math_file.py --workdir=runs/gsm8k

Variants (`--config=configs/grpo_math_file.py:VARIANT`):
  (none)  one GPU / TPU host: bfloat16 compute, 32 prompts x 8 completions of up to 320
          tokens per step, 300 GRPO steps, 500 held-out problems.
  tiny    a randomly initialised `micro` model (no `model.hf_path`), a few steps of
          each stage, short prompts: for tests and smoke runs on small files, e.g.
          --config.task.train_file=T --config.task.eval_file=E --config.task.tokenizer_dir=D
"""
import os

from ml_collections import config_dict

from configs import grpo_base
from configs import grpo_smollm2

MODEL_DIR_ENV = "JAXRL_MATH_MODEL_DIR"
DATA_DIR_ENV = "JAXRL_MATH_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/jaxrl_reward/gsm8k"
TRAIN_FILE, EVAL_FILE = "train.jsonl", "test.jsonl"

PROMPT_TEMPLATE = ("Question: {question}\n"
                   "Solve it step by step, then write the final answer on its own line as '#### <number>'.\n"
                   "Answer:")


def model_dir() -> str:
  """The model folder: $JAXRL_MATH_MODEL_DIR, else the SmolLM2 folder of configs/grpo_smollm2.py."""
  return os.path.expanduser(os.environ.get(MODEL_DIR_ENV) or grpo_smollm2.model_dir())


def data_dir() -> str:
  """The folder of train.jsonl and test.jsonl: $JAXRL_MATH_DATA_DIR, else ~/.cache/jaxrl_reward/gsm8k."""
  return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  c = grpo_base.grpo_config()
  path = model_dir()

  c.model.name = "hf"  # informational: the weights and shapes come from hf_path
  c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
  c.model.hf_path = path

  c.task = config_dict.ConfigDict()
  c.task.name = "math_file"
  c.task.train_file = os.path.join(data_dir(), TRAIN_FILE)
  c.task.eval_file = os.path.join(data_dir(), EVAL_FILE)  # "": hold out num_eval rows of train_file
  c.task.num_eval = 500
  c.task.question_field = "question"
  c.task.answer_field = "answer"
  c.task.answer_format = "auto"  # "gsm8k" (####), "boxed", "plain" or per row "auto"
  c.task.prompt_template = PROMPT_TEMPLATE
  c.task.tokenizer_dir = path
  c.task.max_prompt_length = 384  # encode_prompts raises on a longer prompt
  c.task.max_completion_length = 320  # GSM8K's worked solutions are mostly under 200 tokens

  grpo_base.pretrained_on_one_host(c)  # no warm-up (> 0 trains on the files' worked solutions)
  c.rewards.names = ("math_verify",)
  c.rewards.weights = (1.0,)
  c.rewards.eval_name = "math_verify"

  if variant in (None, ""):
    pass
  elif variant == "tiny":
    c.model.name = "micro"
    c.model.hf_path = ""  # random init, vocabulary sized from the tokenizer
    c.model.dtype = "float32"
    c.task.num_eval = 8
    c.task.prompt_template = "{question}\n"
    c.task.max_prompt_length = 48
    c.task.max_completion_length = 16
    c.warmup.steps = 2
    c.warmup.batch_size = 8
    c.warmup.lr = 1e-3
    c.rollout.prompts_per_step = 4
    c.rollout.group_size = 4
    c.train.steps = 2
    c.train.num_minibatches = 1
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 0
    c.eval.every = 2
    c.eval.batch_size = 8
    c.checkpoint_every = 2
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/grpo_math_file.py; known: tiny")
  return c
