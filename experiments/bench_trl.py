"""Reference timings: TRL's GRPOTrainer (torch) and Tunix's GRPOLearner on our benchmark shape.

Runs in a benchmark-only virtual environment, never in the project's own (see
scripts/make_bench_env.sh):

    bash scripts/make_bench_env.sh && .bench_env/bin/python experiments/bench_trl.py
    bash scripts/make_bench_env.sh tunix && \
        .bench_env_tunix/bin/python experiments/bench_trl.py --library=tunix

and, for the comparison, right before or after it in the project's environment:

    python -m experiments.bench --model=tiny --prompts=4 --group_size=8 \
        --completion_length=64 --prompt_length=32 --vocab_size=1024

The same random Qwen2 and tokenizer as a Hugging Face folder, for tools that take one (the
sampler alone vs `transformers.generate`):

    python experiments/bench_trl.py --save_model_dir=/tmp/random_qwen2   # any env with torch
    python -m experiments.bench_sampler --model_dir=/tmp/random_qwen2 --max_new_tokens=64

The shape is that of `--model=tiny --vocab_size=1024` in experiments/bench.py: a randomly
initialised Qwen2 built from a config (no hub access) with hidden 256, 4 layers, 4 query /
2 KV heads, head_dim 64, intermediate 1024, vocabulary 1024, untied embeddings; 4 prompts of
32 tokens x 8 completions of exactly 64 tokens per step (EOS is suppressed with
`min_new_tokens`), one optimizer step (AdamW) per generation, no reference model (beta 0),
loss `dapo`, float32 (TRL with `--bf16`: bfloat16 autocast over float32 weights), CPU.
The tokenizer is a word-level `tokenizers` model built in memory
(token i is the word "t{i}"), so a prompt of 32 words is 32 tokens. The reward is a cheap
stand-in (the fraction of odd completion token ids), as in experiments/bench.py.

The step time is the wall time of one whole GRPO step (generation + reward + advantages +
loss + backward + optimizer), measured over `--steps` steps after `--warmup` steps; one JSON
line reports completion tokens/s = 32 x 64 / median step time, and `generate_s`, the time of
`transformers.generate` inside the step. TRL's GRPOConfig turns activation checkpointing on
by default; our step does not recompute activations, so it is off here
(`--gradient_checkpointing` turns it on). Differences that remain: our model has no q/k/v
biases (Qwen2 has them: 2,048 more parameters here) and TRL's generation uses
`transformers.generate` (dynamic KV cache, SDPA attention).

Tunix (`--library=tunix`) uses its own Qwen2 (`tunix.models.qwen2`, no q/k/v biases) with the
same sizes, the "vanilla" rollout engine on one CPU device, AdamW, beta 0 and its default
loss aggregation; a step is the time from the end of one actor update to the end of the next
(generation, reward, advantages, update). EOS never stops a row (its EOS id is one the model
cannot sample), but tunix masks sampled pad tokens (id 0), so a few completions report 63
tokens; all 64 decode steps still run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

VOCAB = 1024
SHAPE = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
             intermediate_size=1024, vocab_size=VOCAB)


def make_tokenizer():
  """A word-level HF fast tokenizer: "<pad>" 0, "<eos>" 1, then "t2" ... "t1023"."""
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                 padding_side="left", truncation_side="left")


def make_torch_model(seed=0):
  """The random Qwen2 of the benchmark shape (float32), from a config."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM

  torch.manual_seed(seed)
  config = Qwen2Config(
      vocab_size=VOCAB, hidden_size=SHAPE["hidden_size"],
      intermediate_size=SHAPE["intermediate_size"], num_hidden_layers=SHAPE["num_layers"],
      num_attention_heads=SHAPE["num_heads"], num_key_value_heads=SHAPE["num_kv_heads"],
      head_dim=SHAPE["head_dim"], max_position_embeddings=2048, rope_theta=10000.0,
      rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
      bos_token_id=None, use_sliding_window=False)
  return Qwen2ForCausalLM(config).float()


# A minimal ChatML-style template, so that code which renders chat prompts can use the folder.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def make_bpe_tokenizer():
  """A byte-level BPE tokenizer of 1,024 tokens ("<pad>" 0, "<eos>" 1) trained on a small corpus.

  `transformers` loads a folder whose config says Qwen2 with its Qwen2 (byte-level BPE)
  tokenizer class whatever tokenizer.json holds, so the saved folder needs a byte-level BPE
  model: any text then tokenises to ids below 1,024.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = make_prompts(200, 32) + [
      "You are a calculator. Reply with only the result between <answer> and </answer> tags. "
      "Calculate 41 - 79. <answer>-38</answer> system user assistant"] * 20
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<eos>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                 unk_token="<pad>", padding_side="left")


def save_model_dir(path):
  """Saves the random Qwen2 and a byte-level BPE tokenizer as a Hugging Face folder.

  For tools that take any HF folder (experiments/bench_sampler.py --model_dir=PATH).
  """
  model = make_torch_model()
  model.generation_config.pad_token_id = 0
  model.generation_config.eos_token_id = 1
  model.save_pretrained(path)
  tokenizer = make_bpe_tokenizer()
  tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(path)
  return {"case": "save_model_dir", "path": os.fspath(path),
          "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
          "tokenizer_size": len(tokenizer)}


def make_prompts(n, length, seed=0):
  import random
  rng = random.Random(seed)
  return [" ".join(f"t{rng.randrange(2, VOCAB)}" for _ in range(length)) for _ in range(n)]


def odd_fraction(completion_ids):
  return [sum(t % 2 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def _bench_trl(args) -> dict:
  import torch
  import transformers
  import trl
  from datasets import Dataset
  from transformers import TrainerCallback

  if args.threads:
    torch.set_num_threads(args.threads)
  model = make_torch_model()
  n_params = sum(p.numel() for p in model.parameters())
  tokenizer = make_tokenizer()
  steps = args.warmup + args.steps
  batch = args.prompts * args.group_size
  prompts = make_prompts(args.prompts * steps, args.prompt_length)
  assert all(len(tokenizer(p)["input_ids"]) == args.prompt_length for p in prompts)
  dataset = Dataset.from_dict({"prompt": prompts})

  def reward(completions, completion_ids=None, **kwargs):
    del kwargs
    if completion_ids is None:
      completion_ids = [tokenizer(c)["input_ids"] for c in completions]
    return odd_fraction(completion_ids)

  grpo_args = trl.GRPOConfig(
      output_dir=args.output_dir, use_cpu=True, bf16=args.bf16, fp16=False, report_to="none",
      per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
      num_generations=args.group_size, max_completion_length=args.completion_length,
      generation_kwargs={"min_new_tokens": args.completion_length},
      temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, loss_type="dapo",
      learning_rate=1e-5, max_steps=steps, logging_steps=1, save_strategy="no",
      shuffle_dataset=False, use_vllm=False, disable_dropout=True, log_completions=False,
      seed=0, dataloader_num_workers=0,
      # TRL's GRPOConfig turns activation checkpointing on by default; our step does not
      # recompute activations, so it is off here unless asked for.
      gradient_checkpointing=args.gradient_checkpointing)

  class StepTimer(TrainerCallback):
    def __init__(self):
      self.times, self.logs, self._start = [], [], None

    def on_step_begin(self, *a, **k):
      self._start = time.perf_counter()

    def on_step_end(self, *a, **k):
      self.times.append(time.perf_counter() - self._start)

    def on_log(self, _args, _state, _control, logs=None, **k):
      if logs:
        self.logs.append(dict(logs))

  timer = StepTimer()
  generate_times = []
  original_generate = model.generate

  def timed_generate(*a, **k):
    start = time.perf_counter()
    out = original_generate(*a, **k)
    generate_times.append(time.perf_counter() - start)
    return out

  model.generate = timed_generate
  trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=grpo_args,
                            train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
  trainer.train()
  timed = timer.times[args.warmup:]
  step_s = statistics.median(timed)
  lengths = [log.get("completions/mean_length") for log in timer.logs if "completions/mean_length" in log]
  min_lengths = [log.get("completions/min_length") for log in timer.logs if "completions/min_length" in log]
  return {
      "case": "trl_grpo_step", "library": f"trl {trl.__version__}",
      "torch": torch.__version__, "transformers": transformers.__version__,
      "torch_threads": torch.get_num_threads(), "params_M": round(n_params / 1e6, 2),
      "dtype": "bfloat16" if args.bf16 else "float32", "batch": batch,
      "prompt_length": args.prompt_length, "completion_length": args.completion_length,
      "step_tokens_per_s": round(batch * args.completion_length / step_s, 1),
      "step_s": round(step_s, 4), "steps_s": [round(t, 4) for t in timed],
      "warmup_step_s": [round(t, 4) for t in timer.times[:args.warmup]],
      # transformers.generate alone (inside the step), median over the timed steps.
      "generate_s": (round(statistics.median(generate_times[args.warmup:]), 4)
                     if len(generate_times) > args.warmup else None),
      "gradient_checkpointing": args.gradient_checkpointing,
      "completion_mean_length": lengths[-1] if lengths else None,
      "completion_min_length": min(min_lengths) if min_lengths else None,
      "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
  }


def _bench_tunix(args) -> dict:
  """Tunix's GRPOLearner on the same shape; the step is one `train_step` of its loop."""
  import importlib.metadata as md

  import grain.python as grain
  import jax
  import numpy as np
  import optax
  from flax import nnx
  from tunix.models.qwen2 import model as qwen2
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout

  config = qwen2.ModelConfig(
      num_layers=SHAPE["num_layers"], vocab_size=VOCAB, embed_dim=SHAPE["hidden_size"],
      hidden_dim=SHAPE["intermediate_size"], num_heads=SHAPE["num_heads"],
      head_dim=SHAPE["head_dim"], num_kv_heads=SHAPE["num_kv_heads"], rope_theta=10000,
      norm_eps=1e-6, use_tied_embedding=False)
  # One device; Auto axes (explicit-sharding meshes break tunix's embedding gather).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
  model = qwen2.Qwen2(config, rngs=nnx.Rngs(0))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  tokenizer = make_tokenizer()
  steps = args.warmup + args.steps
  batch = args.prompts * args.group_size
  prompts = make_prompts(args.prompts * steps, args.prompt_length)
  dataset = (grain.MapDataset.source(prompts).batch(args.prompts)
             .map(lambda x: {"prompts": np.asarray(x)}))  # an array: tunix tree-maps lists

  def reward(prompts, completions, **kwargs):
    del prompts, kwargs
    return odd_fraction([tokenizer(c)["input_ids"] for c in completions])

  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optax.adamw(1e-5), eval_every_n_steps=10**6, max_steps=steps),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=args.completion_length, max_prompt_length=args.prompt_length,
          kv_cache_size=args.prompt_length + args.completion_length + 8, temperature=1.0,
          top_p=1.0, eos_tokens=[VOCAB + 1]))  # an id that is never sampled: no early stop
  cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tokenizer,
                                     cluster_config=cluster_config)
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=reward,
      algo_config=grpo_learner.GRPOConfig(num_generations=args.group_size, num_iterations=1,
                                          beta=0.0, loss_algo="grpo"))
  # Time each whole step: from one actor update to the next, the learner generates, scores
  # and updates. Record the end of every actor update.
  ends = []
  trainer = cluster.actor_trainer
  original = trainer.train

  def timed_train(*a, **k):
    out = original(*a, **k)
    jax.block_until_ready(nnx.state(model, nnx.Param))
    ends.append(time.perf_counter())
    return out

  trainer.train = timed_train
  start = time.perf_counter()
  learner.train(dataset)
  marks = [start] + ends
  times = [b - a for a, b in zip(marks, marks[1:])]
  timed = times[args.warmup:]
  step_s = statistics.median(timed)
  lengths = {}
  for name in ("min_length", "mean_length"):
    try:  # a private logger: record the lengths where this tunix version has it
      history = cluster._rl_metrics_logger.get_metric_history("completions", name, "train")  # pylint: disable=protected-access
      lengths[f"completion_{name}"] = float(np.min(history) if name == "min_length" else history[-1])
    except (AttributeError, ValueError, TypeError):
      lengths[f"completion_{name}"] = None
  return {
      "case": "tunix_grpo_step", "library": f"google-tunix {md.version('google-tunix')}",
      "jax": jax.__version__, "params_M": round(n_params / 1e6, 2), "dtype": "float32",
      "batch": batch, "prompt_length": args.prompt_length,
      "completion_length": args.completion_length,
      "step_tokens_per_s": round(batch * args.completion_length / step_s, 1),
      "step_s": round(step_s, 4), "steps_s": [round(t, 4) for t in timed],
      "warmup_step_s": [round(t, 4) for t in times[:args.warmup]], "steps_run": len(times),
      **lengths, "loss_agg_mode": "sequence-mean-token-mean (tunix grpo default)",
      "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--library", choices=["trl", "tunix"], default="trl")
  parser.add_argument("--prompts", type=int, default=4)
  parser.add_argument("--group_size", type=int, default=8)
  parser.add_argument("--prompt_length", type=int, default=32)
  parser.add_argument("--completion_length", type=int, default=64)
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--gradient_checkpointing", action="store_true",
                      help="TRL only: recompute activations in the backward (TRL's default)")
  parser.add_argument("--bf16", action="store_true",
                      help="TRL only: bfloat16 autocast (GRPOConfig(bf16=True)); float32 weights")
  parser.add_argument("--threads", type=int, default=0,
                      help="TRL only: torch intra-op threads (0: torch's default, one per core)")
  parser.add_argument("--output_dir", default="/tmp/bench_trl_out")
  parser.add_argument("--out", default="", help="also append the JSON line to this file")
  parser.add_argument("--save_model_dir", default="",
                      help="only save the random Qwen2 + tokenizer as an HF folder here")
  args = parser.parse_args(argv)
  if args.save_model_dir:
    print(json.dumps(save_model_dir(args.save_model_dir)))
    return 0
  load_before = os.getloadavg()[0]
  result = _bench_trl(args) if args.library == "trl" else _bench_tunix(args)
  # 1-minute load averages before and after: timings taken on a shared machine.
  result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  line = json.dumps(result)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  sys.exit(main())
