"""Implicit process reward model (PRM): process rewards from an outcome-trained log-ratio.

Yuan et al., "Free Process Rewards without Process Labels" (arXiv 2412.01981; code
PRIME-RL/ImplicitPRM). Parameterise the outcome reward as r_theta(y) = beta log pi_theta(y) /
pi_ref(y); then

    q^t = sum_{i <= t} beta log pi_theta(y_i | y_<i) / pi_ref(y_i | y_<i)
        = beta log E_{pi_ref}[exp(r_theta(y) / beta) | y_<=t]

is a Q-value, and the process reward of step k (tokens between two step ends) is
r^k = q^{end_k} - q^{end_{k-1}}, the sum of the token rewards of that step. Training the PRM needs
only outcome labels: `ce_loss` (binary cross-entropy on sigma(r_theta(y))), `dpo_loss` or `kto_loss`.

Shapes: responses `[B, T]` (right-padded, `mask` 1 on real tokens); steps `[B, S]`.

Step boundaries are given either as a `[B, T]` mask that is 1 at the last token of each step
(`step_end_mask`) or as `[B, S]` indices padded with -1 (`step_end_mask_from_indices`). Tokens
after the last step end belong to no step.

Step-score aggregation (`step_scores(..., aggregate=)`):
- "min" (default): min over the step rewards r^k. The sheet for the paper's Best-of-N evaluation
  (`bon_eval.py`) reads "min over steps" of the step reward r^k = q^k - q^{k-1}; the evaluation
  script itself is not in the stored copy of the repository, so this reading is not verified
  against code. The EurusPRM model card reads out the cumulative q at step ends instead: that is
  `aggregate="min_q"`.
- "min_q": min over the cumulative q^k at the step ends.
- "sum": sum of the step rewards, which telescopes to q at the last step end.
- "last": q at the last step end (the same number as "sum"; kept as a name users look for).
Rows with no step score 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from objectives import aggregation, checks, dpo, registry

Array = jax.Array

AGGREGATES = ("min", "min_q", "sum", "last")




def _check_beta(beta) -> None:
  if not isinstance(beta, jax.Array) and not float(beta) > 0:
    raise ValueError(f"beta must be > 0, got {beta!r}")


def token_rewards(logp: Array, ref_logp: Array | None, mask: Array, *, beta: float) -> Array:
  """Per-token implicit rewards beta (log pi_theta - log pi_ref), 0 on padding.

  Args:
    logp: `[B, T]` log pi_theta (the PRM) of the response tokens.
    ref_logp: `[B, T]` log pi_ref, or None for the "without reference" variant of the paper's
      ablation (reward beta log pi_theta, i.e. a uniform-in-effect reference).
    mask: `[B, T]`; logp and ref_logp are ignored where it is 0, whatever they hold there (a -inf
      or NaN log-prob of padding included): the reward there is 0, with a zero gradient.
    beta: the PRM's beta (0.05 in the paper's recipes).

  Returns:
    `[B, T]`.
  """
  checks.check_rank("logp", logp, 2, "[B, T]")
  checks.check_shape("mask", mask, jnp.shape(logp), "logp")
  if ref_logp is not None:
    checks.check_shape("ref_logp", ref_logp, jnp.shape(logp), "logp")
  _check_beta(beta)
  logp = checks.fill_masked(logp, mask)  # before any arithmetic: inf * 0 is NaN
  ratio = logp if ref_logp is None else logp - checks.fill_masked(ref_logp, mask)
  return beta * ratio * jnp.asarray(mask).astype(logp.dtype)


def step_end_mask_from_indices(step_end_indices: Array, length: int) -> Array:
  """`[B, S]` step-end token indices (-1 = no step) -> `[B, T]` bool step-end mask, T = `length`."""
  checks.check_rank("step_end_indices", step_end_indices, 2, "[B, S] with -1 padding")
  idx = jnp.asarray(step_end_indices)
  if not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"step_end_indices must be integers, got dtype {idx.dtype}")
  idx = jnp.where(idx >= 0, idx, length)  # padding -> out of range -> dropped by the scatter
  rows = jnp.arange(idx.shape[0])[:, None]
  return jnp.zeros((idx.shape[0], length), bool).at[rows, idx].set(True, mode="drop")


def _step_q(token_rewards_: Array, step_end_mask: Array, max_steps: int | None) -> tuple[Array, Array]:
  """(q [B, S] at the step ends in order, step_mask [B, S] bool)."""
  checks.check_rank("token_rewards", token_rewards_, 2, "[B, T]")
  checks.check_shape("step_end_mask", step_end_mask, jnp.shape(token_rewards_), "token_rewards")
  t = token_rewards_.shape[1]
  s = t if max_steps is None else int(max_steps)
  if not 1 <= s <= t:
    raise ValueError(f"max_steps must be in [1, T={t}], got {max_steps!r}")
  ends = jnp.asarray(step_end_mask).astype(bool)
  # Tokens after a row's last step end belong to no step: drop whatever they hold (e.g. NaN
  # padding) before the cumulative sum.
  in_step = jnp.flip(jnp.cumsum(jnp.flip(ends, -1).astype(jnp.int32), axis=-1), -1) > 0  # [B, T]
  q_all = jnp.cumsum(checks.fill_masked(token_rewards_, in_step), axis=-1)  # [B, T]
  positions = jnp.arange(t)
  # Stable order: step ends first, in position order, then all other positions.
  order = jnp.argsort(jnp.where(ends, positions, t + positions), axis=-1)[:, :s]  # [B, S]
  q = jnp.take_along_axis(q_all, order, axis=-1)
  step_mask = jnp.take_along_axis(ends, order, axis=-1)
  return jnp.where(step_mask, q, 0.0), step_mask


def step_rewards(token_rewards: Array, step_end_mask: Array, *, max_steps: int | None = None) -> tuple[Array, Array]:
  """Step rewards r^k = q^k - q^{k-1} (q^0 = 0): the sum of the token rewards in each step.

  Args:
    token_rewards: `[B, T]` from `token_rewards`; entries after a row's last step end belong to no
      step and are ignored, whatever they hold.
    step_end_mask: `[B, T]`, 1 at the last token of each step.
    max_steps: S, the number of step slots (static); default T. Steps beyond S are dropped.

  Returns:
    (rewards `[B, S]`, step_mask `[B, S]` bool), rewards 0 where there is no step.
  """
  q, step_mask = _step_q(token_rewards, step_end_mask, max_steps)
  prev = jnp.concatenate([jnp.zeros_like(q[:, :1]), q[:, :-1]], axis=1)
  return jnp.where(step_mask, q - prev, 0.0), step_mask


def step_scores(token_rewards: Array, step_end_mask: Array, *, aggregate: str = "min",
                max_steps: int | None = None) -> tuple[Array, Array]:
  """Q-values at step ends and an aggregated response score.

  Args:
    token_rewards: `[B, T]` from `token_rewards`; entries after a row's last step end are ignored.
    step_end_mask: `[B, T]`, 1 at the last token of each step (see `step_end_mask_from_indices`).
    aggregate: one of `AGGREGATES` (see module docstring); "min" by default.
    max_steps: S (static), default T.

  Returns:
    (q `[B, S]`: cumulative implicit reward at the k-th step end, 0 where there is no step;
     score `[B]`: 0 for rows without steps).
  """
  if aggregate not in AGGREGATES:
    raise ValueError(f"aggregate={aggregate!r} is not one of {AGGREGATES}")
  q, step_mask = _step_q(token_rewards, step_end_mask, max_steps)
  has_step = jnp.any(step_mask, axis=-1)
  if aggregate in ("sum", "last"):
    num = jnp.sum(step_mask.astype(jnp.int32), axis=-1)
    last = jnp.take_along_axis(q, jnp.maximum(num - 1, 0)[:, None], axis=-1)[:, 0]
    return q, jnp.where(has_step, last, 0.0)
  if aggregate == "min_q":
    values = q
  else:
    prev = jnp.concatenate([jnp.zeros_like(q[:, :1]), q[:, :-1]], axis=1)
    values = q - prev
  big = jnp.asarray(jnp.finfo(q.dtype).max, q.dtype)
  score = jnp.min(jnp.where(step_mask, values, big), axis=-1)
  return q, jnp.where(has_step, score, 0.0)


def sequence_rewards(logp: Array, ref_logp: Array | None, mask: Array, *, beta: float) -> Array:
  """`[B]` outcome reward r_theta(y) = beta sum_t m_t (logp - ref_logp)."""
  return jnp.sum(token_rewards(logp, ref_logp, mask, beta=beta), axis=-1)


def ce_loss(logp: Array, ref_logp: Array | None, mask: Array, labels: Array, *, beta: float,
            label_balance: bool = False) -> tuple[Array, dict]:
  """Cross-entropy implicit-PRM loss (ImplicitPRM `ce_trainer.py`; PRIME `compute_ce_dpo_loss_rm`).

  L = mean_b BCE(sigma(r_theta(y_b)), l_b) = -mean_b [l log sigma(r) + (1 - l) log sigma(-r)],
  r = beta sum_t m_t (logp - ref_logp), computed from logits (stable for large |r|), the mean over
  the rows with at least one token: a row without tokens (a padded row, or a group that PRIME's
  accuracy filter took out) is absent, as PRIME drops the filtered samples from the batch.

  Args:
    logp, ref_logp, mask: `[B, T]` (ref_logp may be None, see `token_rewards`); values where the
      mask is 0 are ignored, whatever they hold.
    labels: `[B]` outcome labels in [0, 1] (soft labels allowed). Concrete labels outside [0, 1]
      raise ValueError; traced labels (under `jax.jit`) cannot be checked, and one outside [0, 1]
      then makes the loss unbounded below. The label of a row without tokens is ignored (the
      row adds nothing and counts in no mean).
    beta: PRM beta (0.05 in PRIME and ImplicitPRM).
    label_balance: weight the classes equally (`class_weights`): with most samples wrong, the
      plain mean is minimised by a uniform downward drift of log pi / pi_ref (a length
      penalty), which a class-balanced loss does not reward. Off by default (the papers' loss).

  Returns:
    (scalar loss, metrics) with `loss/prm_ce`, `stats/prm_reward_mean`, `stats/prm_accuracy`
    (sign of r agrees with the label, labels thresholded at 0.5).
  """
  total, den, metrics = ce_loss_terms(logp, ref_logp, mask, labels, beta=beta, label_balance=label_balance)
  return aggregation.safe_divide(total, den), metrics


def _has_tokens(mask) -> Array:
  """`[B]` bool, True for the rows with at least one unmasked token."""
  return jnp.any(jnp.asarray(mask) > 0, axis=-1)


def class_weights(labels: Array, present: Array) -> tuple[Array, Array]:
  """(w_pos, w_neg): per-class weights that give each class present an equal total weight.

  Over the N rows with tokens, n_+ = sum_b l_b and n_- = sum_b (1 - l_b) (soft labels count
  fractionally) and K = the number of classes with n_c > 0; then w_c = N / (K n_c), so that
  w_+ n_+ = w_- n_- = N / 2 when both classes are present, and the weights sum to N (the loss's
  denominator) in every case: a batch of one class is weighted 1. The weighted CE is

      L = (1/N) sum_b -[w_+ l_b log sigma(r_b) + w_- (1 - l_b) log sigma(-r_b)]
        = 1/2 (mean BCE over the positives) + 1/2 (mean BCE over the negatives)   (hard labels).

  The weights are functions of the labels only (no gradient) and of the batch the loss sees: the
  reward-model stage therefore refuses them with more than one micro-batch (`train.grad_accum_steps`).
  """
  p = present.astype(labels.dtype)
  n = jnp.sum(p)
  pos, neg = jnp.sum(labels * p), jnp.sum((1.0 - labels) * p)
  classes = (pos > 0).astype(labels.dtype) + (neg > 0).astype(labels.dtype)
  weight = lambda count: jnp.where(count > 0, n / jnp.maximum(classes * count, 1e-12), 0.0)  # noqa: E731
  return weight(pos), weight(neg)


def ce_loss_terms(logp, ref_logp, mask, labels, *, beta, label_balance: bool = False):
  """`ce_loss` as (sum over the sequences with tokens, their number, metrics); with
  `label_balance` the terms are weighted by `class_weights` (the number is unchanged)."""
  r = sequence_rewards(logp, ref_logp, mask, beta=beta)  # [B]
  checks.check_shape("labels", labels, r.shape, "logp[:, 0]")
  present = _has_tokens(mask)
  # Checked only when concrete (not under jit), and only on the rows whose label is used.
  checks.check_unit_interval("labels (outcome labels of the CE loss)", labels, where=present)
  labels = jnp.asarray(labels).astype(r.dtype)
  # A row without tokens is absent: drop its label (which may be NaN for a padded row) before
  # it meets the arithmetic, and its term.
  loss_labels = checks.fill_masked(labels, present)
  p = present.astype(r.dtype)
  w_pos, w_neg = class_weights(loss_labels, present) if label_balance else (1.0, 1.0)
  per_seq = -(w_pos * loss_labels * jax.nn.log_sigmoid(r) + w_neg * (1.0 - loss_labels) * jax.nn.log_sigmoid(-r))
  total = jnp.sum(per_seq * p)
  den = jnp.sum(p)
  rs = jax.lax.stop_gradient(r)
  mean = lambda x: aggregation.safe_divide(jnp.sum(x * p), den)  # noqa: E731  over present rows
  metrics = {
      "loss/prm_ce": mean(per_seq),
      "stats/prm_reward_mean": mean(rs),
      "stats/prm_accuracy": mean(((rs > 0) == (labels > 0.5)).astype(r.dtype)),
  }
  return total, den, metrics


def dpo_loss(chosen_logp: Array, chosen_ref_logp: Array, chosen_mask: Array, rejected_logp: Array,
             rejected_ref_logp: Array, rejected_mask: Array, *, beta: float) -> tuple[Array, dict]:
  """DPO implicit-PRM loss: -mean log sigma(beta [log ratio(y_w) - log ratio(y_l)]).

  Args:
    chosen_logp, chosen_ref_logp, chosen_mask: `[B, T]` per-token log-probs of the preferred
      (correct) responses under the PRM and the reference, and their mask (log-probs where it is
      0 are ignored, whatever they hold).
    rejected_logp, rejected_ref_logp, rejected_mask: `[B, T']` for the rejected responses.
    beta: PRM beta.

  Returns:
    (scalar loss, metrics) from `objectives.dpo.loss` with loss_type "sigmoid".
  """
  for name, x, m in (("chosen_logp", chosen_logp, chosen_mask), ("rejected_logp", rejected_logp, rejected_mask)):
    checks.check_rank(name, x, 2, "[B, T]")
    checks.check_shape(name.replace("logp", "mask"), m, jnp.shape(x), name)
  checks.check_shape("chosen_ref_logp", chosen_ref_logp, jnp.shape(chosen_logp), "chosen_logp")
  checks.check_shape("rejected_ref_logp", rejected_ref_logp, jnp.shape(rejected_logp), "rejected_logp")
  if jnp.shape(chosen_logp)[0] != jnp.shape(rejected_logp)[0]:
    raise ValueError(f"chosen_logp and rejected_logp must have the same batch size B, got "
                     f"{jnp.shape(chosen_logp)} and {jnp.shape(rejected_logp)}")
  def seq(x, m):  # padding may hold anything (e.g. -inf reference log-probs): replaced before summing
    m = jnp.asarray(m).astype(jnp.result_type(x))
    return jnp.sum(checks.fill_masked(x, m) * m, axis=-1)

  return dpo.loss(seq(chosen_logp, chosen_mask), seq(chosen_ref_logp, chosen_mask),
                  seq(rejected_logp, rejected_mask), seq(rejected_ref_logp, rejected_mask),
                  beta=beta, loss_type="sigmoid")


def kto_loss(logp: Array, ref_logp: Array | None, mask: Array, labels: Array, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             kl_reference: Array | float | None = None) -> tuple[Array, dict]:
  """KTO implicit-PRM loss (Ethayarajh et al., arXiv 2402.01306, Eq. 7; one of ImplicitPRM's losses).

  With the log-ratio rho_b = sum_t m_t (logp - ref_logp) of response b, the implicit reward
  r_b = beta rho_b and a reference point z0 = beta KL (KL in nats, no gradient):

      L = (1/B) sum_b [ l_b w_d (1 - sigma(r_b - z0)) + (1 - l_b) w_u (1 - sigma(z0 - r_b)) ],

  i.e. TRL's `KTOTrainer.kto_loss` with `loss_type="kto"`: 1 - sigma(beta (rho - KL)) for the
  desirable and 1 - sigma(beta (KL - rho)) for the undesirable responses, each weighted, then one
  mean over all B responses (`losses.mean()` of the concatenation, not a mean per class).

  Responses without tokens (all-zero mask rows) are absent: they add nothing, count in no mean
  (B above is the number of responses with tokens) and their labels are ignored, so padding a
  batch with empty rows changes nothing. (Counted, an empty row would add a constant that
  depends on its label alone.)

  The KL reference point:
  - `kl_reference=None`: KL = max(mean_b rho_b, 0) over this batch's responses, stop-gradiented.
    TRL takes the same clamped, detached mean, but over *mismatched* pairs (each prompt with the
    completion of another prompt of the batch, its "KL dataset") and all-gathered over devices.
    The in-batch default is the simpler estimate of the same quantity E[log pi / pi_ref] under
    the data; it differs from TRL's, and it is per (micro-)batch.
  - `kl_reference` given: that scalar KL (nats, the units of rho) is used as is, stop-gradiented
    and not clamped; pass TRL's mismatched-pair estimate `max(mean rho_KL, 0)` here to reproduce
    it exactly, or 0 for a fixed reference point.

  Args:
    logp, ref_logp, mask: `[B, T]` (ref_logp may be None, see `token_rewards`); values where the
      mask is 0 are ignored, whatever they hold.
    labels: `[B]` outcome labels: 1 / True = desirable (correct), 0 / False = undesirable;
      numeric labels are thresholded at 0.5.
    beta: PRM beta (> 0).
    desirable_weight, undesirable_weight: w_d, w_u (>= 0); KTO recommends
      w_d n_d / (w_u n_u) in [1, 4/3] for class counts n_d, n_u.
    kl_reference: optional scalar reference KL (see above).

  Returns:
    (scalar loss, metrics) with `loss/prm_kto`, `stats/prm_kl` (the KL used, nats),
    `stats/prm_reward_mean`, `stats/prm_reward_desirable` / `stats/prm_reward_undesirable`
    (mean r over each class, 0 if the class is empty) and `stats/prm_accuracy` (sign of r agrees
    with the label), all over the responses with tokens.
  """
  total, count, metrics = _kto_terms(logp, ref_logp, mask, labels, beta=beta,
                                     desirable_weight=desirable_weight,
                                     undesirable_weight=undesirable_weight, kl_reference=kl_reference)
  return aggregation.safe_divide(total, count), metrics


def _kto_terms(logp, ref_logp, mask, labels, *, beta, desirable_weight, undesirable_weight, kl_reference):
  """`kto_loss` as (sum over the responses with tokens, their number, metrics)."""
  for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
    if not isinstance(w, jax.Array) and not float(w) >= 0:
      raise ValueError(f"{name} must be >= 0, got {w!r}")
  _check_beta(beta)
  rho = sequence_rewards(logp, ref_logp, mask, beta=1.0)  # [B] summed log-ratios
  r = beta * rho
  labels = jnp.asarray(labels)
  checks.check_shape("labels", labels, r.shape, "logp[:, 0]")
  present = _has_tokens(mask)  # [B]
  p = present.astype(r.dtype)
  count = jnp.sum(p)
  mean = lambda x: aggregation.safe_divide(jnp.sum(x * p), count)  # noqa: E731  over present rows
  desirable = (checks.fill_masked(labels, present) > 0.5) & present
  if kl_reference is None:
    kl = jnp.maximum(mean(rho), 0.0)
  else:
    if jnp.ndim(kl_reference) != 0:
      raise ValueError(f"kl_reference must be a scalar, got shape {jnp.shape(kl_reference)}")
    kl = jnp.asarray(kl_reference, r.dtype)
  kl = jax.lax.stop_gradient(kl)
  z0 = beta * kl
  per_seq = jnp.where(desirable, desirable_weight * (1.0 - jax.nn.sigmoid(r - z0)),
                      undesirable_weight * (1.0 - jax.nn.sigmoid(z0 - r)))
  total = jnp.sum(per_seq * p)
  rs = jax.lax.stop_gradient(r)
  d = desirable.astype(r.dtype)
  u = p - d
  metrics = {
      "loss/prm_kto": jax.lax.stop_gradient(aggregation.safe_divide(total, count)),
      "stats/prm_kl": kl,
      "stats/prm_reward_mean": mean(rs),
      "stats/prm_reward_desirable": aggregation.safe_divide(jnp.sum(rs * d), jnp.sum(d)),
      "stats/prm_reward_undesirable": aggregation.safe_divide(jnp.sum(rs * u), jnp.sum(u)),
      "stats/prm_accuracy": mean(((rs > 0) == desirable).astype(r.dtype)),
  }
  return total, count, metrics


# ----------------------------------------------------------------------------- registry
# The reward-model stage trains a PRM role on outcome-labelled samples of the policy:
# `fn(logp [B, T] of the PRM, batch)` with `batch["ref_logp"]`, `batch["mask"]`, the outcome
# labels `batch["labels"]` `[B]` in [0, 1] and `batch["group_ids"]` `[B]`.


def _batch(batch, name: str, keys=("ref_logp", "mask", "labels")):
  for key in keys:
    if key not in batch:
      raise KeyError(f"objective {name!r} needs batch[{key!r}]; got keys {sorted(batch)}")
  return [batch[k] for k in keys]


@registry.register("implicit_prm_ce", stage="reward_model", needs_reference=True)
def implicit_prm_ce_objective(logp, batch, *, beta=0.05, label_balance=False):
  """CE implicit PRM (ImplicitPRM's default, PRIME's online update): (sum of BCE, B, metrics);
  `label_balance` weights the two classes equally in the batch (`class_weights`)."""
  ref_logp, mask, labels = _batch(batch, "implicit_prm_ce")
  return ce_loss_terms(logp, ref_logp, mask, labels, beta=beta, label_balance=bool(label_balance))


@registry.register("implicit_prm_dpo", stage="reward_model", needs_reference=True)
def implicit_prm_dpo_objective(logp, batch, *, beta=0.05):
  """DPO implicit PRM over every (correct, incorrect) pair of samples of the same prompt.

  Pairs (i, j) with the same group id and label_i > label_j; each adds
  -log sigma(beta [rho_i - rho_j]) with rho = sum_t m_t (logp - ref_logp) (`dpo.per_pair_loss`,
  "sigmoid"). Returns (sum over pairs, number of pairs, metrics); a group whose samples all
  share a label forms no pair, and a sample without tokens is in no pair.
  """
  ref_logp, mask, labels, gid = _batch(batch, "implicit_prm_dpo", ("ref_logp", "mask", "labels", "group_ids"))
  checks.check_rank("logp", logp, 2, "[B, T]")
  b = logp.shape[0]
  checks.check_shape("batch['labels']", labels, (b,), "logp[:, 0]")
  checks.check_shape("batch['group_ids']", gid, (b,), "logp[:, 0]")
  rho = sequence_rewards(logp, ref_logp, mask, beta=1.0)  # [B]
  present = _has_tokens(mask)  # a sample without tokens (and its label) forms no pair
  zeros = jnp.zeros((b * b,), rho.dtype)
  chosen = jnp.broadcast_to(rho[:, None], (b, b)).reshape(-1)  # pair (i, j): i chosen, j rejected
  rejected = jnp.broadcast_to(rho[None, :], (b, b)).reshape(-1)
  losses = dpo.per_pair_loss(chosen, zeros, rejected, zeros, beta=beta).reshape(b, b)
  labels = checks.fill_masked(jnp.asarray(labels, rho.dtype), present)
  gid = jnp.asarray(gid)
  both = present[:, None] & present[None, :]
  pairs = ((gid[:, None] == gid[None, :]) & (labels[:, None] > labels[None, :]) & both).astype(rho.dtype)
  total, count = jnp.sum(losses * pairs), jnp.sum(pairs)
  margin = jax.lax.stop_gradient(beta * (rho[:, None] - rho[None, :]))
  metrics = {
      "loss/prm_dpo": aggregation.safe_divide(total, count),
      "stats/prm_pair_accuracy": aggregation.safe_divide(jnp.sum((margin > 0) * pairs), count),
      "stats/num_pairs": count,
  }
  return total, count, metrics


@registry.register("implicit_prm_kto", stage="reward_model", needs_reference=True)
def implicit_prm_kto_objective(logp, batch, *, beta=0.05, desirable_weight=1.0, undesirable_weight=1.0,
                               kl_reference=0.0):
  """KTO implicit PRM (`kto_loss`) as (sum of the loss over the responses with tokens, their number,
  metrics).

  `kl_reference` is a fixed reference point (nats). The in-batch estimate (`kto_loss` with
  `kl_reference=None`) depends on how the batch is split into micro-batches, so the
  registered form does not offer it.
  """
  ref_logp, mask, labels = _batch(batch, "implicit_prm_kto")
  if kl_reference is None:
    raise ValueError("implicit_prm_kto: kl_reference must be a number (nats); the in-batch estimate "
                     "changes with the micro-batch split")
  return _kto_terms(logp, ref_logp, mask, labels, beta=beta, desirable_weight=desirable_weight,
                    undesirable_weight=undesirable_weight, kl_reference=float(kl_reference))
