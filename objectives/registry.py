"""Objectives selectable by name from a config.

An objective registered here is what the trainer calls on each micro-batch:

    fn(logp, batch, **options) -> (loss_sum, denominator, metrics)

- `logp`: `[B, T]` log-probs of the completion tokens under the current policy (the only
  argument that carries gradients).
- `batch`: a mapping of arrays for the same micro-batch: `mask` `[B, T]`, `old_logp` `[B, T]`,
  `advantages` `[B]` or `[B, T]`, `rewards`, and `ref_logp` `[B, T]` when the reference model
  is used (the trainer computes it only if `needs_reference(options)` holds).
- `options`: the config's `objective.options`, as keyword arguments.
- Whether the trainer computes `ref_logp` is decided by `requires_reference(name, options)`:
  the predicate given at registration, or by default `options["beta"] > 0`.
- Returns the (sum, denominator) pair of `objectives.aggregation` and a dict of scalar
  metrics with namespaced keys (`loss/policy`, `stats/kl`, ...).

Registering a new objective takes three lines:

    @registry.register("my_pg")
    def my_pg(logp, batch, **options):
      return jnp.sum(-logp * batch["advantages"][:, None] * batch["mask"]), jnp.sum(batch["mask"]), {}
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

ObjectiveFn = Callable[..., tuple[Any, Any, Mapping[str, Any]]]

_REGISTRY: dict[str, ObjectiveFn] = {}
_NEEDS_REFERENCE: dict[str, Callable[[Mapping[str, Any]], bool]] = {}


def _beta_positive(options: Mapping[str, Any]) -> bool:
  return float(options.get("beta", 0.0) or 0.0) > 0.0


def register(name: str, *, overwrite: bool = False,
             needs_reference: Callable[[Mapping[str, Any]], bool] | None = None
             ) -> Callable[[ObjectiveFn], ObjectiveFn]:
  """Decorator that registers `fn` under `name`.

  `needs_reference(options) -> bool` says whether the objective reads `batch["ref_logp"]`
  (default: when `options["beta"] > 0`).
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"objective name must be a non-empty string, got {name!r}")

  def decorator(fn: ObjectiveFn) -> ObjectiveFn:
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
      raise ValueError(f"objective {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fn
    _NEEDS_REFERENCE[name] = needs_reference or _beta_positive
    return fn

  return decorator


def get(name: str) -> ObjectiveFn:
  """Returns the objective registered under `name`, or raises naming the known ones."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown objective name={name!r}; registered objectives: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def requires_reference(name: str, options: Mapping[str, Any]) -> bool:
  """Whether objective `name` with these options needs reference-model log-probs."""
  get(name)
  return bool(_NEEDS_REFERENCE[name](options))
