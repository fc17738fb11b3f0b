"""Jitted autoregressive sampler with a static KV cache.

`sample` left-aligns the prompts (right-padded rows are rolled so their last real token is
in the last column; RoPE positions come from the mask), prefills the cache
(length P + max_new_tokens) with the whole padded prompt in one forward pass, then decodes
one token per step inside a single `lax.while_loop` that stops as soon as every row has
emitted `eos_id` (or after `max_new_tokens` steps).

Reported log-probs: `logprobs[b, n] = log_softmax(logits / temperature)[token]`, of the full
temperature-scaled distribution, *not* of the top-k / top-p truncated distribution the
token was drawn from. These are the log-probs that `logprobs.completion_logprobs` recomputes
teacher-forced (at the same temperature) and that importance ratios of the policy need.
With `temperature == 0` (greedy) they are computed at temperature 1.

Randomness: step n draws with `jax.random.fold_in(key, n)`; the same key gives the same
samples.

Shapes: B batch, P prompt length, N = max_new_tokens, V vocabulary.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_reward import sharding
from jaxrl_reward.logprobs import left_align

Array = jax.Array


class SampleOutput(NamedTuple):
  """tokens [B, N] int32 (pad_id after the end); logprobs [B, N] float32 (0 where masked);
  mask [B, N] int32 (1 up to and including EOS)."""
  tokens: Array
  logprobs: Array
  mask: Array


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
  """Sets logits outside the top-k, then outside the top-p nucleus, to -inf.

  Nucleus (Holtzman et al. 2019, arXiv 1904.09751): keep the smallest set of most likely
  tokens whose probability reaches top_p (the most likely token is always kept). Top-p is
  applied to the (renormalised) top-k distribution, as in HF `generate`.

  Args:
    logits: [B, V] (already divided by the temperature).
    top_k: keep the k largest logits; 0 (or >= V) disables.
    top_p: in (0, 1]; 1 disables.
  Returns:
    [B, V] float32 with -inf outside the kept set.
  """
  logits = logits.astype(jnp.float32)
  v = logits.shape[-1]
  if top_k and 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p  # first entry always kept
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _check_options(max_new_tokens, temperature, top_k, top_p):
  if int(max_new_tokens) <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = disabled), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample(model, prompt_ids: Array, prompt_mask: Array, key: Array, *, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           eos_id: int | None = None, pad_id: int = 0) -> SampleOutput:
  """Samples `max_new_tokens` continuations of each prompt.

  Pure: usable inside `jax.jit` / `nnx.jit` (the options are static Python values).

  Args:
    model: a `models.transformer.Transformer`.
    prompt_ids: [B, P] int token ids, left- or right-padded.
    prompt_mask: [B, P], 1 on real prompt tokens.
    key: PRNG key.
    max_new_tokens: N, number of decode steps (and cache slots after the prompt).
    temperature: > 0 samples from softmax(logits / temperature); 0 is greedy (argmax).
    top_k: sample among the k most likely tokens (0 = all).
    top_p: nucleus sampling over the temperature-scaled distribution (1 = off).
    eos_id: a row stops after emitting it (the EOS itself is kept, with mask 1).
    pad_id: token written after a row has stopped.
  Returns:
    SampleOutput(tokens [B, N] int32, logprobs [B, N] float32, mask [B, N] int32); see the
    module docstring for what the log-probs are.
  """
  _check_options(max_new_tokens, temperature, top_k, top_p)
  if prompt_ids.ndim != 2 or prompt_ids.shape != prompt_mask.shape:
    raise ValueError(
        f"prompt_ids and prompt_mask must both be [B, P]; got {prompt_ids.shape} and "
        f"{prompt_mask.shape}")
  b, p = prompt_ids.shape
  n = int(max_new_tokens)
  greedy = temperature == 0
  scale = 1.0 if greedy else float(temperature)

  graphdef, state = nnx.split(model)

  def forward(ids, mask, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m(ids, mask, cache=cache, return_hidden=True)
    return m.logits(hidden[:, -1]), cache  # [B, V] float32

  ids, mask = left_align(prompt_ids.astype(jnp.int32), prompt_mask.astype(jnp.int32))
  cache = nnx.merge(graphdef, state).init_cache(b, p + n)
  logits, cache = forward(ids, mask, cache)

  def step_fn(carry):
    step, cache, logits, tokens, logprobs, out_mask, done = carry
    scaled = logits / scale
    logp_all = jax.nn.log_softmax(scaled, axis=-1)  # [B, V]
    if greedy:
      tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      filtered = filter_logits(scaled, top_k=top_k, top_p=top_p)
      tok = jax.random.categorical(jax.random.fold_in(key, step), filtered,
                                   axis=-1).astype(jnp.int32)
    lp = jnp.take_along_axis(logp_all, tok[:, None], axis=-1)[:, 0]
    live = ~done
    tok = jnp.where(live, tok, jnp.int32(pad_id))
    tokens = tokens.at[:, step].set(tok)
    logprobs = logprobs.at[:, step].set(jnp.where(live, lp, 0.0))
    out_mask = out_mask.at[:, step].set(live.astype(jnp.int32))
    if eos_id is not None:
      done = done | (tok == eos_id)
    logits, cache = forward(tok[:, None], live.astype(jnp.int32)[:, None], cache)
    return step + 1, cache, logits, tokens, logprobs, out_mask, done

  def cond_fn(carry):
    step, done = carry[0], carry[-1]
    return (step < n) & ~jnp.all(done)

  init = (jnp.zeros((), jnp.int32), cache, logits, jnp.full((b, n), pad_id, jnp.int32),
          jnp.zeros((b, n), jnp.float32), jnp.zeros((b, n), jnp.int32), jnp.zeros((b,), bool))
  _, _, _, tokens, logprobs, out_mask, _ = jax.lax.while_loop(cond_fn, step_fn, init)
  return SampleOutput(tokens=tokens, logprobs=logprobs, mask=out_mask)


def make_sampler(graphdef, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
                 placement: sharding.Placement | None = None):
  """Jitted `fn(params, prompt_ids, prompt_mask, key) -> SampleOutput`.

  `graphdef, params = nnx.split(model, nnx.Param)`; the model is merged inside the jit, so
  new params (after an optimiser step) reuse the compiled sampler. With a `placement` the
  sampler runs under its mesh: params in their shardings, prompt rows and outputs over the
  batch axes, the KV cache constrained by the model's rules.
  """
  _check_options(max_new_tokens, temperature, top_k, top_p)

  def sampler(params, prompt_ids, prompt_mask, key):
    model = nnx.merge(graphdef, params)
    return sample(model, prompt_ids, prompt_mask, key, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                  pad_id=pad_id)

  if placement is None:
    return jax.jit(sampler)
  rows = placement.rows
  return placement.jit(sampler, in_shardings=(placement.params, rows, rows, placement.replicated),
                       out_shardings=SampleOutput(rows, rows, rows))
