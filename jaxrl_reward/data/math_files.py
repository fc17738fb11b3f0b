"""GSM8K / MATH-style problems from local files (jsonl, json or parquet), read with `datasets`.

Nothing here touches the network: files are read with `datasets.Dataset.from_json` /
`from_parquet` (kept in memory).

Each example is a dict:

    {"prompt": the question text,
     "answer": the final answer string,
     "solution": the worked solution (only when the file has one)}

The final answer is read from `answer_field` according to `answer_format`:

- "gsm8k": the text after the last `####`, stripped, commas removed
  (`"... 48/2 = <<48/2=24>>24 ...\\n#### 1,072"` -> `"1072"`); the whole field is the
  solution.
- "boxed": the content of the last `\\boxed{...}` (MATH's `solution` field, read with
  `answer_field="solution"`); the whole field is the solution.
- "plain": the field itself, stripped (e.g. MATH-500's `answer` column).
- "auto" (default): per row, "gsm8k" when the field has `####`, else "boxed" when it
  has `\\boxed`, else "plain".

A separate `solution_field` column (default "solution"), when the file has one and it is
not the answer field, is kept as the solution.

A file that cannot give examples is a one-line error naming it: FileNotFoundError when it
does not exist (or is a directory), ValueError when it is empty, has no rows, is not UTF-8
(the byte and its offset), is not valid JSON / parquet, or lacks a field.

A task (`build_math_file_task`) with `max_prompt_length` in its config checks every row it uses
at start-up: a prompt longer than that many tokens is a one-line ValueError naming the file, the
row and the length against the limit (as is a train row whose prompt, worked solution and EOS
exceed `max_prompt_length + max_completion_length`, the warm-up's sequence length, on the first
call of `sft_targets`, which a warm-up stage makes at start-up), instead of a failure inside a
training step.

Splits are deterministic in `split_seed`: `num_eval` rows chosen by
`default_rng(split_seed).permutation`, both splits in file order. `shard_examples` gives
process `i` of `n` the disjoint, reproducible slice `examples[i::n]` (cut to the same
length on every process by default).
"""
from __future__ import annotations

import codecs
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxrl_reward.data import task as task_lib
from jaxrl_reward.rewards.math_verify_reward import last_boxed

ANSWER_MARKER = "####"
ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "plain")
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")
_CHUNK_BYTES = 1 << 20  # read size of the UTF-8 check of jsonl / json files

Example = dict  # {"prompt": str, "answer": str, "solution": str (optional)}


def _check_text_file(path: pathlib.Path) -> None:
  """Raises a one-line ValueError naming `path` when it holds no text (empty or only
  whitespace) or is not UTF-8, so that these files never reach `datasets`, whose errors for
  them (a bare StopIteration, a UnicodeDecodeError at a chunk offset) name neither.

  Read in chunks with an incremental decoder: one extra sequential read, constant memory.
  """
  decoder = codecs.getincrementaldecoder("utf-8")("strict")
  offset, has_text = 0, False
  with open(path, "rb") as f:
    while True:
      chunk = f.read(_CHUNK_BYTES)
      # The decoder keeps the bytes of a character cut at the chunk end; they start the next input.
      start = offset - len(decoder.getstate()[0])
      try:
        text = decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        raise ValueError(f"math data file {str(path)!r} is not UTF-8 text "
                         f"(byte 0x{e.object[e.start]:02x} at offset {start + e.start})") from None
      has_text = has_text or bool(text.strip())
      if not chunk:
        break
      offset += len(chunk)
  if not has_text:
    raise ValueError(f"math data file {str(path)!r} is empty")


def _first_line(error: BaseException) -> str:
  """The innermost cause of `error` as one line (datasets wraps the parser's own error)."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def read_records(path: str | os.PathLike, *, cache_dir: str | None = None):
  """Reads a local jsonl / json / parquet file into a `datasets.Dataset` (in memory).

  Raises:
    FileNotFoundError naming the path when it does not exist or is a directory;
    ValueError naming the path for any other extension than the supported ones, an empty
    file, a file without rows, a jsonl / json file that is not UTF-8 (with the byte and
    its offset) or not valid JSON, and a file that is not parquet.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise FileNotFoundError(f"math data file {str(path)!r} is a directory; expected a "
                            f"{' / '.join(SUPPORTED_EXTENSIONS)} file")
  if not path.is_file():
    raise FileNotFoundError(f"math data file {str(path)!r} does not exist")
  suffix = path.suffix.lower()
  if suffix not in SUPPORTED_EXTENSIONS:
    raise ValueError(f"unsupported math data file extension {suffix!r} in {str(path)!r}; "
                     f"supported: {list(SUPPORTED_EXTENSIONS)}")
  import datasets  # imported lazily: heavy, and only the loaders need it

  if suffix == ".parquet":
    if path.stat().st_size == 0:
      raise ValueError(f"math data file {str(path)!r} is empty")
    import pyarrow.parquet as pq  # a dependency of datasets

    try:  # the footer alone: checks the format and counts the rows (datasets fails on zero rows)
      num_rows = pq.read_metadata(path).num_rows
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
      raise ValueError(f"math data file {str(path)!r} is not a parquet file: {_first_line(e)}") from e
    if num_rows == 0:
      raise ValueError(f"math data file {str(path)!r} has no rows")
    records = datasets.Dataset.from_parquet(str(path), keep_in_memory=True, cache_dir=cache_dir)
  else:
    _check_text_file(path)
    kind = "JSON lines" if suffix == ".jsonl" else "JSON"
    try:
      records = datasets.Dataset.from_json(str(path), keep_in_memory=True, cache_dir=cache_dir)
    except (ValueError, datasets.exceptions.DatasetGenerationError) as e:
      if "corresponds to no data" in str(e):  # datasets' words for a file that parses to zero rows
        raise ValueError(f"math data file {str(path)!r} has no rows") from e
      raise ValueError(f"math data file {str(path)!r} is not valid {kind}: {_first_line(e)}") from e
  if len(records) == 0:
    raise ValueError(f"math data file {str(path)!r} has no rows")
  return records


def final_answer(text: str, answer_format: str = "auto") -> tuple[str, bool]:
  """The final answer in `text` and whether `text` is a worked solution (see the module docstring).

  Raises:
    ValueError for an unknown format, or when an explicit "gsm8k" / "boxed" text has no
    `####` / balanced non-empty `\\boxed{...}`, or when the answer is empty.
  """
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got answer_format={answer_format!r}")
  if answer_format == "auto":
    answer_format = "gsm8k" if ANSWER_MARKER in text else "boxed" if "\\boxed" in text else "plain"
  if answer_format == "gsm8k":
    if ANSWER_MARKER not in text:
      raise ValueError(f"no {ANSWER_MARKER!r} in a gsm8k-format answer: {text[-200:]!r}")
    answer = text.rsplit(ANSWER_MARKER, 1)[1].strip().replace(",", "")
  elif answer_format == "boxed":
    answer = last_boxed(text) or ""
    if not answer:
      raise ValueError(f"no complete \\boxed{{...}} in a boxed-format answer: {text[-200:]!r}")
  else:
    answer = text.strip()
  if not answer:
    raise ValueError(f"empty final answer in {text[-200:]!r}")
  return answer, answer_format != "plain"


def examples_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    fields: Sequence[str],
    question_field: str = "question",
    answer_field: str = "answer",
    solution_field: str | None = "solution",
    answer_format: str = "auto",
    keep_fields: Sequence[str] = (),
    source: str = "records",
) -> list[Example]:
  """Turns rows into examples (see the module docstring).

  Args:
    records: rows, each a mapping from field name to value.
    fields: the field names the rows have (for the error messages and checks).
    question_field, answer_field: the fields holding the question and the answer.
    solution_field: a field kept as `solution` when present (and not `answer_field`).
    answer_format: "auto", "gsm8k", "boxed" or "plain".
    keep_fields: other fields copied into each example unchanged.
    source: a name for the rows in error messages (e.g. the file path).

  Returns:
    Examples with `prompt`, `answer` and, when any row has one, `solution` (None in rows
    without one), plus `keep_fields`.

  Raises:
    ValueError naming the field and the fields that exist when a field is missing, or
    naming the row when its question / answer is missing or has no final answer.
  """
  fields = list(fields)
  for role, name in (("question_field", question_field), ("answer_field", answer_field),
                     *(("keep_fields", name) for name in keep_fields)):
    if name not in fields:
      raise ValueError(f"{source} has no field {name!r} ({role}); its fields are {fields}")
  separate_solution = solution_field if solution_field in fields and solution_field != answer_field else None
  examples = []
  for i, row in enumerate(records):
    question, raw_answer = row[question_field], row[answer_field]
    if question is None or raw_answer is None or not str(question).strip():
      raise ValueError(f"row {i} of {source} has no {question_field!r} or {answer_field!r} value")
    try:
      answer, is_solution = final_answer(str(raw_answer), answer_format)
    except ValueError as e:
      raise ValueError(f"row {i} of {source}, field {answer_field!r}: {e}") from e
    solution = row[separate_solution] if separate_solution else (str(raw_answer) if is_solution else None)
    example = {"prompt": str(question), "answer": answer, "solution": solution}
    example.update({name: row[name] for name in keep_fields})
    examples.append(example)
  if all(ex["solution"] is None for ex in examples):
    for ex in examples:
      del ex["solution"]
  return examples


def load_math_examples(
    path: str | os.PathLike,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    solution_field: str | None = "solution",
    answer_format: str = "auto",
    keep_fields: Sequence[str] = (),
    cache_dir: str | None = None,
) -> list[Example]:
  """All rows of a local jsonl / json / parquet file as examples, in file order.

  See `examples_from_records` for the arguments and `read_records` for the file errors.
  """
  records = read_records(path, cache_dir=cache_dir)
  return examples_from_records(
      records, fields=records.column_names, question_field=question_field, answer_field=answer_field,
      solution_field=solution_field, answer_format=answer_format, keep_fields=keep_fields,
      source=repr(str(path)))


def split_rows(count: int, *, num_eval: int, seed: int) -> tuple[list[int], list[int]]:
  """Deterministic `(train rows, eval rows)` of `count` rows: `num_eval` drawn by `default_rng(seed)`,
  both in order, disjoint and together every row."""
  if not 0 <= num_eval <= count:
    raise ValueError(f"need 0 <= num_eval <= {count} (the number of examples), got num_eval={num_eval}")
  held_out = np.zeros(count, dtype=bool)
  held_out[np.random.default_rng(seed).permutation(count)[:num_eval]] = True
  return np.flatnonzero(~held_out).tolist(), np.flatnonzero(held_out).tolist()


def split_examples(examples: Sequence[Example], *, num_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
  """Deterministic `(train, eval)`: eval is `num_eval` rows drawn by `default_rng(seed)`.

  Both splits keep the input order; they are disjoint and together hold every example.
  """
  train, evaluation = split_rows(len(examples), num_eval=num_eval, seed=seed)
  return [dict(examples[i]) for i in train], [dict(examples[i]) for i in evaluation]


def shard_examples(
    examples: Sequence[Example],
    *,
    process_index: int,
    process_count: int,
    drop_remainder: bool = True,
) -> list[Example]:
  """Process `process_index`'s share `examples[process_index::process_count]`.

  The shares of processes 0..n-1 are disjoint and reproducible. With `drop_remainder`
  (default) every share has `len(examples) // process_count` examples, so all processes
  run the same number of steps; the last `len(examples) % process_count` examples of the
  strided order are then left out.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got process_index={process_index}, "
                     f"process_count={process_count}")
  share = list(examples[process_index::process_count])
  if drop_remainder:
    share = share[:len(examples) // process_count]
  return share


def load_math_file(
    path: str | os.PathLike,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    solution_field: str | None = "solution",
    answer_format: str = "auto",
    keep_fields: Sequence[str] = (),
    split_seed: int = 0,
    num_eval: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: str | None = None,
) -> tuple[list[Example], list[Example]]:
  """Loads a GSM8K / MATH-style file and splits it into `(train, eval)`.

  Args:
    path: a local `.jsonl`, `.json` or `.parquet` file.
    question_field, answer_field, solution_field, answer_format, keep_fields: see
      `examples_from_records` (GSM8K: the defaults; MATH: `question_field="problem",
      answer_field="solution"`).
    split_seed: the seed of the train / eval split.
    num_eval: number of rows held out for evaluation (0: everything is train).
    process_index, process_count: when given (both), each split is cut to this
      process's share with `shard_examples` (drop_remainder=True). Leave them None when
      batches are sharded later (`batching.batch_indices` shards each global batch).
    cache_dir: the `datasets` cache directory (default: its own default).

  Returns:
    `(train, eval)` lists of examples.

  Raises:
    FileNotFoundError (missing file), ValueError (unsupported extension, empty file, file
    without rows, not UTF-8, not valid JSON / parquet, missing field, row without an
    answer, bad `num_eval` or process arguments).
  """
  if (process_index is None) != (process_count is None):
    raise ValueError(f"pass both process_index and process_count or neither, got "
                     f"process_index={process_index}, process_count={process_count}")
  examples = load_math_examples(
      path, question_field=question_field, answer_field=answer_field, solution_field=solution_field,
      answer_format=answer_format, keep_fields=keep_fields, cache_dir=cache_dir)
  train, evaluation = split_examples(examples, num_eval=num_eval, seed=split_seed)
  if process_count is not None:
    train = shard_examples(train, process_index=process_index, process_count=process_count)
    evaluation = shard_examples(evaluation, process_index=process_index, process_count=process_count)
  return train, evaluation


def load_tfds_examples(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    solution_field: str | None = "solution",
    answer_format: str = "auto",
) -> list[Example]:
  """Examples from an already prepared `tensorflow_datasets` dataset (never downloads).

  Needs the optional extra `tensorflow-datasets` (and TensorFlow). Text fields (bytes in
  tfds) are decoded as UTF-8.

  Raises:
    ImportError saying how to install tensorflow-datasets when it is not installed.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("load_tfds_examples needs the optional package tensorflow-datasets (with tensorflow): "
                      "pip install 'jaxrl_reward[tfds]' tensorflow; local jsonl / parquet files need "
                      "only load_math_file") from e

  dataset = tfds.load(name, split=split, data_dir=data_dir, download=False)
  rows = [{k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in row.items()}
          for row in tfds.as_numpy(dataset)]
  fields = list(rows[0]) if rows else []
  return examples_from_records(
      rows, fields=fields, question_field=question_field, answer_field=answer_field,
      solution_field=solution_field, answer_format=answer_format, source=f"tfds {name!r} split {split!r}")


def math_sft_target(example: Example) -> str:
  """A warm-up target: the worked solution when there is one, else `#### answer`."""
  return example.get("solution") or f"{ANSWER_MARKER} {example['answer']}"


def _too_long(tokenizer, prompts: Sequence[str], targets: Sequence[str] | None, limit: int) -> list[tuple[int, int]]:
  """(index, tokens) of each row over `limit` tokens as `batching` lays it out: the prompt with the
  tokenizer's special tokens, then (with `targets`) the target and EOS. A token holds at least one
  byte (SentencePiece adds a word start to each text), so rows with fewer bytes are not tokenized."""
  special = len(tokenizer("", add_special_tokens=True)["input_ids"])

  def bound(i):
    n = len(prompts[i].encode("utf-8")) + 1 + special
    return n if targets is None else n + len(targets[i].encode("utf-8")) + 2

  maybe = [i for i in range(len(prompts)) if bound(i) > limit]
  if not maybe:
    return []
  counts = [len(ids) for ids in tokenizer([prompts[i] for i in maybe], add_special_tokens=True)["input_ids"]]
  if targets is not None:
    target_ids = tokenizer([targets[i] for i in maybe], add_special_tokens=False)["input_ids"]
    counts = [n + len(ids) + 1 for n, ids in zip(counts, target_ids)]
  return [(i, n) for i, n in zip(maybe, counts) if n > limit]


def check_lengths(examples: Sequence[Example], rows: Sequence[int], source: str, tokenizer, *, limit: int,
                  named: str, warmup: bool = False) -> None:
  """Raises naming `source`, the longest row over `limit` tokens (`rows[i]`: the file row of
  `examples[i]`) and the limit as `named` (its config keys and value): the prompt alone, or with
  `warmup` the prompt, warm-up target (`math_sft_target`) and EOS."""
  targets = [math_sft_target(e) for e in examples] if warmup else None
  over = _too_long(tokenizer, [e["prompt"] for e in examples], targets, limit)
  if over:
    i, n = max(over, key=lambda item: item[1])
    what = "its prompt, worked solution and EOS take" if warmup else "its prompt takes"
    others = f" ({len(over)} rows are over it)" if len(over) > 1 else ""
    raise ValueError(f"row {rows[i]} of {source!r}: {what} {n} tokens, more than {named}{others}; "
                     "raise the limit or drop the row")


def _config_value(task_config, key: str, default: Any = None) -> Any:
  value = getattr(task_config, key, default)
  return default if value is None else value


def build_math_file_task(task_config, seed: int, *, tokenizer=None):
  """A `task.Task` over local GSM8K / MATH-style files.

  Reads from `task_config` (a ConfigDict or any object with attributes):
    train_file: the training file.
    eval_file: optional held-out file; without it, `num_eval` rows of `train_file` are
      held out (split seed: `seed`).
    num_eval: with `eval_file`, how many of its first rows are held out (0: all); without
      it, see above (default 0).
    question_field, answer_field, answer_format: see `load_math_file` (defaults: GSM8K).
    prompt_template: optional, `str.format`-ed with `question=`; default `"{question}"`.
    tokenizer_dir: a local Hugging Face tokenizer directory, used when `tokenizer` is None.
    max_prompt_length, max_completion_length: optional; every row used is checked against
      them (see the module docstring).

  Every process loads the full splits; `batching.batch_indices` shards the batches.

  Args:
    task_config: the `config.task` block.
    seed: the experiment seed.
    tokenizer: a Hugging Face tokenizer; when None it is loaded from
      `task_config.tokenizer_dir` with `AutoTokenizer.from_pretrained`.

  Returns:
    `task.Task` whose warm-up targets are `math_sft_target` (solution or `#### answer`).
  """
  if tokenizer is None:
    tokenizer_dir = _config_value(task_config, "tokenizer_dir")
    if not tokenizer_dir:
      raise ValueError("build_math_file_task needs a tokenizer or task_config.tokenizer_dir")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
  fields = dict(question_field=_config_value(task_config, "question_field", "question"),
                answer_field=_config_value(task_config, "answer_field", "answer"),
                answer_format=_config_value(task_config, "answer_format", "auto"))
  if not _config_value(task_config, "train_file"):
    raise ValueError(f"task.train_file is not set (got {getattr(task_config, 'train_file', None)!r}); "
                     f"expected a local {' / '.join(SUPPORTED_EXTENSIONS)} file")
  template = _config_value(task_config, "prompt_template", "{question}")

  def load(path):
    examples = load_math_examples(path, **fields)
    for example in examples:
      example["prompt"] = template.format(question=example["prompt"])
    return examples

  train_file, eval_file = str(task_config.train_file), _config_value(task_config, "eval_file")
  examples = load(train_file)
  if eval_file:
    train_rows = list(range(len(examples)))
    held_out = load(eval_file)
    num_eval = int(_config_value(task_config, "num_eval", 0))
    if num_eval < 0:
      raise ValueError(f"task.num_eval must be >= 0, got {num_eval}")
    eval_source, eval_rows = str(eval_file), list(range(min(num_eval or len(held_out), len(held_out))))
  else:
    train_rows, eval_rows = split_rows(len(examples), num_eval=_config_value(task_config, "num_eval", 0), seed=seed)
    eval_source, held_out = train_file, examples
  train, held_out = [examples[i] for i in train_rows], [held_out[i] for i in eval_rows]
  prompt_limit = _config_value(task_config, "max_prompt_length")
  if prompt_limit is not None:  # every prompt is sampled from (train) or evaluated (held out)
    for rows, source, split in ((train_rows, train_file, train), (eval_rows, eval_source, held_out)):
      check_lengths(split, rows, source, tokenizer, limit=int(prompt_limit),
                    named=f"task.max_prompt_length={int(prompt_limit)}")
  checked = prompt_limit is None or _config_value(task_config, "max_completion_length") is None

  def sft_targets(examples: list[dict], step: int) -> list[str]:
    nonlocal checked
    del step
    if not checked:  # once, on the warm-up's first call: only the warm-up reads the worked solutions
      limit = int(prompt_limit) + int(task_config.max_completion_length)
      check_lengths(train, train_rows, train_file, tokenizer, warmup=True, limit=limit,
                    named=f"task.max_prompt_length + task.max_completion_length = {limit} (the warm-up's length)")
      checked = True
    return [math_sft_target(e) for e in examples]

  return task_lib.Task(tokenizer, train, held_out, sft_targets)
