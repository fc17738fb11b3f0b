"""Reward Difference Prediction (RDP) and its proximal variant (PRDP).

Deng et al., "PRDP: Proximal Reward Difference Prediction for Large-Scale Reward Finetuning of
Diffusion Models", CVPR 2024 (arXiv 2402.08714).

RDP turns KL-regularised reward maximisation

    max E_c E_{xbar ~ pi_theta}[r(x_0, c)] - beta KL[pi_theta(xbar | c) || pi_ref(xbar | c)]

(xbar = the whole trajectory x_{0:T}) into supervised regression: with the implicit reward
rhat_theta(xbar) = sum_t [log pi_theta(x_{t-1} | x_t) - log pi_ref(x_{t-1} | x_t)], every pair
(a, b) of trajectories for the same prompt gives

    l = ([rhat(a) - rhat(b)] - [r(a) - r(b)] / beta)^2,

and the loss is the mean of l over all pairs i < j of the same prompt. The loss is 0 if and only
if pi_theta = pi_ref exp(r / beta) / Z (Theorem 4.1 of the paper).

PRDP clips each step's log-ratio to [old_t - eps, old_t + eps] (old_t = log pi_old - log pi_ref at
that step) and takes max(l, l_clip), the pessimistic bound of PPO applied to a regression loss.

Layout: N prompts, B trajectories per prompt, T steps. Per-step arrays are `[N, B, T]` (diffusion
denoising steps or language-model tokens), rewards `[N, B]`.

`reduce_steps` ("mean" or "sum") chooses how step log-ratios make rhat:
- "sum" is the paper's definition (rhat = log pi_theta(xbar) / pi_ref(xbar)); its optimum is
  pi_ref exp(r / beta) / Z.
- "mean" (default) follows the paper's Appendix G JAX code, which averages over T. For T equal
  valid steps this is "sum" with beta replaced by beta / T, i.e. the optimum is
  pi_ref exp(T r / beta) / Z; the paper's beta values (3e-5 ... 3e-6) are for this normalisation.

`pairs` chooses which pairs are averaged:
- "all" (default): every unordered pair i < j of the same prompt, the paper's L = 1/(N C(B, 2))
  sum_n sum_{i<j} l.
- "reward_diff_positive": the ordered pairs with r_i - r_j > 0, as in the Appendix G code
  (`mean(..., where=reward_diffs > 0)`). l is symmetric under swapping i and j (both differences
  flip sign, the square does not), so when rewards within a prompt are distinct this is exactly
  the same set of unordered pairs and the same loss. It differs only on ties r_i = r_j: those
  pairs are dropped, although they still carry information (they ask rhat_i = rhat_j).

Trajectories whose mask is all zero are treated as absent: every pair that contains one is
dropped, so padding a prompt's group with empty rows changes nothing. The loss is the sum of l
over the kept pairs divided by their number (0 if there is none). Values at masked steps and the
rewards of absent trajectories are ignored whatever they hold (NaN and +-inf included): they are
replaced before any arithmetic, and get a zero gradient.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from objectives import aggregation, checks, registry

Array = jax.Array

REDUCE_STEPS = ("mean", "sum")
PAIRS = ("all", "reward_diff_positive")


def _check_options(beta: float, reduce_steps: str, pairs: str) -> None:
  if reduce_steps not in REDUCE_STEPS:
    raise ValueError(f"reduce_steps={reduce_steps!r} is not one of {REDUCE_STEPS}")
  if pairs not in PAIRS:
    raise ValueError(f"pairs={pairs!r} is not one of {PAIRS}")
  if not isinstance(beta, (jax.Array,)) and not float(beta) > 0:
    raise ValueError(f"beta must be > 0, got {beta!r}")


def _check_clip_eps(clip_eps) -> None:
  if not isinstance(clip_eps, jax.Array) and not float(clip_eps) >= 0:
    raise ValueError(f"clip_eps must be >= 0, got {clip_eps!r}")


def reduce_log_ratios(log_ratios: Array, mask: Array, *, reduce_steps: str = "mean") -> Array:
  """Implicit reward rhat from per-step log-ratios: masked sum or masked mean over the last axis.

  Args:
    log_ratios: `[..., T]` per-step log pi_theta - log pi_ref.
    mask: `[..., T]`, 1 on real steps; `log_ratios` is ignored elsewhere (NaN and inf included).
    reduce_steps: "sum" (the paper's definition) or "mean" (the paper's Appendix G code).

  Returns:
    `[...]`; 0 where the mask is all zero.
  """
  if reduce_steps not in REDUCE_STEPS:
    raise ValueError(f"reduce_steps={reduce_steps!r} is not one of {REDUCE_STEPS}")
  log_ratios = checks.fill_masked(log_ratios, mask)  # padding may hold NaN or inf
  mask = mask.astype(log_ratios.dtype)
  total = jnp.sum(log_ratios * mask, axis=-1)
  if reduce_steps == "sum":
    return total
  return aggregation.safe_divide(total, jnp.sum(mask, axis=-1))


def pair_weights(rewards: Array, valid: Array, *, pairs: str = "all", same_group: Array | None = None) -> Array:
  """Which (i, j) pairs enter the loss, as a `[N, B, B]` 0/1 array (row i, column j).

  Args:
    rewards: `[N, B]`.
    valid: `[N, B]` bool, False for absent trajectories (their rewards are ignored).
    pairs: "all" (i < j) or "reward_diff_positive" (r_i - r_j > 0).
    same_group: optional `[N, B, B]` bool restricting pairs further (e.g. same prompt id).
  """
  b = rewards.shape[-1]
  valid = jnp.asarray(valid).astype(bool)
  rewards = checks.fill_masked(rewards, valid)  # an absent trajectory's reward may be anything
  both = valid[..., :, None] & valid[..., None, :]  # [N, B, B]
  if pairs == "all":
    chosen = jnp.triu(jnp.ones((b, b), dtype=bool), k=1)[None]
  elif pairs == "reward_diff_positive":
    chosen = (rewards[..., :, None] - rewards[..., None, :]) > 0
  else:
    raise ValueError(f"pairs={pairs!r} is not one of {PAIRS}")
  w = both & chosen
  if same_group is not None:
    w = w & same_group
  return w.astype(rewards.dtype)


def _pair_loss(rhat: Array, rewards: Array, beta) -> Array:
  """`[N, B, B]` squared error of (rhat_i - rhat_j) - (r_i - r_j) / beta."""
  d = rhat[..., :, None] - rhat[..., None, :]
  target = (rewards[..., :, None] - rewards[..., None, :]) / beta
  return jnp.square(d - target)


def _check_inputs(logp, ref_logp, rewards, mask, old_logp=None) -> None:
  checks.check_rank("logp", logp, 3, "[N prompts, B samples, T steps]")
  checks.check_shape("ref_logp", ref_logp, jnp.shape(logp), "logp")
  checks.check_shape("mask", mask, jnp.shape(logp), "logp")
  if old_logp is not None:
    checks.check_shape("old_logp", old_logp, jnp.shape(logp), "logp")
  checks.check_rank("rewards", rewards, 2, "[N prompts, B samples]")
  checks.check_shape("rewards", rewards, jnp.shape(logp)[:2], "logp[:, :, 0]")


def _loss_terms(logp, ref_logp, rewards, mask, *, beta, reduce_steps, pairs, old_logp=None,
                clip_eps=None, same_group=None, name="rdp"):
  dtype = logp.dtype
  maskf = jnp.asarray(mask).astype(dtype)
  valid = jnp.sum(maskf, axis=-1) > 0  # [N, B]
  # Padding (e.g. a -inf ref_logp) and the rewards of absent trajectories may hold anything:
  # replace them before any arithmetic so that neither the loss nor the gradient sees them.
  logp, ref_logp = checks.fill_masked(logp, maskf), checks.fill_masked(ref_logp, maskf)
  rewards = checks.fill_masked(jnp.asarray(rewards, dtype), valid)
  log_ratio = (logp - ref_logp) * maskf  # [N, B, T]
  rhat = reduce_log_ratios(log_ratio, maskf, reduce_steps=reduce_steps)  # [N, B]
  w = pair_weights(rewards, valid, pairs=pairs, same_group=same_group)  # [N, B, B]
  loss = _pair_loss(rhat, rewards, beta)  # [N, B, B]
  metrics: dict[str, Array] = {}
  if old_logp is not None:
    old_logp = checks.fill_masked(old_logp, maskf)
    old_ratio = jax.lax.stop_gradient((old_logp - ref_logp) * maskf)
    clipped = jnp.clip(log_ratio, old_ratio - clip_eps, old_ratio + clip_eps) * maskf  # [N, B, T]
    rhat_clip = reduce_log_ratios(clipped, maskf, reduce_steps=reduce_steps)
    loss_clip = _pair_loss(rhat_clip, rewards, beta)
    metrics["stats/clip_frac"] = aggregation.safe_divide(jnp.sum(w * (loss_clip > loss)), jnp.sum(w))
    step_clipped = (jnp.abs(log_ratio - old_ratio) > clip_eps).astype(dtype) * maskf
    metrics["stats/step_clip_frac"] = aggregation.safe_divide(jnp.sum(step_clipped), jnp.sum(maskf))
    loss = jnp.maximum(loss, loss_clip)
  total = jnp.sum(loss * w)
  den = jnp.sum(w)
  validf = valid.astype(dtype)
  metrics[f"loss/{name}"] = aggregation.safe_divide(total, den)
  metrics["stats/implicit_reward_mean"] = aggregation.safe_divide(jnp.sum(rhat * validf), jnp.sum(validf))
  metrics["stats/num_pairs"] = den
  return total, den, metrics


def rdp_loss_terms(logp: Array, ref_logp: Array, rewards: Array, mask: Array, *, beta: float,
                   reduce_steps: str = "mean", pairs: str = "all") -> tuple[Array, Array, dict]:
  """RDP loss as a `(sum over pairs, number of pairs, metrics)` triple; see `rdp_loss`."""
  _check_inputs(logp, ref_logp, rewards, mask)
  _check_options(beta, reduce_steps, pairs)
  return _loss_terms(logp, ref_logp, rewards, mask, beta=beta, reduce_steps=reduce_steps, pairs=pairs)


def rdp_loss(logp: Array, ref_logp: Array, rewards: Array, mask: Array, *, beta: float,
             reduce_steps: str = "mean", pairs: str = "all") -> tuple[Array, dict]:
  """Reward Difference Prediction loss (arXiv 2402.08714, Eq. 7-8).

  L = 1/|P| sum_{(n,i,j) in P} ( [rhat_{n,i} - rhat_{n,j}] - [r_{n,i} - r_{n,j}] / beta )^2,
  rhat_{n,i} = sum_t or mean_t of m_t (logp - ref_logp)  (`reduce_steps`).

  Args:
    logp: `[N, B, T]` per-step log pi_theta of the sampled steps (carries the gradient).
    ref_logp: `[N, B, T]` per-step log pi_ref.
    rewards: `[N, B]` reward of each trajectory.
    mask: `[N, B, T]`, 1 on real steps; all-zero rows are absent trajectories.
    beta: KL coefficient (> 0).
    reduce_steps: "mean" (default, Appendix G code) or "sum" (paper's definition).
    pairs: "all" (i < j, default) or "reward_diff_positive" (Appendix G code); see module doc.

  Returns:
    (scalar loss, metrics) with `loss/rdp`, `stats/implicit_reward_mean`, `stats/num_pairs`.
  """
  total, den, metrics = rdp_loss_terms(logp, ref_logp, rewards, mask, beta=beta,
                                       reduce_steps=reduce_steps, pairs=pairs)
  return aggregation.safe_divide(total, den), metrics


def prdp_loss_terms(logp: Array, old_logp: Array, ref_logp: Array, rewards: Array, mask: Array, *,
                    beta: float, clip_eps: float, reduce_steps: str = "mean",
                    pairs: str = "all") -> tuple[Array, Array, dict]:
  """PRDP loss as a `(sum over pairs, number of pairs, metrics)` triple; see `prdp_loss`."""
  _check_inputs(logp, ref_logp, rewards, mask, old_logp=old_logp)
  _check_options(beta, reduce_steps, pairs)
  _check_clip_eps(clip_eps)
  return _loss_terms(logp, ref_logp, rewards, mask, beta=beta, reduce_steps=reduce_steps, pairs=pairs,
                     old_logp=old_logp, clip_eps=clip_eps, name="prdp")


def prdp_loss(logp: Array, old_logp: Array, ref_logp: Array, rewards: Array, mask: Array, *,
              beta: float, clip_eps: float, reduce_steps: str = "mean",
              pairs: str = "all") -> tuple[Array, dict]:
  """Proximal RDP loss (arXiv 2402.08714, Eq. 9-10 and Appendix G).

  Per step, rclip_t = clip(rhat_t, rold_t - eps, rold_t + eps) with rhat_t = logp_t - ref_logp_t
  and rold_t = sg(old_logp_t - ref_logp_t); l_clip is l computed from the reduced rclip, and the
  loss is the pair mean of max(l, l_clip). When logp == old_logp it equals `rdp_loss`.

  Args:
    logp, old_logp, ref_logp: `[N, B, T]` per-step log-probs under pi_theta, the sampling
      snapshot pi_old and pi_ref.
    rewards: `[N, B]`.
    mask: `[N, B, T]`.
    beta: KL coefficient (> 0).
    clip_eps: eps of the per-step clip (paper: 1e-6 small-scale, 1e-4 large-scale).
    reduce_steps, pairs: as in `rdp_loss`.

  Returns:
    (scalar loss, metrics) with `loss/prdp`, `stats/clip_frac` (pairs where the clipped branch
    is larger), `stats/step_clip_frac`, `stats/implicit_reward_mean`, `stats/num_pairs`.
  """
  total, den, metrics = prdp_loss_terms(logp, old_logp, ref_logp, rewards, mask, beta=beta,
                                        clip_eps=clip_eps, reduce_steps=reduce_steps, pairs=pairs)
  return aggregation.safe_divide(total, den), metrics


# ----------------------------------------------------------------------------- registry


def _flat_batch_terms(logp, batch: Mapping[str, Any], *, beta, reduce_steps, pairs, clip_eps, name):
  """Registered form on a flat batch `[B, T]`: pairs are rows with the same `batch["group_ids"]`.

  The rows may come in any order. A micro-batch of the engine always holds whole groups, so
  every pair of the full batch is formed in exactly one micro-batch and the summed (loss,
  #pairs) equal the whole batch's.
  """
  checks.check_rank("logp", logp, 2, "[B, T]")
  for key in ("ref_logp", "group_ids", "rewards", "mask"):
    if key not in batch:
      raise KeyError(f"objective {name!r} needs batch[{key!r}]; got keys {sorted(batch)}")
  b = logp.shape[0]
  gid = jnp.asarray(batch["group_ids"])
  checks.check_shape("batch['group_ids']", gid, (b,), "logp[:, 0]")
  same_group = (gid[:, None] == gid[None, :])[None]  # [1, B, B]
  rewards = jnp.asarray(batch["rewards"])
  checks.check_shape("batch['rewards'] (one reward per trajectory)", rewards, (b,), "logp[:, 0]")
  _check_options(beta, reduce_steps, pairs)
  if clip_eps is not None:
    _check_clip_eps(clip_eps)
  expand = lambda x: jnp.asarray(x)[None]  # noqa: E731  [1, B, T]
  old = expand(batch["old_logp"]) if clip_eps is not None else None
  return _loss_terms(expand(logp), expand(batch["ref_logp"]), rewards[None], expand(batch["mask"]),
                     beta=beta, reduce_steps=reduce_steps, pairs=pairs, old_logp=old, clip_eps=clip_eps,
                     same_group=same_group, name=name)


# Option defaults: the paper's small-scale setting (Table 4: beta 3e-5, eps 1e-6, with the
# Appendix G mean over steps). They are scaled for diffusion steps, whose per-step
# log-ratios are small; for token-level language models a beta near 0.1 is the usual scale.


@registry.register("rdp", needs_reference=True)
def rdp_objective(logp, batch, *, beta=3e-5, reduce_steps="mean", pairs="all"):
  """Registered RDP: `fn(logp [B, T], batch) -> (sum, #pairs, metrics)`.

  Reads `batch["ref_logp"|"rewards"|"group_ids"|"mask"]`; see `rdp_loss`.
  """
  return _flat_batch_terms(logp, batch, beta=beta, reduce_steps=reduce_steps, pairs=pairs, clip_eps=None,
                           name="rdp")


@registry.register("prdp", needs_reference=True)
def prdp_objective(logp, batch, *, beta=3e-5, clip_eps=1e-6, reduce_steps="mean", pairs="all"):
  """Registered PRDP: like "rdp", with the per-step clip around `batch["old_logp"]` (`prdp_loss`)."""
  return _flat_batch_terms(logp, batch, beta=beta, reduce_steps=reduce_steps, pairs=pairs, clip_eps=clip_eps,
                           name="prdp")
