"""Decoder-only language model (Llama / Qwen2 / Qwen3 family) in flax.nnx.

Architecture (pre-norm, as in Llama; arXiv 2302.13971):

  h_0 = embed_tokens[input_ids]
  h   = h + o_proj(Attention(RoPE(q_norm(q_proj(RMSNorm(h)))), RoPE(k_norm(k_proj(.))), v_proj(.)))
  h   = h + down_proj(silu(gate_proj(RMSNorm(h))) * up_proj(RMSNorm(h)))        # SwiGLU
  logits = RMSNorm(h) @ unembedding                                              # [B, T, V] float32

Variants selected by the config: `qkv_bias` (Qwen2), `qk_norm` (per-head RMSNorm on q and k
before RoPE, Qwen3), `tie_word_embeddings` (unembedding = embedding.T), grouped-query
attention (`num_kv_heads` < `num_heads`).

Parameter names follow Hugging Face's (`embed_tokens`, `layers[i].self_attn.q_proj`,
`layers[i].mlp.gate_proj`, `layers[i].input_layernorm`, `norm`, `lm_head`) so that a weight
mapping is a reshape / transpose per tensor. Kernels are stored input-major:
`q_proj.kernel` is `[D, N, H]` (HF: `weight` `[N*H, D]`), `o_proj.kernel` is `[N, H, D]`,
`gate_proj.kernel` is `[D, F]`, `embed_tokens.embedding` is `[V, D]`, `lm_head.kernel` is `[D, V]`.

Every parameter carries logical axis names (`embed`, `vocab`, `mlp`, `heads`, `kv_heads`,
`head_dim`, `norm`) in its `out_sharding` metadata, without eager sharding, so a mesh and
logical-axis rules can be applied later (`models.partitioning.param_shardings`). The
residual stream, the KV cache and the logits are constrained by logical names (`act_batch`,
`act_seq`, `act_embed`, `act_kv_heads`, `act_vocab`) when traced under
`models.partitioning.activate(mesh, rules)`; elsewhere the constraints are no-ops.

Shapes: B batch, T new tokens, S cache length, D hidden, N query heads, KV key/value heads,
G = N / KV query heads per KV head, H head dim, F intermediate size, V vocabulary, L layers.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from models import partitioning

Array = jax.Array

# Logical names of activations, mapped to mesh axes by the run's sharding rules.
_HIDDEN = ("act_batch", "act_seq", "act_embed")
_CACHE = ("act_batch", "act_kv_heads", "act_seq", None)

# Large finite negative value for masked attention logits: a query whose keys are all
# masked gets a uniform (finite) softmax instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes and options of a decoder-only transformer.

  `dtype` is the compute dtype of activations and matmuls; `param_dtype` the storage dtype
  of parameters. Logits are always returned in float32. `initializer_range` is the standard
  deviation of the normal initialiser of every kernel and embedding (HF's default 0.02).
  `rope_scaling` is None (plain RoPE) or Llama 3.1's frequency scaling, given as a dict or
  as sorted `(key, value)` pairs (stored as the pairs, so the config stays hashable):
  `{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 8192}` (see `rope_inv_freq`).
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  rope_scaling: tuple[tuple[str, Any], ...] | None = None

  def __post_init__(self):
    if self.rope_scaling is not None:
      object.__setattr__(self, "rope_scaling", _check_rope_scaling(self.rope_scaling))
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "intermediate_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"TransformerConfig.num_heads ({self.num_heads}) must be a multiple of "
          f"num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"TransformerConfig.head_dim must be even for RoPE, got {self.head_dim}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(
            f"TransformerConfig.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return _DTYPES[self.param_dtype]


_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings")


def _check_rope_scaling(scaling) -> tuple[tuple[str, Any], ...]:
  """Validates a `rope_scaling` dict / pairs and returns it as sorted pairs."""
  table = dict(scaling)
  kind = table.get("rope_type")
  if kind != "llama3":
    raise ValueError(f"TransformerConfig.rope_scaling: rope_type must be 'llama3', got {kind!r}")
  missing = [k for k in _LLAMA3_ROPE_KEYS if k not in table]
  if missing:
    raise ValueError(f"TransformerConfig.rope_scaling (llama3) is missing {missing}")
  if not float(table["high_freq_factor"]) > float(table["low_freq_factor"]) > 0:
    raise ValueError("TransformerConfig.rope_scaling needs high_freq_factor > low_freq_factor > 0, "
                     f"got {table}")
  return tuple(sorted(table.items()))


_CONFIGS: dict[str, dict[str, Any]] = {
    # For unit tests: compiles in seconds on CPU.
    "micro": dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, intermediate_size=64),
    # The default experiment's policy: trains in minutes on 2 CPU cores.
    "mini": dict(vocab_size=64, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2,
                 head_dim=32, intermediate_size=512),
    # For end-to-end runs on CPU; set vocab_size to the tokenizer's.
    "tiny": dict(vocab_size=64, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=64, intermediate_size=1024),
    # ~48M parameters (tied embeddings) with a 32000-token vocabulary.
    "small": dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                  head_dim=64, intermediate_size=2048, tie_word_embeddings=True),
}


def config_names() -> tuple[str, ...]:
  """Names accepted by `get_config`."""
  return tuple(_CONFIGS)


def get_config(name: str, **overrides) -> TransformerConfig:
  """Named size config ("micro", "mini", "tiny", "small") with field overrides.

  Raises:
    ValueError: if `name` is unknown or an override is not a `TransformerConfig` field.
  """
  if name not in _CONFIGS:
    raise ValueError(f"get_config: unknown config name {name!r}; expected one of {list(_CONFIGS)}")
  fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(
        f"get_config: unknown override field(s) {unknown}; TransformerConfig fields are "
        f"{sorted(fields)}")
  return TransformerConfig(**{**_CONFIGS[name], **overrides})


class KVCache(NamedTuple):
  """Static-size key/value cache (a pytree).

  k, v:      tuples of L arrays [B, KV, S, H]: keys (after RoPE) and values per layer
             (one buffer per layer, updated in place; heads before slots, so attention
             reads them without a transpose).
  key_mask:  [B, S] bool, True where slot s holds a real (non-padding) token.
  index:     int32 scalar, the next slot to write (same for every row).
  """
  k: Array
  v: Array
  key_mask: Array
  index: Array


def _param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
  init = nnx.with_partitioning(init, names, eager_sharding=False)
  return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 (Zhang & Sennrich 2019)."""

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: Array, w: Array, dtype) -> Array:
  """`x @ w` for x [M, K] and w [K, N], both rounded to `dtype`, accumulated in float32;
  returns [M, N] in `dtype`.

  The backward pass rounds the output gradient to `dtype` and computes both products in
  `dtype` with float32 accumulation: dx = g @ w.T (returned in x's dtype) and
  dw = x.T @ g (returned in w's dtype, so float32 parameters get a float32 gradient). XLA:CPU
  only has fast bfloat16 kernels for bfloat16 x bfloat16 -> float32 products; autodiff of
  the forward would instead run the backward products in float32 on converted copies.
  """
  return _matmul_fwd(x, w, dtype)[0]


def _matmul_fwd(x, w, dtype):
  xc, wc = x.astype(dtype), w.astype(dtype)
  y = jnp.dot(xc, wc, preferred_element_type=jnp.float32).astype(dtype)
  # Zero-size stand-ins carry the input dtypes to the backward pass.
  return y, (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _matmul_bwd(dtype, residuals, g):
  xc, wc, x_like, w_like = residuals
  g = g.astype(dtype)
  dx = jax.lax.dot_general(g, wc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  dw = jax.lax.dot_general(xc, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Projection(nnx.Module):
  """Linear map `einsum(spec, x, kernel) (+ bias)` with named kernel axes."""

  def __init__(self, spec: str, kernel_shape, kernel_axes, *, bias_shape=None, bias_axes=None,
               config: TransformerConfig, rngs: nnx.Rngs):
    self.spec = spec
    self.dtype = config.compute_dtype
    init = nnx.initializers.normal(config.initializer_range)
    self.kernel = _param(rngs, init, tuple(kernel_shape), tuple(kernel_axes), config.params_dtype)
    if bias_shape is not None:
      self.bias = _param(rngs, nnx.initializers.zeros, tuple(bias_shape), tuple(bias_axes),
                         config.params_dtype)
    else:
      self.bias = None

  def __call__(self, x: Array) -> Array:
    # Same result as einsum(spec), computed as one 2-D matmul [rows, in] @ [in, out]:
    # XLA:CPU runs the backward of the batched 3-D einsum about 2x slower.
    x_axes = self.spec.split(",")[0]
    n_in = len(x_axes) - 2  # contracted axes: x's trailing ones, the kernel's leading ones
    kernel = self.kernel[...]
    lead, in_shape, out_shape = x.shape[:-n_in], kernel.shape[:n_in], kernel.shape[n_in:]
    x2 = x.reshape(-1, math.prod(in_shape))
    y = matmul(x2, kernel.reshape(math.prod(in_shape), -1), self.dtype).reshape(*lead, *out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table `embedding` [V, D] (names `vocab`, `embed`)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.dtype = config.compute_dtype
    self.embedding = _param(rngs, nnx.initializers.normal(config.initializer_range),
                            (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                            config.params_dtype)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)  # [B, T, D]


def rope_inv_freq(head_dim: int, theta: float, scaling=None) -> Array:
  """RoPE inverse frequencies [H/2] float32: theta^(-2i/H), optionally Llama-3.1 scaled.

  Llama 3.1 scaling (HF `rope_type="llama3"`), with wavelength w = 2 pi / f and
  L = original_max_position_embeddings: f / factor where w > L / low_freq_factor, f where
  w < L / high_freq_factor, and in between (1 - s) f / factor + s f with
  s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor).
  """
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / head_dim))
  if scaling is None:
    return inv_freq
  s = dict(scaling)
  factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
  old_len = float(s["original_max_position_embeddings"])
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return jnp.where(medium, smoothed, scaled)


def rope(x: Array, positions: Array, theta: float, scaling=None) -> Array:
  """Rotary position embedding, HF "rotate_half" layout (Su et al. 2021, arXiv 2104.09864).

  Args:
    x: [B, T, heads, H].
    positions: [B, T] int.
    theta: base period.
    scaling: None or `TransformerConfig.rope_scaling` (see `rope_inv_freq`).
  Returns:
    [B, T, heads, H] in x.dtype; the rotation is computed in float32.
  """
  half = x.shape[-1] // 2
  inv_freq = rope_inv_freq(x.shape[-1], theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional qkv bias and q/k RMSNorm."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    d, n, kv, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    bias = c.qkv_bias
    self.q_proj = Projection("btd,dnh->btnh", (d, n, h), ("embed", "heads", "head_dim"),
                             bias_shape=(n, h) if bias else None, bias_axes=("heads", "head_dim"),
                             config=c, rngs=rngs)
    self.k_proj = Projection("btd,dnh->btnh", (d, kv, h), ("embed", "kv_heads", "head_dim"),
                             bias_shape=(kv, h) if bias else None,
                             bias_axes=("kv_heads", "head_dim"), config=c, rngs=rngs)
    self.v_proj = Projection("btd,dnh->btnh", (d, kv, h), ("embed", "kv_heads", "head_dim"),
                             bias_shape=(kv, h) if bias else None,
                             bias_axes=("kv_heads", "head_dim"), config=c, rngs=rngs)
    self.o_proj = Projection("btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"),
                             config=c, rngs=rngs)
    if c.qk_norm:
      self.q_norm = RMSNorm(h, eps=c.rms_norm_eps, param_dtype=c.params_dtype, rngs=rngs)
      self.k_norm = RMSNorm(h, eps=c.rms_norm_eps, param_dtype=c.params_dtype, rngs=rngs)
    else:
      self.q_norm = None
      self.k_norm = None

  def project_kv(self, x: Array, positions: Array) -> tuple[Array, Array]:
    """Keys (after k_norm and RoPE) and values, each [B, KV, T, H]."""
    k = self.k_proj(x)
    if self.k_norm is not None:
      k = self.k_norm(k)
    k = rope(k, positions, self.config.rope_theta, self.config.rope_scaling)
    return k.transpose(0, 2, 1, 3), self.v_proj(x).transpose(0, 2, 1, 3)

  def __call__(self, x: Array, positions: Array, keys: Array, values: Array,
               mask: Array) -> Array:
    """Attends the queries of x to the given keys / values.

    Args:
      x: [B, T, D] normalised input.
      positions: [B, T] positions of the queries.
      keys, values: [B, KV, S, H] (already rotated keys).
      mask: [B, T, S] bool, True where query t may attend key s.
    Returns:
      [B, T, D].
    """
    c = self.config
    q = self.q_proj(x)
    if self.q_norm is not None:
      q = self.q_norm(q)
    q = rope(q, positions, c.rope_theta, c.rope_scaling)  # [B, T, N, H]
    b, t, n, h = q.shape
    kv = keys.shape[1]
    # [B, KV, G*T, H]: each KV head's queries as the rows of one batched matmul.
    q = q.reshape(b, t, kv, n // kv, h).transpose(0, 2, 3, 1, 4).reshape(b, kv, -1, h)
    scores = jnp.einsum("bkqh,bksh->bkqs", q, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * (h ** -0.5)
    scores = scores.reshape(b, kv, n // kv, t, -1)  # [B, KV, G, T, S]
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(b, kv, n // kv * t, -1)
    out = jnp.einsum("bkqs,bksh->bkqh", probs, values.astype(q.dtype),
                     preferred_element_type=jnp.float32).astype(q.dtype)
    out = out.reshape(b, kv, n // kv, t, h).transpose(0, 3, 1, 2, 4)  # [B, T, KV, G, H]
    return self.o_proj(out.reshape(b, t, n, h))


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x)) (Shazeer 2020, arXiv 2002.05202)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = Projection("btd,df->btf", (d, f), ("embed", "mlp"), config=config, rngs=rngs)
    self.up_proj = Projection("btd,df->btf", (d, f), ("embed", "mlp"), config=config, rngs=rngs)
    self.down_proj = Projection("btf,fd->btd", (f, d), ("mlp", "embed"), config=config, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: h + attn(norm(h)), then h + mlp(norm(h))."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.input_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, param_dtype=c.params_dtype,
                                   rngs=rngs)
    self.self_attn = Attention(c, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps,
                                            param_dtype=c.params_dtype, rngs=rngs)
    self.mlp = MLP(c, rngs=rngs)


class LMHead(nnx.Module):
  """Untied output projection `kernel` [D, V] (names `embed`, `vocab`)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.kernel = _param(rngs, nnx.initializers.normal(config.initializer_range),
                         (config.hidden_size, config.vocab_size), ("embed", "vocab"),
                         config.params_dtype)


def default_positions(attention_mask: Array, offset: Array | None = None) -> Array:
  """Positions `offset + cumsum(mask) - 1`, clipped at 0: [B, T] int32.

  With left padding the first real token gets position 0; padding gets position 0 too
  (its value never matters because padded keys are masked). `offset` [B] counts the real
  tokens already in a cache.
  """
  pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1
  if offset is not None:
    pos = pos + offset.astype(jnp.int32)[:, None]
  return jnp.maximum(pos, 0)


class Transformer(nnx.Module):
  """Decoder-only LM; see the module docstring."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.embed_tokens = Embed(c, rngs=rngs)
    self.layers = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_layers)])
    self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, param_dtype=c.params_dtype, rngs=rngs)
    self.lm_head = None if c.tie_word_embeddings else LMHead(c, rngs=rngs)

  def unembedding(self) -> Array:
    """Output projection [D, V] in param_dtype (embedding.T when tied)."""
    if self.lm_head is None:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]

  def logits(self, hidden: Array) -> Array:
    """[..., D] final-normed hidden -> [..., V] float32 logits (matmul in the compute dtype)."""
    logits = jnp.einsum("...d,dv->...v", hidden, self.unembedding().astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    if logits.ndim == 3:
      logits = partitioning.constrain(logits, ("act_batch", "act_seq", "act_vocab"))
    return logits

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """Empty cache with `max_length` slots per row; dtype defaults to the compute dtype."""
    c = self.config
    dtype = c.compute_dtype if dtype is None else dtype
    shape = (batch_size, c.num_kv_heads, max_length, c.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
    return KVCache(k=zeros, v=zeros,
                   key_mask=jnp.zeros((batch_size, max_length), bool),
                   index=jnp.zeros((), jnp.int32))

  def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
               positions: Array | None = None, cache: KVCache | None = None,
               return_hidden: bool = False):
    """Forward pass.

    Args:
      input_ids: [B, T] int token ids.
      attention_mask: [B, T], 1 on real tokens, 0 on padding (default all ones).
      positions: [B, T] RoPE positions. Default: `cumsum(mask) - 1` (clipped at 0), offset
        by the number of real tokens already in `cache`.
      cache: optional KVCache. The T new keys/values are written at slots
        [index, index + T); query t (slot index + t) attends every slot s <= index + t whose
        key_mask is set.
      return_hidden: return the final-normed hidden states [B, T, D] (compute dtype)
        instead of logits.
    Returns:
      logits [B, T, V] float32 (or hidden), and the updated cache if one was given.
    """
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [B, T], got shape {input_ids.shape}")
    b, t = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if attention_mask.shape != (b, t):
      raise ValueError(
          f"attention_mask must have the shape of input_ids {(b, t)}, got {attention_mask.shape}")
    real = attention_mask.astype(bool)

    if cache is None:
      if positions is None:
        positions = default_positions(attention_mask)
      causal = jnp.tril(jnp.ones((t, t), bool))
      mask = causal[None] & real[:, None, :]  # [B, T, T]
    else:
      if positions is None:
        positions = default_positions(attention_mask, jnp.sum(cache.key_mask, axis=-1))
      s = cache.k[0].shape[2]
      index = cache.index
      key_mask = jax.lax.dynamic_update_slice(cache.key_mask, real, (0, index))  # [B, S]
      query_slot = index + jnp.arange(t)  # [T]
      causal = jnp.arange(s)[None, :] <= query_slot[:, None]  # [T, S]
      mask = causal[None] & key_mask[:, None, :]  # [B, T, S]
      cache_k = [partitioning.constrain(k, _CACHE) for k in cache.k]
      cache_v = [partitioning.constrain(v, _CACHE) for v in cache.v]

    x = partitioning.constrain(self.embed_tokens(input_ids), _HIDDEN)  # [B, T, D]
    for i, layer in enumerate(self.layers):
      y = layer.input_layernorm(x)
      k, v = layer.self_attn.project_kv(y, positions)  # [B, KV, T, H]
      if cache is not None:
        cache_k[i] = jax.lax.dynamic_update_slice(cache_k[i], k.astype(cache_k[i].dtype),
                                                  (0, 0, index, 0))
        cache_v[i] = jax.lax.dynamic_update_slice(cache_v[i], v.astype(cache_v[i].dtype),
                                                  (0, 0, index, 0))
        k, v = cache_k[i], cache_v[i]  # [B, KV, S, H]
      x = x + layer.self_attn(y, positions, k, v, mask)
      x = x + layer.mlp(layer.post_attention_layernorm(x))
      x = partitioning.constrain(x, _HIDDEN)

    hidden = self.norm(x)
    out = hidden if return_hidden else self.logits(hidden)
    if cache is None:
      return out
    return out, KVCache(k=tuple(cache_k), v=tuple(cache_v), key_mask=key_mask, index=index + t)
