#!/usr/bin/env bash
# On one GPU: the sampler/learner log-prob gap of the main job in bfloat16, with the old
# log-probs taken from the sampler and recomputed, plus the whole GRPO step benchmark.
#   bash scripts/run_gpu_old_logp.sh OUT_DIR
# Writes OUT_DIR/old_logp_gpu.jsonl (one line per run: per-RL-step gap and clip fractions of
# the first update of each rollout) and OUT_DIR/bench_gpu.jsonl (experiments.bench lines).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: run_gpu_old_logp.sh OUT_DIR}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
for mode in sampler recompute; do
  rm -rf "/tmp/old_logp_$mode"
  # One update per rollout: every RL step's clip fraction is that of a first update.
  "$PY" -m experiments.train --config=configs/grpo_arithmetic.py --workdir="/tmp/old_logp_$mode" \
    --config.model.dtype=bfloat16 --config.train.old_logp=$mode --config.train.steps=30 \
    --config.eval.every=30 >>"$OUT/train.log" 2>&1
  "$PY" - "$mode" >>"$OUT/old_logp_gpu.jsonl" <<'PYEOF'
import json, sys
import jax
mode = sys.argv[1]
rows = [json.loads(l) for l in open(f"/tmp/old_logp_{mode}/metrics.jsonl")]
rl = [r for r in rows if r.get("train/stage") == 1.0]
evals = [r for r in rows if "eval/accuracy_greedy" in r]
print(json.dumps({"case": "old_logp", "old_logp": mode, "dtype": "bfloat16", "model": "mini",
                  "device": jax.devices()[0].device_kind, "jax": jax.__version__,
                  "sampler_logp_gap": [r["stats/sampler_logp_gap"] for r in rl],
                  "clip_frac": [r["stats/clip_frac"] for r in rl],
                  "ratio_mean": [r["stats/ratio_mean"] for r in rl],
                  "reward": [r["train/reward"] for r in rl],
                  "eval": [{k: r[k] for k in r if k.startswith("eval/") or k == "step"} for r in evals]}))
PYEOF
done
for dtype in float32 bfloat16; do
  "$PY" -m experiments.bench --model=tiny --vocab_size=1024 --dtype=$dtype 2>>"$OUT/bench.log" | grep '^{"' >>"$OUT/bench_gpu.jsonl"
done
"$PY" -m experiments.bench --model=small --vocab_size=32000 --dtype=bfloat16 --prompts=16 --group_size=8 \
  --prompt_length=128 --completion_length=256 2>>"$OUT/bench.log" | grep '^{"' >>"$OUT/bench_gpu.jsonl"
