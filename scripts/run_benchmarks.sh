#!/usr/bin/env bash
# Runs the benchmark suite on this machine, one JSON line per case into OUT, then rewrites
# the generated block of BENCHMARKS.md from experiments/results/*.jsonl and OUT.
#
#   bash scripts/run_benchmarks.sh experiments/results/MACHINE_DATE.jsonl
#
# Cases: the whole GRPO step (tiny in float32 and bfloat16 on 1 device and in float32 on 8
# fake devices under three meshes; the 48M-parameter `small`), lean vs naive log-probs, TRL's
# (float32 and bfloat16 autocast) and Tunix's GRPO step on the same shape (when
# scripts/make_bench_env.sh built .bench_env / .bench_env_tunix), and the sampler vs
# transformers.generate (torch with 2 and 1 threads) on a random Qwen2 of the benchmark shape.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: run_benchmarks.sh OUT.jsonl}"
run() { echo "+ $*" >&2; "$@" 2>>"$OUT.log" | grep '^{"' >>"$OUT"; }
FAKE8="--xla_force_host_platform_device_count=8"

for dtype in float32 bfloat16; do
  run python -m experiments.bench --model=tiny --vocab_size=1024 --dtype=$dtype
  run python -m experiments.bench --case=forward_backward --model=tiny --vocab_size=1024 --dtype=$dtype
done
for mesh in data=8 fsdp=8 data=2,fsdp=2,tensor=2; do
  XLA_FLAGS=$FAKE8 run python -m experiments.bench --model=tiny --vocab_size=1024 --repeats=3 --mesh=$mesh
done
run python -m experiments.bench --model=small --vocab_size=32000 --prompts=2 --group_size=4 --repeats=2
run python -m experiments.bench_logprobs
[[ -x .bench_env/bin/python ]] && run .bench_env/bin/python experiments/bench_trl.py
[[ -x .bench_env/bin/python ]] && run .bench_env/bin/python experiments/bench_trl.py --bf16
[[ -x .bench_env_tunix/bin/python ]] && run .bench_env_tunix/bin/python experiments/bench_trl.py --library=tunix
if [[ -x .bench_env/bin/python ]]; then
  MODEL_DIR="$(mktemp -d)"
  .bench_env/bin/python experiments/bench_trl.py --save_model_dir="$MODEL_DIR" >>"$OUT.log" 2>&1
  run python -m experiments.bench_sampler --model_dir="$MODEL_DIR" --batch_sizes=1,8,32 --max_new_tokens=64
  run python -m experiments.bench_sampler --model_dir="$MODEL_DIR" --batch_sizes=1,8,32 --max_new_tokens=64 \
    --impls=torch --threads=1
fi
python -m experiments.bench_tables $(ls experiments/results/*.jsonl "$OUT" | sort -u) --update=BENCHMARKS.md >/dev/null
echo "results: $OUT; BENCHMARKS.md's generated block rewritten" >&2
