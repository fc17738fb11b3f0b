"""Procedural tasks from the `reasoning-gym` package (offline), as train / eval examples.

Any reasoning-gym dataset can be used by name (`"basic_arithmetic"`, `"chain_sum"`,
`"countdown"`, `"gsm_symbolic"`, ... see `known_datasets()`), with its config fields as
keyword arguments. Each example is a dict:

    {"prompt": entry["question"],
     "answer": entry["answer"],
     "entry": the reasoning-gym entry itself ({"question", "answer", "metadata"}),
     "reasoning_gym_dataset": {"name": name, "config": {...config fields...}}}

`entry` and `reasoning_gym_dataset` are what `rewards.reasoning_gym_reward` needs to score
a completion with the dataset's own `score_answer` (some scorers read their config).

Splits: reasoning-gym derives entry `i` of a dataset with seed `s` from `Random(s + i)`,
so seeds `s` and `s + 1` give shifted copies of the same entries. The train split uses
seed `seed`, and the eval split seed `seed + EVAL_SEED_OFFSET`, far from every train
index; eval entries whose question also appears in train (possible in small task spaces)
are dropped and replaced by further entries, so no eval prompt is a train prompt.
Both splits are a deterministic function of (name, config, seed, sizes).

Steps: a completion's steps are its non-blank lines before the `<answer>` tag
(`task.line_step_ends`). For a dataset whose questions are left-to-right chains of `+` and `-`
(`chain_sum`, or `basic_arithmetic` with only those operators and no parentheses or negation),
`chain_solution` writes the worked solution one operation per line (`"15 - 43 = -28"`), and the
task's `solution_pair` gives a worked and a flawed solution with a known first wrong step, for
step-error localisation (`jaxrl_reward.process_rewards`).

Chat models: with `task_config.chat_template` each prompt becomes the tokenizer's chat
rendering (`chat_prompt`): an optional system prompt, optional worked example turns
(`chat_examples`, pairs of user / assistant texts that show the answer format), then the
question as the last user turn, ending where the assistant's reply starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrl_reward.data import chain_sums
from jaxrl_reward.data import task as task_lib

EVAL_SEED_OFFSET = 1_000_000_007
ANSWER_FORMAT = task_lib.AnswerFormat(marker="<answer>", suffix="</answer>")
_CHAIN = re.compile(r"\s*\d+(\s*[+-]\s*\d+)+\s*")
FIELD_DATASET = "reasoning_gym_dataset"
ANSWER_TAG_INSTRUCTION = "Give only the final answer between <answer> and </answer> tags."
DEFAULT_SYSTEM_PROMPT = ANSWER_TAG_INSTRUCTION

Example = dict  # {"prompt": str, "answer": str, "entry": dict, "reasoning_gym_dataset": dict}


def known_datasets() -> list[str]:
  """The names of all reasoning-gym datasets, sorted."""
  from reasoning_gym.factory import DATASETS  # imported lazily: heavy (~2 s)

  return sorted(DATASETS)


def _check_name(name: str) -> None:
  names = known_datasets()
  if name in names:
    return
  close = difflib.get_close_matches(name, names, n=3)
  hint = f"did you mean {close}? " if close else ""
  examples = ["basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic"]
  raise ValueError(f"unknown reasoning-gym dataset name={name!r}; {hint}known names include "
                   f"{examples} ({len(names)} in all, see known_datasets())")


def create_dataset(name: str, *, seed: int, size: int, config: Mapping[str, Any] | None = None):
  """`reasoning_gym.create_dataset(name, seed=seed, size=size, **config)` with clear errors.

  Raises:
    ValueError for an unknown name (naming a few known ones), for `seed` / `size` inside
    `config`, or for a config field the dataset does not have (naming the fields it has).
  """
  import reasoning_gym
  from reasoning_gym.factory import DATASETS

  _check_name(name)
  config = dict(config or {})
  for key in ("seed", "size"):
    if key in config:
      raise ValueError(f"pass {key} as an argument, not inside config (got config[{key!r}]={config[key]!r})")
  fields = {f.name for f in dataclasses.fields(DATASETS[name][1])} - {"seed", "size"}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise ValueError(f"reasoning-gym dataset {name!r} has no config field(s) {unknown}; "
                     f"its fields are {sorted(fields)}")
  return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)


def _example(entry: dict, name: str, config: dict) -> Example:
  return {
      "prompt": entry["question"],
      "answer": entry["answer"],
      "entry": entry,
      FIELD_DATASET: {"name": name, "config": dict(config)},
  }


def make_examples(name: str, *, size: int, seed: int, config: Mapping[str, Any] | None = None) -> list[Example]:
  """The `size` entries of dataset `name` with `seed`, in index order, as examples."""
  if size < 0:
    raise ValueError(f"size must be >= 0, got size={size}")
  config = dict(config or {})
  dataset = create_dataset(name, seed=seed, size=max(size, 1), config=config)
  return [_example(dataset[i], name, config) for i in range(size)]


def make_splits(
    name: str,
    *,
    num_train: int,
    num_eval: int,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    max_draws_factor: int = 4,
) -> tuple[list[Example], list[Example]]:
  """Train and eval examples of dataset `name`, with no eval prompt equal to a train prompt.

  Args:
    name: a reasoning-gym dataset name (see `known_datasets()`).
    num_train: number of training examples (entries 0..num_train-1 of seed `seed`).
    num_eval: number of held-out examples, distinct prompts, none of them a train prompt
      (drawn from seed `seed + EVAL_SEED_OFFSET`).
    seed: the only source of randomness.
    config: the dataset's config fields (e.g. `{"min_terms": 2, "max_terms": 3}`).
    max_draws_factor: at most `max_draws_factor * num_eval + 16` eval entries are drawn.

  Returns:
    `(train, eval)` lists of examples (see the module docstring).

  Raises:
    ValueError for an unknown name or config field, or when the task space is too small
    to find `num_eval` new prompts.
  """
  if num_train < 0 or num_eval < 0:
    raise ValueError(f"num_train and num_eval must be >= 0, got {num_train}, {num_eval}")
  config = dict(config or {})
  train = make_examples(name, size=num_train, seed=seed, config=config)
  seen = {ex["prompt"] for ex in train}
  max_draws = max_draws_factor * num_eval + 16
  pool = create_dataset(name, seed=seed + EVAL_SEED_OFFSET, size=max_draws, config=config)
  held_out: list[Example] = []
  for i in range(max_draws):
    if len(held_out) == num_eval:
      break
    entry = pool[i]
    if entry["question"] in seen:
      continue
    seen.add(entry["question"])
    held_out.append(_example(entry, name, config))
  if len(held_out) < num_eval:
    raise ValueError(f"found only {len(held_out)} of num_eval={num_eval} eval prompts of {name!r} that are "
                     f"not train prompts in {max_draws} draws; the task space is too small for "
                     f"num_train={num_train} + num_eval={num_eval} (lower them or widen the config)")
  return train, held_out


def answer_tag_target(example: Example) -> str:
  """A warm-up target for `example`: its answer in the tags the reward reads."""
  return f"<answer>{example['answer']}</answer>"


def chain_of(example: Example) -> tuple[list[int], list[str]]:
  """(operands, operators) of an example whose expression (`entry["metadata"]["expression"]`) is a
  left-to-right chain of non-negative integers joined by `+` and `-`, e.g. `"15 - 43 - 75"`."""
  expression = (example.get("entry", {}).get("metadata") or {}).get("expression")
  if not isinstance(expression, str) or not _CHAIN.fullmatch(expression):
    raise ValueError(f"the example {example.get('prompt', '')[-60:]!r} is not a chain of + and - (its "
                     f"metadata expression is {expression!r}): it has no worked step-by-step solution")
  parts = re.findall(r"\d+|[+-]", expression)
  return [int(v) for v in parts[0::2]], parts[1::2]


def chain_solution(operands, ops, *, shift_at: int = -1, shift: int = 0) -> str:
  """The worked solution, one operation per line, then the answer in tags:
  `"15 - 43 = -28\n-28 - 75 = -103\n<answer>-103</answer>"`; step `shift_at` writes its result
  off by `shift` (later steps go on from the wrong value)."""
  steps, answer = chain_sums.chain_steps(operands, ops, shift_at=shift_at, shift=shift, spaced=True)
  return "\n".join([*steps, f"{ANSWER_FORMAT.marker}{answer}{ANSWER_FORMAT.suffix}"])


def solution_pair(example: Example, rng: np.random.Generator) -> tuple[str, str, int]:
  """(worked solution, flawed solution, its first wrong step) of a chain example (`chain_of`): the
  first wrong step is drawn uniformly from `rng`, then a slip of +-1..9 at that step."""
  operands, ops = chain_of(example)
  first_wrong = int(rng.integers(0, len(ops)))
  shift = int(rng.choice(chain_sums.ERROR_SHIFTS))
  return chain_solution(operands, ops), chain_solution(operands, ops, shift_at=first_wrong, shift=shift), first_wrong


def _all_chains(examples: list[Example]) -> bool:
  try:
    for example in examples:
      chain_of(example)
  except ValueError:
    return False
  return bool(examples)


def chat_prompt(tokenizer, user_text: str, *, system: str | None = None,
                examples: Sequence[tuple[str, str]] = ()) -> str:
  """The chat-template prompt for `user_text`, ending where the assistant's reply starts.

  Args:
    tokenizer: a Hugging Face tokenizer (its `chat_template` renders the turns).
    user_text: the last user turn (the question).
    system: the system prompt; None keeps the template's own default, if it has one.
    examples: `(user, assistant)` pairs rendered as earlier turns (few-shot demonstrations).

  Returns:
    The rendered prompt. A tokenizer without a chat template gets plain text: the system
    prompt, each example's user and assistant texts, and `user_text`, separated by blank
    lines.
  """
  from models import hf  # noqa: PLC0415  (jax-heavy; only chat prompts need it)

  examples = [(str(u), str(a)) for u, a in examples]
  if not examples:
    return hf.apply_chat_template(tokenizer, user_text, system=system)
  if not getattr(tokenizer, "chat_template", None):
    parts = ([] if system is None else [system]) + [f"{u}\n{a}" for u, a in examples] + [user_text]
    return "\n\n".join(parts)
  messages = [] if system is None else [{"role": "system", "content": system}]
  for user, assistant in examples:
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
  messages.append({"role": "user", "content": user_text})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _config_value(task_config, key: str, default: Any = None) -> Any:
  value = getattr(task_config, key, default)
  return default if value is None else value


def build_reasoning_gym_task(task_config, seed: int, *, tokenizer=None):
  """A `task.Task` over reasoning-gym dataset `task_config.dataset`.

  Reads from `task_config` (a ConfigDict or any object with attributes):
    dataset: the reasoning-gym name (e.g. "chain_sum").
    dataset_config: optional dict of the dataset's config fields.
    num_train, num_eval: split sizes.
    prompt_template: optional, `str.format`-ed with `question=`; default `"{question}"`.
    tokenizer_dir: a local Hugging Face tokenizer directory, used when `tokenizer` is None.
    chat_template: optional bool (default False): render the (templated) question with
      the tokenizer's chat template (`chat_prompt`).
    system_prompt: optional, the system prompt of chat prompts; default
      `DEFAULT_SYSTEM_PROMPT` (asks for the answer in <answer></answer> tags).
    chat_examples: optional `(user, assistant)` pairs shown as earlier chat turns.

  Args:
    task_config: the `config.task` block.
    seed: the experiment seed (the splits' seed).
    tokenizer: a Hugging Face tokenizer; when None it is loaded from
      `task_config.tokenizer_dir` with `AutoTokenizer.from_pretrained`.

  Returns:
    `task.Task` whose examples keep `entry` and `reasoning_gym_dataset` (the reward
    "reasoning_gym" reads them), whose warm-up targets are `<answer>answer</answer>`, whose
    steps are lines before the answer tag, and which has `solution_pair` when every example
    is a chain of + and - (`chain_of`).
  """
  if tokenizer is None:
    tokenizer_dir = _config_value(task_config, "tokenizer_dir")
    if not tokenizer_dir:
      raise ValueError("build_reasoning_gym_task needs a tokenizer or task_config.tokenizer_dir")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
  train, held_out = make_splits(
      task_config.dataset, num_train=task_config.num_train, num_eval=task_config.num_eval, seed=seed,
      config=dict(_config_value(task_config, "dataset_config", {})))
  template = _config_value(task_config, "prompt_template", "{question}")
  use_chat = bool(_config_value(task_config, "chat_template", False))
  system = _config_value(task_config, "system_prompt", DEFAULT_SYSTEM_PROMPT)
  chat_examples = tuple(_config_value(task_config, "chat_examples", ()))
  if chat_examples and not use_chat:
    raise ValueError("task_config.chat_examples needs task_config.chat_template=True")
  for example in train + held_out:
    text = template.format(question=example["entry"]["question"])
    if use_chat:
      text = chat_prompt(tokenizer, text, system=system, examples=chat_examples)
    example["prompt"] = text

  def sft_targets(examples: list[dict], step: int) -> list[str]:
    del step
    return [answer_tag_target(e) for e in examples]

  return task_lib.Task(tokenizer, train, held_out, sft_targets, answer_format=ANSWER_FORMAT,
                       step_ends=task_lib.line_step_ends(ANSWER_FORMAT.marker),
                       solution_pair=solution_pair if _all_chains(train + held_out) else None)
