"""Objectives selectable by name from a config, each owning its options.

An objective registered here is what a training stage calls on each micro-batch:

    fn(outputs, batch, *, option=default, ...) -> (loss_sum, denominator, metrics)

- `outputs`: `[B, T]` per-step outputs of the trained model under the current parameters,
  the only argument that carries gradients: log-probs of the sampled actions (tokens or
  denoising steps) for `inputs="logprobs"`, value estimates for `inputs="values"`.
- `batch`: a mapping of arrays for the same micro-batch (the engine passes its typed
  rollout, which reads like a dict): `mask` `[B, T]`, `group_ids` `[B]`, `old_logp` `[B, T]`,
  `advantages` `[B]` or `[B, T]`, `rewards`, and `ref_logp` `[B, T]` when the reference model
  is used. Micro-batches always hold whole groups (every row of a group id), so pairwise
  and leave-one-out terms inside a loss are exact under gradient accumulation.
- Options are the keyword-only arguments of `fn`: their defaults are the objective's
  defaults, arguments without a default are required, and selecting the objective by name
  (`config.objective.name`) brings them; `resolve_options` merges a config's overrides and
  rejects an option the objective does not take, naming the ones it does. A function with
  `**options` accepts any option.
- Returns the (sum, denominator) pair of `objectives.aggregation` and a dict of scalar
  metrics with namespaced keys (`loss/policy`, `stats/kl`, ...).

Registration also says which stage kind trains with the objective (`stage="rl"` on policy
rollouts, `stage="reward_model"` for a reward / process-reward model), what its first
argument is (`inputs`), and whether it reads `batch["ref_logp"]` (`needs_reference`, by
default `beta > 0`). Registering a new objective takes three lines:

    @registry.register("my_pg")
    def my_pg(logp, batch, *, scale=1.0):
      return -scale * jnp.sum(logp * batch["advantages"][:, None] * batch["mask"]), jnp.sum(batch["mask"]), {}
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Mapping

ObjectiveFn = Callable[..., tuple[Any, Any, Mapping[str, Any]]]

STAGES = ("rl", "reward_model")
INPUTS = ("logprobs", "values")


@dataclasses.dataclass(frozen=True)
class Options:
  """The options a registered function takes: `defaults`, `required` names, and `open`
  (True when the function takes `**options`, so any name is accepted)."""
  defaults: Mapping[str, Any]
  required: tuple[str, ...]
  open: bool

  @property
  def names(self) -> list[str]:
    return sorted(set(self.defaults) | set(self.required))


def signature_options(fn: Callable, *, positional: int) -> Options:
  """The options of `fn`: every parameter after its first `positional` ones."""
  params = list(inspect.signature(fn).parameters.values())
  defaults, required, open_ = {}, [], False
  for p in params[positional:]:
    if p.kind is inspect.Parameter.VAR_KEYWORD:
      open_ = True
    elif p.kind is inspect.Parameter.VAR_POSITIONAL:
      continue
    elif p.default is inspect.Parameter.empty:
      required.append(p.name)
    else:
      defaults[p.name] = p.default
  return Options(defaults, tuple(required), open_)


def resolve(kind: str, name: str, options: Options, given: Mapping[str, Any]) -> dict[str, Any]:
  """`options.defaults` updated by `given`; raises naming the unknown or missing options.

  `kind` and `name` only make the messages readable ("objective 'prdp' has no option ...").
  """
  given = dict(given)
  if not options.open:
    unknown = sorted(set(given) - set(options.names))
    if unknown:
      hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, options.names, 1))
               else repr(u) for u in unknown]
      raise ValueError(f"{kind} {name!r} has no option {', '.join(hints)}; its options are "
                       f"{options.names} (defaults {dict(options.defaults)})")
  missing = [r for r in options.required if r not in given]
  if missing:
    raise ValueError(f"{kind} {name!r} needs option(s) {missing}; set them, e.g. "
                     f"--config.objective.options.{missing[0]}=...")
  return {**options.defaults, **given}


class Registry:
  """Named entries of one kind (objectives, advantage estimators, in-jit rewards).

  Entries are records with `fn` and `options`; a lookup of an unknown name is a KeyError that
  names the registered ones and suggests the closest.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Any] = {}

  def add(self, name: str, entry, *, overwrite: bool = False) -> None:
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
    if name in self._entries and not overwrite and self._entries[name].fn is not entry.fn:
      raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
    self._entries[name] = entry

  def remove(self, name: str) -> None:
    """Forgets `name` (nothing happens if it is not registered)."""
    self._entries.pop(name, None)

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __getitem__(self, name: str):
    if name not in self._entries:
      close = difflib.get_close_matches(str(name), list(self._entries), 1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise KeyError(f"unknown {self.kind} name={name!r}{hint}; registered {self.kind}s: {self.names()}")
    return self._entries[name]

  def names(self, where: Callable[[Any], bool] | None = None) -> list[str]:
    return sorted(n for n, e in self._entries.items() if where is None or where(e))

  def defaults(self, name: str) -> dict[str, Any]:
    return dict(self[name].options.defaults)

  def resolve(self, name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options entry `name` runs with: its defaults updated by `given`.

    Raises:
      ValueError: an option the entry does not take (naming the ones it takes), or a required
        option that is missing.
    """
    return resolve(self.kind, name, self[name].options, given or {})


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective: the function and what the engine needs to know about it."""
  name: str
  fn: ObjectiveFn
  stage: str
  inputs: str
  options: Options
  needs_reference: Callable[[Mapping[str, Any]], bool]


_REGISTRY = Registry("objective")


def _beta_positive(options: Mapping[str, Any]) -> bool:
  beta = options.get("beta", 0.0)
  return not isinstance(beta, (int, float)) or float(beta or 0.0) > 0.0


def register(name: str, *, stage: str = "rl", inputs: str = "logprobs", overwrite: bool = False,
             needs_reference: Callable[[Mapping[str, Any]], bool] | bool | None = None
             ) -> Callable[[ObjectiveFn], ObjectiveFn]:
  """Decorator that registers `fn` under `name`.

  Args:
    name: the config name (`config.objective.name`).
    stage: the stage kind that trains with it, one of `STAGES`.
    inputs: what its first argument is, one of `INPUTS`.
    overwrite: replace an objective already registered under `name`.
    needs_reference: whether it reads `batch["ref_logp"]`: a bool, or a predicate of the
      resolved options (default: `options["beta"] > 0`).
  """
  if stage not in STAGES:
    raise ValueError(f"stage={stage!r} is not one of {STAGES}")
  if inputs not in INPUTS:
    raise ValueError(f"inputs={inputs!r} is not one of {INPUTS}")
  if isinstance(needs_reference, bool):
    needs_reference = (lambda value: lambda options: value)(needs_reference)

  def decorator(fn: ObjectiveFn) -> ObjectiveFn:
    _REGISTRY.add(name, Objective(name, fn, stage, inputs, signature_options(fn, positional=2),
                                  needs_reference or _beta_positive), overwrite=overwrite)
    return fn

  return decorator


def spec(name: str) -> Objective:
  """The registration of `name`, or a KeyError naming the registered objectives."""
  return _REGISTRY[name]


def get(name: str) -> ObjectiveFn:
  """The function registered under `name` (see `spec`)."""
  return spec(name).fn


def names(stage: str | None = None) -> list[str]:
  """Registered objective names, optionally only those of one stage kind."""
  return _REGISTRY.names(None if stage is None else lambda o: o.stage == stage)


defaults = _REGISTRY.defaults  # the option defaults of an objective
resolve_options = _REGISTRY.resolve  # its options: the defaults updated by a config's, checked


def requires_reference(name: str, options: Mapping[str, Any] | None = None) -> bool:
  """Whether objective `name` with these options (defaults filled in) needs `ref_logp`."""
  return bool(spec(name).needs_reference(resolve_options(name, options)))
