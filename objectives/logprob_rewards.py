"""Likelihood rewards: the policy's own probability of a reference answer as the reward.

After sampling a chain of thought z for prompt p, append the reference answer a* and score it with
the policy's token log-probs log pi(a*_t | p, z, a*_<t) (`answer_logp` `[B, Ta]`). No answer is
sampled and no verifier is needed.

- Kwiatkowski et al., "Likelihood-Based Reward Designs" (arXiv 2602.03979): rewards
  log-prob, average log-prob, probability, average probability; gradient = RL term on z plus an
  SFT term on a* (`likelihood_loss`); RLOO advantages.
- VeriFree (Zhou et al., arXiv 2505.21493, sail-sg/VeriFree `verifree.py`): R = pi(a* | p, z);
  loss = mean[-A_i sum_{z tokens} log pi - R_i sum_{a* tokens} log pi] (SFT term weighted by R).
- RLPR (Yu et al., arXiv 2506.18254, OpenBMB/RLPR `ProbRewardManager`): mean per-token probability,
  debiased by the same score without reasoning and clipped to [0, 1] (`rlpr_debiased`); prompts
  with a small group reward std are filtered with an EMA threshold (`std_filter_*`).
- JEPO (Tang et al., arXiv 2503.19618): Jensen bound log (1/G) sum_i pi(a* | x, c_i) as a group
  reward, with leave-one-out baselines (`jepo_*`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from objectives import aggregation, checks, registry

Array = jax.Array

KINDS = ("logprob", "avg_logprob", "prob", "avg_prob")
SFT_WEIGHTS = ("one", "reward")



def answer_reward(answer_logp: Array, answer_mask: Array, *, kind: str, empty_reward: float = 0.0) -> Array:
  """Likelihood reward of the reference answer, one per row.

  - "logprob":     R = sum_t m_t log pi(a*_t)          = log pi(a* | p, z)
  - "avg_logprob": R = (1/|a*|) sum_t m_t log pi(a*_t)
  - "prob":        R = exp(sum_t m_t log pi(a*_t))     = pi(a* | p, z)  (VeriFree)
  - "avg_prob":    R = (1/|a*|) sum_t m_t pi(a*_t)     (RLPR `mean_exp_log_softmax`)

  Args:
    answer_logp: `[B, Ta]` policy log-probs of the reference-answer tokens given prompt and CoT.
    answer_mask: `[B, Ta]`, 1 on the answer tokens; `answer_logp` is ignored elsewhere, whatever it
      holds (NaN and +-inf included).
    kind: one of `KINDS`.
    empty_reward: reward of rows without answer tokens (e.g. a CoT that never finished, for which
      VeriFree gives R = 0); the default 0 keeps those rows finite.

  Returns:
    `[B]` rewards. Gradients flow through `answer_logp`; stop them where the reward is a
    constant of the RL term.
  """
  checks.check_rank("answer_logp", answer_logp, 2, "[B, Ta]")
  checks.check_shape("answer_mask", answer_mask, jnp.shape(answer_logp), "answer_logp")
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")
  m = jnp.asarray(answer_mask).astype(answer_logp.dtype)
  length = jnp.sum(m, axis=-1)
  # Zero on padding whatever it holds (NaN, -inf), so neither the sums nor exp() below see it.
  logp = checks.fill_masked(answer_logp, m)
  total = jnp.sum(logp, axis=-1)
  if kind == "logprob":
    r = total
  elif kind == "avg_logprob":
    r = aggregation.safe_divide(total, length)
  elif kind == "prob":
    r = jnp.exp(total)
  else:
    r = aggregation.safe_divide(jnp.sum(jnp.exp(logp) * m, axis=-1), length)
  return jnp.where(length > 0, r, jnp.asarray(empty_reward, r.dtype))


def rlpr_debiased(score_with_reasoning: Array, score_without: Array, *, format_reward: Array | None = None,
                  format_coef: float = 0.1) -> Array:
  """RLPR debiased probability reward, `threshold_0` shaping: clip(scoreB - scoreA, 0, 1).

  Args:
    score_with_reasoning: `[B]` scoreB, the mean answer-token probability after the CoT.
    score_without: `[B]` scoreA, the same with no reasoning (precomputed per prompt, broadcast).
    format_reward: optional `[B]`; if given the result is (1 - format_coef) r + format_coef f
      (RLPR: 0.9 r + 0.1 format).
    format_coef: weight of the format reward.

  Returns:
    `[B]`, in [0, 1] when the format reward is in [0, 1].
  """
  checks.check_rank("score_with_reasoning", score_with_reasoning, 1, "[B]")
  checks.check_shape("score_without", score_without, jnp.shape(score_with_reasoning), "score_with_reasoning")
  r = jnp.clip(score_with_reasoning - score_without, 0.0, 1.0)
  if format_reward is not None:
    checks.check_shape("format_reward", format_reward, jnp.shape(score_with_reasoning), "score_with_reasoning")
    r = (1.0 - format_coef) * r + format_coef * jnp.asarray(format_reward, r.dtype)
  return r


# ----------------------------------------------------------------------------- RLPR std filter


class StdFilterState(NamedTuple):
  """State of the EMA std filter (all scalars, so it jits and checkpoints as a pytree)."""
  step: Array  # int32, number of updates done
  ema: Array  # float32, EMA of the per-step mean group std (valid once `initialized`)
  initialized: Array  # bool
  warm_sum: Array  # float32, sum of per-step means recorded before the EMA starts
  warm_count: Array  # int32
  last_mean: Array  # float32, the previous step's mean group std


def std_filter_init() -> StdFilterState:
  """Initial state of the RLPR std filter."""
  return StdFilterState(step=jnp.zeros((), jnp.int32), ema=jnp.zeros((), jnp.float32),
                        initialized=jnp.zeros((), bool), warm_sum=jnp.zeros((), jnp.float32),
                        warm_count=jnp.zeros((), jnp.int32), last_mean=jnp.zeros((), jnp.float32))


def std_filter_update(state: StdFilterState, group_stds: Array, *, beta_f: float, ema: float = 0.99,
                      start_step: int = 11, ema_start_step: int = 6) -> tuple[StdFilterState, Array]:
  """One step of RLPR's EMA std filter (OpenBMB/RLPR `ray_trainer.py`, `filter_mode=EMA`).

  With this call's 1-based step t:
  - from `ema_start_step` on, the mean of this step's finite group stds is recorded (RLPR records
    the per-row stds of every generated group before filtering, NaN/inf excluded; with equal
    group sizes that is the mean over groups);
  - from `start_step` on, the EMA first absorbs the *previous* step's mean (it is initialised, at
    its first use, to the average of the recorded means of steps ema_start_step .. t-1; then
    ema <- ema_ratio ema + (1 - ema_ratio) last_mean), and a prompt is kept iff its group std
    >= beta_f * ema;
  - before `start_step` every prompt is kept.
  Pass the stds of every group generated at this step (before any filtering), as RLPR does.

  Args:
    state: from `std_filter_init` or the previous update.
    group_stds: `[N]` reward std of each prompt's group at this step.
    beta_f: threshold factor (0.5 Qwen, 0.9 Llama, 1.0 Gemma in RLPR).
    ema: EMA ratio (0.99).
    start_step: first step that filters (11).
    ema_start_step: first step whose mean is recorded (6).

  Returns:
    (new state, keep `[N]` bool).
  """
  checks.check_rank("group_stds", group_stds, 1, "[N] one std per prompt")
  if not 1 <= ema_start_step < start_step:
    raise ValueError(f"need 1 <= ema_start_step ({ema_start_step}) < start_step ({start_step})")
  stds = jnp.asarray(group_stds, jnp.float32)
  t = state.step + 1
  filtering = t >= start_step
  init_value = aggregation.safe_divide(state.warm_sum, state.warm_count.astype(jnp.float32))
  updated = ema * state.ema + (1.0 - ema) * state.last_mean
  new_ema = jnp.where(filtering, jnp.where(state.initialized, updated, init_value), state.ema)
  initialized = state.initialized | filtering
  keep = jnp.where(filtering, stds >= beta_f * new_ema, True)
  finite = jnp.isfinite(stds)
  mean = aggregation.masked_mean(jnp.where(finite, stds, 0.0), finite)
  record = (t >= ema_start_step) & jnp.any(finite)
  warm = record & ~initialized
  new_state = StdFilterState(
      step=t, ema=new_ema, initialized=initialized,
      warm_sum=jnp.where(warm, state.warm_sum + mean, state.warm_sum),
      warm_count=jnp.where(warm, state.warm_count + 1, state.warm_count),
      last_mean=jnp.where(record, mean, state.last_mean))
  return new_state, keep


# ----------------------------------------------------------------------------- JEPO


def jepo_group_reward(answer_logp_sums: Array) -> Array:
  """JEPO multi-sample Jensen bound per group: log (1/G) sum_i pi(a* | x, c_i).

  Args:
    answer_logp_sums: `[N, G]` log pi(a* | x, c_i) (summed over answer tokens) for G CoTs.

  Returns:
    `[N]` log-mean-exp over the group (stable).
  """
  checks.check_rank("answer_logp_sums", answer_logp_sums, 2, "[N prompts, G samples]")
  g = answer_logp_sums.shape[1]
  return jax.nn.logsumexp(answer_logp_sums, axis=-1) - jnp.log(jnp.asarray(g, answer_logp_sums.dtype))


def jepo_loo_baselines(answer_logp_sums: Array, *, multi_sample: bool = True) -> Array:
  """Leave-one-out baselines of JEPO.

  multi_sample=True: vtilde_i = log (1/(G-1)) sum_{j != i} pi(a* | x, c_j) (for the bound L^(G)).
  multi_sample=False: v_i = (1/(G-1)) sum_{j != i} log pi(a* | x, c_j) (single-sample bound).

  Args:
    answer_logp_sums: `[N, G]`, G >= 2.

  Returns:
    `[N, G]`.
  """
  checks.check_rank("answer_logp_sums", answer_logp_sums, 2, "[N prompts, G samples]")
  g = answer_logp_sums.shape[1]
  if g < 2:
    raise ValueError(f"answer_logp_sums needs G >= 2 samples per group for leave-one-out, got G={g}")
  x = answer_logp_sums
  if not multi_sample:
    return (jnp.sum(x, axis=-1, keepdims=True) - x) / (g - 1)
  others = jnp.where(jnp.eye(g, dtype=bool)[None], -jnp.inf, x[:, None, :])  # [N, G(i), G(j)]
  return jax.nn.logsumexp(others, axis=-1) - jnp.log(jnp.asarray(g - 1, x.dtype))


def jepo_advantages(answer_logp_sums: Array, *, multi_sample: bool = True) -> Array:
  """JEPO advantages of the CoT policy-gradient term, stop-gradiented, `[N, G]`.

  multi_sample=True: L_hat - vtilde_i with L_hat = `jepo_group_reward` (same for the group).
  multi_sample=False: log pi(a* | x, c_i) - v_i.
  """
  x = jax.lax.stop_gradient(answer_logp_sums)
  baselines = jepo_loo_baselines(x, multi_sample=multi_sample)
  own = jepo_group_reward(x)[:, None] if multi_sample else x
  return own - baselines


# ----------------------------------------------------------------------------- loss


def likelihood_loss(cot_logp: Array, cot_mask: Array, answer_logp: Array, answer_mask: Array, advantages: Array,
                    *, sft_coef: float = 1.0, sft_weights: Array | None = None) -> tuple[Array, dict]:
  """RL term on the chain of thought plus SFT term on the reference answer.

  L = (1/B) sum_i [ -sg(A_i) sum_t m^z_{i,t} log pi(z_{i,t})
                    - sft_coef sg(w_i) sum_t m^a_{i,t} log pi(a*_{i,t} | p, z_i) ]

  whose gradient is E[A grad log pi(z | p) + w grad log pi(a* | p, z)] (arXiv 2602.03979: w = 1;
  VeriFree's `sft_coef_source=reward`: w_i = R_i = pi(a* | p, z_i), pass it as `sft_weights`).
  Sums over tokens and a mean over rows, as in VeriFree's loss.

  Args:
    cot_logp: `[B, Tz]` policy log-probs of the sampled CoT tokens.
    cot_mask: `[B, Tz]`.
    answer_logp: `[B, Ta]` policy log-probs of the reference answer after the CoT.
    answer_mask: `[B, Ta]`.
    advantages: `[B]` (e.g. RLOO of `answer_reward`); the gradient is stopped.
    sft_coef: weight of the SFT term (0 disables it).
    sft_weights: optional `[B]` per-row SFT weights (stop-gradiented); default 1.
    Log-probs where their mask is 0, the advantage of a row without CoT tokens and the SFT weight
    of a row without answer tokens are ignored, whatever they hold (NaN and +-inf included); such
    rows still count among the B of the mean.

  Returns:
    (scalar loss, metrics) with `loss/policy`, `loss/sft`, `loss/total`.
  """
  checks.check_rank("cot_logp", cot_logp, 2, "[B, Tz]")
  checks.check_shape("cot_mask", cot_mask, jnp.shape(cot_logp), "cot_logp")
  checks.check_rank("answer_logp", answer_logp, 2, "[B, Ta]")
  checks.check_shape("answer_mask", answer_mask, jnp.shape(answer_logp), "answer_logp")
  b = jnp.shape(cot_logp)[0]
  if jnp.shape(answer_logp)[0] != b:
    raise ValueError(f"answer_logp must have the batch size of cot_logp ({b}), got shape {jnp.shape(answer_logp)}")
  checks.check_shape("advantages", advantages, (b,), "cot_logp[:, 0]")
  dtype = cot_logp.dtype
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, dtype))
  w = jnp.ones((b,), dtype) if sft_weights is None else jnp.asarray(sft_weights, dtype)
  if sft_weights is not None:
    checks.check_shape("sft_weights", sft_weights, (b,), "cot_logp[:, 0]")
  cot_m = jnp.asarray(cot_mask).astype(dtype)
  ans_m = jnp.asarray(answer_mask).astype(dtype)
  # Padding may hold anything (NaN, -inf), and so may the advantage of a row without CoT tokens
  # or the SFT weight of a row without answer tokens: replace them before any arithmetic.
  cot = jnp.sum(checks.fill_masked(cot_logp, cot_m) * cot_m, axis=-1)  # [B]
  ans = jnp.sum(checks.fill_masked(answer_logp, ans_m) * ans_m, axis=-1)  # [B]
  adv = checks.fill_masked(adv, jnp.any(cot_m > 0, axis=-1))
  w = jax.lax.stop_gradient(checks.fill_masked(w, jnp.any(ans_m > 0, axis=-1)))
  policy = -jnp.mean(adv * cot)
  sft = -jnp.mean(w * ans)
  total = policy + sft_coef * sft
  return total, {"loss/policy": policy, "loss/sft": sft, "loss/total": total}


@registry.register("likelihood", needs_reference=False)
def likelihood_objective(logp: Array, batch, *, rl_coef: float = 1.0, sft_coef: float = 1.0,
                         sft_weight: str = "one") -> tuple[Array, Array, dict[str, Array]]:
  """Registry entry: the RL term on the chain of thought plus the SFT term on the reference answer.

  sum = sum_i v_i [ -rl_coef sg(A_i) sum_t m^z_{i,t} logp_{i,t} - sft_coef sg(w_i) sum_t m^a_{i,t} logp_{i,t} ]
  denominator = sum_i v_i   (rows with a reward; all B without `batch["valid"]`)

  so the loss is `likelihood_loss` (VeriFree / arXiv 2602.03979: E[A grad log pi(z|p) + w grad
  log pi(a*|p,z)], sums over tokens, a mean over rows) with both terms read from one `[B, T]`
  array: the engine's likelihood reward (`jaxrl_reward.rewards.likelihood`) lays each row out as
  z || a*, with `mask` on z and `answer_mask` on a*. `A` is `[B]` (or `[B, T]`, per token);
  w = 1 (`sft_weight="one"`, the likelihood paper) or the row's reward (`"reward"`, VeriFree's
  `sft_coef_source=reward` with the probability reward). Plain REINFORCE on z: no ratio, so
  use it on-policy (`train.num_iterations` = 1).

  Args:
    logp: `[B, T]` policy log-probs of the spliced rows.
    batch: `mask`, `answer_mask` `[B, T]`, `advantages`, `rewards` (for sft_weight="reward"),
      optional `valid` `[B]`.
    rl_coef, sft_coef: weights of the two terms (rl_coef = 0: an SFT update on the answers).
    sft_weight: one of `SFT_WEIGHTS`.
  """
  if sft_weight not in SFT_WEIGHTS:
    raise ValueError(f"likelihood objective: sft_weight={sft_weight!r} is not one of {SFT_WEIGHTS}")
  for key in ("mask", "answer_mask", "advantages"):
    if key not in batch:
      hint = (" (set by the 'likelihood' reward: add it to config.rewards.names)" if key == "answer_mask" else "")
      raise KeyError(f"likelihood objective: batch is missing key {key!r}{hint}; got keys {sorted(batch)}")
  checks.check_rank("logp", logp, 2, "[B, T]")
  dtype = logp.dtype
  b = logp.shape[0]
  z_mask = jnp.asarray(batch["mask"]).astype(dtype)
  a_mask = jnp.asarray(batch["answer_mask"]).astype(dtype)
  checks.check_shape("batch['answer_mask']", a_mask, logp.shape, "logp")
  valid = jnp.ones((b,), dtype) if batch.get("valid") is None else jnp.asarray(batch["valid"]).astype(dtype)
  adv = jax.lax.stop_gradient(jnp.asarray(batch["advantages"], dtype))
  z_logp = checks.fill_masked(logp, z_mask) * z_mask
  if adv.ndim == 2:
    policy_rows = -jnp.sum(checks.fill_masked(adv, z_mask) * z_logp, axis=-1)
  else:
    policy_rows = -checks.fill_masked(adv, jnp.any(z_mask > 0, axis=-1)) * jnp.sum(z_logp, axis=-1)
  if sft_weight == "reward":
    w = jax.lax.stop_gradient(jnp.asarray(batch["rewards"], dtype))
    checks.check_shape("batch['rewards']", w, (b,), "logp[:, 0]")
  else:
    w = jnp.ones((b,), dtype)
  answer_sum = jnp.sum(checks.fill_masked(logp, a_mask) * a_mask, axis=-1)
  sft_rows = -checks.fill_masked(w, jnp.any(a_mask > 0, axis=-1)) * answer_sum
  total = jnp.sum(valid * (rl_coef * policy_rows + sft_coef * sft_rows))
  rows = jnp.sum(valid)
  metrics = {"loss/policy": aggregation.safe_divide(jnp.sum(valid * policy_rows), rows),
             "loss/sft": aggregation.safe_divide(jnp.sum(valid * sft_rows), rows),
             "stats/answer_logp": aggregation.masked_mean(answer_sum, valid * jnp.any(a_mask > 0, axis=-1))}
  return total, rows, metrics
