"""One optimizer step over a batch split into micro-batches, compiled once.

Losses are (sum, denominator) pairs (see `objectives.aggregation`). The step adds up the
gradients of the sums and the denominators over micro-batches with `lax.scan` and divides
once, so the update equals the one of the un-split batch whatever the split.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxrl_reward import sharding

# loss_fn(model, microbatch) -> (loss_sum, denominator, metrics)
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array, Mapping[str, jax.Array]]]


def split_microbatches(batch: Mapping[str, Any], num_microbatches: int) -> dict[str, jax.Array]:
  """Reshapes every leaf `[B, ...]` to `[M, B / M, ...]`, micro-batch m holding rows m, m+M, ...

  Strided rather than contiguous: with the rows sharded over the batch axes of a mesh,
  every micro-batch then spans all the batch shards (no resharding per micro-batch). The
  summed gradient does not depend on the split.
  """
  m = num_microbatches

  def reshape(x):
    x = jnp.asarray(x)
    if x.shape[0] % m:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into num_microbatches={m} equal parts")
    x = x.reshape((x.shape[0] // m, m) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {k: reshape(v) for k, v in batch.items()}


def accumulate_gradients(loss_fn: LossFn, graphdef, params, rest, microbatches):
  """Returns (summed gradient, summed loss, summed denominator, per-micro-batch metrics [M])."""
  def grad_of_sum(p, mb):
    model = nnx.merge(graphdef, p, rest)
    total, den, metrics = loss_fn(model, mb)
    return total, (den, metrics)

  def body(carry, mb):
    grads, total, den = carry
    (mb_total, (mb_den, metrics)), mb_grads = jax.value_and_grad(grad_of_sum, has_aux=True)(params, mb)
    grads = jax.tree.map(jnp.add, grads, mb_grads)
    return (grads, total + mb_total, den + mb_den), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, total, den), metrics = jax.lax.scan(body, init, microbatches)
  return grads, total, den, metrics


def make_update_step(loss_fn: LossFn, graphdef, rest, optimizer: optax.GradientTransformation, *,
                     num_microbatches: int = 1, loss_key: str = "loss/total",
                     placement: sharding.Placement | None = None):
  """Builds `step(params, opt_state, batch) -> (params, opt_state, metrics)`, jitted with donated state.

  `batch` holds arrays `[B, ...]`; B must divide into `num_microbatches` parts. Metrics
  returned per micro-batch are averaged; `loss_key` holds the exact batch loss
  sum / denominator and `optim/grad_norm` the norm of the (unclipped) gradient.

  With a `placement`, the step runs under its mesh: params and optimizer state in and out
  with their shardings, the batch rows over the batch axes, metrics replicated, and the
  model's activation constraints active.
  """
  def step(params, opt_state, batch):
    microbatches = split_microbatches(batch, num_microbatches)
    if placement is not None:
      microbatches = {k: placement.constrain_rows(v, axis=1) for k, v in microbatches.items()}
    grads, total, den, mb_metrics = accumulate_gradients(loss_fn, graphdef, params, rest, microbatches)
    scale = jnp.where(den > 0, 1.0 / jnp.maximum(den, 1e-12), 0.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {k: jnp.mean(v) for k, v in mb_metrics.items()}
    metrics[loss_key] = total * scale
    metrics["optim/grad_norm"] = optax.global_norm(grads)
    return params, opt_state, metrics

  if placement is None:
    return jax.jit(step, donate_argnums=(0, 1))
  return placement.jit(step, in_shardings=(placement.params, placement.opt_state, placement.rows),
                       out_shardings=(placement.params, placement.opt_state, placement.replicated),
                       donate_argnums=(0, 1))
