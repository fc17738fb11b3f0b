"""Greedy decoding speed: our jitted sampler vs `transformers` `generate` (torch), same weights.

    python -m experiments.bench_sampler --batch_sizes=1,8,32 --max_new_tokens=32
    python -m experiments.bench_sampler --model_dir=/path/to/hf_folder --impls=jax

Both sides load the same Hugging Face folder (default: the SmolLM2-135M-Instruct folder
of configs/grpo_smollm2.py; get it with scripts/get_smollm2.sh) in float32, decode greedily
the same prompts (the config's held-out chat prompts, left-padded to the longest prompt of
the batch on both sides) with a KV cache, batch by batch.

Counting: EOS never stops a row on either side (ours: `eos_id=None`; torch:
`min_new_tokens = max_new_tokens`, which masks EOS), so every row generates exactly
`max_new_tokens` tokens and tokens/s = batch x max_new_tokens / seconds of one call.
Times are the median of `--repeats` calls after a warm-up call, each call a whole
generation (prefill + `max_new_tokens` decode steps); for ours, `compile_s` is the first
call's time minus that median (tracing + XLA compilation). For each batch size ours and
torch run back to back, so that load from other processes hits both alike. torch runs with
`torch.set_num_threads(--threads)`; XLA's CPU backend uses every core it sees.

`greedy_match` (torch rows) is the fraction of rows whose tokens equal ours before our
first EOS (a check that both sides compute the same model; float32 sums in another order
can flip a near-tie).

Prints one JSON line per (implementation, batch size).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags
from flax import nnx

_MODEL_DIR = flags.DEFINE_string("model_dir", "", "HF folder (default: configs/grpo_smollm2.model_dir()).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes to time.")
_NEW = flags.DEFINE_integer("max_new_tokens", 32, "Tokens generated per row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the warm-up call (median reported).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: os.cpu_count()).")
_IMPLS = flags.DEFINE_list("impls", ["jax", "torch"], "Which implementations to time: jax, torch.")


def held_out_prompts(model_dir: str, count: int) -> list[str]:
  """The first `count` held-out chat prompts of configs/grpo_smollm2.py (cpu variant)."""
  from configs import grpo_smollm2  # noqa: PLC0415
  from jaxrl_reward.data import tasks  # noqa: PLC0415

  config = grpo_smollm2.get_config("cpu")
  config.task.tokenizer_dir = model_dir
  config.task.num_train = 0  # the held-out split alone
  config.task.num_eval = count
  return [e["prompt"] for e in tasks.build_task(config.task, seed=config.seed).eval]


def _median_time(fn, repeats: int) -> tuple[float, float]:
  """(first call's seconds, median seconds of `repeats` further calls)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def jax_generate(model_dir: str, new: int):
  """`fn(ids [B, P], mask [B, P]) -> tokens [B, N]` with our jitted greedy sampler."""
  from jaxrl_reward import sampling  # noqa: PLC0415
  from models import hf  # noqa: PLC0415

  model = hf.load(model_dir, dtype="float32")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  assert not jax.tree.leaves(rest), "the model has non-parameter state"
  sampler = sampling.make_sampler(graphdef, max_new_tokens=new, temperature=0.0, eos_id=None, pad_id=0)
  key = jax.random.PRNGKey(0)
  return lambda ids, mask: np.asarray(jax.block_until_ready(sampler(params, ids, mask, key)).tokens)


def torch_generate(model_dir: str, new: int, threads: int):
  """`fn(ids [B, P], mask [B, P]) -> tokens [B, N]` with `transformers` `generate`."""
  import torch  # noqa: PLC0415
  from transformers import AutoModelForCausalLM  # noqa: PLC0415

  torch.set_num_threads(threads)
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

  def generate(ids, mask):
    with torch.inference_mode():
      out = model.generate(
          input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(mask.astype(np.int64)),
          do_sample=False, max_new_tokens=new, min_new_tokens=new, use_cache=True,
          pad_token_id=model.config.pad_token_id)
    return out[:, ids.shape[1]:].numpy()

  return generate


def greedy_match(ours: np.ndarray, theirs: np.ndarray, eos_id: int) -> float:
  """Fraction of rows equal before our first EOS (the whole row without one).

  torch cannot emit EOS here (`min_new_tokens`), so the rows part from our first EOS on.
  """
  same = []
  for a, b in zip(ours, theirs):
    hits = np.flatnonzero(a == eos_id)
    end = int(hits[0]) if hits.size else len(a)
    same.append(bool(np.array_equal(a[:end], b[:end])))
  return float(np.mean(same))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from configs import grpo_smollm2  # noqa: PLC0415
  from jaxrl_reward.data import batching  # noqa: PLC0415
  from models import hf  # noqa: PLC0415

  model_dir = _MODEL_DIR.value or grpo_smollm2.model_dir()
  sizes = [int(b) for b in _BATCHES.value]
  tokenizer = hf.load_tokenizer(model_dir)
  prompts = held_out_prompts(model_dir, max(sizes))
  batches = {}
  for b in sizes:
    width = max(len(x) for x in tokenizer(prompts[:b])["input_ids"])  # the longest prompt of the batch
    batches[b] = batching.encode_prompts(tokenizer, prompts[:b], max_length=width, padding_side="left")
  common = {"model_dir": os.path.basename(os.path.normpath(model_dir)), "dtype": "float32",
            "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
  threads = _THREADS.value or os.cpu_count()
  impls = {}  # both loaded first: each batch size then runs ours and torch back to back
  if "jax" in _IMPLS.value:
    impls["jax"] = jax_generate(model_dir, _NEW.value)
  if "torch" in _IMPLS.value:
    impls["torch"] = torch_generate(model_dir, _NEW.value, threads)
  for b, (ids, mask) in batches.items():
    tokens = {}
    for name, generate in impls.items():
      first, median = _median_time(lambda: generate(ids, mask), _REPEATS.value)  # noqa: B023
      tokens[name] = generate(ids, mask)
      assert tokens[name].shape == (b, _NEW.value), tokens[name].shape
      result = {"impl": name, "batch": b, "prompt_len": ids.shape[1], "new_tokens": _NEW.value,
                "tokens_per_s": round(b * _NEW.value / median, 1), "time_s": round(median, 3)}
      if name == "jax":
        result["compile_s"] = round(first - median, 1)
      else:
        result["threads"] = threads
        if "jax" in tokens:
          result["greedy_match"] = greedy_match(tokens["jax"], tokens[name], tokenizer.eos_token_id)
      print(json.dumps({**result, **common}), flush=True)


if __name__ == "__main__":
  app.run(main)
