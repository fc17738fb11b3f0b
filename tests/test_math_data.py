"""Tests for the local GSM8K / MATH file loader (jaxrl_reward/data/math_files.py)."""
import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxrl_reward.data import math_files
from jaxrl_reward.data.math_files import (
    final_answer,
    load_math_examples,
    load_math_file,
    load_tfds_examples,
    shard_examples,
    split_examples,
)

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                 "in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "A shop sells 1,000 pens a day for 3 days. How many pens?",
     "answer": "It sells 1,000 * 3 = <<1000*3=3000>>3,000 pens.\n#### 3,000"},
    {"question": "Tom owes 5 dollars and pays 12. What is his balance?", "answer": "12 - 5 = 7\n#### -7 "},
]
MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
     "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
     "level": "Level 1"},
    {"problem": "Simplify $\\sqrt{8}$.", "solution": "First $\\boxed{4}$ is wrong; $\\sqrt{8} = \\boxed{2\\sqrt{2}}$.",
     "level": "Level 2"},
]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return path


def _numbered_rows(n):
  return [{"question": f"question {i}?", "answer": f"work {i}\n#### {i}"} for i in range(n)]


def test_gsm8k_jsonl(tmp_path):
  path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
  examples = load_math_examples(path)
  assert [ex["answer"] for ex in examples] == ["72", "3000", "-7"]
  assert [ex["prompt"] for ex in examples] == [row["question"] for row in GSM8K_ROWS]
  assert [ex["solution"] for ex in examples] == [row["answer"] for row in GSM8K_ROWS]
  assert set(examples[0]) == {"prompt", "answer", "solution"}


def test_gsm8k_parquet_matches_jsonl(tmp_path):
  pq.write_table(pa.Table.from_pylist(GSM8K_ROWS), tmp_path / "gsm8k.parquet")
  from_parquet = load_math_examples(tmp_path / "gsm8k.parquet")
  from_jsonl = load_math_examples(_write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS))
  assert from_parquet == from_jsonl
  assert [ex["answer"] for ex in from_parquet] == ["72", "3000", "-7"]


def test_math_boxed_solution(tmp_path):
  path = _write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
  examples = load_math_examples(path, question_field="problem", answer_field="solution", keep_fields=("level",))
  assert [ex["answer"] for ex in examples] == ["\\frac{3}{4}", "2\\sqrt{2}"]  # the last box counts
  assert [ex["solution"] for ex in examples] == [row["solution"] for row in MATH_ROWS]
  assert [ex["level"] for ex in examples] == ["Level 1", "Level 2"]
  assert examples[0]["prompt"] == MATH_ROWS[0]["problem"]


def test_plain_answer_with_separate_solution(tmp_path):
  rows = [{"problem": "1+1?", "answer": " 2 ", "solution": "One and one: $\\boxed{2}$."},
          {"problem": "Name the set.", "answer": "\\{1, 2\\}", "solution": "It is $\\{1,2\\}$."}]
  examples = load_math_examples(_write_jsonl(tmp_path / "math500.jsonl", rows), question_field="problem")
  assert [ex["answer"] for ex in examples] == ["2", "\\{1, 2\\}"]
  assert [ex["solution"] for ex in examples] == [row["solution"] for row in rows]
  plain_only = load_math_examples(_write_jsonl(tmp_path / "plain.jsonl", [{"question": "q", "answer": "5"}]))
  assert plain_only == [{"prompt": "q", "answer": "5"}]  # no solution anywhere: no solution key


def test_final_answer_formats():
  assert final_answer("a\n#### 1,234") == ("1234", True)
  assert final_answer("so $\\boxed{\\frac{\\pi}{2}}$") == ("\\frac{\\pi}{2}", True)
  assert final_answer(" 42 ", "plain") == ("42", False)
  assert final_answer("#### 5 has \\boxed{6}", "boxed") == ("6", True)
  with pytest.raises(ValueError, match="####"):
    final_answer("no marker", "gsm8k")
  with pytest.raises(ValueError, match="boxed"):
    final_answer("\\boxed{unclosed", "boxed")
  with pytest.raises(ValueError, match="answer_format"):
    final_answer("1", "latex")


def test_split_is_deterministic_disjoint_and_complete(tmp_path):
  path = _write_jsonl(tmp_path / "rows.jsonl", _numbered_rows(50))
  train, held_out = load_math_file(path, num_eval=10, split_seed=3)
  again = load_math_file(path, num_eval=10, split_seed=3)
  other = load_math_file(path, num_eval=10, split_seed=4)
  assert (train, held_out) == again
  assert len(train) == 40 and len(held_out) == 10
  train_answers = [int(ex["answer"]) for ex in train]
  eval_answers = [int(ex["answer"]) for ex in held_out]
  assert sorted(train_answers + eval_answers) == list(range(50))
  assert train_answers == sorted(train_answers) and eval_answers == sorted(eval_answers)  # file order
  assert eval_answers != [int(ex["answer"]) for ex in other[1]]
  assert load_math_file(path)[1] == []  # num_eval defaults to 0
  with pytest.raises(ValueError, match="num_eval"):
    split_examples(train, num_eval=41, seed=0)


def test_per_process_shards_are_disjoint_and_reproducible(tmp_path):
  path = _write_jsonl(tmp_path / "rows.jsonl", _numbered_rows(23))
  count = 4
  shards = [load_math_file(path, num_eval=3, split_seed=1, process_index=i, process_count=count)
            for i in range(count)]
  assert shards == [load_math_file(path, num_eval=3, split_seed=1, process_index=i, process_count=count)
                    for i in range(count)]
  full_train, full_eval = load_math_file(path, num_eval=3, split_seed=1)
  train_shards = [[ex["answer"] for ex in train] for train, _ in shards]
  assert all(len(s) == len(full_train) // count for s in train_shards)  # 20 // 4 = 5 each
  flat = [answer for shard in train_shards for answer in shard]
  assert len(flat) == len(set(flat)) == 20
  assert set(flat) <= {ex["answer"] for ex in full_train}
  assert [len(held_out) for _, held_out in shards] == [0, 0, 0, 0]  # 3 eval rows < 4 processes
  assert train_shards[1] == [ex["answer"] for ex in full_train[1::count]]


def test_shard_examples_keep_remainder():
  items = [{"i": i} for i in range(10)]
  shares = [shard_examples(items, process_index=i, process_count=3, drop_remainder=False) for i in range(3)]
  assert [len(s) for s in shares] == [4, 3, 3]
  assert sorted(x["i"] for s in shares for x in s) == list(range(10))
  assert [len(shard_examples(items, process_index=i, process_count=3)) for i in range(3)] == [3, 3, 3]
  with pytest.raises(ValueError, match="process_index"):
    shard_examples(items, process_index=3, process_count=3)
  with pytest.raises(ValueError, match="both"):
    load_math_file("unused.jsonl", process_index=0)


def test_missing_file(tmp_path):
  missing = tmp_path / "nope" / "gsm8k.jsonl"
  with pytest.raises(FileNotFoundError, match="nope/gsm8k.jsonl"):
    load_math_file(missing)


def test_missing_file_or_a_folder_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'.*/rows\.jsonl' does not exist"):
    load_math_file(tmp_path / "rows.jsonl")
  (tmp_path / "data.jsonl").mkdir()
  with pytest.raises(FileNotFoundError, match=r"'.*/data\.jsonl' is a directory"):
    load_math_file(tmp_path / "data.jsonl")


def _one_line_error(exc_info):
  message = str(exc_info.value)
  assert "\n" not in message, message
  return message


@pytest.mark.parametrize("name, content", [
    ("empty.jsonl", b""), ("empty.json", b""), ("blank.jsonl", b"\n \n"), ("empty.parquet", b"")])
def test_empty_file_is_a_one_line_error(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError) as exc_info:
    load_math_file(path)
  assert _one_line_error(exc_info) == f"math data file {str(path)!r} is empty"


def test_file_without_rows_is_a_one_line_error(tmp_path):
  path = tmp_path / "rows.json"
  path.write_text("[]")
  with pytest.raises(ValueError, match=r"'.*/rows\.json' has no rows") as exc_info:
    load_math_file(path)
  _one_line_error(exc_info)
  pq.write_table(pa.Table.from_pylist(GSM8K_ROWS).slice(0, 0), tmp_path / "rows.parquet")
  with pytest.raises(ValueError, match=r"'.*/rows\.parquet' has no rows"):
    load_math_file(tmp_path / "rows.parquet")


def test_non_utf8_file_names_the_byte_and_offset(tmp_path):
  path = tmp_path / "latin1.jsonl"
  good = json.dumps(GSM8K_ROWS[2]).encode() + b"\n"
  path.write_bytes(good + '{"question": "Caf\u00e9?", "answer": "#### 1"}\n'.encode("latin-1"))
  with pytest.raises(ValueError) as exc_info:
    load_math_file(path)
  offset = len(good) + len('{"question": "Caf')
  assert _one_line_error(exc_info) == (f"math data file {str(path)!r} is not UTF-8 text "
                                       f"(byte 0xe9 at offset {offset})")


def test_non_utf8_byte_past_the_first_chunk(tmp_path, monkeypatch):
  monkeypatch.setattr(math_files, "_CHUNK_BYTES", 7)  # "é" (2 bytes) split across chunks, a bad byte later
  path = tmp_path / "rows.jsonl"
  head = '{"question": "caf\u00e9 ok?", "answer": "#### 1"}\n'.encode()
  path.write_bytes(head + b'{"question": "\xff", "answer": "#### 2"}\n')
  with pytest.raises(ValueError, match=rf"byte 0xff at offset {len(head) + 14}\)"):
    load_math_file(path)
  path.write_bytes(head + b'{"question": "cut \xc3')  # a multi-byte character cut off at the end
  with pytest.raises(ValueError, match=rf"byte 0xc3 at offset {len(head) + 18}\)"):
    load_math_file(path)


def test_malformed_json_and_parquet_are_one_line_errors(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text(json.dumps(GSM8K_ROWS[0]) + '\n{"question": \n')
  with pytest.raises(ValueError, match=r"'.*/rows\.jsonl' is not valid JSON lines: .*row 1") as exc_info:
    load_math_file(path)
  _one_line_error(exc_info)
  path = tmp_path / "rows.parquet"
  path.write_bytes(b"not a parquet file at all")
  with pytest.raises(ValueError, match=r"'.*/rows\.parquet' is not a parquet file: ") as exc_info:
    load_math_file(path)
  _one_line_error(exc_info)


def test_unsupported_extension(tmp_path):
  path = tmp_path / "gsm8k.csv"
  path.write_text("question,answer\nq,#### 1\n")
  with pytest.raises(ValueError, match=r"'\.csv'.*\.jsonl.*\.parquet"):
    load_math_file(path)


def test_missing_field_names_field_and_existing_fields(tmp_path):
  path = _write_jsonl(tmp_path / "math.jsonl", MATH_ROWS)
  with pytest.raises(ValueError, match=r"no field 'question'.*'problem'.*'solution'"):
    load_math_file(path)
  with pytest.raises(ValueError, match=r"no field 'answer'.*'level'"):
    load_math_file(path, question_field="problem")
  with pytest.raises(ValueError, match="no field 'topic'"):
    load_math_file(path, question_field="problem", answer_field="solution", keep_fields=("topic",))


def test_row_without_answer(tmp_path):
  rows = [{"question": "q0", "answer": "#### 1"}, {"question": "q1", "answer": None}]
  with pytest.raises(ValueError, match="row 1"):
    load_math_file(_write_jsonl(tmp_path / "rows.jsonl", rows))
  rows = [{"question": "q0", "answer": "#### 1"}, {"question": "q1", "answer": "no marker"}]
  with pytest.raises(ValueError, match="row 1.*####"):
    load_math_file(_write_jsonl(tmp_path / "rows2.jsonl", rows), answer_format="gsm8k")


def test_tfds_missing_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now raises ImportError
  with pytest.raises(ImportError, match="pip install .*tensorflow-datasets|tensorflow-datasets.*pip install"):
    load_tfds_examples("gsm8k")


def test_tfds_rows_are_decoded(monkeypatch):
  rows = [{"question": b"2+2?", "answer": b"#### 4"}, {"question": b"3+3?", "answer": b"so #### 6"}]
  fake = types.SimpleNamespace(load=lambda name, split, data_dir, download: (name, split, download),
                               as_numpy=lambda ds: rows if ds == ("gsm8k", "test", False) else [])
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  examples = load_tfds_examples("gsm8k", split="test")
  assert [(ex["prompt"], ex["answer"]) for ex in examples] == [("2+2?", "4"), ("3+3?", "6")]


def test_build_math_file_task(tmp_path):
  from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer

  path = _write_jsonl(tmp_path / "rows.jsonl", _numbered_rows(12))
  config = types.SimpleNamespace(train_file=str(path), num_eval=4, prompt_template="Q: {question}\nA:")
  task = math_files.build_math_file_task(config, 0, tokenizer=build_arithmetic_tokenizer())
  assert len(task.train) == 8 and len(task.eval) == 4
  assert task.train[0]["prompt"].startswith("Q: question ") and task.train[0]["prompt"].endswith("?\nA:")
  assert task.sft_targets(task.train[:1], 0) == [task.train[0]["solution"]]
  assert math_files.math_sft_target({"answer": "5"}) == "#### 5"
  with pytest.raises(ValueError, match="tokenizer"):
    math_files.build_math_file_task(config, 0)
  eval_path = _write_jsonl(tmp_path / "eval.jsonl", _numbered_rows(6))
  config.eval_file, config.num_eval = str(eval_path), 0  # the whole eval file, then its first rows
  task = math_files.build_math_file_task(config, 0, tokenizer=task.tokenizer)
  assert [ex["answer"] for ex in task.eval] == [str(i) for i in range(6)]
  config.num_eval = 2
  task = math_files.build_math_file_task(config, 0, tokenizer=task.tokenizer)
  assert len(task.train) == 12 and [ex["answer"] for ex in task.eval] == ["0", "1"]
  config.train_file = ""
  with pytest.raises(ValueError, match="task.train_file is not set"):
    math_files.build_math_file_task(config, 0, tokenizer=build_arithmetic_tokenizer())
