"""Per-token KL estimators between the policy and a reference model.

Schulman, "Approximating KL divergence" (2020, joschu.net/blog/kl-approx.html); verl
`core_algos.kl_penalty`. With `x = logp - ref_logp` = log pi(y)/pi_ref(y) for a token y
sampled from pi:

| estimator       | value                               | E_pi[value]        | E_pi[grad of value]      |
|-----------------|-------------------------------------|--------------------|--------------------------|
| `k1` (`kl`)     | x                                   | KL(pi||ref), exact | 0                        |
| `k2` (`mse`)    | x^2 / 2                             | biased (>= 0)      | grad KL(pi||ref), exact  |
| `k3` (`low_var_kl`) | exp(-x) - (-x) - 1, clamped     | KL(pi||ref), exact | grad KL(ref||pi)         |
| `abs`           | |x|                                 | biased             | biased                   |
| `<name>+`       | value of `<name>`, gradient of `k2` | as `<name>`        | grad KL(pi||ref), exact  |

Unbiased *values* of KL(pi||ref): `k1` and `k3` (k3 because E_pi[pi_ref/pi] = 1; it is also
>= 0 and has lower variance). Useful *gradients* when the estimate is added to the loss and
differentiated through `logp` only (samples held fixed): E_pi[grad k1] = E_pi[grad log pi] = 0,
so `k1` in the loss is pure noise (the Tunix/MaxText default, beta 0.04 with k1); `k2`'s
expected gradient E_pi[x grad log pi] is exactly grad KL(pi||ref); `k3`'s is
E_pi[(1 - pi_ref/pi) grad log pi] = grad KL(pi_ref||pi) (a forward-KL regulariser, the
GRPO/TRL/verl default). The straight-through `+` variants (verl) report the named
estimator's value and back-propagate k2's gradient:

    est = k2 - sg(k2) + sg(value)

so `k3+` has the unbiased k3 value and the unbiased reverse-KL gradient. `k2+` is `k2`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

import chex

Array = chex.Array

_ALIASES = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3", "abs": "abs"}
ESTIMATORS = tuple(sorted(set(_ALIASES) | {name + "+" for name in _ALIASES}))


def _check_estimator(estimator: str) -> tuple[str, bool]:
  if not isinstance(estimator, str):
    raise ValueError(f"estimator must be a string, one of {ESTIMATORS}; got {estimator!r}")
  straight_through = estimator.endswith("+")
  base = estimator[:-1] if straight_through else estimator
  if base not in _ALIASES:
    raise ValueError(f"unknown KL estimator={estimator!r}; expected one of {ESTIMATORS}")
  return _ALIASES[base], straight_through


def validate_estimator(estimator: str) -> None:
  """Raises ValueError if `estimator` is not one of `ESTIMATORS`."""
  _check_estimator(estimator)


def estimate(
    logp: Array,
    ref_logp: Array,
    *,
    estimator: str = "k3",
    clamp: float | None = 10.0,
    log_ratio_clamp: float | None = 20.0,
) -> Array:
  """Per-token KL(pi || pi_ref) estimate.

  See the module docstring for the estimators and which of them is unbiased.

  k3 (verl `low_var_kl`): u = clip(ref_logp - logp, -log_ratio_clamp, log_ratio_clamp),
  k3 = clip(exp(u) - u - 1, -clamp, clamp). The clamps only guard against overflow and
  outliers; where a clamp is active the gradient is zero. `clamp` and `log_ratio_clamp`
  apply to k3 only (and None disables them); the other estimators are not clamped.

  Args:
    logp: [B, T] (or any shape) log pi_theta of the sampled tokens; gradients flow here.
    ref_logp: same shape, log pi_ref of the same tokens (treated as a constant).
    estimator: one of `ESTIMATORS` ("k1"/"kl", "k2"/"mse", "k3"/"low_var_kl", "abs",
      each optionally suffixed "+" for the straight-through k2 gradient).
    clamp: bound on the k3 value.
    log_ratio_clamp: bound on the log-ratio inside k3's exponential.

  Returns:
    Per-token estimates, same shape as `logp`. No masking is applied.

  Padding: callers mask the *inputs*, not the outputs. Multiplying the estimate by a mask
  afterwards does not remove NaN or inf at padded positions (`nan * 0` is NaN; a -inf
  `ref_logp` gives inf), nor their NaN gradient; replace logp and ref_logp there by a finite
  value first, e.g. `checks.fill_masked(x, mask)` (0 for both gives an estimate of 0), as
  `objectives.grpo` does.
  """
  base, straight_through = _check_estimator(estimator)
  logp = jnp.asarray(logp)
  ref_logp = jnp.asarray(ref_logp)
  if logp.shape != ref_logp.shape:
    raise ValueError(f"ref_logp shape {ref_logp.shape} must equal logp shape {logp.shape}")
  ref_logp = jax.lax.stop_gradient(ref_logp)
  log_ratio = logp - ref_logp  # x = log pi / pi_ref

  if base == "k1":
    value = log_ratio
  elif base == "k2":
    value = 0.5 * jnp.square(log_ratio)
  elif base == "abs":
    value = jnp.abs(log_ratio)
  else:  # k3
    u = -log_ratio  # log pi_ref / pi
    if log_ratio_clamp is not None:
      u = jnp.clip(u, -log_ratio_clamp, log_ratio_clamp)
    value = jnp.exp(u) - u - 1.0
    if clamp is not None:
      value = jnp.clip(value, -clamp, clamp)

  if straight_through and base != "k2":
    backward = 0.5 * jnp.square(log_ratio)
    value = backward - jax.lax.stop_gradient(backward) + jax.lax.stop_gradient(value)
  return value
