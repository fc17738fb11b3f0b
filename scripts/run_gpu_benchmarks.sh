#!/usr/bin/env bash
# Benchmark cases 1 and 2 on one GPU, one JSON line per case into OUT:
#   bash scripts/run_gpu_benchmarks.sh experiments/results/GPU_DATE.jsonl
# Case 1: lean vs naive log-probs at every shape (nothing is skipped for time; the naive
# B=4, T=4,096, V=151,936 case needs about 20 GiB). Case 2: the whole GRPO step of `tiny`
# (float32 and bfloat16) and of the 48M-parameter `small` at two batch shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: run_gpu_benchmarks.sh OUT.jsonl}"
PY="${PYTHON:-python3}"
run() { echo "+ $*" >&2; "$@" 2>>"$OUT.log" | grep '^{"' >>"$OUT"; }

run "$PY" -m experiments.bench_logprobs --max_run_gib=60 --time_budget_tflop=1000000 --repeats=5
for dtype in float32 bfloat16; do
  run "$PY" -m experiments.bench --model=tiny --vocab_size=1024 --dtype=$dtype
done
run "$PY" -m experiments.bench --model=small --vocab_size=32000 --dtype=bfloat16
run "$PY" -m experiments.bench --model=small --vocab_size=32000 --dtype=bfloat16 --prompts=16 \
  --group_size=8 --prompt_length=128 --completion_length=256
