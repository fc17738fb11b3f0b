"""PRIME advantages: leave-one-out baselines on implicit process rewards and outcome rewards.

Cui et al., "Process Reinforcement through Implicit Rewards" (arXiv 2502.01456; code PRIME-RL/PRIME,
`verl/trainer/ppo/core_algos.py::compute_rloo_returns`, `ray_trainer.py::filter`).

Two reward sources, each on its own tokens of a `[B, T]` response batch (rows group-major, K =
`group_size` responses per prompt):
- process rewards p_{i,t} on every response token (the implicit PRM's token rewards, see
  `objectives.implicit_prm.token_rewards`), weighted by `process_coef`;
- the outcome (verifier) reward o_i on the last response token, weighted by `outcome_coef`.

For each source separately the official code replaces a reward r_{i,t} on that source's tokens by

    r_{i,t} K / (K - 1) - sum_j mean_s(r_{j,s}) / (K - 1)          (sum over the K group rows)
  = r_{i,t} - mean_{j != i} mean_s(r_{j,s}) + (r_{i,t} - mean_s(r_{i,s})) / (K - 1),

where mean_s is over that source's tokens of row j. For the outcome source (one token per row)
the last term vanishes and this is standard RLOO, o_i - mean_{j != i} o_j. For process rewards the
README and paper describe only the leave-one-out mean of the averaged process rewards as the
baseline; the code's algebra adds the extra (r_{i,t} - mean_s r_{i,s}) / (K - 1) term. We follow
the code (`rloo_token_rewards`).

Before the advantages PRIME's reward-model worker normalises the token scores over the batch
(`prime_norm`, `prime_norm: batch_norm` in the recipe): scores / (max |reverse cumulative sum| +
1e-6). `prime_advantages` takes the process rewards as given; the "prime" estimator
(`objectives.estimators`, option `process_norm`) applies `prime_norm` first.

Returns are reverse discounted sums per source (G_t = sum_{s >= t} gamma^{s-t} r_s; gamma = 1 in
the recipes), added over sources, and the advantages are the returns whitened over all unmasked
tokens of the batch (`objectives.aggregation.masked_whiten`: unbiased variance and eps 1e-8, as
verl's `masked_whiten`).

Differences from the code, on inputs it cannot handle: a row with no unmasked token is absent. It
has no process or outcome token and enters neither source's leave-one-out baseline: K above counts
the rows of the group that have a token of the source (a group with fewer than two gets 0), which
is the group size whenever no row is empty (the code's mean over an empty row is NaN). Its rewards,
like every process reward where the mask is 0, are ignored whatever they hold (NaN and +-inf
included). Rows must be right-padded (the code places the outcome reward at index `len - 1`; we
place it at the last unmasked token, the same position for right padding).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from objectives import aggregation, checks

Array = jax.Array




def _check_group(batch_size: int, group_size) -> int:
  if not isinstance(group_size, int) or group_size < 2 or batch_size % group_size:
    raise ValueError(f"group_size={group_size!r} must be an integer >= 2 dividing the batch size {batch_size}")
  return group_size


def last_token_mask(mask: Array) -> Array:
  """`[B, T]` bool, True at the last unmasked token of each row (none for all-zero rows)."""
  checks.check_rank("mask", mask, 2, "[B, T]")
  m = jnp.asarray(mask).astype(bool)
  t = m.shape[1]
  last = t - 1 - jnp.argmax(m[:, ::-1], axis=-1)  # [B]
  return (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(m, axis=-1, keepdims=True)


def _leave_one_out(row_values: Array, present: Array, k: int) -> tuple[Array, Array]:
  """`[B]` (n / (n - 1), sum_j row_values_j / (n - 1)) of each row's group, where the sum and the
  count n run over the group's `present` rows; both 0 for a group with n < 2."""
  p = present.astype(row_values.dtype).reshape(-1, k)
  n = jnp.sum(p, axis=-1)  # [B / K]
  total = jnp.sum(checks.fill_masked(row_values.reshape(-1, k), p), axis=-1)
  den = jnp.maximum(n - 1.0, 1.0)
  scale = jnp.where(n > 1, n / den, 0.0)
  baseline = jnp.where(n > 1, total / den, 0.0)
  return jnp.repeat(scale, k), jnp.repeat(baseline, k)


def rloo_token_rewards(rewards: Array, source_mask: Array, *, group_size: int) -> Array:
  """PRIME's leave-one-out transform of one reward source (see module docstring).

  Args:
    rewards: `[B, T]` rewards of one source (values off `source_mask` are ignored, whatever they
      hold).
    source_mask: `[B, T]`, 1 on the tokens that carry this source's reward.
    group_size: rows per prompt (>= 2), group-major.

  Returns:
    `[B, T]`: r K/(K-1) - sum_j mean_s(r_j)/(K-1) on the source's tokens, 0 elsewhere, with K and
    the sum over the rows of the group that have a source token (K = group_size when every row
    has one; a group with fewer than two such rows gets 0).
  """
  checks.check_rank("rewards", rewards, 2, "[B, T]")
  checks.check_shape("source_mask", source_mask, jnp.shape(rewards), "rewards")
  b, t = rewards.shape
  k = _check_group(b, group_size)
  m = jnp.asarray(source_mask).astype(rewards.dtype)
  rewards = checks.fill_masked(rewards, m)
  row_mean = aggregation.masked_mean(rewards, m, axis=-1)  # [B], 0 for empty rows
  scale, baseline = _leave_one_out(row_mean, jnp.any(m > 0, axis=-1), k)  # [B]
  return (rewards * scale[:, None] - baseline[:, None]) * m


PRIME_NORMS = ("batch_norm", "none")


def prime_norm(token_scores: Array, mask: Array, *, method: str = "batch_norm") -> Array:
  """PRIME's normalisation of the implicit PRM's token scores, before the advantages.

  See Cui et al. (arXiv 2502.01456); code: the reward-model worker's `prime_norm` (config
  `prime_norm: batch_norm`) in PRIME's `dp_rm` worker and verl's PRIME recipe
  (`recipe/prime/prime_dp_rm.py::prime_norm`, `prime_trainer.yaml`):

      R_{i,t} = sum_{s >= t} s_{i,s} m_{i,s}                     (reverse cumulative sum per row)
      s'_{i,t} = s_{i,t} m_{i,t} / (max_{j, u: m_{j,u} = 1} |R_{j,u}| + 1e-6)

  The max runs over every row and every unmasked token of the batch. It keeps the relative values
  of the scores while bounding the absolute value of the process return by 1, so that with
  `process_coef` 5 the process term is not negligible next to the outcome term. A batch without
  unmasked tokens gives 0 everywhere (the denominator is then 1e-6).

  Args:
    token_scores: `[B, T]` token scores (e.g. beta (log pi_prm - log pi_ref)); values where the
      mask is 0 are ignored, whatever they hold.
    mask: `[B, T]`, 1 on response tokens.
    method: "batch_norm" (PRIME's default) or "none" (the scores unchanged).

  Returns:
    `[B, T]` scores, 0 where the mask is 0.
  """
  if method not in PRIME_NORMS:
    raise ValueError(f"prime_norm method={method!r} is not one of {PRIME_NORMS}")
  checks.check_rank("token_scores", token_scores, 2, "[B, T]")
  checks.check_shape("mask", mask, jnp.shape(token_scores), "token_scores")
  scores = jnp.asarray(token_scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  m = jnp.asarray(mask).astype(scores.dtype)
  scores = checks.fill_masked(scores, m) * m
  if method == "none":
    return scores
  reverse_cumsum = jnp.flip(jnp.cumsum(jnp.flip(scores, axis=-1), axis=-1), axis=-1)
  top = jnp.max(jnp.where(m > 0, jnp.abs(reverse_cumsum), 0.0))
  return scores / (top + 1e-6)


def discounted_returns(rewards: Array, *, gamma: float = 1.0) -> Array:
  """`[B, T]` reverse discounted cumulative sum G_t = r_t + gamma G_{t+1} (G_T = 0)."""
  checks.check_rank("rewards", rewards, 2, "[B, T]")
  if gamma == 1.0:
    return jnp.flip(jnp.cumsum(jnp.flip(rewards, axis=-1), axis=-1), axis=-1)

  def body(carry, r_t):  # r_t [B]
    g = r_t + gamma * carry
    return g, g

  _, g = jax.lax.scan(body, jnp.zeros_like(rewards[:, 0]), rewards.T, reverse=True)
  return g.T


def prime_advantages(process_rewards: Array | None, outcome_rewards: Array | None, mask: Array, *,
                     group_size: int, process_coef: float = 5.0, outcome_coef: float = 5.0,
                     process_gamma: float = 1.0, outcome_gamma: float = 1.0,
                     whiten: bool = True) -> tuple[Array, Array]:
  """PRIME token advantages from process and outcome rewards (official `compute_rloo_returns`).

  Args:
    process_rewards: `[B, T]` implicit process (token) rewards, or None. The official code uses
      log pi_phi - log pi_ref (no beta) as the token reward, scaled by `process_coef`; verl's later
      recipe multiplies by beta first. Either way the source is linear, so pass what you use.
    outcome_rewards: `[B]` verifier rewards (e.g. 0/1 correctness), or None.
    mask: `[B, T]` response mask, right-padded. Process rewards where it is 0 and the outcome reward
      of a row without tokens are ignored, whatever they hold; such a row is in no baseline.
    group_size: K responses per prompt (group-major rows).
    process_coef, outcome_coef: per-source weights (5 and 5 in the PRIME recipe).
    process_gamma, outcome_gamma: discounts of each source's return (1 in the recipe).
    whiten: whiten the summed returns over the batch's unmasked tokens.

  Returns:
    (advantages `[B, T]`, returns `[B, T]`), both 0 on padding.
  """
  checks.check_rank("mask", mask, 2, "[B, T]")
  b, t = jnp.shape(mask)
  _check_group(b, group_size)
  if process_rewards is None and outcome_rewards is None:
    raise ValueError("prime_advantages needs process_rewards, outcome_rewards or both; got neither")
  dtype = jnp.result_type(*(x for x in (process_rewards, outcome_rewards) if x is not None), jnp.float32)
  maskf = jnp.asarray(mask).astype(dtype)
  returns = jnp.zeros((b, t), dtype)
  if process_rewards is not None:
    checks.check_shape("process_rewards", process_rewards, (b, t), "mask")
    p = checks.fill_masked(jnp.asarray(process_rewards, dtype), maskf) * process_coef
    returns = returns + discounted_returns(rloo_token_rewards(p, maskf, group_size=group_size),
                                           gamma=process_gamma)
  if outcome_rewards is not None:
    checks.check_shape("outcome_rewards", outcome_rewards, (b,), "mask[:, 0]")
    last = last_token_mask(maskf)  # [B, T]
    # One outcome token per row, so the transform is RLOO on o over the rows that have one; the
    # reward of a row without tokens may be anything and is dropped first.
    present = jnp.any(last, axis=-1)
    o = checks.fill_masked(jnp.asarray(outcome_rewards, dtype), present) * outcome_coef
    scale, baseline = _leave_one_out(o, present, group_size)
    o_rloo = o * scale - baseline  # [B]
    returns = returns + discounted_returns(jnp.where(last, o_rloo[:, None], 0.0), gamma=outcome_gamma)
  returns = returns * maskf
  advantages = aggregation.masked_whiten(returns, maskf) if whiten else returns
  return advantages, returns


def accuracy_filter(correct: Array, *, group_size: int, low: float = 0.2, high: float = 0.8) -> Array:
  """Keeps the prompts whose group accuracy is in [low, high] (PRIME `ray_trainer.py::filter`).

  Args:
    correct: `[B]` 0/1 (or fractional) correctness, group-major.
    group_size: K rows per prompt.
    low, high: inclusive bounds on the group mean (0.2 and 0.8 in the recipe).

  Returns:
    `[B]` bool, the same value for every row of a group.
  """
  checks.check_rank("correct", correct, 1, "[B]")
  b = jnp.shape(correct)[0]
  if not isinstance(group_size, int) or group_size < 1 or b % group_size:
    raise ValueError(f"group_size={group_size!r} must be a positive integer dividing the batch size {b}")
  if not low <= high:
    raise ValueError(f"low={low} must be <= high={high}")
  acc = jnp.mean(jnp.asarray(correct, jnp.float32).reshape(-1, group_size), axis=-1)
  keep = (acc >= low) & (acc <= high)
  return jnp.repeat(keep, group_size)
