"""The benchmark table generator: grouping of JSON lines and the in-place document update."""
import json

import pytest

from experiments import bench
from experiments import bench_tables


def test_update_rewrites_only_the_marked_block(tmp_path):
  doc = tmp_path / "B.md"
  doc.write_text(f"intro\n{bench_tables.BEGIN}\nold table\n{bench_tables.END}\noutro\n")
  bench_tables.update_document(str(doc), "| a |\n|---|\n| 1 |\n")
  text = doc.read_text()
  assert text.startswith("intro\n") and text.endswith("outro\n")
  assert "old table" not in text and "| 1 |" in text
  bench_tables.update_document(str(doc), "| b |\n")  # idempotent structure: markers kept
  assert text.count(bench_tables.BEGIN) == 1 and "| b |" in doc.read_text() and "| 1 |" not in doc.read_text()


def test_update_without_markers_is_an_error(tmp_path):
  doc = tmp_path / "B.md"
  doc.write_text("no markers\n")
  with pytest.raises(ValueError, match="bench_tables:begin"):
    bench_tables.update_document(str(doc), "x")
  assert doc.read_text() == "no markers\n"


def test_step_records_are_compared_with_other_libraries(tmp_path):
  lines = [
      {"case": "grpo_step", "model": "tiny", "dtype": "float32", "batch": 32, "prompt_length": 32,
       "completion_length": 64, "step_tokens_per_s": 1500.0, "step_s": 1.4},
      {"case": "trl_grpo_step", "library": "trl 1.16.0", "torch_threads": 2, "dtype": "float32", "batch": 32,
       "prompt_length": 32, "completion_length": 64, "step_tokens_per_s": 1000.0, "step_s": 2.0},
  ]
  path = tmp_path / "r.jsonl"
  path.write_text("log line\n" + "\n".join(json.dumps(r) for r in lines) + "\n")
  records = bench_tables.read_records([str(path)])
  assert [r["case"] for r in records] == ["grpo_step", "trl_grpo_step"]
  text = bench_tables.render(records)
  assert "1.5" in text.split("ours / theirs")[1]  # 1,500 / 1,000


def test_parse_mesh():
  assert bench.parse_mesh("data=2,fsdp=4") == (("data", 2), ("fsdp", 4))
  assert bench.parse_mesh("") is None
  with pytest.raises(ValueError, match="name=size"):
    bench.parse_mesh("data2")
