"""One optimizer step of a loss over a batch: group-aware micro-batches, exact accumulation.

Losses are (sum, denominator) pairs (see `objectives.aggregation`). The step adds up the
gradients of the sums and the denominators over micro-batches with `lax.scan` and divides
once, so the update equals the one of the un-split batch whatever the split.

Groups stay whole. A batch's rows are group-major (rows [g*G, (g+1)*G) are group g, as a
rollout is sampled and as `minibatch_rows` keeps it); micro-batch m holds the groups
m, m + M, m + 2M, ... whole. Every pairwise or leave-one-out term of a group-wise
objective (RDP/PRDP pairs, DPO pairs of a prompt) is therefore formed in exactly one
micro-batch, and striding over groups (rather than taking contiguous blocks) keeps each
micro-batch spread over all the batch shards of a mesh, so no micro-batch is resharded.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_reward import sharding

# loss_fn(params, microbatch) -> (loss_sum, denominator, metrics)
LossFn = Callable[[Any, Any], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


def check_whole_groups(rows: int, group_size: int, num_microbatches: int, *, what: str) -> None:
  """Raises ValueError, naming `what` (the config keys), unless `rows` split into
  `num_microbatches` parts of whole groups of `group_size`."""
  if rows % group_size:
    raise ValueError(f"{what}: a batch of {rows} rows is not made of whole groups of {group_size}")
  groups = rows // group_size
  if groups % num_microbatches:
    raise ValueError(f"{what}: {groups} groups of {group_size} rows do not split into "
                     f"{num_microbatches} micro-batches of whole groups")


def split_microbatches(batch, num_microbatches: int, group_size: int = 1):
  """Reshapes every leaf `[B, ...]` to `[M, B / M, ...]`, micro-batch m holding groups m, m+M, ...

  Args:
    batch: a pytree of arrays with rows first, group-major with groups of `group_size` rows.
    num_microbatches: M; the number of groups must divide by it.
    group_size: G (1: every row is its own group).
  """
  m, g = num_microbatches, group_size

  def reshape(x):
    x = jnp.asarray(x)
    check_whole_groups(x.shape[0], g, m, what="split_microbatches")
    x = x.reshape((x.shape[0] // (g * m), m, g) + x.shape[1:])  # [groups / M, M, G, ...]
    x = jnp.swapaxes(x, 0, 1)  # [M, groups / M, G, ...]
    return x.reshape((m, -1) + x.shape[3:])
  return jax.tree.map(reshape, batch)


def minibatch_rows(num_groups: int, group_size: int, num_minibatches: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
  """Row indices of `num_minibatches` mini-batches of whole, randomly chosen groups.

  The groups are shuffled, then dealt out in equal contiguous blocks; each mini-batch
  lists its groups' rows group-major. Raises ValueError if the groups do not divide.
  """
  if num_groups % num_minibatches:
    raise ValueError(f"{num_groups} groups do not split into {num_minibatches} mini-batches of whole groups")
  order = rng.permutation(num_groups)
  rows = (order[:, None] * group_size + np.arange(group_size)[None, :]).reshape(num_minibatches, -1)
  return [r.astype(np.int32) for r in rows]


def accumulate_gradients(loss_fn: LossFn, params, microbatches):
  """(summed gradient, summed loss, summed denominator, per-micro-batch metrics [M])."""
  def body(carry, mb):
    grads, total, den = carry
    (mb_total, (mb_den, metrics)), mb_grads = jax.value_and_grad(
        lambda p: _as_pair(loss_fn(p, mb)), has_aux=True)(params)
    grads = jax.tree.map(jnp.add, grads, mb_grads)
    return (grads, total + mb_total, den + mb_den), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, total, den), metrics = jax.lax.scan(body, init, microbatches)
  return grads, total, den, metrics


def _as_pair(out):
  total, den, metrics = out
  return jnp.asarray(total, jnp.float32), (jnp.asarray(den, jnp.float32), metrics)


def make_update(loss_fn: LossFn, optimizer: optax.GradientTransformation, placement: sharding.Placement, *,
                num_microbatches: int = 1, group_size: int = 1, loss_key: str = "loss/total"):
  """`update(params, opt_state, batch) -> (params, opt_state, metrics)`, jitted with donated state.

  `batch` is a pytree of `[B, ...]` arrays (a `Rollout` or a dict), group-major. Metrics
  returned per micro-batch are averaged; `loss_key` holds the exact batch loss
  sum / denominator and `optim/grad_norm` the norm of the (unclipped) gradient.

  The step runs under `placement`: params and optimizer state (`placement.opt_state`, set by
  `Placement.with_optimizer`) in and out with their shardings, the batch rows over the batch
  axes, metrics replicated, and the model's activation constraints active.
  """
  def step(params, opt_state, batch):
    microbatches = split_microbatches(batch, num_microbatches, group_size)
    microbatches = jax.tree.map(lambda x: _constrain_micro(placement, x), microbatches)
    grads, total, den, mb_metrics = accumulate_gradients(loss_fn, params, microbatches)
    scale = jnp.where(den > 0, 1.0 / jnp.maximum(den, 1e-12), 0.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {k: jnp.mean(v) for k, v in mb_metrics.items()}
    metrics[loss_key] = total * scale
    metrics["optim/grad_norm"] = optax.global_norm(grads)
    return params, opt_state, metrics

  return placement.jit(step, in_shardings=(placement.params, placement.opt_state, placement.rows),
                       out_shardings=(placement.params, placement.opt_state, placement.replicated),
                       donate_argnums=(0, 1))


def objective_loss(scorer, objective_fn, options) -> LossFn:
  """The `LossFn` of a registered objective on a model's per-step outputs.

  `scorer.outputs(params, batch)` gives the `[B, T]` log-probs (or values) that carry the
  gradient; `objective_fn(outputs, batch, **options)` gives the (sum, denominator, metrics).
  """
  def loss(params, batch):
    return objective_fn(scorer.outputs(params, batch), batch, **options)
  return loss


def _constrain_micro(placement: sharding.Placement, x):
  """Micro-batch rows over the batch axes when they divide (they are a strided slice of all)."""
  if x.shape[1] % placement.batch_shards:
    return x
  return placement.constrain_rows(x, axis=1)
