"""Markdown tables from benchmark JSON lines (experiments/bench*.py output).

    python -m experiments.bench_tables results.jsonl [more.jsonl ...]            # print
    python -m experiments.bench_tables results.jsonl --out=bench_tables.md       # also write

Reads every line that parses as a JSON object (other lines, e.g. logging, are skipped) and
groups the records by their "case":

- `logprobs_grad` / `logprobs_ratio` (experiments/bench_logprobs.py): one row per
  (dtype, V, T, B) with lean and naive peak memory and time, and their ratios;
- `grpo_step` (experiments/bench.py), `trl_grpo_step` and `tunix_grpo_step`
  (experiments/bench_trl.py): one row per run, then the ratio of our median whole-step
  tokens/s to each other library's median at the same shape;
- experiments/bench_sampler.py lines (no "case"; `impl` jax or torch): one row per
  (implementation, batch size) with our tokens/s over each torch row's;
- any other case: a table of all its fields.

`--update=BENCHMARKS.md` replaces the block between the lines `<!-- bench_tables:begin -->`
and `<!-- bench_tables:end -->` of that file with the tables (the curated text around it
stays); `--out` writes them to a file of their own.

    python -m experiments.bench_tables experiments/results/*.jsonl --update=BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys


def read_records(paths):
  records = []
  for path in paths:
    with open(path) as f:
      for line in f:
        line = line.strip()
        if not line.startswith("{"):
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if not isinstance(record, dict):
          continue
        if "case" not in record and "impl" in record and "tokens_per_s" in record:
          record["case"] = "sampler"  # experiments/bench_sampler.py lines have no "case"
        if "case" in record:
          records.append(record)
  return records


def _fmt(x, digits=3):
  if x is None:
    return "-"
  if isinstance(x, bool):
    return "yes" if x else "no"
  if isinstance(x, float):
    if abs(x) >= 1000:
      return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:,.{digits}f}".rstrip("0").rstrip(".")
  if isinstance(x, int):
    return f"{x:,}"
  return str(x)


def table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _logprobs_pairs(grads):
  """(lean, naive) pairs in file order: a naive record closes the last lean one of its shape."""
  pending, pairs = collections.OrderedDict(), []
  for r in grads:
    key = (r["dtype"], r["V"], r["T"], r["B"])
    if r["impl"] == "lean":
      if key in pending:
        pairs.append((pending.pop(key), {}))
      pending[key] = r
    elif key in pending:
      pairs.append((pending.pop(key), r))
    else:
      pairs.append(({}, r))
  pairs += [(lean, {}) for lean in pending.values()]
  return pairs


def logprobs_table(records):
  grads = [r for r in records if r["case"] == "logprobs_grad"]
  if not grads:
    return None
  rows = []
  for lean, naive in _logprobs_pairs(grads):
    any_ = lean or naive
    peak_ratio = (lean["peak_GiB"] / naive["peak_GiB"]
                  if lean.get("peak_GiB") and naive.get("peak_GiB") else None)
    time_ratio = (lean["time_s"] / naive["time_s"]
                  if lean.get("time_s") and naive.get("time_s") else None)
    cpu_ratio = (lean["cpu_s"] / naive["cpu_s"]
                 if lean.get("cpu_s") and naive.get("cpu_s") else None)
    notes = "; ".join(f"{name}: not run ({r['not_run']})" for name, r in (("lean", lean), ("naive", naive))
                      if r.get("not_run") and "would need" in r["not_run"])
    rows.append((any_["dtype"], any_["V"], any_["T"], any_["B"], lean.get("chunk_size") or "auto",
                 any_.get("full_logits_f32_GiB"), lean.get("peak_GiB"), naive.get("peak_GiB"),
                 None if peak_ratio is None else round(peak_ratio, 3),
                 lean.get("time_s"), naive.get("time_s"),
                 None if time_ratio is None else round(time_ratio, 2),
                 None if cpu_ratio is None else round(cpu_ratio, 2), notes or ""))
  header = ("dtype", "V", "T", "B", "lean chunk", "[B,T,V] f32 GiB", "lean peak GiB",
            "naive peak GiB", "peak lean/naive", "lean s", "naive s", "time lean/naive",
            "CPU time lean/naive", "notes")
  return "#### Log-probs + GRPO loss + gradients (lean vs naive)\n\n" + table(header, rows)


STEP_CASES = {"grpo_step": "jaxrl_reward", "trl_grpo_step": "TRL GRPOTrainer",
              "tunix_grpo_step": "Tunix GRPOLearner"}


def _label(r):
  """The implementation's name, with the settings that change what a TRL step does."""
  name = STEP_CASES[r["case"]]
  extras = []
  if r.get("gradient_checkpointing"):
    extras.append("activation checkpointing")
  if r["case"] == "trl_grpo_step" and r.get("torch_threads"):
    extras.append(f"torch threads: {r['torch_threads']}")
  return f"{name} ({', '.join(extras)})" if extras else name


def _shape(r):
  return (r.get("batch"), r.get("prompt_length"), r.get("completion_length"), r.get("dtype"),
          _device(r))


def _device(r):
  return r.get("device") or "cpu"  # the TRL / Tunix runs are CPU-only


def _mesh(r):
  mesh = r.get("mesh")
  return " x ".join(f"{k} {v}" for k, v in mesh.items()) if mesh else ""


def _load(r):
  load = r.get("load_avg_1m")
  if isinstance(load, list):
    return " -> ".join(_fmt(float(x)) for x in load)
  return load


def step_table(records):
  steps = [r for r in records if r["case"] in STEP_CASES]
  if not steps:
    return None
  rows = []
  for r in steps:
    name = _label(r)
    version = r.get("library") or (f"jax {r['jax']}" if r.get("jax") else "")
    if r.get("commit"):  # the code measured, where a file holds runs of several versions
      version += f", {r['commit'][:7]}"
    rows.append((name, version, r.get("model"), _mesh(r), _device(r), r.get("dtype"),
                 f"{r.get('batch')} x ({r.get('prompt_length')} + {r.get('completion_length')})",
                 r.get("step_tokens_per_s"), r.get("step_s"), r.get("sample_tokens_per_s"),
                 r.get("update_tokens_per_s"), r.get("generate_s"), _load(r)))
  header = ("implementation", "version", "model", "mesh", "device", "dtype",
            "batch x (prompt + completion)", "whole step tok/s", "step s", "sample tok/s",
            "update tok/s", "TRL generate s", "load avg")
  out = "#### Whole GRPO step, completion tokens/s\n\n" + table(header, rows)
  # Ratios only between single-device runs of the same shape, dtype and device.
  by_shape = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in steps:
    if r.get("step_tokens_per_s") and not r.get("mesh"):
      by_shape[_shape(r)][_label(r)].append(r["step_tokens_per_s"])
  ours_label = STEP_CASES["grpo_step"]
  ratio_rows = []
  for shape, cases in by_shape.items():
    if ours_label not in cases:
      continue
    ours = statistics.median(cases[ours_label])
    for label, values in cases.items():
      if label != ours_label:
        ratio_rows.append((f"{shape[0]} x ({shape[1]} + {shape[2]}), {shape[3]}, {shape[4]}", label,
                           round(ours, 1), round(statistics.median(values), 1),
                           round(ours / statistics.median(values), 2)))
  if ratio_rows:
    out += "\n\n" + table(("shape", "vs", "ours tok/s (median)", "theirs tok/s (median)",
                           "ours / theirs"), ratio_rows)
  return out


def sampler_table(records):
  rows_in = [r for r in records if r["case"] == "sampler"]
  if not rows_in:
    return None
  ours = {}
  for r in rows_in:
    if r["impl"] == "jax":
      ours[(r.get("model_dir"), r["batch"], r.get("new_tokens"))] = r["tokens_per_s"]
  rows = []
  for r in rows_in:
    mine = ours.get((r.get("model_dir"), r["batch"], r.get("new_tokens")))
    ratio = round(mine / r["tokens_per_s"], 2) if r["impl"] != "jax" and mine else None
    rows.append((r.get("model_dir"), r["impl"], r.get("threads"), r["batch"], r.get("prompt_len"),
                 r.get("new_tokens"), r["tokens_per_s"], r.get("time_s"), r.get("greedy_match"), ratio))
  header = ("model", "impl", "torch threads", "batch", "prompt len", "new tokens", "tok/s", "s",
            "greedy match", "ours / this")
  return "#### Sampler alone (greedy, KV cache) vs transformers.generate\n\n" + table(header, rows)


def generic_tables(records):
  known = {"logprobs_grad", "logprobs_ratio", "sampler", *STEP_CASES}
  by_case = collections.OrderedDict()
  for r in records:
    if r["case"] not in known:
      by_case.setdefault(r["case"], []).append(r)
  out = []
  for case, rs in by_case.items():
    keys = [k for k in dict.fromkeys(k for r in rs for k in r) if k != "case"]
    rows = [tuple(r.get(k) if not isinstance(r.get(k), (list, dict)) else json.dumps(r.get(k))
                  for k in keys) for r in rs]
    out.append(f"#### {case}\n\n" + table(keys, rows))
  return out


def render(records) -> str:
  parts = [p for p in (logprobs_table(records), step_table(records), sampler_table(records)) if p]
  parts += generic_tables(records)
  return "\n\n".join(parts) + "\n"


BEGIN = "<!-- bench_tables:begin -->"
END = "<!-- bench_tables:end -->"


def update_document(path: str, text: str) -> None:
  """Replaces the text between the BEGIN and END marker lines of `path` with `text`."""
  with open(path) as f:
    doc = f.read()
  if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
    raise ValueError(f"--update={path!r}: the file needs one {BEGIN!r} line followed by one {END!r} line")
  head, rest = doc.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
  os.replace(tmp, path)  # atomic: a failed write leaves the document as it was


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("inputs", nargs="+", help="JSONL files of benchmark results")
  parser.add_argument("--out", default="", help="also write the Markdown to this file")
  parser.add_argument("--update", default="", help="rewrite the marked block of this document")
  args = parser.parse_args(argv)
  # One section per results file: each file is one machine's runs of one code version.
  text = "\n".join(f"### `{path}`\n\n" + render(read_records([path])) for path in args.inputs)
  print(text, end="")
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  if args.update:
    update_document(args.update, text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
