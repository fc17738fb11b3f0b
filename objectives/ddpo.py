"""DDPO: the clipped importance-sampling policy gradient for diffusion models (DDPO_IS).

Black et al., "Training Diffusion Models with Reinforcement Learning", 2023 (arXiv 2305.13301);
official JAX code jannerm/ddpo: `ddpo/training/policy_gradient.py::train_step` (the loss) and
`ddpo/utils/stat_tracking.py::PerPromptStatTracker` (the advantages).

The denoising chain is an MDP whose action at step t is x_{t-1} ~ pi_theta(. | x_t, c); the
reward r(x_0, c) comes at the end, so every step of a trajectory shares its advantage. With
per-step log-probs logp_t (current policy) and old_t (the sampling snapshot pi_old):

    A       = clip(adv, -A_max, A_max)                          (`adv_clip_max`, default 5)
    ratio_t = exp(logp_t - old_t)
    l_t     = max(-A ratio_t, -A clip(ratio_t, 1 - eps, 1 + eps))   (`clip_eps`, default 1e-4)
    loss    = mean of l_t over every (sample, step) with mask 1

A_max is 10 in the JAX code and 5 in kvablack/ddpo-pytorch; 5 is the default here. eps = 1e-4
is both codes' `clip_range`. The loss is returned as `(sum_t m_t l_t, sum_t m_t, metrics)` so
that summing both parts over micro-batches (or data-parallel shards) and dividing once gives
exactly the whole batch's mean, as the engine does for every registered objective.

Departures from the official code, all on measure-zero or overflow cases:
- The log-ratio is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] = [-20, 20] before exp, so a
  stale or broken old_logp cannot overflow float32 (e^88) into inf / NaN. Beyond the clamp the
  gradient is 0 (exp(20) ~ 5e8 is far outside any trust region of width 1e-4 anyway).
- At a tie of the two branches (ratio exactly on the clip boundary, or clip_eps = 0 with
  ratio = 1) the unclipped branch's gradient is taken; `jnp.maximum` would split the gradient
  0.5 / 0.5 between the branches. So the gradient per step is -A ratio_t / count everywhere
  except where ratio_t is strictly outside [1 - eps, 1 + eps] on the side that lowers the loss
  (ratio > 1 + eps with A > 0, ratio < 1 - eps with A < 0), where it is 0.
- Masked steps (padding) are excluded from the mean; the official code has no padding.

Values at masked positions are ignored whatever they hold (NaN and +-inf included): they are
replaced before any arithmetic (`checks.fill_masked`) and get a zero gradient.

The per-prompt stat tracker (`stat_tracker_init`, `stat_tracker_update`, `stat_tracker_stats`)
is a pure, jit-able version of PerPromptStatTracker whose state is a pytree of arrays (so it can
be checkpointed); see `stat_tracker_update` for its semantics and the differences.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from objectives import aggregation, checks, registry

Array = jax.Array

LOG_RATIO_CLAMP = 20.0  # |logp - old_logp| is clamped to this before exp (see module doc)


# ----------------------------------------------------------------------------- loss


def _check_options(clip_eps, adv_clip_max) -> None:
  if not checks.is_traced(clip_eps) and not float(clip_eps) >= 0:
    raise ValueError(f"ddpo: clip_eps must be >= 0, got {clip_eps!r}")
  if not checks.is_traced(adv_clip_max) and not float(adv_clip_max) > 0:
    raise ValueError(f"ddpo: adv_clip_max must be > 0, got {adv_clip_max!r}")


def _check_inputs(logp, old_logp, advantages, mask) -> None:
  checks.check_rank("logp", logp, 2, "[B samples, T steps]")
  checks.check_shape("old_logp", old_logp, jnp.shape(logp), "logp")
  checks.check_shape("mask", mask, jnp.shape(logp), "logp")
  checks.check_rank("advantages", advantages, (1, 2), "[B] per trajectory or [B, T] per step")
  expected = jnp.shape(logp)[:1] if jnp.ndim(advantages) == 1 else jnp.shape(logp)
  checks.check_shape("advantages", advantages, expected, "logp[:, 0]" if jnp.ndim(advantages) == 1 else "logp")


def _terms(logp, old_logp, advantages, mask, *, clip_eps, adv_clip_max):
  """(per-step loss [B, T] with 0 at masked steps, float mask, aux dict); inputs already checked."""
  logp = jnp.asarray(logp)
  dtype = logp.dtype
  maskf = jnp.asarray(mask).astype(dtype)
  advantages = jnp.asarray(advantages, dtype)
  if advantages.ndim == 1:
    advantages = jnp.broadcast_to(advantages[:, None], logp.shape)
  # Padding may hold NaN / inf: replace it before any arithmetic (value and gradient).
  logp = checks.fill_masked(logp, maskf)
  old_logp = jax.lax.stop_gradient(checks.fill_masked(jnp.asarray(old_logp, dtype), maskf))
  adv = jax.lax.stop_gradient(checks.fill_masked(advantages, maskf))
  adv = jnp.clip(adv, -adv_clip_max, adv_clip_max)
  diff = logp - old_logp
  ratio = jnp.exp(jnp.clip(diff, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  # max(unclipped, clipped); at ties the unclipped branch (and its gradient) is taken.
  per_step = jnp.where(clipped > unclipped, clipped, unclipped) * maskf
  aux = {
      "ratio": jax.lax.stop_gradient(ratio),
      "diff": jax.lax.stop_gradient(diff),
      "adv": adv,
  }
  return per_step, maskf, aux


def per_step_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_eps: float = 1e-4,
                  adv_clip_max: float = 5.0) -> Array:
  """Per-step DDPO_IS loss l_t = max(-A ratio_t, -A clip(ratio_t, 1 - eps, 1 + eps)).

  Args:
    logp: `[B, T]` per-step log pi_theta(x_{t-1} | x_t, c) (carries the gradient).
    old_logp: `[B, T]` the same under the sampling snapshot (no gradient).
    advantages: `[B]` per trajectory (broadcast over T) or `[B, T]`; clipped to +-adv_clip_max.
    mask: `[B, T]`, 1 on real steps.
    clip_eps: eps of the ratio clip (>= 0).
    adv_clip_max: A_max (> 0).

  Returns:
    `[B, T]`, 0 at masked steps.
  """
  _check_inputs(logp, old_logp, advantages, mask)
  _check_options(clip_eps, adv_clip_max)
  per_step, _, _ = _terms(logp, old_logp, advantages, mask, clip_eps=clip_eps, adv_clip_max=adv_clip_max)
  return per_step


def ddpo_loss_terms(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_eps: float = 1e-4,
                    adv_clip_max: float = 5.0) -> tuple[Array, Array, dict[str, Array]]:
  """DDPO_IS loss as `(sum of m_t l_t, sum of m_t, metrics)`; see `ddpo_loss`."""
  _check_inputs(logp, old_logp, advantages, mask)
  _check_options(clip_eps, adv_clip_max)
  per_step, maskf, aux = _terms(logp, old_logp, advantages, mask, clip_eps=clip_eps, adv_clip_max=adv_clip_max)
  total = jnp.sum(per_step)
  den = jnp.sum(maskf)
  mean = lambda x: aggregation.safe_divide(jnp.sum(x * maskf), den)  # noqa: E731
  metrics = {
      "loss/ddpo": jax.lax.stop_gradient(aggregation.safe_divide(total, den)),
      "stats/clip_frac": mean((jnp.abs(aux["ratio"] - 1.0) > clip_eps).astype(maskf.dtype)),
      "stats/approx_kl": 0.5 * mean(jnp.square(aux["diff"])),
      "stats/adv_abs_mean": mean(jnp.abs(aux["adv"])),
      "stats/num_steps": den,
  }
  return total, den, metrics


def ddpo_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_eps: float = 1e-4,
              adv_clip_max: float = 5.0) -> tuple[Array, dict[str, Array]]:
  """DDPO_IS clipped importance-sampling loss (arXiv 2305.13301; jannerm/ddpo `train_step`).

  loss = sum_{b,t} m_{b,t} l_{b,t} / sum_{b,t} m_{b,t}, l as in `per_step_loss`; 0 if no step
  is unmasked.

  Args:
    logp, old_logp, advantages, mask, clip_eps, adv_clip_max: as in `per_step_loss`.

  Returns:
    (scalar loss, metrics) with `loss/ddpo`, `stats/clip_frac` (fraction of unmasked steps with
    |ratio - 1| > eps, as the official `clipfrac`), `stats/approx_kl` (0.5 mean (logp - old)^2
    over unmasked steps, the official `approx_kl`), `stats/adv_abs_mean` (mean |A| after the
    clip, over unmasked steps) and `stats/num_steps`.
  """
  total, den, metrics = ddpo_loss_terms(logp, old_logp, advantages, mask, clip_eps=clip_eps,
                                        adv_clip_max=adv_clip_max)
  return aggregation.safe_divide(total, den), metrics


@registry.register("ddpo", needs_reference=False)
def ddpo_objective(logp: Array, batch: Mapping[str, Any], *, clip_eps: float = 1e-4,
                   adv_clip_max: float = 5.0) -> tuple[Array, Array, dict[str, Array]]:
  """Registered DDPO_IS: `fn(logp [B, T], batch) -> (sum, #unmasked steps, metrics)`.

  Reads `batch["old_logp"]` `[B, T]`, `batch["advantages"]` (`[B]` per trajectory, or `[B, T]`)
  and `batch["mask"]` `[B, T]`; see `ddpo_loss`. No reference model is used. Defaults: eps 1e-4
  (both official codes), A_max 5 (kvablack/ddpo-pytorch; jannerm/ddpo uses 10).
  """
  for key in ("old_logp", "advantages", "mask"):
    if key not in batch:
      raise KeyError(f"objective 'ddpo' needs batch[{key!r}]; got keys {sorted(batch)}")
  return ddpo_loss_terms(logp, batch["old_logp"], batch["advantages"], batch["mask"], clip_eps=clip_eps,
                         adv_clip_max=adv_clip_max)


# ----------------------------------------------------------------------------- per-prompt stats


def stat_tracker_init(num_prompts: int, buffer_size: int = 32) -> dict[str, Array]:
  """Empty per-prompt reward ring buffers for prompt ids 0 .. num_prompts - 1.

  Returns:
    `{"values": [P, S] float32, "count": [P] int32 (entries held, <= S), "head": [P] int32
    (the slot the next reward goes to)}`, all zeros; P = num_prompts, S = buffer_size.
  """
  if int(num_prompts) < 1:
    raise ValueError(f"stat_tracker_init: num_prompts must be >= 1, got {num_prompts!r}")
  if int(buffer_size) < 1:
    raise ValueError(f"stat_tracker_init: buffer_size must be >= 1, got {buffer_size!r}")
  p, s = int(num_prompts), int(buffer_size)
  return {"values": jnp.zeros((p, s), jnp.float32), "count": jnp.zeros((p,), jnp.int32),
          "head": jnp.zeros((p,), jnp.int32)}


def _check_state(state) -> tuple[int, int]:
  for key in ("values", "count", "head"):
    if key not in state:
      raise KeyError(f"stat tracker state needs {key!r}; got keys {sorted(state)}")
  checks.check_rank("state['values']", state["values"], 2, "[P prompts, S buffer slots]")
  p, s = jnp.shape(state["values"])
  checks.check_shape("state['count']", state["count"], (p,), "state['values'][:, 0]")
  checks.check_shape("state['head']", state["head"], (p,), "state['values'][:, 0]")
  return p, s


def _rank_within_id(ids: Array) -> Array:
  """rank[i] = #{j < i : ids[j] == ids[i]}, by a stable sort (O(B log B), no B x B matrix)."""
  b = ids.shape[0]
  order = jnp.argsort(ids, stable=True)
  sorted_ids = ids[order]
  start = jnp.searchsorted(sorted_ids, sorted_ids, side="left")  # first index of each id's run
  rank_sorted = jnp.arange(b, dtype=jnp.int32) - start.astype(jnp.int32)
  return jnp.zeros((b,), jnp.int32).at[order].set(rank_sorted)


def stat_tracker_update(state: Mapping[str, Array], prompt_ids: Array, rewards: Array, *, min_count: int = 16,
                        eps: float = 1e-6) -> tuple[dict[str, Array], Array]:
  """Pushes a batch of rewards into the per-prompt buffers and returns its advantages.

  DDPO's PerPromptStatTracker (ring-buffer version), vectorised:

  1. Each prompt's rewards of this batch are appended to its buffer in row order; a buffer keeps
     its last S rewards (S = buffer_size; the oldest are dropped, like `deque(maxlen=S)`). If
     one prompt has more than S rows in the batch, only its last S rows stay.
  2. Row i with prompt p: if p's buffer now holds >= min_count rewards,
     A_i = (r_i - mean(buf_p)) / (std(buf_p) + eps); otherwise the whole batch's statistics are
     used: A_i = (r_i - mean(r)) / (std(r) + eps). std is the population std (numpy's default).

  Duplicates of a prompt in one batch are handled by a stable sort (each row's rank among the
  rows of its prompt gives its slot); there is no Python loop over rows, so it jits (with
  `min_count` and `eps` static or not).

  Differences from the official tracker: prompts are int ids in [0, P) instead of strings (the
  buffers are preallocated, so the state is a fixed-shape pytree); statistics are float32 (numpy
  computes them in float64). Outside jit an id outside [0, P) raises ValueError; under jit such a
  row is not pushed anywhere and gets the batch statistics. `min_count > S` is refused (the
  per-prompt statistics would never be used).

  Args:
    state: from `stat_tracker_init` (or an earlier update).
    prompt_ids: `[B]` int prompt ids.
    rewards: `[B]` rewards.
    min_count: buffer size from which a prompt's own statistics are used (DDPO: 16).
    eps: added to the std.

  Returns:
    (new state, advantages `[B]` float32).
  """
  p, s = _check_state(state)
  checks.check_rank("prompt_ids", prompt_ids, 1, "[B]")
  checks.check_shape("rewards", rewards, jnp.shape(prompt_ids), "prompt_ids")
  if not checks.is_traced(min_count) and not 0 <= int(min_count) <= s:
    raise ValueError(f"stat_tracker_update: min_count must be in [0, buffer_size={s}], got {min_count!r}")
  if not checks.is_traced(prompt_ids):
    ids_np = np.asarray(prompt_ids)
    if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= p):
      raise ValueError(f"stat_tracker_update: prompt_ids must be in [0, {p}), got values in "
                       f"[{ids_np.min()}, {ids_np.max()}]")
  ids = jnp.asarray(prompt_ids).astype(jnp.int32)
  rewards = jnp.asarray(rewards, jnp.float32)
  values = jnp.asarray(state["values"], jnp.float32)
  count = jnp.asarray(state["count"], jnp.int32)
  head = jnp.asarray(state["head"], jnp.int32)

  valid = (ids >= 0) & (ids < p)
  ids_safe = jnp.where(valid, ids, 0)
  # Invalid rows get their own sort key (p) so they do not shift the ranks of a real prompt.
  rank = _rank_within_id(jnp.where(valid, ids, p))
  n_new = jnp.zeros((p,), jnp.int32).at[ids_safe].add(valid.astype(jnp.int32))  # [P]
  n_row = n_new[ids_safe]
  # Of a prompt's n rows only the last S survive; they land in distinct slots head .. head+S-1.
  keep = valid & (rank >= n_row - s)
  slot = (head[ids_safe] + rank) % s
  values = values.at[jnp.where(keep, ids_safe, p), slot].set(rewards, mode="drop")
  count = jnp.minimum(count + n_new, s)
  head = (head + n_new) % s
  new_state = {"values": values, "count": count, "head": head}

  # Per-row statistics of its prompt's buffer (slots 0 .. count-1 are the filled ones).
  row_count = count[ids_safe]  # [B]
  held = (jnp.arange(s)[None, :] < row_count[:, None]).astype(jnp.float32)  # [B, S]
  row_values = values[ids_safe]  # [B, S]
  n = jnp.maximum(row_count, 1).astype(jnp.float32)
  mean_p = jnp.sum(row_values * held, axis=-1) / n
  std_p = jnp.sqrt(jnp.sum(jnp.square(row_values - mean_p[:, None]) * held, axis=-1) / n)
  mean_b = jnp.mean(rewards)
  std_b = jnp.sqrt(jnp.mean(jnp.square(rewards - mean_b)))
  use_prompt = valid & (row_count >= min_count)
  mean = jnp.where(use_prompt, mean_p, mean_b)
  std = jnp.where(use_prompt, std_p, std_b)
  return new_state, (rewards - mean) / (std + eps)


def stat_tracker_stats(state: Mapping[str, Array]) -> dict[str, Array]:
  """Per-prompt `mean`, `std` (population) and `count` `[P]` of the buffers (0 for empty ones);
  the analogue of the official `get_stats`."""
  _, s = _check_state(state)
  values = jnp.asarray(state["values"], jnp.float32)
  count = jnp.asarray(state["count"], jnp.int32)
  held = (jnp.arange(s)[None, :] < count[:, None]).astype(jnp.float32)
  n = jnp.maximum(count, 1).astype(jnp.float32)
  mean = jnp.sum(values * held, axis=-1) / n
  std = jnp.sqrt(jnp.sum(jnp.square(values - mean[:, None]) * held, axis=-1) / n)
  return {"mean": mean, "std": std, "count": count}
