"""Shared helpers of the engine tests: the `tiny` arithmetic config on the `micro` model."""
import jax
import numpy as np

from configs import grpo_arithmetic
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import sharding


def with_keys(c, **overrides):
  """`c` with dotted keys set (new keys inside the open blocks are added)."""
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def micro_config(**overrides):
  c = grpo_arithmetic.get_config("tiny")
  c.model.name = "micro"
  c.log_every = 1
  return with_keys(c, **overrides)


def one_device():
  """On one device: the engine's logic, fast; tests/test_sharding.py covers the meshes."""
  return sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])


def experiment(config):
  return experiment_lib.Experiment(config, mesh=one_device())


def micro_experiment(**overrides):
  return experiment(micro_config(**overrides))


def run_full_and_resumed(t, workdir, stop_at: int):
  """Runs `t` uninterrupted into workdir/full, then stopped after `stop_at` steps and resumed into
  workdir/resumed; asserts that both wrote the same metrics. Returns (full state, resumed state,
  the full run's metric rows)."""
  t.run(workdir / "full")
  full = t.state
  t.run(workdir / "resumed", stop_at=stop_at)
  t.run(workdir / "resumed")
  rows_full = metrics_lib.read_metrics(workdir / "full" / "metrics.jsonl")
  rows_resumed = metrics_lib.read_metrics(workdir / "resumed" / "metrics.jsonl")
  assert [r["step"] for r in rows_full] == [r["step"] for r in rows_resumed]
  for a, b in zip(rows_full, rows_resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
  return full, t.state, rows_full


CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_chat_model_folder(folder, corpus, *, vocab_size: int = 384, max_positions: int = 512):
  """A Hugging Face folder as SmolLM2's, tiny and random: a Llama written by `models.hf.save` and a
  byte-level BPE tokenizer trained on `corpus` (a few texts), with a ChatML chat template whose
  turns end with `<|im_end|>` (the EOS token). Needs no download and no torch."""
  from flax import nnx
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  from models import hf
  from models.transformer import Transformer

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=vocab_size - 64, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
  fast.chat_template = CHATML_TEMPLATE
  fast.save_pretrained(folder)
  config = hf.config_from_hf(dict(
      architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=vocab_size, rms_norm_eps=1e-5,
      rope_theta=1e4, tie_word_embeddings=True, hidden_act="silu", max_position_embeddings=max_positions))
  hf.save(Transformer(config, rngs=nnx.Rngs(0)), folder)
  return folder
