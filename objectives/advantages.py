"""Advantage estimators and credit assignment, as pure functions on arrays.

Batches are group-major: rows [g*G:(g+1)*G] are the G completions of prompt g. Outcome
rewards are `[B]`; token- or step-level rewards are `[B, T]` with a `mask` `[B, T]`
(1 on completion tokens). The optional `valid` `[B]` mask marks samples whose reward
exists (see `combine_rewards`): invalid samples get advantage 0 and are left out of every
group and batch statistic. Outputs carry no gradient (inputs are stop-gradiented).

Group-relative estimators need `group_size >= 2` (a one-sample group has no baseline;
they raise ValueError). No estimator returns NaN for zero-variance groups, groups with
fewer than two valid samples, or fully masked rows: those get advantage 0.

Masked and invalid entries are ignored whatever they hold (NaN and +-inf included): values of
`rewards`, `values`, ... at positions where `mask` is 0 and the `[B]` rewards of invalid samples
are replaced before any arithmetic (`checks.fill_masked`), so they change no other output.

Estimators (verl `core_algos` names in brackets):
- `group_advantages`: GRPO / Dr. GRPO z-score (TRL `scale_rewards`) [grpo].
- `rloo`: leave-one-out mean baseline (arXiv 2402.14740) [rloo].
- `reinforce_plus_plus`, `reinforce_plus_plus_baseline`: REINFORCE++ (arXiv 2501.03262).
- `remax`: ReMax greedy-rollout baseline (arXiv 2310.10505).
- `opo`: length-weighted group baseline (OPO, arXiv 2505.23585).
- `gpg`: GPG group-mean baseline with the valid-sample rescaling (arXiv 2504.02546).
- `pass_at_k`: pass@k advantage (arXiv 2503.19595) [grpo_passk].
- `gae`: generalised advantage estimation (arXiv 1506.02438).
- credit assignment: `discounted_returns`, `min_form_rewards`/`min_form_returns` (PURE,
  arXiv 2504.15275), `outcome_to_token_rewards`, `whiten`.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from objectives import aggregation, checks

Array = chex.Array

SCALE_REWARDS = ("group", "batch", "none")


# ----------------------------------------------------------------------------- checks


def _float(x: Array, name: str) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return jax.lax.stop_gradient(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


def _rank(x: Array, ranks: tuple[int, ...], name: str, what: str) -> None:
  checks.check_rank(name, x, ranks, what)


def _check_group_size(batch: int, group_size) -> int:
  if not isinstance(group_size, int) or isinstance(group_size, bool):
    raise ValueError(f"group_size must be a Python int (static), got {group_size!r}")
  if group_size < 2:
    raise ValueError(f"group_size must be >= 2 for a group-relative baseline, got {group_size}")
  if batch % group_size:
    raise ValueError(f"group_size={group_size} must divide the batch size {batch}")
  return batch // group_size


def _valid(valid: Array | None, batch: int, dtype) -> Array:
  if valid is None:
    return jnp.ones((batch,), dtype)
  valid = jnp.asarray(valid)
  if valid.shape != (batch,):
    raise ValueError(f"valid must have shape [B]=({batch},), got {valid.shape}")
  return valid.astype(dtype)


def _mask(mask: Array | None, shape: tuple[int, ...], dtype, name: str = "mask") -> Array:
  if mask is None:
    raise ValueError(f"{name} [B, T] is required with token-level [B, T] inputs of shape {shape}")
  mask = jnp.asarray(mask)
  if mask.shape != shape:
    raise ValueError(f"{name} shape {mask.shape} must equal {shape}")
  return mask.astype(dtype)


def _safe_div(num: Array, den: Array) -> Array:
  """num / den, and 0 where den == 0 (the numerator is then 0 too in our uses)."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _weighted_stats(values: Array, weights: Array, axis) -> tuple[Array, Array, Array]:
  """Mean and unbiased (ddof=1) std of `values` where weights are 1; also the count."""
  values = checks.fill_masked(values, weights)
  count = jnp.sum(weights, axis=axis, keepdims=True)
  mean = _safe_div(jnp.sum(values * weights, axis=axis, keepdims=True), count)
  sq = jnp.sum(jnp.square(values - mean) * weights, axis=axis, keepdims=True)
  std = jnp.sqrt(_safe_div(sq, count - 1.0) * (count > 1))
  return mean, std, count


# ----------------------------------------------------------------------------- rewards


def combine_rewards(rewards: Array, weights: Array | None = None) -> tuple[Array, Array]:
  """Weighted sum of several reward functions' outputs, skipping missing (NaN) entries.

  TRL semantics: a reward function may return None (NaN here) for a sample; the combined
  reward is `nansum_f(w_f r_f)`. Rows where every entry is missing get 0 and are flagged.

  Args:
    rewards: [B, F] float, NaN where a reward function gave no reward.
    weights: [F] per-function weights; None = all ones.

  Returns:
    (combined [B], all_missing [B] bool). Pass `valid=~all_missing` to the estimators so
    these samples get advantage 0 and stay out of the group statistics.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (2,), "rewards", "[B, F] (samples x reward functions)")
  if weights is None:
    weights = jnp.ones(rewards.shape[1:], rewards.dtype)
  weights = _float(weights, "weights")
  if weights.shape != rewards.shape[1:]:
    raise ValueError(f"weights must have shape [F]={rewards.shape[1:]}, got {weights.shape}")
  missing = jnp.isnan(rewards)
  combined = jnp.sum(jnp.where(missing, 0.0, rewards * weights[None, :]), axis=1)
  return combined, jnp.all(missing, axis=1)


def outcome_to_token_rewards(rewards: Array, mask: Array) -> Array:
  """Places each sequence reward on its last unmasked token (verl convention).

  Args:
    rewards: [B] outcome rewards.
    mask: [B, T] completion mask.

  Returns:
    [B, T] token rewards; all zero on fully masked rows.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1,), "rewards", "[B]")
  mask = jnp.asarray(mask)
  _rank(mask, (2,), "mask", "[B, T]")
  if mask.shape[0] != rewards.shape[0]:
    raise ValueError(f"mask batch {mask.shape[0]} must equal rewards batch {rewards.shape[0]}")
  m = mask > 0
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(m[:, ::-1], axis=1)  # [B]
  onehot = (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(m, axis=1, keepdims=True)
  return jnp.where(onehot, rewards[:, None], 0.0)


def _token_or_outcome(rewards: Array, mask: Array) -> tuple[Array, Array]:
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1, 2), "rewards", "[B] or [B, T]")
  mask = jnp.asarray(mask)
  _rank(mask, (2,), "mask", "[B, T]")
  if rewards.ndim == 1:
    if mask.shape[0] != rewards.shape[0]:
      raise ValueError(f"mask batch {mask.shape[0]} must equal rewards batch {rewards.shape[0]}")
    rewards = outcome_to_token_rewards(rewards, mask)
  mask = _mask(mask, rewards.shape, rewards.dtype)
  return checks.fill_masked(rewards, mask), mask


# ----------------------------------------------------------------------------- group baselines


def group_advantages(
    rewards: Array,
    *,
    group_size: int,
    scale_rewards: str | bool = "group",
    eps: float = 1e-4,
    mask: Array | None = None,
    valid: Array | None = None,
) -> Array:
  """GRPO group-relative advantages (TRL `scale_rewards`).

  A = (r - mean_group(r)) / (std + eps), with std the unbiased (ddof=1, as torch.std)
  standard deviation of the group's rewards ("group"), of the whole batch's rewards
  ("batch", TRL; the mean stays per group), or no scaling at all ("none", Dr. GRPO,
  arXiv 2503.20783). A group whose rewards are all equal gets 0.

  Token-level rewards `[B, T]`: the mean and std are taken over all unmasked tokens of
  the group's G completions (over all unmasked tokens of the batch for "batch"), and each
  token is normalised with them; `mask` is then required. No summing to returns is done.

  Args:
    rewards: [B] sequence rewards, or [B, T] token/step rewards.
    group_size: G >= 2, dividing B.
    scale_rewards: "group", "batch" or "none" (True = "group", False = "none").
    eps: added to the std.
    mask: [B, T] for [B, T] rewards.
    valid: optional [B]; invalid samples get 0 and are excluded from the statistics.

  Returns:
    Advantages with the shape of `rewards` (0 on masked tokens and invalid samples).
  """
  if scale_rewards is True:
    scale_rewards = "group"
  elif scale_rewards is False:
    scale_rewards = "none"
  if scale_rewards not in SCALE_REWARDS:
    raise ValueError(f"scale_rewards={scale_rewards!r} is not one of {SCALE_REWARDS}")
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1, 2), "rewards", "[B] or [B, T]")
  batch = rewards.shape[0]
  groups = _check_group_size(batch, group_size)
  weights = _valid(valid, batch, rewards.dtype)
  if rewards.ndim == 2:
    weights = weights[:, None] * _mask(mask, rewards.shape, rewards.dtype)
  elif mask is not None:
    raise ValueError(f"mask is only used with [B, T] rewards; rewards have shape {rewards.shape}")
  w = weights.reshape(groups, -1)
  r = checks.fill_masked(rewards.reshape(groups, -1), w)  # [groups, G] or [groups, G*T]
  mean, std, _ = _weighted_stats(r, w, axis=1)
  centered = (r - mean) * w
  if scale_rewards == "batch":
    _, std, _ = _weighted_stats(r.reshape(-1), w.reshape(-1), axis=0)
  if scale_rewards == "none":
    adv = centered
  else:
    adv = _safe_div(centered, std + eps)
  return adv.reshape(rewards.shape)


def _grouped_sequence_rewards(rewards, group_size, valid) -> tuple[Array, Array]:
  """Checks `[B]` rewards and returns them and the valid mask as `[B / G, G]`."""
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1,), "rewards", "[B]")
  groups = _check_group_size(rewards.shape[0], group_size)
  w = _valid(valid, rewards.shape[0], rewards.dtype).reshape(groups, -1)
  return checks.fill_masked(rewards.reshape(groups, -1), w), w


def rloo(rewards: Array, *, group_size: int, valid: Array | None = None) -> Array:
  """REINFORCE leave-one-out advantages (Ahmadian et al., arXiv 2402.14740).

  A_i = r_i - mean_{j != i} r_j = r_i G/(G-1) - sum_j r_j/(G-1), over the group's valid
  samples (G = their count; groups with < 2 valid samples give 0).

  Args:
    rewards: [B] sequence rewards.
    group_size: G >= 2, dividing B.
    valid: optional [B] mask of samples that have a reward.

  Returns:
    [B] advantages.
  """
  r, w = _grouped_sequence_rewards(rewards, group_size, valid)  # r is 0 where invalid
  n = jnp.sum(w, axis=1, keepdims=True)
  adv = _safe_div(n * r - jnp.sum(r, axis=1, keepdims=True), n - 1.0) * (n > 1) * w
  return adv.reshape(-1)


def opo(rewards: Array, lengths: Array, *, group_size: int, valid: Array | None = None) -> Array:
  """OPO length-weighted baseline (Hao et al., arXiv 2505.23585; verl `opo`).

  b_g = sum_j |o_j| r_j / sum_j |o_j| over the group's valid samples; A_i = r_i - b_g.

  Args:
    rewards: [B] sequence rewards.
    lengths: [B] completion lengths (e.g. `mask.sum(-1)`).
    group_size: G >= 2, dividing B.
    valid: optional [B] mask.

  Returns:
    [B] advantages (0 for invalid samples; b = 0 if the group's lengths sum to 0).
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1,), "rewards", "[B]")
  lengths = _float(lengths, "lengths")
  if lengths.shape != rewards.shape:
    raise ValueError(f"lengths shape {lengths.shape} must equal rewards shape {rewards.shape}")
  groups = _check_group_size(rewards.shape[0], group_size)
  w = _valid(valid, rewards.shape[0], rewards.dtype).reshape(groups, -1)
  r = checks.fill_masked(rewards.reshape(groups, -1), w)
  length = checks.fill_masked(lengths.reshape(groups, -1), w)
  baseline = _safe_div(jnp.sum(length * r, axis=1, keepdims=True), jnp.sum(length, axis=1, keepdims=True))
  return ((r - baseline) * w).reshape(-1)


def gpg(
    rewards: Array, *, group_size: int, f_norm: float = 1.0, valid: Array | None = None
) -> Array:
  """GPG advantages (Chu et al., arXiv 2504.02546), as verl `compute_gpg_outcome_advantage`.

  A_i = alpha (r_i - mean_group(r)) / f_norm with alpha = B / max(M, 1), where, as in
  verl, M = the number of samples with a non-zero reward and B the number of samples
  (both counted over valid samples when `valid` is given). No std scaling.

  Args:
    rewards: [B] sequence rewards.
    group_size: G >= 2, dividing B.
    f_norm: constant divisor.
    valid: optional [B] mask.

  Returns:
    [B] advantages.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1,), "rewards", "[B]")
  batch = rewards.shape[0]
  groups = _check_group_size(batch, group_size)
  v = _valid(valid, batch, rewards.dtype)
  rewards = checks.fill_masked(rewards, v)
  alpha = jnp.sum(v) / jnp.maximum(jnp.sum((rewards != 0) * v), 1.0)
  w = v.reshape(groups, -1)
  r = rewards.reshape(groups, -1)
  mean, _, _ = _weighted_stats(r, w, axis=1)
  return (alpha * (r - mean) / f_norm * w).reshape(-1)


def pass_at_k(
    rewards: Array,
    *,
    group_size: int,
    norm_adv_by_std: bool = True,
    eps: float = 1e-6,
    valid: Array | None = None,
) -> Array:
  """Pass@k advantage, as verl `compute_grpo_passk_outcome_advantage` (arXiv 2503.19595).

  Only the best sample of each group gets a non-zero advantage, r_max - r_second_max
  (divided by std_group + eps, ddof=1, when `norm_adv_by_std`); every other sample gets 0.
  Ties for the maximum go to the first such sample (its advantage is then 0). Groups with
  fewer than two valid samples get 0 (verl raises instead).

  Args:
    rewards: [B] sequence rewards.
    group_size: G >= 2, dividing B.
    norm_adv_by_std: divide by the group std (verl `norm_adv_by_std_in_grpo`).
    eps: added to the std.
    valid: optional [B] mask.

  Returns:
    [B] advantages.
  """
  r, w = _grouped_sequence_rewards(rewards, group_size, valid)
  masked = jnp.where(w > 0, r, -jnp.inf)
  best = jnp.argmax(masked, axis=1)  # [groups], first maximum
  onehot = jax.nn.one_hot(best, r.shape[1], dtype=r.dtype)
  r_max = jnp.max(masked, axis=1, keepdims=True)
  r_second = jnp.max(jnp.where(onehot > 0, -jnp.inf, masked), axis=1, keepdims=True)
  _, std, count = _weighted_stats(r, w, axis=1)
  gap = jnp.where(count > 1, r_max - r_second, 0.0)
  if norm_adv_by_std:
    gap = _safe_div(gap, std + eps)
  return (gap * onehot).reshape(-1)


# ----------------------------------------------------------------------------- returns


def _reverse_scan(step, init, *xs):
  """lax.scan over the time axis (axis 1 of [B, T] inputs), last step first."""
  xs_t = tuple(jnp.swapaxes(x, 0, 1) for x in xs)  # [T, B]
  _, ys = jax.lax.scan(step, init, xs_t, reverse=True)
  return jnp.swapaxes(ys, 0, 1)


def discounted_returns(rewards: Array, mask: Array, *, gamma: float = 1.0) -> Array:
  """Reward-to-go G_t = r_t + gamma G_{t'} over the unmasked tokens of each row.

  t' is the next unmasked position: masked positions (padding, tool output) neither add
  reward nor count as a discount step. With gamma = 1 this is the reverse cumulative sum
  of the masked rewards.

  Args:
    rewards: [B, T] token/step rewards.
    mask: [B, T].
    gamma: discount factor.

  Returns:
    [B, T] returns, 0 on masked positions.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (2,), "rewards", "[B, T]")
  mask = _mask(mask, rewards.shape, rewards.dtype)
  rewards = checks.fill_masked(rewards, mask)

  def step(g, x):
    r, m = x
    g = m * (r + gamma * g) + (1.0 - m) * g
    return g, g * m

  return _reverse_scan(step, jnp.zeros(rewards.shape[:1], rewards.dtype), rewards, mask)


def reinforce_plus_plus(rewards: Array, mask: Array, *, gamma: float = 1.0) -> tuple[Array, Array]:
  """REINFORCE++ (Hu, arXiv 2501.03262), as verl `compute_reinforce_plus_plus_outcome_advantage`.

  returns_t = r_t + gamma returns_{t+1}, with the running return reset to 0 at masked
  positions (verl's "reset after EOS"); advantages = masked_whiten(returns) over the whole
  batch (`aggregation.masked_whiten`, unbiased variance as verl's).

  Args:
    rewards: [B] outcome rewards (placed on each row's last unmasked token) or [B, T].
    mask: [B, T].
    gamma: discount factor.

  Returns:
    (advantages [B, T], returns [B, T]), both 0 on masked positions.
  """
  rewards, mask = _token_or_outcome(rewards, mask)

  def step(g, x):
    r, m = x
    g = r + gamma * g
    return g * m, g * m

  returns = _reverse_scan(step, jnp.zeros(rewards.shape[:1], rewards.dtype), rewards, mask)
  return aggregation.masked_whiten(returns, mask), returns


def reinforce_plus_plus_baseline(
    rewards: Array, mask: Array, *, group_size: int, valid: Array | None = None
) -> Array:
  """REINFORCE++ with a group-mean baseline (verl `reinforce_plus_plus_baseline`).

  score_i = sum_t r_{i,t} (or r_i); A_i = score_i - mean_group(score), broadcast to the
  row's tokens, then whitened over all unmasked tokens of the batch.

  Args:
    rewards: [B] or [B, T] rewards.
    mask: [B, T].
    group_size: G >= 2, dividing B.
    valid: optional [B] mask (invalid rows are 0 and excluded from the statistics; so are
      fully masked rows, whose score has no token to act on).

  Returns:
    [B, T] advantages.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (1, 2), "rewards", "[B] or [B, T]")
  mask = jnp.asarray(mask)
  _rank(mask, (2,), "mask", "[B, T]")
  if mask.shape[0] != rewards.shape[0] or (rewards.ndim == 2 and mask.shape != rewards.shape):
    raise ValueError(f"mask shape {mask.shape} does not match rewards shape {rewards.shape}")
  mask = mask.astype(rewards.dtype)
  scores = jnp.sum(checks.fill_masked(rewards, mask) * mask, axis=1) if rewards.ndim == 2 else rewards
  groups = _check_group_size(scores.shape[0], group_size)
  v = _valid(valid, scores.shape[0], scores.dtype) * jnp.any(mask > 0, axis=1).astype(scores.dtype)
  scores = checks.fill_masked(scores, v)
  mean, _, _ = _weighted_stats(scores.reshape(groups, -1), v.reshape(groups, -1), axis=1)
  centered = (scores.reshape(groups, -1) - mean).reshape(-1)
  token_mask = mask * v[:, None]
  return aggregation.masked_whiten(centered[:, None] * token_mask, token_mask)


def remax(rewards: Array, baseline_rewards: Array, mask: Array) -> tuple[Array, Array]:
  """ReMax (Li et al., arXiv 2310.10505), as verl `compute_remax_outcome_advantage`.

  returns_t = sum_{s >= t} r_s (masked), advantages_t = returns_t - b, where b is the
  reward of the greedy completion for the same prompt.

  Args:
    rewards: [B] outcome rewards (placed on the last unmasked token) or [B, T].
    baseline_rewards: [B] rewards of the greedy (argmax) completions.
    mask: [B, T].

  Returns:
    (advantages [B, T], returns [B, T]), 0 on masked positions.
  """
  rewards, mask = _token_or_outcome(rewards, mask)
  baseline_rewards = _float(baseline_rewards, "baseline_rewards")
  if baseline_rewards.shape != rewards.shape[:1]:
    raise ValueError(f"baseline_rewards must have shape [B]={rewards.shape[:1]}, got {baseline_rewards.shape}")
  returns = jnp.cumsum((rewards * mask)[:, ::-1], axis=1)[:, ::-1] * mask
  baseline_rewards = checks.fill_masked(baseline_rewards, jnp.any(mask > 0, axis=1))  # rows without tokens
  return (returns - baseline_rewards[:, None]) * mask, returns


def gae(
    rewards: Array,
    values: Array,
    mask: Array,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Array, Array]:
  """Generalised advantage estimation (Schulman et al., arXiv 1506.02438).

  delta_t = r_t + gamma V_{t'} - V_t and A_t = delta_t + gamma lam A_{t'}, where t' is the
  next unmasked position (masked positions are skipped, as in verl
  `compute_gae_advantage_return`); returns_t = A_t + V_t. One reverse `lax.scan`.
  verl whitens the advantages afterwards; do so with `whiten(advantages, mask)`.

  Args:
    rewards: [B, T] token rewards.
    values: [B, T] value estimates V_t.
    mask: [B, T].
    gamma: discount; lam: GAE lambda.

  Returns:
    (advantages [B, T], returns [B, T]), 0 on masked positions.
  """
  rewards = _float(rewards, "rewards")
  _rank(rewards, (2,), "rewards", "[B, T]")
  values = _float(values, "values")
  if values.shape != rewards.shape:
    raise ValueError(f"values shape {values.shape} must equal rewards shape {rewards.shape}")
  mask = _mask(mask, rewards.shape, rewards.dtype)
  rewards, values = checks.fill_masked(rewards, mask), checks.fill_masked(values, mask)

  def step(carry, x):
    next_value, last_gae = carry
    r, v, m = x
    delta = r + gamma * next_value - v
    gae_t = delta + gamma * lam * last_gae
    next_value = m * v + (1.0 - m) * next_value
    last_gae = m * gae_t + (1.0 - m) * last_gae
    return (next_value, last_gae), last_gae * m

  zeros = jnp.zeros(rewards.shape[:1], rewards.dtype)
  advantages = _reverse_scan(step, (zeros, zeros), rewards, values, mask)
  return advantages, (advantages + values) * mask


def whiten(values: Array, mask: Array, *, shift_mean: bool = True) -> Array:
  """Batch whitening over unmasked entries (`aggregation.masked_whiten`)."""
  values = _float(values, "values")
  return aggregation.masked_whiten(values, _mask(mask, values.shape, values.dtype), shift_mean=shift_mean)


def min_form_rewards(step_rewards: Array, mask: Array, *, temperature: float = 0.1) -> Array:
  """PURE min-form reward transform (Cheng et al., arXiv 2504.15275).

  w_k = softmax over the row's unmasked steps of (-r_k / temperature), r'_k = w_k r_k.
  sum_k r'_k is a soft minimum of the step rewards: with n steps,

      min_k r_k <= sum_k r'_k <= min(mean_k r_k, min_k r_k + temperature log n),

  (the upper bound: sum_k w_k r_k = softmin + temperature H(w), softmin <= min, H <= log n),
  so it tends to min_k r_k as temperature -> 0.

  Args:
    step_rewards: [B, T] process rewards at the step positions.
    mask: [B, T], 1 where a step reward is present.
    temperature: T > 0.

  Returns:
    [B, T] transformed rewards (0 where masked; all 0 on fully masked rows).
  """
  step_rewards = _float(step_rewards, "step_rewards")
  w = min_form_weights(step_rewards, mask, temperature=temperature)
  return w * checks.fill_masked(step_rewards, w > 0)


def min_form_weights(step_rewards: Array, mask: Array, *, temperature=0.1) -> Array:
  """PURE's min-form weights w_k = softmax over the row's steps of (-r_k / temperature).

  Cheng et al., arXiv 2504.15275 (code: `openrlhf/utils/utils.py::turn_process_reward_logits_to_reward`).

  Args:
    step_rewards: [B, T] rewards at the step positions (ignored where `mask` is 0).
    mask: [B, T], 1 at the steps (the step ends for PURE).
    temperature: T > 0, a Python number, or an array broadcasting against [B, T] (e.g. a
      scalar scaled to the batch's reward spread).

  Returns:
    [B, T] weights: on each row with a step they are > 0 on its steps and sum to 1; 0 elsewhere
    (all 0 on rows without a step).
  """
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  step_rewards = _float(step_rewards, "step_rewards")
  _rank(step_rewards, (2,), "step_rewards", "[B, T]")
  mask = _mask(mask, step_rewards.shape, step_rewards.dtype)
  step_rewards = checks.fill_masked(step_rewards, mask)
  logits = jnp.where(mask > 0, -step_rewards / jax.lax.stop_gradient(temperature), -jnp.inf)
  top = jnp.max(logits, axis=1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  e = jnp.where(mask > 0, jnp.exp(logits - top), 0.0)
  return _safe_div(e, jnp.sum(e, axis=1, keepdims=True))


def min_form_weight_entropy(weights: Array, mask: Array) -> Array:
  """Scalar: the entropy of min-form weights relative to uniform, averaged over rows with >= 2 steps.

  For a row with n >= 2 steps, H(w) / log n: 1.0 when the weights are uniform over its steps (the
  transform is a mean), 0.0 when all the weight sits on one step (a hard minimum). Rows with fewer
  than two steps have no choice to make and are left out; a batch without such a row gives 1.0
  (the transform is then not in effect).

  Args:
    weights: [B, T] weights of `min_form_weights`; mask: [B, T], 1 at the steps.
  """
  weights = _float(weights, "weights")
  _rank(weights, (2,), "weights", "[B, T]")
  mask = _mask(mask, weights.shape, weights.dtype)
  w = checks.fill_masked(weights, mask)
  n = jnp.sum(mask, axis=1)
  h = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=1)
  rows = n >= 2
  rel = _safe_div(h, jnp.where(rows, jnp.log(jnp.maximum(n, 2.0)), 0.0))
  count = jnp.sum(rows)
  return jnp.where(count > 0, jnp.sum(jnp.where(rows, rel, 0.0)) / jnp.maximum(count, 1), 1.0)


def min_form_returns(step_rewards: Array, mask: Array, *, temperature: float = 0.1) -> Array:
  """PURE min-form returns: reverse cumulative sum (gamma = 1) of `min_form_rewards`.

  The return at the first step is the soft minimum of all the row's step rewards (bounds
  in `min_form_rewards`); as temperature -> 0 the return at step k tends to
  min_j r_j if k <= argmin_j r_j and to 0 after it.

  Args:
    step_rewards: [B, T]; mask: [B, T]; temperature: T > 0.

  Returns:
    [B, T] returns, 0 on masked positions.
  """
  transformed = min_form_rewards(step_rewards, mask, temperature=temperature)
  return discounted_returns(transformed, mask, gamma=1.0)


def _last_token(mask: Array) -> Array:
  """[B, T] 1.0 at each row's last unmasked token (none on fully masked rows)."""
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)
  return ((jnp.arange(t)[None, :] == last[:, None]) & jnp.any(mask > 0, axis=1, keepdims=True)).astype(mask.dtype)


def pure_steps(token_rewards: Array, step_ends: Array, mask: Array) -> tuple[Array, Array, Array]:
  """Step rewards and step lengths of PURE's layout, from token rewards and step ends.

  Each row's steps end at the tokens marked in `step_ends` (on unmasked tokens) and at its last
  unmasked token (PURE's final step ends at EOS: `experience_maker.py::generate_samples`, "+1 for
  the last step with eos"). Step k spans the unmasked tokens after the previous step end up to and
  including its end; its reward is the sum of the token rewards over them (for an implicit PRM,
  q^k - q^{k-1}, `objectives.implicit_prm.step_rewards`; for a PRM that scores step ends only,
  its score there).

  Args:
    token_rewards: [B, T] (ignored where `mask` is 0); step_ends: [B, T], 1 at a step's last
      token; mask: [B, T] completion mask.

  Returns:
    (step rewards [B, T] at the step ends, 0 elsewhere; step mask [B, T], 1 at the step ends;
    step lengths [B, T], the number of unmasked tokens of each step at its end, 0 elsewhere).
  """
  token_rewards = _float(token_rewards, "token_rewards")
  _rank(token_rewards, (2,), "token_rewards", "[B, T]")
  mask = _mask(mask, token_rewards.shape, token_rewards.dtype)
  ends = _mask(step_ends, token_rewards.shape, token_rewards.dtype, "step_ends")
  ends = jnp.maximum((ends > 0).astype(mask.dtype) * mask, _last_token(mask))
  r = checks.fill_masked(token_rewards, mask) * mask
  t = mask.shape[1]
  # Index of the latest step end strictly before each position (-1: none).
  idx = jnp.where(ends > 0, jnp.arange(t)[None, :], -1)
  prev = jnp.concatenate([jnp.full_like(idx[:, :1], -1), jax.lax.cummax(idx, axis=1)[:, :-1]], axis=1)

  def since_previous_end(x):
    c = jnp.cumsum(x, axis=1)
    before = jnp.where(prev >= 0, jnp.take_along_axis(c, jnp.maximum(prev, 0), axis=1), 0.0)
    return (c - before) * ends

  return since_previous_end(r), ends, since_previous_end(mask)


def pure_token_baseline(step_rewards: Array, step_lengths: Array, mask: Array, *, group_size: int,
                        valid: Array | None = None) -> Array:
  """PURE's token baseline (`reward_baseline=token`), as a [B, T] amount to subtract at the step ends.

  Cheng et al., arXiv 2504.15275; formulas.md section 4; code
  `openrlhf/trainer/ppo_utils/experience_maker.py::process_experiences`:

      b_i = [ sum_{j != i} sum_k r'_{j,k} ] / [ sum_{j != i} len_j ]   (per token; j over the group)
      baseline_{i,k} = b_i * n_{i,k}                                     (n_{i,k}: tokens of step k)

  with r' the (min-form transformed) step rewards and len_j the response length of row j. Rows
  that are invalid or fully masked are in no other row's sums; b_i = 0 when the other rows of the
  group have no token.

  Args:
    step_rewards: [B, T] (transformed) rewards at the step ends, 0 elsewhere.
    step_lengths: [B, T] tokens of each step at its end, 0 elsewhere (`pure_steps`).
    mask: [B, T] completion mask (len_j = its row sum).
    group_size: G rows per prompt, group-major.
    valid: optional [B] bool.

  Returns:
    [B, T] b_i n_{i,k} at the step ends, 0 elsewhere.
  """
  step_rewards = _float(step_rewards, "step_rewards")
  _rank(step_rewards, (2,), "step_rewards", "[B, T]")
  b, _ = step_rewards.shape
  _check_group_size(b, group_size)
  mask = _mask(mask, step_rewards.shape, step_rewards.dtype)
  lengths_at = _mask(step_lengths, step_rewards.shape, step_rewards.dtype, "step_lengths")
  ok = _valid(valid, b, step_rewards.dtype) * (jnp.sum(mask, axis=1) > 0)
  totals = (jnp.sum(checks.fill_masked(step_rewards, mask) * mask, axis=1) * ok).reshape(-1, group_size)
  lengths = (jnp.sum(mask, axis=1) * ok).reshape(-1, group_size)
  others = jnp.sum(totals, axis=1, keepdims=True) - totals
  other_lengths = jnp.sum(lengths, axis=1, keepdims=True) - lengths
  per_token = _safe_div(others, other_lengths).reshape(-1)  # [B]
  return per_token[:, None] * lengths_at * mask
