"""Hugging Face checkpoints in and out: config.json + safetensors <-> `Transformer`.

    model = hf.load("/path/to/Qwen2.5-0.5B-Instruct", dtype="bfloat16", mesh=mesh)
    tokenizer = hf.load_tokenizer("/path/to/Qwen2.5-0.5B-Instruct")
    prompt = hf.apply_chat_template(tokenizer, "What is 2 + 3?")
    hf.save(model, "/tmp/out")   # transformers.AutoModelForCausalLM.from_pretrained("/tmp/out")

Supported: `LlamaForCausalLM` (llama), `Qwen2ForCausalLM` (qwen2), `Qwen3ForCausalLM`
(qwen3), with plain or Llama-3.1 ("llama3") RoPE scaling, tied or untied embeddings. A
config field whose value would change the math in a way `Transformer` does not model (an
o_proj / MLP bias, sliding-window attention, another RoPE scaling, another activation, a
quantised checkpoint) is a ValueError naming the field.

Weights are read with the `safetensors` library (numpy framework; dtypes numpy lacks, such
as bfloat16, through its flax framework on the CPU backend), one tensor at a time, from a
single `model.safetensors` or from the shards listed in `model.safetensors.index.json`.
torch is not needed to load or save. A broken folder is a one-line error naming the file:
a config.json or index that is not JSON, a truncated safetensors file, a tensor holding a
NaN or inf (each tensor is checked on the host as it is read).

Dtypes: `dtype` is the compute dtype (default "float32"); parameters are stored in
`param_dtype` (default "float32", also for bfloat16 checkpoints, so that optimiser updates
are exact); pass `param_dtype="bfloat16"` to halve the memory of inference-only models.

Layout (HF `weight` [out, in] -> ours, input-major): q/k/v_proj `[N*H, D]` -> `[D, N, H]`,
o_proj `[D, N*H]` -> `[N, H, D]`, gate/up_proj `[F, D]` -> `[D, F]`, down_proj
`[D, F]` -> `[F, D]`, lm_head `[V, D]` -> `[D, V]`, q/k/v biases `[N*H]` -> `[N, H]`;
embeddings and norm weights (`scale`) keep their shape.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.transformer import Transformer, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# model_type -> architecture class name.
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_ACTIVATIONS = ("silu", "swish")
_DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Tensors that may sit in a checkpoint without being parameters (old Llama exports).
_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")
# safetensors dtypes that the numpy framework reads directly.
_NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


# ----------------------------------------------------------------------------- config


def _field(hf: Mapping[str, Any], name: str, default=None, *, required: bool = False):
  value = hf.get(name)
  if value is None:
    if required:
      raise ValueError(f"the HF config has no `{name}` (required)")
    return default
  return value


def _family(hf: Mapping[str, Any]) -> str:
  """The model_type ("llama", "qwen2", "qwen3") from `architectures` / `model_type`."""
  supported = ", ".join(f"{a} ({t})" for t, a in FAMILIES.items())
  by_arch = {a: t for t, a in FAMILIES.items()}
  architectures = hf.get("architectures") or []
  if isinstance(architectures, str):
    architectures = [architectures]
  for arch in architectures:
    if arch not in by_arch:
      raise ValueError(f"unsupported `architectures` {architectures!r}; supported: {supported}")
  model_type = hf.get("model_type")
  if model_type is not None and model_type not in FAMILIES:
    raise ValueError(f"unsupported `model_type` {model_type!r}; supported: {supported}")
  kinds = {by_arch[a] for a in architectures} | ({model_type} if model_type else set())
  if not kinds:
    raise ValueError(f"the HF config names neither `architectures` nor `model_type`; "
                     f"supported: {supported}")
  if len(kinds) > 1:
    raise ValueError(f"`architectures` {architectures!r} and `model_type` {model_type!r} disagree")
  return kinds.pop()


def _rope(hf: Mapping[str, Any]) -> tuple[float, tuple | None]:
  """(rope_theta, rope_scaling pairs or None) from the 4.x or the 5.x (`rope_parameters`) keys."""
  params = hf.get("rope_parameters")
  legacy = hf.get("rope_scaling")
  if params is not None and not isinstance(params, Mapping):
    raise ValueError(f"`rope_parameters` must be a dict, got {params!r}")
  if params and all(isinstance(v, Mapping) for v in params.values()):
    raise ValueError(f"per-layer-type `rope_parameters` are not supported, got {params!r}")
  theta = (params or {}).get("rope_theta", hf.get("rope_theta"))
  theta = 10000.0 if theta is None else float(theta)
  for factor in (hf.get("partial_rotary_factor"), (params or {}).get("partial_rotary_factor"),
                 (legacy or {}).get("partial_rotary_factor")):
    if factor is not None and float(factor) != 1.0:
      raise ValueError(f"`partial_rotary_factor` {factor} is not supported (only 1.0)")
  for field, scaling in (("rope_scaling", legacy), ("rope_parameters", params)):
    if not scaling:
      continue
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
      continue
    if kind != "llama3":
      raise ValueError(f"unsupported `{field}` type {kind!r}; supported: 'default', 'llama3'")
    table = {
        "rope_type": "llama3",
        "factor": float(scaling["factor"]),
        "low_freq_factor": float(scaling["low_freq_factor"]),
        "high_freq_factor": float(scaling["high_freq_factor"]),
        "original_max_position_embeddings": int(
            scaling.get("original_max_position_embeddings")
            or _field(hf, "max_position_embeddings", required=True)),
    }
    return theta, tuple(sorted(table.items()))
  return theta, None


def _check_dtype(name: str, value) -> str:
  value = str(np.dtype(value)) if not isinstance(value, str) else value
  if value not in _DTYPE_NAMES:
    raise ValueError(f"`{name}` must be one of {list(_DTYPE_NAMES)}, got {value!r}")
  return value


def config_from_hf(hf_config: Mapping[str, Any], *, dtype=None,
                   param_dtype=None) -> TransformerConfig:
  """Maps an HF config dict (the contents of config.json) to a `TransformerConfig`.

  Args:
    hf_config: the HF config as a dict.
    dtype: compute dtype ("float32", "bfloat16", "float16"); default "float32".
    param_dtype: parameter storage dtype; default "float32".
  Raises:
    ValueError: an unsupported architecture / model_type, a missing required field, or a
      field whose value changes the math in an unsupported way (named in the message).
  """
  hf = dict(hf_config)
  family = _family(hf)
  if hf.get("quantization_config"):
    raise ValueError("`quantization_config` is set: quantised checkpoints are not supported; "
                     "dequantise to float first (e.g. models.convert_gguf)")
  act = _field(hf, "hidden_act", "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"unsupported `hidden_act` {act!r}; supported: {list(_ACTIVATIONS)}")
  if hf.get("mlp_bias"):
    raise ValueError("`mlp_bias` = true is not supported (the MLP has no biases)")
  if family in ("llama", "qwen3") and hf.get("attention_bias"):
    raise ValueError(f"`attention_bias` = true is not supported for {family} "
                     "(it adds an o_proj bias, which the model does not have)")
  if hf.get("use_sliding_window"):
    raise ValueError("`use_sliding_window` = true is not supported (full attention only)")
  layer_types = hf.get("layer_types")
  if layer_types and any(t != "full_attention" for t in layer_types):
    raise ValueError(f"`layer_types` other than 'full_attention' are not supported, got "
                     f"{sorted(set(layer_types))}")
  if float(hf.get("attention_dropout") or 0.0) != 0.0:
    raise ValueError(f"`attention_dropout` = {hf['attention_dropout']} is not supported "
                     "(the model has no dropout)")

  hidden = int(_field(hf, "hidden_size", required=True))
  heads = int(_field(hf, "num_attention_heads", required=True))
  head_dim = hf.get("head_dim")
  if head_dim is None:
    if hidden % heads:
      raise ValueError(f"`hidden_size` {hidden} does not divide by `num_attention_heads` {heads} "
                       "and the config has no `head_dim`")
    head_dim = hidden // heads
  theta, scaling = _rope(hf)
  return TransformerConfig(
      vocab_size=int(_field(hf, "vocab_size", required=True)),
      hidden_size=hidden,
      num_layers=int(_field(hf, "num_hidden_layers", required=True)),
      num_heads=heads,
      num_kv_heads=int(_field(hf, "num_key_value_heads", heads)),
      head_dim=int(head_dim),
      intermediate_size=int(_field(hf, "intermediate_size", required=True)),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(_field(hf, "rms_norm_eps", 1e-6)),
      qkv_bias=family == "qwen2",
      qk_norm=family == "qwen3",
      tie_word_embeddings=bool(_field(hf, "tie_word_embeddings", False)),
      dtype=_check_dtype("dtype", dtype or "float32"),
      param_dtype=_check_dtype("param_dtype", param_dtype or "float32"),
      max_position_embeddings=int(_field(hf, "max_position_embeddings", 2048)),
      initializer_range=float(_field(hf, "initializer_range", 0.02)),
  )


# Keys of a base config that `config_to_hf` always writes itself or drops.
_DROPPED_KEYS = ("quantization_config", "rope_parameters", "rope_scaling", "transformers_version",
                 "_name_or_path", "torch_dtype", "dtype", "attention_bias", "layer_types",
                 "use_sliding_window")


def config_to_hf(config: TransformerConfig, base: Mapping[str, Any] | None = None) -> dict:
  """The HF config dict (config.json) of `config`.

  Llama when neither `qkv_bias` nor `qk_norm` is set, Qwen2 with `qkv_bias`, Qwen3 with
  `qk_norm`. `base` (e.g. the config.json the model was loaded from) supplies the other
  keys (token ids, ...); the architecture fields always come from `config`. RoPE is
  written in the 4.x form (`rope_theta`, `rope_scaling`), which 5.x also reads.

  Raises:
    ValueError: a config no supported HF family expresses (qkv_bias with qk_norm).
  """
  c = config
  if c.qkv_bias and c.qk_norm:
    raise ValueError("config: qkv_bias together with qk_norm has no HF family "
                     "(Qwen2 has the bias, Qwen3 the q/k norm)")
  family = "qwen3" if c.qk_norm else "qwen2" if c.qkv_bias else "llama"
  out = {k: v for k, v in dict(base or {}).items() if k not in _DROPPED_KEYS}
  out.update(
      architectures=[FAMILIES[family]],
      model_type=family,
      vocab_size=c.vocab_size,
      hidden_size=c.hidden_size,
      intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads,
      num_key_value_heads=c.num_kv_heads,
      head_dim=c.head_dim,
      hidden_act="silu",
      max_position_embeddings=c.max_position_embeddings,
      initializer_range=c.initializer_range,
      rms_norm_eps=c.rms_norm_eps,
      rope_theta=c.rope_theta,
      rope_scaling=None if c.rope_scaling is None else dict(c.rope_scaling),
      tie_word_embeddings=c.tie_word_embeddings,
      torch_dtype=c.param_dtype,
      use_cache=True,
  )
  if family in ("llama", "qwen3"):
    out["attention_bias"] = False
  if family == "llama":
    out["mlp_bias"] = False
  else:
    out["use_sliding_window"] = False
  return out


# ----------------------------------------------------------------------------- names


def hf_name(name: str) -> str:
  """Our parameter path ("layers.0.self_attn.q_proj.kernel") -> the HF tensor name."""
  parts = name.split(".")
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(parts[-1], parts[-1])
  prefix = [] if parts[0] == "lm_head" else ["model"]
  return ".".join(prefix + parts[:-1] + [leaf])


def _inputs(name: str) -> int:
  """Number of leading input axes of a kernel (o_proj: N, H; the others: one)."""
  return 2 if name.endswith("o_proj.kernel") else 1


def hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF shape of our parameter `name` with `shape`."""
  if name.endswith(".kernel"):
    n = _inputs(name)
    return (math.prod(shape[n:]), math.prod(shape[:n]))  # [out, in]
  if name.endswith(".embedding"):
    return tuple(shape)
  return (math.prod(shape),)


def to_ours(name: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """HF tensor -> our layout (`shape`); kernels are transposed to input-major."""
  if name.endswith(".kernel"):
    return np.ascontiguousarray(tensor.T).reshape(shape)
  return tensor.reshape(shape)


def to_hf(name: str, value: np.ndarray) -> np.ndarray:
  """Our parameter -> the HF tensor (inverse of `to_ours`)."""
  shape = hf_shape(name, value.shape)
  if name.endswith(".kernel"):
    return np.ascontiguousarray(value.reshape(shape[1], shape[0]).T)
  return np.ascontiguousarray(value.reshape(shape))


def _path_name(path) -> str:
  keys = []
  for k in path:
    key = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    keys.append(str(key))
  if keys and keys[-1] == "value":  # nnx.Variable's own pytree key
    keys = keys[:-1]
  return ".".join(keys)


# ----------------------------------------------------------------------------- reading


def _read_json(fn: str) -> Any:
  """The contents of the JSON file `fn`; a file that is not JSON is a one-line ValueError naming it."""
  try:
    with open(fn, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{fn} is not valid JSON: {e}") from None


def _safe_open(fn: str, framework: str):
  """`safetensors.safe_open`, with a file whose header does not parse or whose data the
  header says is longer than the file (a cut-off download or copy) named in one line."""
  from safetensors import SafetensorError, safe_open
  try:
    return safe_open(fn, framework=framework)
  except SafetensorError as e:
    raise ValueError(f"{fn} is truncated or not a safetensors file: {e}") from None


def check_finite(name: str, tensor: np.ndarray, source: str) -> None:
  """Raises a one-line ValueError naming tensor `name` and its file `source` when the
  tensor holds a NaN or an inf: such a checkpoint loads, then gives NaN logits at the
  first step, far from the cause.

  Cheap enough to run on every tensor at load: one float sum (NaN and inf carry through
  it); only a non-finite sum, which finite values that overflow also give, looks at the
  elements. Bool and integer tensors are skipped.
  """
  if tensor.dtype.kind in "biu":
    return
  with np.errstate(over="ignore", invalid="ignore"):  # an overflow is looked into below
    total = np.sum(tensor, dtype=np.float64 if tensor.dtype == np.float64 else np.float32)
  if np.isfinite(total):
    return
  bad = ~np.isfinite(tensor)
  count = int(np.count_nonzero(bad))
  if count:
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), tensor.shape))
    plural = "s" if count > 1 else ""
    raise ValueError(f"tensor {name!r} in {source} holds {count} non-finite value{plural} (NaN or inf) "
                     f"among its {tensor.size}, the first at index {first}; the checkpoint is corrupt")


class SafetensorsReader:
  """Reads the tensors of an HF folder one at a time (single file or index-sharded)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    single = os.path.join(self.path, WEIGHTS_FILE)
    index = os.path.join(self.path, INDEX_FILE)
    if os.path.exists(index):
      weight_map = _read_json(index)
      if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
        raise ValueError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
      self.files = {name: os.path.join(self.path, fn) for name, fn in weight_map["weight_map"].items()}
    elif os.path.exists(single):
      with _safe_open(single, "numpy") as f:
        self.files = {name: single for name in f.keys()}
    else:
      raise FileNotFoundError(f"{self.path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    for fn in set(self.files.values()):
      if not os.path.exists(fn):
        raise FileNotFoundError(f"{fn}, listed in {INDEX_FILE}, does not exist")
    self._stack = contextlib.ExitStack()
    self._open: dict[str, Any] = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stack.close()
    self._open.clear()

  def keys(self) -> list[str]:
    return list(self.files)

  def _handle(self, fn: str):
    if fn not in self._open:
      self._open[fn] = self._stack.enter_context(_safe_open(fn, "numpy"))
    return self._open[fn]

  def get(self, name: str) -> np.ndarray:
    """The tensor `name` as a numpy array (bfloat16 as `ml_dtypes.bfloat16`).

    Raises:
      KeyError: naming the tensor and the folder when it is not in the checkpoint.
    """
    if name not in self.files:
      raise KeyError(f"tensor {name!r} is missing from the checkpoint in {self.path}")
    fn = self.files[name]
    handle = self._handle(fn)
    if handle.get_slice(name).get_dtype() in _NUMPY_DTYPES:
      return handle.get_tensor(name)
    with _on_host(), _safe_open(fn, "flax") as f:
      return np.asarray(f.get_tensor(name))


def _on_host():
  """Context in which new jax arrays go to the CPU backend (when there is one)."""
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:  # JAX_PLATFORMS without "cpu"
    return contextlib.nullcontext()


def read_config(path: str | os.PathLike) -> dict:
  """The contents of `path`/config.json.

  Raises:
    FileNotFoundError: naming the path when the folder or its config.json is missing.
    ValueError: naming the file when it is not valid JSON or not a JSON object.
  """
  fn = os.path.join(os.fspath(path), CONFIG_FILE)
  if not os.path.isfile(fn):
    raise FileNotFoundError(
        f"no {CONFIG_FILE} in {os.fspath(path)!r} (expected an HF model folder)")
  config = _read_json(fn)
  if not isinstance(config, dict):
    raise ValueError(f"{fn} must hold a JSON object (the HF config), got a {type(config).__name__}")
  return config


def _place(host: np.ndarray, sharding) -> jax.Array:
  if sharding is None:
    return jnp.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load(path: str | os.PathLike, *, dtype=None, mesh=None, rules=None,
         param_dtype=None) -> Transformer:
  """A `Transformer` with the weights of the local HF folder `path`.

  The model is built abstractly (`nnx.eval_shape`, no random init); each tensor is read,
  converted to our layout and `param_dtype`, and placed on its device(s) before the next
  one is read, so the host never holds a second full copy of the model.

  Args:
    path: folder with config.json and model.safetensors (or model.safetensors.index.json
      and its shards).
    dtype: compute dtype, "float32" (default) or "bfloat16".
    mesh: optional `jax.sharding.Mesh`; each parameter is placed in the NamedSharding that
      its logical axes get under `rules` (`models.partitioning.param_shardings`).
      Without a mesh: single-device arrays on the default device.
    rules: logical-axis rules (default `sharding.merge_rules(())`); only with `mesh`.
    param_dtype: parameter storage dtype, default "float32".
  Raises:
    FileNotFoundError: the folder, its config.json or its weights are missing.
    ValueError: an unsupported config (see `config_from_hf`), a config.json or index that
      is not valid JSON, a truncated safetensors file, a tensor of the wrong shape or with a
      NaN / inf (`check_finite`), or tensors the model has no place for.
    KeyError: a tensor the model needs is missing (named).
  """
  path = os.fspath(path)
  config = config_from_hf(read_config(path), dtype=dtype, param_dtype=param_dtype)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise NotImplementedError("load: the model has non-Param state, which HF checkpoints lack")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  if mesh is not None:
    from models import partitioning as sharding_lib
    rules = sharding_lib.merge_rules(()) if rules is None else rules
    shardings = sharding_lib.param_shardings(params, mesh, rules)
    sharding_leaves = jax.tree.leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(sharding_leaves) != len(leaves):
      raise ValueError("load: param_shardings returned a tree that does not match the params")
  else:
    if rules is not None:
      raise ValueError("load: `rules` is only used with a `mesh`")
    sharding_leaves = [None] * len(leaves)

  target = config.params_dtype
  values = []
  with SafetensorsReader(path) as reader:
    used = set()
    for (p, abstract_value), sharding in zip(leaves, sharding_leaves):
      name = _path_name(p)
      source = hf_name(name)
      tensor = reader.get(source)
      check_finite(source, tensor, reader.files[source])
      expected = hf_shape(name, abstract_value.shape)
      if tuple(tensor.shape) != expected:
        raise ValueError(f"tensor {source!r} has shape {tuple(tensor.shape)}, expected {expected} "
                         f"for the config in {path}")
      host = to_ours(name, tensor, abstract_value.shape).astype(target, copy=False)
      del tensor
      values.append(_place(host, sharding))
      del host
      used.add(source)
    unused = [k for k in reader.keys() if k not in used and not _IGNORED_TENSORS.match(k)
              and not (config.tie_word_embeddings and k == "lm_head.weight")]
  if unused:
    raise ValueError(f"the checkpoint in {path} has tensors the model has no place for: "
                     f"{sorted(unused)[:10]}{' ...' if len(unused) > 10 else ''}")
  params = jax.tree_util.tree_unflatten(treedef, values)
  return nnx.merge(graphdef, params, rest)


# ----------------------------------------------------------------------------- writing


def _to_host(x: jax.Array) -> np.ndarray:
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _iter_hf_tensors(model: Transformer) -> Iterator[tuple[str, np.ndarray]]:
  for p, value in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
    name = _path_name(p)
    yield hf_name(name), to_hf(name, _to_host(value))


def save(model: Transformer, path: str | os.PathLike, *, hf_config: Mapping | None = None,
         max_shard_bytes: int | None = None) -> None:
  """Writes `model` as an HF folder: config.json + model.safetensors.

  `transformers.AutoModelForCausalLM.from_pretrained(path)` loads it (tokenizer files are
  separate: `tokenizer.save_pretrained(path)`). Tensors keep the parameters' dtype. With
  several processes every process must call this (arrays are gathered); process 0 writes.

  Args:
    model: a `Transformer`.
    path: output folder (created if needed).
    hf_config: optional HF config dict whose non-architecture keys (token ids, ...) are
      kept, e.g. `read_config(source_folder)`.
    max_shard_bytes: if set, tensors go into shards of at most about this many bytes
      (`model-00001-of-0000N.safetensors`) listed in model.safetensors.index.json;
      otherwise one model.safetensors.
  """
  from safetensors.numpy import save_file

  path = os.fspath(path)
  config = config_to_hf(model.config, hf_config)
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)

  metadata = {"format": "pt"}
  if max_shard_bytes is None:
    tensors = dict(_iter_hf_tensors(model))
    if writer:
      save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata=metadata)
    return

  shards, current, size = [], {}, 0
  for name, tensor in _iter_hf_tensors(model):
    if current and size + tensor.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensor
    size += tensor.nbytes
  if current:
    shards.append(current)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    for name, tensor in shard.items():
      weight_map[name] = fn
      total += tensor.nbytes
    if writer:
      save_file(shard, os.path.join(path, fn), metadata=metadata)
  if writer:
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | os.PathLike, *, padding_side: str = "left"):
  """`transformers.AutoTokenizer.from_pretrained(path)` with `padding_side` set.

  A tokenizer without a pad token gets its EOS token as pad token.
  """
  from transformers import AutoTokenizer

  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
  tokenizer = AutoTokenizer.from_pretrained(os.fspath(path))
  tokenizer.padding_side = padding_side
  if tokenizer.pad_token is None and tokenizer.eos_token is not None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def apply_chat_template(tokenizer, user_text: str, system: str | None = None) -> str:
  """The prompt string for one user turn, ending where the assistant's reply starts.

  Uses the tokenizer's chat template (`add_generation_prompt=True`); a tokenizer without
  one gets the plain text (`system` + blank line + `user_text`).
  """
  if not getattr(tokenizer, "chat_template", None):
    return user_text if system is None else f"{system}\n\n{user_text}"
  messages = [] if system is None else [{"role": "system", "content": system}]
  messages.append({"role": "user", "content": user_text})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
