#!/usr/bin/env bash
# Benchmark-only virtual environments for comparing with other RL libraries.
#
#   bash scripts/make_bench_env.sh          # .bench_env: torch 2.13.0 (CPU) + TRL + transformers
#   bash scripts/make_bench_env.sh tunix    # .bench_env_tunix: google-tunix (its own jax/flax)
#
# Then (see the docstrings of the scripts for the shapes):
#
#   .bench_env/bin/python experiments/bench_trl.py
#   .bench_env_tunix/bin/python experiments/bench_trl.py --library=tunix
#
# These environments are separate from the project's own: TRL pins its own transformers /
# accelerate, and Tunix its own jax / flax, which must not leak into the environment the
# project's tests run in. Each environment folder gets a `.gitignore` holding `*`, so git
# never sees it. torch==2.13.0 is asked for by exact version so that pip takes the local
# CPU wheel (a bare `torch` would fetch a multi-GB CUDA build).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHICH="${1:-trl}"

make_env() {
  local dir="$1"
  if [[ ! -x "$dir/bin/python" ]]; then
    "$PYTHON" -m venv "$dir"
  fi
  echo '*' > "$dir/.gitignore"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
}

case "$WHICH" in
  trl)
    make_env .bench_env
    .bench_env/bin/pip install --quiet torch==2.13.0
    # `torch==2.13.0` again so that no dependency upgrades torch to a CUDA build.
    .bench_env/bin/pip install --quiet torch==2.13.0 trl transformers datasets accelerate tokenizers
    .bench_env/bin/python -c "import torch, transformers, trl; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'trl', trl.__version__)"
    ;;
  tunix)
    make_env .bench_env_tunix
    .bench_env_tunix/bin/pip install --quiet google-tunix
    .bench_env_tunix/bin/python -c "import importlib.metadata as m; \
print({p: m.version(p) for p in ('google-tunix', 'jax', 'flax')})"
    ;;
  *)
    echo "usage: $0 [trl|tunix]" >&2
    exit 2
    ;;
esac
