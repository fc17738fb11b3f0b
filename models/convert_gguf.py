"""GGUF file -> Hugging Face folder (config.json, float32 model.safetensors, tokenizer).

    python -m models.convert_gguf --gguf=SmolLM2-135M-Instruct.Q4_1.gguf --out=DIR

Uses `transformers`' GGUF reader (`from_pretrained(folder, gguf_file=name)`), which
dequantises every tensor (needs the `gguf` package and torch). The quantisation entry is
dropped from the config, so `models.hf.load(DIR)` and
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` read plain float32 weights. The
weights are those of the quantised file (dequantised), not of the original float model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            dtype: str = "float32") -> dict:
  """Converts `gguf_path` into an HF folder `out_dir`; returns the written config dict.

  Raises:
    FileNotFoundError: `gguf_path` does not exist.
    ValueError: `dtype` is not "float32" / "bfloat16" / "float16".
  """
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  gguf_path = os.path.abspath(os.fspath(gguf_path))
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"--gguf: no such file {gguf_path!r}")
  dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
  if dtype not in dtypes:
    raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
  folder, name = os.path.split(gguf_path)
  out_dir = os.fspath(out_dir)

  model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtypes[dtype])
  tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  # Plain float weights from here on: forget that they came from a quantised file.
  if hasattr(model.config, "quantization_config"):
    delattr(model.config, "quantization_config")
  for attr in ("hf_quantizer", "quantization_method"):
    if getattr(model, attr, None) is not None:
      setattr(model, attr, None)
  if hasattr(model, "is_quantized"):
    model.is_quantized = False
  model.config.dtype = dtype

  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(out_dir)
  tokenizer.save_pretrained(out_dir)

  config_file = os.path.join(out_dir, "config.json")
  with open(config_file) as f:
    config = json.load(f)
  if "quantization_config" in config:  # older transformers write it from the class state
    config.pop("quantization_config")
    with open(config_file, "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
  return config


def folder_bytes(path: str | os.PathLike) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m models.convert_gguf", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gguf", required=True, help="the .gguf file")
  parser.add_argument("--out", required=True, help="output HF folder (created)")
  parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
  args = parser.parse_args(argv)
  start = time.time()
  config = convert(args.gguf, args.out, dtype=args.dtype)
  print(f"wrote {args.out} ({config.get('architectures')}, {folder_bytes(args.out) / 2**20:.1f} "
        f"MiB) in {time.time() - start:.1f} s")
  try:
    from models import hf
    hf.config_from_hf(config)
  except ValueError as e:
    print(f"note: models.hf.load does not support this config: {e}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
