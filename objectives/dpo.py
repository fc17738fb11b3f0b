"""Direct Preference Optimisation losses on summed sequence log-probs.

With z = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)] (chosen y_w, rejected
y_l; log-probs summed over the completion tokens), the per-pair losses are, as in TRL's
`DPOTrainer`:

- "sigmoid" (DPO, Rafailov et al., arXiv 2305.18290), with label smoothing ls (conservative DPO,
  "cDPO", Mitchell 2023: the label is flipped with probability ls):
      -(1 - ls) log sigma(beta z) - ls log sigma(-beta z)
- "robust" (rDPO, Chowdhury et al., arXiv 2403.00409), an unbiased loss under label noise ls < 0.5:
      (-(1 - ls) log sigma(beta z) + ls log sigma(-beta z)) / (1 - 2 ls)
- "hinge" (SLiC-style): relu(1 - beta z)
- "ipo" (Azar et al., arXiv 2310.12036): (z - 1 / (2 beta))^2. TRL feeds IPO the log-probs
  *averaged* over tokens; this function takes whatever it is given, so pass per-token means to
  reproduce TRL.

Implicit rewards (the metrics): rewards/chosen = beta (log pi(y_w) - log pi_ref(y_w)), likewise
rejected; rewards/margin = their difference; rewards/accuracy = fraction with chosen > rejected.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from objectives import checks

Array = jax.Array

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo")




def check_options(beta, loss_type: str, label_smoothing: float) -> None:
  """Raises ValueError naming the bad option."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}")
  if not isinstance(beta, jax.Array) and not float(beta) > 0:
    raise ValueError(f"beta must be > 0, got {beta!r}")
  ls = float(label_smoothing)
  if loss_type == "sigmoid" and not 0.0 <= ls <= 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1] for loss_type='sigmoid', got {ls}")
  if loss_type == "robust" and not 0.0 <= ls < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type='robust', got {ls}")
  if loss_type in ("hinge", "ipo") and ls != 0.0:
    raise ValueError(f"label_smoothing is not used by loss_type={loss_type!r}; got {ls}, expected 0")


def per_pair_loss(chosen_logp: Array, chosen_ref_logp: Array, rejected_logp: Array, rejected_ref_logp: Array,
                  *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> Array:
  """`[B]` loss of each preference pair (formulas in the module docstring).

  Args:
    chosen_logp, chosen_ref_logp, rejected_logp, rejected_ref_logp: `[B]` summed log-probs of the
      chosen / rejected completions under the policy and the reference.
    beta: inverse temperature (> 0).
    loss_type: one of `LOSS_TYPES`.
    label_smoothing: probability that a label is flipped (sigmoid / robust only).
  """
  checks.check_rank("chosen_logp", chosen_logp, 1, "[B] summed log-probs")
  b = jnp.shape(chosen_logp)
  checks.check_shape("chosen_ref_logp", chosen_ref_logp, b, "chosen_logp")
  checks.check_shape("rejected_logp", rejected_logp, b, "chosen_logp")
  checks.check_shape("rejected_ref_logp", rejected_ref_logp, b, "chosen_logp")
  check_options(beta, loss_type, label_smoothing)
  z = (chosen_logp - chosen_ref_logp) - (rejected_logp - rejected_ref_logp)  # [B]
  ls = label_smoothing
  if loss_type == "sigmoid":
    return -(1.0 - ls) * jax.nn.log_sigmoid(beta * z) - ls * jax.nn.log_sigmoid(-beta * z)
  if loss_type == "robust":
    return (-(1.0 - ls) * jax.nn.log_sigmoid(beta * z) + ls * jax.nn.log_sigmoid(-beta * z)) / (1.0 - 2.0 * ls)
  if loss_type == "hinge":
    return jax.nn.relu(1.0 - beta * z)
  return jnp.square(z - 1.0 / (2.0 * beta))  # ipo


def loss(chosen_logp: Array, chosen_ref_logp: Array, rejected_logp: Array, rejected_ref_logp: Array, *,
         beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> tuple[Array, dict]:
  """Mean DPO-family loss over B pairs, and metrics.

  Args: as `per_pair_loss`.

  Returns:
    (scalar loss, metrics) with `loss/dpo`, `rewards/chosen`, `rewards/rejected`,
    `rewards/accuracy`, `rewards/margin` (batch means).
  """
  losses = per_pair_loss(chosen_logp, chosen_ref_logp, rejected_logp, rejected_ref_logp, beta=beta,
                         loss_type=loss_type, label_smoothing=label_smoothing)
  chosen_rewards = jax.lax.stop_gradient(beta * (chosen_logp - chosen_ref_logp))
  rejected_rewards = jax.lax.stop_gradient(beta * (rejected_logp - rejected_ref_logp))
  value = jnp.mean(losses)
  metrics = {
      "loss/dpo": value,
      "rewards/chosen": jnp.mean(chosen_rewards),
      "rewards/rejected": jnp.mean(rejected_rewards),
      "rewards/accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(losses.dtype)),
      "rewards/margin": jnp.mean(chosen_rewards - rejected_rewards),
  }
  return value, metrics
