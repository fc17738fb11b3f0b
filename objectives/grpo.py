"""GRPO family: clipped importance-ratio policy loss, with TRL's option names.

GRPO (DeepSeekMath, arXiv 2402.03300), DAPO clip-higher and token-mean (arXiv 2503.14476),
Dr. GRPO constant normaliser (arXiv 2503.20783), GSPO sequence-level ratio (arXiv 2507.18071),
two-sided clip `delta` (TRL `GRPOConfig.delta`). Per token, with r the importance ratio:

    L_t = -min(min(r, delta) A_t, clip(r, 1 - epsilon, 1 + epsilon_high) A_t) + beta KL_t

`delta` (None = off) bounds the unclipped term from above, which matters for A < 0 where
the PPO clip alone leaves r A unbounded. KL_t is `objectives.kl.estimate(logp, ref_logp,
estimator=kl_estimator)` (k3 by default: k1's gradient is zero in expectation).

Importance ratio:
- token level: r_t = exp(clip(logp_t - old_logp_t, -c, c)).
- sequence level (GSPO-token): s_i = exp(masked mean_t of the token log-ratios) and
  r_t = sg(s_i) exp(logp_t - sg(logp_t)) (value s_i, gradient s_i grad logp_t); the log
  of it is clipped at +-c. With a per-sequence advantage and any of the aggregations
  below this has exactly the loss and gradient of TRL's `importance_sampling_level=
  "sequence"` (which differentiates through s_i); with per-token advantages it is the
  paper's GSPO-token.

Aggregation by `loss_type` (objectives.aggregation): grpo -> seq_mean_token_mean;
bnpo, dapo -> token_mean; dr_grpo -> seq_mean_token_sum_norm(max_completion_length).
`loss_terms` returns the (sum, denominator) pair so that micro-batches add up exactly.
"""
from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp

from objectives import aggregation, checks
from objectives import kl as kl_lib
from objectives import registry

Array = chex.Array

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
_AGGREGATION = {
    "grpo": "seq_mean_token_mean",
    "bnpo": "token_mean",
    "dapo": "token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
}


def _check_inputs(logp, old_logp, advantages, mask, ref_logp):
  """Rank/shape checks that name the offending argument; returns float arrays."""
  logp = jnp.asarray(logp)
  checks.check_rank("logp", logp, 2, "[B, T]")
  dtype = jnp.promote_types(logp.dtype, jnp.float32)
  logp = logp.astype(dtype)
  shape = logp.shape
  mask = jnp.asarray(mask)
  checks.check_shape("mask", mask, shape, "logp")
  old_logp = logp if old_logp is None else jnp.asarray(old_logp)
  checks.check_shape("old_logp", old_logp, shape, "logp")
  advantages = jnp.asarray(advantages)
  if advantages.shape == shape[:1]:
    advantages = advantages[:, None]
  elif advantages.shape != shape:
    raise ValueError(f"advantages must have shape [B]={shape[:1]} or [B, T]={shape}, got {advantages.shape}")
  if ref_logp is not None:
    ref_logp = jnp.asarray(ref_logp)
    checks.check_shape("ref_logp", ref_logp, shape, "logp")
    ref_logp = jax.lax.stop_gradient(ref_logp.astype(dtype))
  sg = jax.lax.stop_gradient
  # Padding may hold anything (NaN, -inf log-probs): replace it before any arithmetic, so that
  # neither the loss nor the gradient (0 there) sees it. Per-sequence advantages of an empty row
  # are dropped the same way once broadcast over its (masked) tokens.
  fill = lambda x: checks.fill_masked(x, mask)  # noqa: E731
  advantages = jnp.broadcast_to(advantages, shape)
  ref_logp = None if ref_logp is None else fill(ref_logp)
  old_logp, advantages = sg(fill(old_logp.astype(dtype))), sg(fill(advantages.astype(dtype)))
  return fill(logp), old_logp, advantages, mask.astype(dtype), ref_logp


def _check_clip(epsilon, epsilon_high) -> None:
  """Clip ranges must be >= 0 (Python numbers only; a traced value is left alone)."""
  for name, value in (("epsilon", epsilon), ("epsilon_high", epsilon_high)):
    if isinstance(value, (int, float)) and not value >= 0:
      raise ValueError(f"{name} must be >= 0 (the ratio is clipped to [1 - epsilon, 1 + epsilon_high]), "
                       f"got {value}")


def _kl_active(beta) -> bool:
  """beta > 0 for a Python number; a traced beta (e.g. a schedule) counts as active."""
  if isinstance(beta, (int, float)):
    if beta < 0:
      raise ValueError(f"beta must be >= 0, got {beta}")
    return beta > 0
  return True


def needs_reference(options: Mapping[str, Any]) -> bool:
  """Whether the "grpo" objective with these options needs `ref_logp` in the batch."""
  return _kl_active(options.get("beta", 0.0))


def per_token_loss(
    logp: Array,
    old_logp: Array | None,
    advantages: Array,
    mask: Array,
    *,
    ref_logp: Array | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    importance_sampling_level: str = "token",
    log_ratio_clamp: float | None = 20.0,
    is_weight: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Per-token GRPO loss; see the module docstring for the formula.

  Args:
    logp: [B, T] log pi_theta of the sampled completion tokens (the only input that carries
      gradients).
    old_logp: [B, T] log pi_old of the same tokens (sampling policy), or None for the
      on-policy case (then old_logp = sg(logp) and r = 1 with gradient grad logp).
    advantages: [B] per-sequence (broadcast over tokens) or [B, T] per-token advantages.
    mask: [B, T], 1 on completion tokens, 0 on padding. Every per-token input is ignored where the
      mask is 0, whatever it holds there (NaN and +-inf included): it is replaced by 0 before any
      arithmetic, so the loss and the gradient are those of finite padding. A [B] advantage of a
      fully masked row is ignored likewise.
    ref_logp: [B, T] log pi_ref; required when beta > 0.
    epsilon: lower clip range, r >= 1 - epsilon (>= 0).
    epsilon_high: upper clip range (DAPO clip-higher, e.g. 0.28; >= 0); None = epsilon.
    delta: upper bound on the unclipped ratio (TRL two-sided clip; use a value
      > 1 + epsilon_high); None disables it.
    beta: KL coefficient.
    kl_estimator: one of `objectives.kl.ESTIMATORS`.
    importance_sampling_level: "token" or "sequence" (GSPO).
    log_ratio_clamp: log-ratios are clipped to [-c, c] before exp (None: no clip).
    is_weight: optional [B, T] importance weight w_t (stop-gradiented) multiplying the policy
      term: the truncated correction min(pi_learner / pi_sampler, C) for a sampler whose
      log-probs differ from the learner's (Yao et al. 2025, "truncated importance sampling").

  Returns:
    ([B, T] per-token loss, zero where mask is 0; dict of [B, T] intermediates:
    `policy` (policy part of the loss), `kl` (per-token KL, only with ref_logp), `ratio`,
    `clipped_low`, `clipped_high` (floats in {0, 1})).
  """
  if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
    raise ValueError(
        f"importance_sampling_level={importance_sampling_level!r} is not one of {IMPORTANCE_SAMPLING_LEVELS}")
  kl_lib.validate_estimator(kl_estimator)
  kl_active = _kl_active(beta)
  if kl_active and ref_logp is None:
    raise ValueError(f"beta={beta} > 0 needs ref_logp (log-probs of the reference model), got None")
  epsilon_high = epsilon if epsilon_high is None else epsilon_high
  _check_clip(epsilon, epsilon_high)
  if delta is not None and delta <= 1.0:
    raise ValueError(f"delta={delta} must be > 1 (TRL recommends > 1 + epsilon_high, e.g. 1 + 2 epsilon)")

  logp, old_logp, advantages, mask, ref_logp = _check_inputs(logp, old_logp, advantages, mask, ref_logp)
  sg = jax.lax.stop_gradient
  token_log_ratio = logp - old_logp  # [B, T]
  if importance_sampling_level == "token":
    log_ratio = token_log_ratio
  else:
    lengths = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)
    seq_log_ratio = jnp.sum(token_log_ratio * mask, axis=-1, keepdims=True) / lengths  # [B, 1]
    log_ratio = sg(seq_log_ratio) + logp - sg(logp)  # value: seq log-ratio; grad: grad logp
  if log_ratio_clamp is not None:
    log_ratio = jnp.clip(log_ratio, -log_ratio_clamp, log_ratio_clamp)
  ratio = jnp.exp(log_ratio)  # [B, T]

  clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
  unclipped = ratio if delta is None else jnp.minimum(ratio, delta)
  policy = -jnp.minimum(unclipped * advantages, clipped_ratio * advantages)  # [B, T]
  if is_weight is not None:
    checks.check_shape("is_weight", is_weight, logp.shape, "logp")
    policy = policy * sg(checks.fill_masked(jnp.asarray(is_weight, policy.dtype), mask))
  loss = policy
  aux = {"policy": policy * mask}
  if ref_logp is not None:
    # logp and ref_logp are 0 on padding (`_check_inputs`), so the estimate is finite there.
    kl = kl_lib.estimate(logp, ref_logp, estimator=kl_estimator)
    aux["kl"] = kl * mask
    if kl_active:
      loss = loss + beta * kl
  r = sg(ratio)
  aux["ratio"] = r
  aux["clipped_low"] = ((r < 1.0 - epsilon) & (advantages < 0)).astype(loss.dtype) * mask
  aux["clipped_high"] = ((r > 1.0 + epsilon_high) & (advantages > 0)).astype(loss.dtype) * mask
  return loss * mask, aux


def loss_terms(
    logp: Array,
    old_logp: Array | None,
    advantages: Array,
    mask: Array,
    *,
    ref_logp: Array | None = None,
    loss_type: str = "dapo",
    max_completion_length: int | None = None,
    **options,
) -> tuple[Array, Array, dict[str, Array]]:
  """GRPO loss as a (sum, denominator) pair plus scalar metrics.

  Arguments as `per_token_loss`, plus:
    loss_type: "grpo" (mean over sequences of token means), "bnpo" / "dapo" (mean over
      the tokens; TRL's dapo normalises by the tokens of the whole generation batch, which
      is what adding up micro-batch denominators gives), "dr_grpo" (token sum divided by
      B x max_completion_length).
    max_completion_length: Dr. GRPO's constant; defaults to the mask width T.

  Returns:
    (sum, denominator, metrics). Sum the first two over micro-batches / devices and divide
    once (`aggregation.safe_divide`). Metrics are means over this micro-batch's unmasked
    tokens: `loss/policy`, `stats/kl` (when ref_logp is given), `stats/clip_frac_low`
    (r < 1 - eps and A < 0), `stats/clip_frac_high` (r > 1 + eps_high and A > 0),
    `stats/clip_frac` (either), `stats/ratio_mean`, and `stats/num_tokens`.
  """
  if loss_type not in _AGGREGATION:
    raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}")
  per_token, aux = per_token_loss(logp, old_logp, advantages, mask, ref_logp=ref_logp, **options)
  mask_f = jnp.asarray(mask).astype(per_token.dtype)
  mode = _AGGREGATION[loss_type]
  kwargs = {"max_length": max_completion_length} if mode == "seq_mean_token_sum_norm" else {}
  total, denominator = aggregation.aggregate(per_token, mask_f, mode, **kwargs)
  policy_total, _ = aggregation.aggregate(aux["policy"], mask_f, mode, **kwargs)

  mean = lambda v: jax.lax.stop_gradient(aggregation.masked_mean(v, mask_f))  # noqa: E731
  clipped = jnp.maximum(aux["clipped_low"], aux["clipped_high"])
  metrics = {
      "loss/policy": jax.lax.stop_gradient(aggregation.safe_divide(policy_total, denominator)),
      "stats/clip_frac_low": mean(aux["clipped_low"]),
      "stats/clip_frac_high": mean(aux["clipped_high"]),
      "stats/clip_frac": mean(clipped),
      "stats/ratio_mean": mean(aux["ratio"]),
      "stats/num_tokens": jnp.sum(mask_f),
  }
  if "kl" in aux:
    metrics["stats/kl"] = mean(aux["kl"])
  return total, denominator, metrics


def loss(
    logp: Array,
    old_logp: Array | None,
    advantages: Array,
    mask: Array,
    *,
    ref_logp: Array | None = None,
    **options,
) -> tuple[Array, dict[str, Array]]:
  """Scalar GRPO loss `safe_divide(sum, denominator)` and metrics (see `loss_terms`).

  Jittable with the options static, e.g.
  `jax.jit(functools.partial(loss, loss_type="grpo", beta=0.04))`.
  """
  total, denominator, metrics = loss_terms(logp, old_logp, advantages, mask, ref_logp=ref_logp, **options)
  value = aggregation.safe_divide(total, denominator)
  return value, {**metrics, "loss/total": jax.lax.stop_gradient(value)}


@registry.register("grpo", needs_reference=needs_reference)
def grpo_objective(logp: Array, batch: Mapping[str, Array], *, loss_type: str = "dapo", epsilon: float = 0.2,
                   epsilon_high: float | None = 0.28, delta: float | None = None, beta: float = 0.0,
                   kl_estimator: str = "k3", importance_sampling_level: str = "token",
                   log_ratio_clamp: float | None = 20.0, max_completion_length: int | None = None
                   ) -> tuple[Array, Array, dict[str, Array]]:
  """Registry entry: `loss_terms` on `batch["old_logp"|"advantages"|"mask"|"ref_logp"|"is_weight"]`.

  Defaults: DAPO (token-mean aggregation, clip-higher 0.2 / 0.28), no KL (k3 when beta > 0).
  `old_logp` may be absent (on-policy: sg(logp)); `ref_logp` and `is_weight` are read when present.
  """
  for key in ("mask", "advantages"):
    if key not in batch:
      raise KeyError(f"grpo objective: batch is missing key {key!r}; got keys {sorted(batch)}")
  return loss_terms(
      logp, batch.get("old_logp"), batch["advantages"], batch["mask"], ref_logp=batch.get("ref_logp"),
      is_weight=batch.get("is_weight"), loss_type=loss_type, epsilon=epsilon, epsilon_high=epsilon_high,
      delta=delta, beta=beta, kl_estimator=kl_estimator, importance_sampling_level=importance_sampling_level,
      log_ratio_clamp=log_ratio_clamp, max_completion_length=max_completion_length)
