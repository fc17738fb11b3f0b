"""Per-token log-probabilities and entropies without materialising [B, T, V] logits.

`token_logprobs` computes, for each position, log p(y_t) = z_t[y_t] - logsumexp(z_t) with
z_t = h_t W / temperature, chunk by chunk over the vocabulary inside a `lax.fori_loop`
(an online logsumexp), and a custom VJP recomputes each chunk's logits in the backward
pass (dz = onehot(y) - softmax(z) for log p), so neither pass holds more than a few
[B*T, C] float32 blocks (C = vocabulary columns per chunk). This is the memory problem of
large-vocabulary RL (TRL #2709, verl #1100) that full-logit implementations (Tunix,
EasyDeL defaults) hit.

Shapes: B batch, T positions, D hidden, V vocabulary, P prompt length, N completion length.
"""
from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

from jaxrl_reward import sharding

Array = jax.Array


def _check_temperature(temperature):
  if isinstance(temperature, numbers.Number) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


def _logp_and_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
  """logits [..., V] float32, targets [...] -> (log p(target) [...], entropy [...])."""
  logz = jax.nn.logsumexp(logits, axis=-1)  # [...]
  target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  probs = jnp.exp(logits - logz[..., None])
  entropy = logz - jnp.sum(probs * logits, axis=-1)
  return target_logits - logz, entropy


def naive_token_logprobs(logits: Array, targets: Array, *, temperature=1.0,
                         return_entropy: bool = False, mask: Array | None = None):
  """Reference implementation on full logits: log_softmax(logits / temperature)[targets].

  Args:
    logits: [B, T, V].
    targets: [B, T] int token ids.
    temperature: > 0; logits are divided by it.
    return_entropy: also return the entropy of softmax(logits / temperature).
    mask: optional [B, T]; outputs are 0 where mask == 0.
  Returns:
    logp [B, T] float32, or (logp, entropy).
  """
  _check_temperature(temperature)
  if logits.ndim != 3 or targets.shape != logits.shape[:2]:
    raise ValueError(
        f"logits must be [B, T, V] and targets [B, T]; got {logits.shape} and {targets.shape}")
  logp, entropy = _logp_and_entropy(logits.astype(jnp.float32) / temperature, targets)
  if mask is not None:
    logp = jnp.where(mask.astype(bool), logp, 0.0)
    entropy = jnp.where(mask.astype(bool), entropy, 0.0)
  return (logp, entropy) if return_entropy else logp


# Default size of one [rows, vocabulary chunk] float32 block: 2^23 elements (32 MiB).
DEFAULT_BLOCK_ELEMENTS = 1 << 23
_MIN_VOCAB_CHUNK = 128


def vocab_chunk_for(rows: int, vocab: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> int:
  """Vocabulary columns per chunk so that a [rows, chunk] float32 block holds about
  `block_elements` values: at least 128 (or V) and at most V."""
  return int(min(vocab, max(_MIN_VOCAB_CHUNK, block_elements // max(rows, 1))))


def token_logprobs(hidden: Array, unembedding: Array, targets: Array, *, temperature=1.0,
                   chunk_size: int | None = None, return_entropy: bool = False,
                   mask: Array | None = None):
  """log_softmax(hidden @ unembedding / temperature)[targets], chunked over the vocabulary.

  With z = h W / temperature (rows r = (b, t), columns v), the forward pass walks over
  vocabulary chunks of C columns keeping an online logsumexp per row (running max m,
  s = sum exp(z - m), u = sum exp(z - m) z), and picks z[y] where the chunk holds the
  target: lse = m + log s, log p(y) = z[y] - lse, entropy H = lse - u / s. A custom VJP
  walks the chunks again, recomputes z, and with p = exp(z - lse) forms
      dz = g_logp (onehot(y) - p) - g_H p (z - lse + H),    dlogits = dz / temperature,
  then dW[:, chunk] = h^T dlogits (written once per column, float32 accumulation over all
  rows) and dh += dlogits W[:, chunk]^T (a float32 carry). Neither pass holds more than a
  few [B*T, C] float32 blocks; nothing of size [B, T, V] and no float32 copy of W exists.
  The products take their operands in hidden's dtype (each chunk of W is cast to it) and
  accumulate in float32; the weight gradient comes back in W's dtype. Temperature is not
  differentiated.

  Args:
    hidden: [B, T, D] final-normed hidden states; hidden[:, t] predicts targets[:, t].
    unembedding: [D, V].
    targets: [B, T] int token ids.
    temperature: > 0 (Python number or scalar array); logits are divided by it.
    chunk_size: vocabulary columns per chunk; None picks `vocab_chunk_for(B*T, V)`.
    return_entropy: also return the entropy of the temperature-scaled distribution.
    mask: optional [B, T]; outputs (and their gradients) are 0 where mask == 0.
  Returns:
    logp [B, T] float32, or (logp, entropy) both [B, T] float32.
  """
  _check_temperature(temperature)
  if hidden.ndim != 3 or unembedding.ndim != 2 or hidden.shape[-1] != unembedding.shape[0]:
    raise ValueError(
        f"hidden must be [B, T, D] and unembedding [D, V]; got {hidden.shape} and "
        f"{unembedding.shape}")
  if targets.shape != hidden.shape[:2]:
    raise ValueError(f"targets must be [B, T] = {hidden.shape[:2]}, got {targets.shape}")
  if chunk_size is not None and int(chunk_size) <= 0:
    raise ValueError(f"chunk_size must be positive (or None), got {chunk_size}")
  b, t, d = hidden.shape
  v = unembedding.shape[1]
  if t == 0 or b == 0:
    zeros = jnp.zeros((b, t), jnp.float32)
    return (zeros, zeros) if return_entropy else zeros
  c = vocab_chunk_for(b * t, v) if chunk_size is None else min(int(chunk_size), v)
  # Rows stay over the batch axes under a mesh; each vocabulary chunk is gathered.
  hidden = sharding.constrain(hidden, ("act_batch", None, "act_embed"))
  logp, entropy = _chunked_logprobs(hidden.reshape(b * t, d), unembedding,
                                    targets.reshape(b * t).astype(jnp.int32),
                                    jnp.asarray(temperature, jnp.float32), c)
  logp, entropy = logp.reshape(b, t), entropy.reshape(b, t)
  if mask is not None:
    logp = jnp.where(mask.astype(bool), logp, 0.0)
    entropy = jnp.where(mask.astype(bool), entropy, 0.0)
  return (logp, entropy) if return_entropy else logp


def _chunk_start(i, c: int, v: int):
  """First column of chunk i. The last chunk is shifted left to end at V (it overlaps the
  previous one); `col >= i * c` marks the columns no earlier chunk has seen."""
  return jnp.minimum(i * c, v - c)


def _as_bits(x):
  """16-bit floats viewed as uint16. XLA:CPU runs bfloat16 dynamic (update) slices through
  float32, which in a loop hoists a float32 copy of the whole weight; on integers it slices
  in place. Other dtypes pass through."""
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype.itemsize == 2 else x


def _from_bits(x, dtype):
  return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def _chunk_logits(h2, w, i, c, temperature):
  """Logits z [R, C] of chunk i, the chunk of w cast to h2's dtype [D, C], the chunk's
  columns, and which of them no earlier chunk had."""
  v = w.shape[1]
  start = _chunk_start(i, c, v)
  w_chunk = _from_bits(jax.lax.dynamic_slice_in_dim(_as_bits(w), start, c, axis=1), w.dtype)
  w_chunk = w_chunk.astype(h2.dtype)
  z = jnp.dot(h2, w_chunk, preferred_element_type=jnp.float32) / temperature  # [R, C]
  cols = start + jnp.arange(c)
  return z, w_chunk, cols, cols >= i * c


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_logprobs(h2, w, y, temperature, c):
  """h2 [R, D], w [D, V], y [R] int32, temperature scalar -> (logp [R], entropy [R])."""
  return _chunked_fwd(h2, w, y, temperature, c)[0]


def _chunked_fwd(h2, w, y, temperature, c):
  r, v = h2.shape[0], w.shape[1]

  def body(i, carry):
    m, s, u, target = carry
    z, _, cols, new = _chunk_logits(h2, w, i, c, temperature)
    z_new = jnp.where(new[None, :], z, -jnp.inf)  # overlapping columns count once
    m_next = jnp.maximum(m, jnp.max(z_new, axis=1))
    scale = jnp.exp(m - m_next)
    e = jnp.exp(z_new - m_next[:, None])
    s = s * scale + jnp.sum(e, axis=1)
    u = u * scale + jnp.sum(jnp.where(new[None, :], e * z, 0.0), axis=1)
    hit = (cols[None, :] == y[:, None]) & new[None, :]
    target = target + jnp.sum(jnp.where(hit, z, 0.0), axis=1)
    return m_next, s, u, target

  n_chunks = -(-v // c)
  init = (jnp.full((r,), -jnp.inf, jnp.float32), jnp.zeros((r,), jnp.float32),
          jnp.zeros((r,), jnp.float32), jnp.zeros((r,), jnp.float32))
  m, s, u, target = jax.lax.fori_loop(0, n_chunks, body, init)
  lse = m + jnp.log(s)
  entropy = lse - u / s
  return (target - lse, entropy), (h2, w, y, temperature, lse, entropy)


def _chunked_bwd(c, residuals, cotangents):
  h2, w, y, temperature, lse, entropy = residuals
  g_logp, g_entropy = cotangents
  v = w.shape[1]

  def body(i, carry):
    dh, dw = carry
    z, w_chunk, cols, new = _chunk_logits(h2, w, i, c, temperature)
    p = jnp.exp(z - lse[:, None])
    onehot = (cols[None, :] == y[:, None]).astype(jnp.float32)
    dz = g_logp[:, None] * (onehot - p) - g_entropy[:, None] * p * (z - (lse - entropy)[:, None])
    dlogits = (dz / temperature).astype(h2.dtype)  # [R, C]
    # h^T dlogits contracts the rows, the leading axis of both operands. Written so rather
    # than as a product with a transposed operand: XLA:CPU's fast bfloat16 kernels take
    # neither form, and this one it computes in float32 instead, while a transposed
    # operand folded into the product late can reach a kernel with no bfloat16 case at all
    # (a run-time error; tests/test_logprobs.py covers tied and untied weights).
    dw_chunk = jax.lax.dot_general(h2, dlogits, (((0,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)  # [D, C]
    dw = jax.lax.dynamic_update_slice_in_dim(dw, _as_bits(dw_chunk.astype(w.dtype)),
                                             _chunk_start(i, c, v), axis=1)
    dlogits_new = jnp.where(new[None, :], dlogits, jnp.zeros((), dlogits.dtype))
    dh = dh + jax.lax.dot_general(dlogits_new, w_chunk, (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)
    return dh, dw

  n_chunks = -(-v // c)
  init = (jnp.zeros(h2.shape, jnp.float32), _as_bits(jnp.zeros(w.shape, w.dtype)))
  dh, dw = jax.lax.fori_loop(0, n_chunks, body, init)
  return dh.astype(h2.dtype), _from_bits(dw, w.dtype), None, jnp.zeros_like(temperature)


_chunked_logprobs.defvjp(_chunked_fwd, _chunked_bwd)


def left_align(ids: Array, mask: Array) -> tuple[Array, Array]:
  """Rolls each row right so that its last real token sits in the last column.

  Left-padded rows are unchanged; right-padded rows become left-padded. Rows without real
  tokens are unchanged.

  Args:
    ids: [B, P] token ids.
    mask: [B, P], 1 on real tokens.
  Returns:
    (ids, mask) of the same shapes and dtypes.
  """
  p = ids.shape[1]
  cols = jnp.arange(p)
  real = mask.astype(bool)
  last = jnp.max(jnp.where(real, cols[None, :], -1), axis=1)  # [B]
  shift = jnp.where(last >= 0, p - 1 - last, 0)  # [B]
  src = (cols[None, :] - shift[:, None]) % p  # [B, P]
  return (jnp.take_along_axis(ids, src, axis=1), jnp.take_along_axis(mask, src, axis=1))


def completion_hidden(model, prompt_ids: Array, prompt_mask: Array, completion_ids: Array,
                      completion_mask: Array) -> Array:
  """Final hidden states that predict each completion token: `[B, N, D]`.

  One forward pass over concat(prompt, completion) with `return_hidden=True`; the hidden
  state at position P-1+n predicts completion token n (and is the state of the prefix
  before it, which a value head reads). Prompts may be left- or right-padded: each row is
  first left-aligned (`left_align`), and RoPE positions come from the mask.

  Args:
    model: a `models.transformer.Transformer` (or any module with the same
      `__call__(ids, mask, return_hidden=True)`).
    prompt_ids, prompt_mask: [B, P].
    completion_ids, completion_mask: [B, N]; completion_mask is 1 up to and including EOS.
  """
  if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
    raise ValueError(
        f"prompt_ids/prompt_mask and completion_ids/completion_mask must match: "
        f"{prompt_ids.shape}, {prompt_mask.shape}, {completion_ids.shape}, "
        f"{completion_mask.shape}")
  p = prompt_ids.shape[1]
  n = completion_ids.shape[1]
  prompt_ids, prompt_mask = left_align(prompt_ids, prompt_mask)
  ids = jnp.concatenate([prompt_ids, completion_ids.astype(prompt_ids.dtype)], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), completion_mask.astype(jnp.int32)],
                         axis=1)
  hidden = model(ids, mask, return_hidden=True)  # [B, P+N, D]
  return hidden[:, p - 1:p + n - 1]  # [B, N, D]


def completion_logprobs(model, prompt_ids: Array, prompt_mask: Array, completion_ids: Array,
                        completion_mask: Array, *, temperature=1.0, chunk_size: int | None = None,
                        return_entropy: bool = False):
  """Teacher-forced log-probs of completion tokens given their prompts.

  The hidden states of `completion_hidden` through the lean vocabulary-chunked
  `token_logprobs`, so the result equals the log-probs reported by `sampling.sample`.

  Args:
    model: a `models.transformer.Transformer` (or any module with the same
      `__call__(ids, mask, return_hidden=True)` and `unembedding()`).
    prompt_ids, prompt_mask: [B, P].
    completion_ids, completion_mask: [B, N]; completion_mask is 1 up to and including EOS.
    temperature: > 0; log-probs of softmax(logits / temperature).
    chunk_size: see `token_logprobs`.
    return_entropy: also return the per-token entropy [B, N].
  Returns:
    [B, N] float32 log-probs, 0 where completion_mask == 0 (and the entropy if asked).
  """
  hidden = completion_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
  return token_logprobs(hidden, model.unembedding(), completion_ids, temperature=temperature,
                        chunk_size=chunk_size, return_entropy=return_entropy,
                        mask=completion_mask)
