"""Tests for models/hf.py: HF config/safetensors <-> Transformer, checked against transformers.

The parity tests build tiny random Llama / Qwen2 / Qwen3 models with transformers
(PyTorch CPU, float32) and skip when torch is not installed. The SmolLM2 test runs when
a converted folder exists (`JAXRL_SMOLLM2_DIR` or ~/.cache/jaxrl_reward/smollm2-135m-instruct,
made by scripts/get_smollm2.sh).
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_reward import sharding
from jaxrl_reward.sampling import sample
from models import hf

SMOLLM2_DIR = os.environ.get(
    "JAXRL_SMOLLM2_DIR", os.path.expanduser("~/.cache/jaxrl_reward/smollm2-135m-instruct"))

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=100, initializer_range=0.2, max_position_embeddings=64)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# name -> (config class, extra config fields). rope_theta 500 and original length 16 put the
# head_dim-8 frequencies in all three llama3 bands (kept, interpolated, divided).
FAMILIES = {
    "llama_llama3_rope_untied": ("LlamaConfig", dict(rope_theta=500.0, rope_scaling=LLAMA3_ROPE)),
    "llama_tied": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=1e4)),
    "qwen2_untied": ("Qwen2Config", dict(rope_theta=1e6)),
    "qwen3_tied": ("Qwen3Config", dict(head_dim=8, tie_word_embeddings=True, rope_theta=1e6)),
}


@jax.jit
def _logits(model, ids, mask):
  return model(ids, mask)


def ragged_batch(vocab=100):
  """ids, mask [3, 11] int: left-padded rows of 11, 7 and 3 real tokens."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, vocab, (3, 11))
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  mask[2, :8] = 0
  ids = np.where(mask == 1, ids, 0)
  return ids, mask


def hf_logits(model, ids, mask):
  """transformers logits [B, T, V] with our default positions cumsum(mask) - 1 (>= 0)."""
  import torch
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(pos))
  return out.logits.float().numpy()


def our_logits(model, ids, mask):
  return np.asarray(_logits(model, jnp.asarray(ids), jnp.asarray(mask)))


def max_diff_real(a, b, mask):
  return float(np.abs(a - b)[mask.astype(bool)].max())


def flat_params(model):
  return {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def make_hf_folder(name, folder, **save_kwargs):
  """A random tiny transformers model of family `name` saved to `folder`; returns it (eval)."""
  torch = pytest.importorskip("torch", reason="torch is needed for the transformers parity tests")
  import transformers
  cls_name, extra = FAMILIES[name]
  config = getattr(transformers, cls_name)(**TINY, **extra)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():  # non-trivial norm scales and biases (HF initialises them to 1 / 0)
    for pname, p in model.named_parameters():
      if "norm" in pname or pname.endswith(".bias"):
        p.add_(0.3 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(folder, **save_kwargs)
  return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
  """(name, folder, transformers model reloaded from the folder, our model)."""
  import transformers
  folder = str(tmp_path_factory.mktemp(request.param))
  make_hf_folder(request.param, folder)
  ref = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
  return request.param, folder, ref.eval(), hf.load(folder)


# ----------------------------------------------------------------------------- config


def _llama_dict(**overrides):
  base = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64,
              num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
              intermediate_size=96, vocab_size=128, rms_norm_eps=1e-5, rope_theta=5e5,
              tie_word_embeddings=True, hidden_act="silu", max_position_embeddings=256)
  base.update(overrides)
  return base


def test_config_from_hf_maps_every_field():
  c = hf.config_from_hf(_llama_dict())
  assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (64, 3, 8, 2, 8)
  assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (96, 128, 256)
  assert (c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings) == (5e5, 1e-5, True)
  assert (c.qkv_bias, c.qk_norm, c.rope_scaling) == (False, False, None)
  assert (c.dtype, c.param_dtype) == ("float32", "float32")

  qwen2 = hf.config_from_hf(_llama_dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                                        num_key_value_heads=None))
  assert qwen2.qkv_bias and not qwen2.qk_norm and qwen2.num_kv_heads == 8
  qwen3 = hf.config_from_hf(_llama_dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                                        head_dim=16), dtype="bfloat16")
  assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.head_dim == 16
  assert (qwen3.dtype, qwen3.param_dtype) == ("bfloat16", "float32")


def test_config_from_hf_reads_both_rope_layouts():
  scaling = dict(LLAMA3_ROPE, original_max_position_embeddings=128)
  legacy = _llama_dict(rope_theta=5e5, rope_scaling=scaling)
  new = _llama_dict(rope_theta=None, rope_parameters=dict(scaling, rope_theta=5e5))
  want = tuple(sorted(scaling.items()))
  for d in (legacy, new):
    c = hf.config_from_hf(d)
    assert c.rope_theta == 5e5 and c.rope_scaling == want
  default = hf.config_from_hf(_llama_dict(
      rope_theta=None, rope_parameters={"rope_type": "default", "rope_theta": 7.0}))
  assert default.rope_theta == 7.0 and default.rope_scaling is None
  assert hf.config_from_hf(_llama_dict(rope_theta=None)).rope_theta == 10000.0


@pytest.mark.parametrize("overrides, field", [
    (dict(architectures=["GPT2LMHeadModel"], model_type="gpt2"), "architectures"),
    (dict(architectures=None, model_type="mistral"), "model_type"),
    (dict(architectures=None, model_type=None), "model_type"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
     "rope_parameters"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(use_sliding_window=True, sliding_window=16), "use_sliding_window"),
    (dict(layer_types=["full_attention", "sliding_attention", "full_attention"]), "layer_types"),
    (dict(attention_dropout=0.1), "attention_dropout"),
    (dict(quantization_config={"quant_method": "gguf"}), "quantization_config"),
    (dict(hidden_size=None), "hidden_size"),
])
def test_config_from_hf_rejects_unsupported_fields(overrides, field):
  with pytest.raises(ValueError, match=field):
    hf.config_from_hf(_llama_dict(**overrides))


def test_config_from_hf_rejects_bad_dtype():
  with pytest.raises(ValueError, match="dtype"):
    hf.config_from_hf(_llama_dict(), dtype="int8")


@pytest.mark.parametrize("arch, model_type", [("LlamaForCausalLM", "llama"),
                                              ("Qwen2ForCausalLM", "qwen2"),
                                              ("Qwen3ForCausalLM", "qwen3")])
def test_config_to_hf_round_trips(arch, model_type):
  c = hf.config_from_hf(_llama_dict(architectures=[arch], model_type=model_type,
                                    rope_scaling=LLAMA3_ROPE, tie_word_embeddings=False))
  d = hf.config_to_hf(c, base={"bos_token_id": 7, "quantization_config": {"x": 1}})
  assert d["architectures"] == [arch] and d["model_type"] == model_type
  assert d["bos_token_id"] == 7 and "quantization_config" not in d
  assert hf.config_from_hf(json.loads(json.dumps(d))) == c


# ----------------------------------------------------------------------------- parity


def test_logits_match_transformers(family):
  name, _, ref, ours = family
  ids, mask = ragged_batch()
  want = hf_logits(ref, ids, mask)
  got = our_logits(ours, ids, mask)
  assert got.shape == want.shape == (3, 11, 100)
  assert np.abs(want).max() > 1.0, "the random model's logits are too flat to test anything"
  assert max_diff_real(got, want, mask) <= 1e-4, name
  assert ours.config.tie_word_embeddings == (ours.lm_head is None)


def test_greedy_generation_matches_transformers(family):
  import torch
  name, _, ref, ours = family
  ids, mask = ragged_batch()
  out = jax.jit(lambda m, i, k: sample(m, i, k, jax.random.key(0), max_new_tokens=20,
                                       temperature=0.0, eos_id=None, pad_id=0))(
                                           ours, jnp.asarray(ids), jnp.asarray(mask))
  ref.generation_config.eos_token_id = None
  want = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                      max_new_tokens=20, min_new_tokens=20, pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(out.tokens), want[:, ids.shape[1]:].numpy(),
                                err_msg=name)


def test_save_reloads_in_transformers(family, tmp_path):
  import transformers
  name, folder, ref, ours = family
  hf.save(ours, tmp_path, hf_config=hf.read_config(folder))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation="eager").eval()
  assert type(reloaded) is type(ref)
  ids, mask = ragged_batch()
  assert max_diff_real(hf_logits(reloaded, ids, mask), hf_logits(ref, ids, mask), mask) <= 1e-6
  # And back into ours: the same parameters, bit for bit.
  again = flat_params(hf.load(tmp_path))
  for key, value in flat_params(ours).items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_index_sharded_checkpoints_load_and_save(tmp_path):
  import transformers
  src = tmp_path / "sharded"
  ref = make_hf_folder("qwen2_untied", src, max_shard_size="20KB")
  shards = sorted(p.name for p in src.iterdir() if p.suffix == ".safetensors")
  assert (src / hf.INDEX_FILE).exists() and len(shards) >= 2, shards
  ids, mask = ragged_batch()
  ours = hf.load(src)
  assert max_diff_real(our_logits(ours, ids, mask), hf_logits(ref, ids, mask), mask) <= 1e-4

  out = tmp_path / "ours_sharded"
  hf.save(ours, out, max_shard_bytes=16_000)
  assert (out / hf.INDEX_FILE).exists() and not (out / hf.WEIGHTS_FILE).exists()
  assert len(list(out.glob("model-*.safetensors"))) >= 2
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  want = hf_logits(ref, ids, mask)
  assert max_diff_real(hf_logits(reloaded.eval(), ids, mask), want, mask) <= 1e-6


def test_bfloat16_checkpoint_and_dtypes(tmp_path):
  ref = make_hf_folder("llama_tied", tmp_path / "f32")
  import torch
  ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  want = {n: p.detach().float().numpy() for n, p in ref.named_parameters()}

  ours = hf.load(tmp_path / "bf16")  # parameters upcast to float32
  params = flat_params(ours)
  assert all(v.dtype == np.float32 for v in params.values())
  np.testing.assert_array_equal(params["embed_tokens.embedding"], want["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["layers.1.self_attn.q_proj.kernel"],
                                want["model.layers.1.self_attn.q_proj.weight"].T.reshape(32, 4, 8))

  low = hf.load(tmp_path / "f32", dtype="bfloat16", param_dtype="bfloat16")
  assert (low.config.dtype, low.config.param_dtype) == ("bfloat16", "bfloat16")
  assert all(v.dtype == jnp.bfloat16 for v in flat_params(low).values())
  ids, mask = ragged_batch()
  got, full = our_logits(low, ids, mask), hf_logits(ref.float(), ids, mask)
  assert got.dtype == np.float32
  assert max_diff_real(got, full, mask) < 0.1 * np.abs(full).max()
  hf.save(low, tmp_path / "saved_bf16")
  assert hf.read_config(tmp_path / "saved_bf16")["torch_dtype"] == "bfloat16"
  again = flat_params(hf.load(tmp_path / "saved_bf16", param_dtype="bfloat16"))
  np.testing.assert_array_equal(again["norm.scale"], flat_params(low)["norm.scale"])


# ----------------------------------------------------------------------------- mesh


def test_load_on_mesh_places_each_tensor_in_its_sharding(family):
  name, folder, ref, ours = family
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  rules = sharding.merge_rules(())
  placed = hf.load(folder, mesh=mesh)
  state = nnx.state(placed, nnx.Param)
  want = sharding.param_shardings(state, mesh, rules)
  got_leaves = jax.tree.leaves(state)
  want_leaves = jax.tree.leaves(want, is_leaf=lambda x: isinstance(x, NamedSharding))
  assert len(got_leaves) == len(want_leaves)
  for value, expected in zip(got_leaves, want_leaves):
    assert value.sharding == expected
  layer = placed.layers[0]
  assert placed.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
  assert layer.self_attn.q_proj.kernel[...].sharding.spec == P("fsdp", "tensor", None)
  assert layer.mlp.down_proj.kernel[...].sharding.spec == P("tensor", "fsdp")
  if placed.lm_head is not None:
    assert placed.lm_head.kernel[...].sharding.spec == P("fsdp", "tensor")
  ids, mask = ragged_batch()
  assert max_diff_real(our_logits(placed, ids, mask), our_logits(ours, ids, mask), mask) <= 1e-5


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
  """A valid tiny Llama folder written by `hf.save` (no torch needed)."""
  from models.transformer import Transformer
  folder = tmp_path_factory.mktemp("llama_bad_input_src")
  config = hf.config_from_hf(_llama_dict(**{k: v for k, v in TINY.items()}, rope_theta=1e4,
                                         tie_word_embeddings=False))
  hf.save(Transformer(config, rngs=nnx.Rngs(0)), folder)
  hf.load(folder)  # valid as written
  return folder


def _copy_with_tensors(src, dst, edit):
  """Copies folder `src` to `dst` with model.safetensors rewritten as `edit(tensors)`."""
  from safetensors.numpy import load_file, save_file
  shutil.copytree(src, dst)
  tensors = edit(load_file(os.path.join(dst, hf.WEIGHTS_FILE)))
  save_file(tensors, os.path.join(dst, hf.WEIGHTS_FILE), metadata={"format": "pt"})
  return dst


def test_folder_without_config_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    hf.load(tmp_path)
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load(tmp_path / "does_not_exist")


def test_unsupported_architecture_folder(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      _llama_dict(architectures=["MistralForCausalLM"], model_type="mistral")))
  with pytest.raises(ValueError, match="architectures"):
    hf.load(tmp_path)


def test_unsupported_field_in_folder(llama_folder, tmp_path):
  dst = tmp_path / "gelu"
  shutil.copytree(llama_folder, dst)
  config = hf.read_config(dst)
  (dst / "config.json").write_text(json.dumps(dict(config, hidden_act="gelu")))
  with pytest.raises(ValueError, match="hidden_act"):
    hf.load(dst)


def test_missing_weights_file(llama_folder, tmp_path):
  dst = tmp_path / "no_weights"
  shutil.copytree(llama_folder, dst)
  os.remove(dst / hf.WEIGHTS_FILE)
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf.load(dst)


def test_missing_tensor_is_named(llama_folder, tmp_path):
  name = "model.layers.1.self_attn.k_proj.weight"
  dst = _copy_with_tensors(llama_folder, tmp_path / "missing",
                           lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(KeyError, match=name.replace(".", r"\.")):
    hf.load(dst)


def test_wrong_shape_is_named(llama_folder, tmp_path):
  name = "model.layers.0.mlp.up_proj.weight"
  dst = _copy_with_tensors(llama_folder, tmp_path / "shape",
                           lambda t: dict(t, **{name: t[name][:-1]}))
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    hf.load(dst)


def test_unexpected_tensor_is_named(llama_folder, tmp_path):
  name = "model.layers.0.self_attn.o_proj.bias"
  dst = _copy_with_tensors(llama_folder, tmp_path / "extra",
                           lambda t: dict(t, **{name: np.zeros(32, np.float32)}))
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    hf.load(dst)


def _one_line_error(exc_info):
  message = str(exc_info.value)
  assert "\n" not in message, message
  return message


def _truncate(path, size):
  with open(path, "r+b") as f:
    f.truncate(size)


def test_invalid_config_json_is_named(llama_folder, tmp_path):
  dst = tmp_path / "bad_config"
  shutil.copytree(llama_folder, dst)
  (dst / "config.json").write_text('{"model_type": "llama",')
  with pytest.raises(ValueError) as exc_info:
    hf.load(dst)
  assert _one_line_error(exc_info).startswith(f"{dst}/config.json is not valid JSON: ")
  (dst / "config.json").write_text('["llama"]')
  with pytest.raises(ValueError, match=r"config\.json must hold a JSON object"):
    hf.read_config(dst)


@pytest.mark.parametrize("keep", ["half", 8, 0])
def test_truncated_safetensors_is_named(llama_folder, tmp_path, keep):
  dst = tmp_path / "truncated"
  shutil.copytree(llama_folder, dst)
  weights = dst / hf.WEIGHTS_FILE
  _truncate(weights, weights.stat().st_size // 2 if keep == "half" else keep)
  with pytest.raises(ValueError) as exc_info:
    hf.load(dst)
  assert _one_line_error(exc_info).startswith(f"{weights} is truncated or not a safetensors file: ")


def test_truncated_shard_and_bad_index_are_named(tmp_path):
  from models.transformer import Transformer
  config = hf.config_from_hf(_llama_dict(**TINY, rope_theta=1e4, tie_word_embeddings=False))
  hf.save(Transformer(config, rngs=nnx.Rngs(0)), tmp_path, max_shard_bytes=16_000)
  shards = sorted(tmp_path.glob("model-*.safetensors"))
  assert len(shards) >= 2
  _truncate(shards[-1], shards[-1].stat().st_size - 1)
  with pytest.raises(ValueError) as exc_info:
    hf.load(tmp_path)
  assert _one_line_error(exc_info).startswith(f"{shards[-1]} is truncated or not a safetensors file: ")
  (tmp_path / hf.INDEX_FILE).write_text('{"weight_map": ')
  with pytest.raises(ValueError) as exc_info:
    hf.load(tmp_path)
  assert _one_line_error(exc_info).startswith(f"{tmp_path}/{hf.INDEX_FILE} is not valid JSON: ")
  (tmp_path / hf.INDEX_FILE).write_text('{"metadata": {}}')
  with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json has no 'weight_map'"):
    hf.load(tmp_path)


@pytest.mark.parametrize("bad, count", [(np.nan, 1), (np.inf, 2), (-np.inf, 1)])
def test_non_finite_weight_is_named(llama_folder, tmp_path, bad, count):
  name = "model.layers.1.mlp.up_proj.weight"

  def poison(tensors):
    tensors[name].flat[[7, 40][:count]] = bad
    return tensors

  dst = _copy_with_tensors(llama_folder, tmp_path / "poisoned", poison)
  with pytest.raises(ValueError) as exc_info:
    hf.load(dst)
  message = _one_line_error(exc_info)
  assert message.startswith(f"tensor {name!r} in {dst}/{hf.WEIGHTS_FILE} holds {count} non-finite value")
  assert "(0, 7)" in message  # the first one's index, in the file's [out, in] layout


def test_check_finite_reads_bfloat16_and_ignores_integers():
  import ml_dtypes
  weights = np.ones((4, 3), ml_dtypes.bfloat16)
  hf.check_finite("w", weights, "f.safetensors")
  weights[2, 1] = np.inf
  with pytest.raises(ValueError, match=r"'w' in f\.safetensors holds 1 non-finite value .*\(2, 1\)"):
    hf.check_finite("w", weights, "f.safetensors")
  hf.check_finite("ids", np.arange(5), "f.safetensors")
  big = np.full(8, np.finfo(np.float32).max, np.float32)  # finite, though its float32 sum overflows
  hf.check_finite("big", big, "f.safetensors")


# ----------------------------------------------------------------------------- tokenizer


def test_load_tokenizer_pads_with_eos_on_the_left(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"<unk>": 0, "</s>": 1, "a": 2, "b": 3}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>",
                          unk_token="<unk>").save_pretrained(tmp_path)
  loaded = hf.load_tokenizer(tmp_path)
  assert loaded.pad_token == "</s>" and loaded.pad_token_id == 1
  assert loaded.padding_side == "left"
  batch = loaded(["a b a", "b"], padding=True)
  assert batch["input_ids"][1] == [1, 1, 3] and batch["attention_mask"][1] == [0, 0, 1]
  assert hf.load_tokenizer(tmp_path, padding_side="right").padding_side == "right"
  with pytest.raises(ValueError, match="padding_side"):
    hf.load_tokenizer(tmp_path, padding_side="middle")


def test_apply_chat_template():
  from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer
  tok = build_arithmetic_tokenizer()
  assert hf.apply_chat_template(tok, "1+1=") == "1+1="
  assert hf.apply_chat_template(tok, "1+1=", system="add") == "add\n\n1+1="
  tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                       "{% if add_generation_prompt %}<assistant>{% endif %}")
  assert hf.apply_chat_template(tok, "1+1=") == "<user>1+1=<assistant>"
  assert hf.apply_chat_template(tok, "1+1=", system="add") == "<system>add<user>1+1=<assistant>"


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_logits_match_transformers():
  if not os.path.isfile(os.path.join(SMOLLM2_DIR, "config.json")):
    pytest.skip(f"no SmolLM2 folder at {SMOLLM2_DIR} (make it with scripts/get_smollm2.sh or "
                "set JAXRL_SMOLLM2_DIR)")
  pytest.importorskip("torch", reason="torch is needed to run the transformers reference")
  import torch
  import transformers
  tok = hf.load_tokenizer(SMOLLM2_DIR)
  prompts = [hf.apply_chat_template(tok, "What is 12 + 30?"),
             hf.apply_chat_template(tok, "Name a colour.", system="Answer in one word.")]
  enc = tok(prompts, return_tensors="np", padding=True)
  ids, mask = enc["input_ids"], enc["attention_mask"]
  assert mask[:, 0].min() == 0, "expected a left-padded batch"
  ref = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR, dtype=torch.float32).eval()
  want = hf_logits(ref, ids, mask)
  del ref
  got = our_logits(hf.load(SMOLLM2_DIR), ids, mask)
  real = mask.astype(bool)
  # 30 layers in float32 on two backends: ~1e-4 on logits of magnitude ~40.
  assert max_diff_real(got, want, mask) <= 1e-3
  np.testing.assert_array_equal(got.argmax(-1)[real], want.argmax(-1)[real])


# ----------------------------------------------------------------------------- GGUF


def _llama_cpp_permute(w, n_head):
  """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers undoes."""
  rows = w.shape[0] // n_head // 2
  return w.reshape(n_head, 2, rows, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path):
  """A float32 Llama GGUF (byte-level BPE tokenizer, chat template); returns the torch model."""
  torch = pytest.importorskip("torch", reason="torch is needed to read GGUF with transformers")
  gguf = pytest.importorskip("gguf", reason="the gguf package is needed to read GGUF files")
  import transformers
  tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(33, 127)]
  tokens += ["Ġ", "Ġt", "he"]
  config = transformers.LlamaConfig(**dict(TINY, vocab_size=len(tokens)), rope_theta=1e4,
                                    rms_norm_eps=1e-5)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(2)
  w.add_context_length(64)
  w.add_embedding_length(32)
  w.add_feed_forward_length(64)
  w.add_head_count(4)
  w.add_head_count_kv(2)
  w.add_rope_freq_base(1e4)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_dimension_count(8)
  w.add_vocab_size(len(tokens))
  w.add_file_type(0)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
  w.add_token_merges(["Ġ t", "h e"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                      "<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  top = {"model.embed_tokens.weight": "token_embd.weight",
         "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
  sub = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
         "post_attention_layernorm": "ffn_norm"}
  for name, tensor in model.state_dict().items():
    value = tensor.numpy().astype(np.float32)
    if name in top:
      w.add_tensor(top[name], value)
      continue
    _, _, layer, *rest = name.split(".")
    module = ".".join(rest[:-1])
    if module == "self_attn.q_proj":
      value = _llama_cpp_permute(value, 4)
    elif module == "self_attn.k_proj":
      value = _llama_cpp_permute(value, 2)
    w.add_tensor(f"blk.{layer}.{sub[module]}.weight", np.ascontiguousarray(value))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return model


def test_convert_gguf_gives_a_loadable_float_folder(tmp_path):
  from models import convert_gguf
  ref = write_tiny_gguf(tmp_path / "tiny.gguf")
  out = tmp_path / "hf"
  assert convert_gguf.main([f"--gguf={tmp_path / 'tiny.gguf'}", f"--out={out}"]) == 0
  config = hf.read_config(out)
  assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
  ids, mask = ragged_batch()
  assert max_diff_real(our_logits(hf.load(out), ids, mask), hf_logits(ref, ids, mask), mask) <= 1e-4
  tok = hf.load_tokenizer(out)
  assert tok.decode(tok("the cat")["input_ids"]) == "the cat"
  assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
  prompt = hf.apply_chat_template(tok, "hi")
  assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
  with pytest.raises(FileNotFoundError, match="gguf"):
    convert_gguf.convert(tmp_path / "missing.gguf", tmp_path / "x")


# ----------------------------------------------------------------------------- rope config


def test_transformer_config_rope_scaling_is_validated_and_hashable():
  from models.transformer import TransformerConfig
  sizes = dict(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
               head_dim=4, intermediate_size=8)
  c = TransformerConfig(**sizes, rope_scaling=LLAMA3_ROPE)
  assert c.rope_scaling == tuple(sorted(LLAMA3_ROPE.items())) and hash(c)
  with pytest.raises(ValueError, match="rope_scaling"):
    TransformerConfig(**sizes, rope_scaling={"rope_type": "yarn", "factor": 2.0})
  with pytest.raises(ValueError, match="rope_scaling"):
    TransformerConfig(**sizes, rope_scaling={"rope_type": "llama3", "factor": 2.0})
