"""A value model: a transformer backbone with a scalar head, V(prefix) at every position.

The critic role of PPO-style training (GAE advantages). The backbone is the decoder of
`models.transformer` (so a value role can start from the policy's weights: its parameters
are `{"backbone": <policy parameters>, "value_head": ..., "value_bias": ...}`); the head is
a `[D]` vector (logical axis `embed`, so it shards with the hidden dim) and a bias, both
initialised to zero so a fresh critic predicts 0 everywhere.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import transformer


class ValueModel(nnx.Module):
  """`__call__(ids, mask) -> [B, T]` float32 values of the prefixes ending at each position."""

  def __init__(self, config: transformer.TransformerConfig, *, rngs: nnx.Rngs):
    self.backbone = transformer.Transformer(config, rngs=rngs)
    init = nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",), eager_sharding=False)
    self.value_head = nnx.Param(init(rngs.params(), (config.hidden_size,), config.params_dtype))
    self.value_bias = nnx.Param(jnp.zeros((), config.params_dtype))

  def values(self, hidden: jax.Array) -> jax.Array:
    """[..., D] final-normed hidden states -> [...] float32 values."""
    return (jnp.einsum("...d,d->...", hidden, self.value_head[...].astype(hidden.dtype),
                       preferred_element_type=jnp.float32)
            + self.value_bias[...].astype(jnp.float32))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
               return_hidden: bool = False) -> jax.Array:
    hidden = self.backbone(input_ids, attention_mask, return_hidden=True)  # [B, T, D]
    return hidden if return_hidden else self.values(hidden)
