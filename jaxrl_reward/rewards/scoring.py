"""The rewards of a run (`config.rewards`): host-side text functions and in-jit rewards, combined.

`config.rewards.names` lists reward names, each either a host-side function registered with
`rewards.base.register_reward` (TRL's `fn(prompts, completions, **columns) -> [B]`, `None` for
a missing reward) or an in-jit reward registered with
`rewards.model_rewards.register_model_reward` (`[B]` or `[B, T]`, may read models of the state);
`config.rewards.weights` weighs them and `config.rewards.options.<name>` sets an in-jit reward's
options. `RewardSet.score` puts on the rollout:

- `outcome_rewards` `[B]`: the weighted sum of the per-sequence rewards (missing host rewards
  skipped, TRL's `nansum`);
- `token_rewards` `[B, T]`: the weighted sum of the per-token rewards (only when there are some);
- `rewards`: `outcome_rewards` when every reward is per sequence, else `token_rewards` plus the
  outcome placed on each row's last completion token;
- `valid` `[B]`: False where every host-side reward was missing (None; those rows get
  advantage 0 and `train/rewards/missing_frac` counts the missing entries). A NaN or inf
  returned by a reward function is an error naming it (`config.rewards.nonfinite="error"`)
  or, with "missing", a missing reward. Each host-side call has a deadline,
  `config.rewards.timeout_s` (600 s; 0: none): past it the run stops with an error naming the
  function, or, with `config.rewards.on_timeout="missing"`, that function's rows are missing for
  the step (see `rewards.base`);
- `host_outcome` `[B]` (with in-jit rewards): the host-side part of `outcome_rewards`, from which
  `rescore` recomputes the in-jit part with updated models;
- `labels` `[B]` (when asked): the verifier's score (`config.rewards.eval_name`) in [0, 1],
  the outcome labels of a reward model.

With labels, each in-jit per-token reward that reads a model (the PRM of PRIME's online
updates) is scored against them on every batch: `stats/prm_pair_accuracy` (`pair_accuracy`:
over the batch's (correct, incorrect) row pairs within a group, correct meaning label >= 0.5,
the fraction where the correct row's summed token reward is higher, ties 0.5; 0.5 when the
batch has no such pair) and `stats/prm_pairs` (the number of those pairs). With several such
rewards the keys end in `/<name>`. `score` measures it with the models before any update on
the batch; the RL stage logs a `rescore` after an update as `stats/prm_pair_accuracy_after_update`.

`config.rewards.verified_fraction` < 1 (PURE's setting: verifiable rewards for a fraction of the
problems only) gives the host-side rewards on that fraction of the problems, a fixed set (a hash
of the prompt), and 0 on the others (a group's leave-one-out advantage is then 0: no verifiable
signal); in-jit rewards and `labels` are not affected.

With several processes each one scores its own rows with the host-side functions; the scores
are gathered so that every process holds the whole batch's rewards.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import sharding
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import likelihood  # noqa: F401  (registers the "likelihood" in-jit reward)
from jaxrl_reward.rewards import model_rewards
from jaxrl_reward.rollout import Rollout
from objectives import advantages as advantages_lib
from objectives import registry as objective_registry


PAIR_ACCURACY = "stats/prm_pair_accuracy"


def pair_accuracy(scores, labels, group_ids) -> tuple[jax.Array, jax.Array]:
  """(accuracy, number of pairs) of `scores` `[B]` on the (correct, incorrect) row pairs of each group.

  A pair is two rows of one group (`group_ids` `[B]`), one with `labels` >= 0.5 (correct) and one
  below; it counts 1 when the correct row's score is higher, 0.5 on a tie, 0 otherwise. The
  accuracy is over all the batch's pairs (each pair once), and 0.5 (chance) without any pair.
  """
  scores, labels = jnp.asarray(scores, jnp.float32), jnp.asarray(labels, jnp.float32)
  correct = labels >= 0.5
  same = jnp.asarray(group_ids)[:, None] == jnp.asarray(group_ids)[None, :]
  pairs = same & correct[:, None] & ~correct[None, :]  # [i correct, j incorrect]
  diff = scores[:, None] - scores[None, :]
  wins = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
  n = jnp.sum(pairs)
  accuracy = jnp.where(n > 0, jnp.sum(jnp.where(pairs, wins, 0.0)) / jnp.maximum(n, 1), 0.5)
  return accuracy, n.astype(jnp.float32)


def columns_of(examples: Sequence[dict]) -> dict[str, list]:
  """Every field but the prompt, as the keyword columns of the reward functions (TRL style)."""
  return {k: [e[k] for e in examples] for k in examples[0] if k != "prompt"}


def _host_or_model(name: str):
  if name in host_rewards.reward_names():
    return host_rewards.get_reward(name), None
  if model_rewards.is_registered(name):
    return None, model_rewards.get(name)
  raise KeyError(f"config.rewards.names: unknown reward {name!r}; host-side rewards: "
                 f"{host_rewards.reward_names()}; in-jit rewards: {model_rewards.names()}")


def reward_specs(rewards_config) -> tuple[list[tuple[str, Any, float]], list[tuple[Any, float, dict]]]:
  """(host-side rewards as (name, fn, weight), in-jit rewards as (spec, weight, options)) of
  `config.rewards`; raises naming the key of an unknown reward, option or length mismatch."""
  names, weights = tuple(rewards_config.names), tuple(float(w) for w in rewards_config.weights)
  if len(names) != len(weights):
    raise ValueError(f"rewards.names has {len(names)} entries but rewards.weights has {len(weights)}")
  options = {k: dict(v) for k, v in (rewards_config.get("options") or {}).items()}
  host, model = [], []
  for name, weight in zip(names, weights):
    fn, spec = _host_or_model(name)
    if fn is not None:
      if name in options:
        raise ValueError(f"config.rewards.options.{name}: host-side reward {name!r} takes no options")
      host.append((name, fn, weight))
    else:
      model.append((spec, weight, objective_registry.resolve("in-jit reward", name, spec.options,
                                                             options.get(name, {}))))
  stray = sorted(set(options) - set(names))
  if stray:
    raise ValueError(f"config.rewards.options has entries for {stray}, which are not in rewards.names {names}")
  host_rewards.get_reward(rewards_config.eval_name)  # raises naming the registered rewards
  return host, model


def is_verified(prompt: str, fraction: float) -> bool:
  """Whether `prompt`'s problem is among the `fraction` of problems with a verifiable reward
  (a fixed set: the same problems at every step, on every process)."""
  return zlib.crc32(prompt.encode("utf-8")) < fraction * 2**32


class RewardSet:
  """Scores rollouts with a config's rewards (see the module docstring)."""

  def __init__(self, rewards_config, roles, *, with_labels: bool = False):
    self.host, self.model = reward_specs(rewards_config)
    self.roles = roles
    self.role_names = sorted({r for spec, _, _ in self.model for r in spec.roles})
    for r in self.role_names:
      roles[r]  # raises naming the run's roles  # noqa: B018
    self.has_token_rewards = any(spec.level == "token" for spec, _, _ in self.model)
    preparing = [(spec, options) for spec, _, options in self.model if spec.prepare is not None]
    if len(preparing) > 1:
      raise ValueError(f"config.rewards.names: at most one of {[s.name for s, _ in preparing]} may be used in a "
                       "run (each rewrites the rollout's layout)")
    self._preparing = preparing[0] if preparing else None
    self.label_name = rewards_config.eval_name if with_labels else None
    self.nonfinite = rewards_config.get("nonfinite", "error")
    self.timeout_s = rewards_config.get("timeout_s", host_rewards.DEFAULT_TIMEOUT_S)
    self.on_timeout = rewards_config.get("on_timeout", "error")
    if self.on_timeout not in host_rewards.ON_TIMEOUT:
      raise ValueError(f"rewards.on_timeout={self.on_timeout!r} is not one of {host_rewards.ON_TIMEOUT}")
    if self.timeout_s is not None and not self.timeout_s >= 0:
      raise ValueError(f"rewards.timeout_s={self.timeout_s!r} must be >= 0 (0 or None: no deadline)")
    fraction = rewards_config.get("verified_fraction", None)
    self.verified_fraction = 1.0 if fraction is None else float(fraction)
    if not 0.0 <= self.verified_fraction <= 1.0:
      raise ValueError(f"rewards.verified_fraction={self.verified_fraction} must be in [0, 1]")
    if self.model:
      placement = roles["policy"].placement
      self._model_terms = placement.jit(
          self._model_terms_fn,
          in_shardings=({r: roles[r].placement.params for r in self.role_names}, placement.rows),
          out_shardings=(placement.rows, placement.rows, placement.replicated, placement.replicated))
    paired = [spec.name for spec, _, _ in self.model if spec.level == "token" and spec.roles]
    self._pair_keys = {n: "" if len(paired) == 1 else f"/{n}" for n in paired}

  @property
  def needs_reference(self) -> bool:
    return "reference" in self.role_names

  def layout(self, task) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """(columns added to T, per-step extras, per-row extras) of the preparing reward, if any;
    raises when its options or `task` do not suit it."""
    if self._preparing is None:
      return 0, (), ()
    spec, options = self._preparing
    return spec.layout(options, task)

  def prepare(self, rollout: Rollout, *, policy, task, columns: Mapping[str, Sequence[Any]]) -> tuple[Rollout, dict]:
    """The fresh sample as the rewards need it (`columns`: this process's rows), and stats."""
    if self._preparing is None:
      return rollout, {}
    spec, options = self._preparing
    return spec.prepare(rollout, policy=policy, task=task, columns=columns, options=options)

  def _model_terms_fn(self, params, rollout):
    bound = {r: model_rewards.BoundRole(params[r], self.roles[r].scorer) for r in self.role_names}
    b, t = rollout.mask.shape
    seq, tok, means, pairs = jnp.zeros((b,), jnp.float32), jnp.zeros((b, t), jnp.float32), {}, {}
    for spec, weight, options in self.model:
      value = jnp.asarray(spec.fn(rollout, {r: bound[r] for r in spec.roles}, **options), jnp.float32)
      shape = (b,) if spec.level == "sequence" else (b, t)
      if value.shape != shape:
        raise ValueError(f"in-jit reward {spec.name!r} ({spec.level}) returned shape {value.shape}, "
                         f"expected {shape}")
      if spec.level == "sequence":
        seq = seq + weight * value
        means[spec.name] = jnp.mean(value)
      else:
        tok = tok + weight * value * rollout.mask
        means[spec.name] = jnp.mean(jnp.sum(value * rollout.mask, axis=-1))
        if spec.name in self._pair_keys and "labels" in rollout:
          suffix = self._pair_keys[spec.name]
          pairs[PAIR_ACCURACY + suffix], pairs["stats/prm_pairs" + suffix] = pair_accuracy(
              jnp.sum(value * rollout.mask, axis=-1), rollout["labels"], rollout.group_ids)
    return seq, tok, means, pairs

  def score(self, rollout: Rollout, state: Mapping[str, Any], *, prompts: Sequence[str],
            completions: Sequence[str], columns: Mapping[str, Sequence[Any]],
            step: int | None = None) -> tuple[Rollout, dict]:
    """Rewards of every row; `prompts`, `completions`, `columns` are this process's rows, `step`
    the step named in a warning (a reward past its deadline with `rewards.on_timeout="missing"`).

    Returns the rollout with the reward fields set and the mean of each reward function
    (`train/rewards/<name>`).
    """
    stats: dict[str, float] = {}
    b = rollout.num_rows
    placement = self.roles["policy"].placement
    to_rows = lambda x: sharding.to_global(  # noqa: E731  (a full [B, ...] array on every process)
        np.asarray(x)[sharding.host_rows(placement.mesh, placement.rules, b)], placement.mesh,
        placement.rules, b)
    outcome, valid = np.zeros((b,), np.float32), np.ones((b,), bool)
    if self.host:
      local = host_rewards.compute_rewards([name for name, _, _ in self.host], prompts, completions, columns,
                                           nonfinite=self.nonfinite, timeout_s=self.timeout_s,
                                           on_timeout=self.on_timeout, step=step)
      per_fn = sharding.gather_rows(np.asarray(local, np.float32))  # [B, F], NaN = missing
      if self.verified_fraction < 1.0:
        verified = sharding.gather_rows(
            np.asarray([is_verified(p, self.verified_fraction) for p in prompts], np.float32)) > 0.5
        per_fn = np.where(verified[:, None] | np.isnan(per_fn), per_fn, 0.0).astype(np.float32)
        stats["train/rewards/verified_frac"] = float(np.mean(verified))
      stats["train/rewards/missing_frac"] = float(np.mean(np.isnan(per_fn)))
      weights = np.asarray([w for _, _, w in self.host], np.float32)
      combined, all_missing = advantages_lib.combine_rewards(jnp.asarray(per_fn), jnp.asarray(weights))
      outcome, valid = np.asarray(combined, np.float32), ~np.asarray(all_missing)
      for (name, _, _), col in zip(self.host, per_fn.T):
        stats[f"train/rewards/{name}"] = float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
    outcome = to_rows(outcome)
    values = {"outcome_rewards": outcome, "valid": to_rows(valid)}
    rollout = rollout.update(rewards=outcome, **values)
    if self.label_name is not None:  # before the in-jit rewards, which measure their pair accuracy on them
      labels = host_rewards.compute_rewards([self.label_name], prompts, completions, columns,
                                            timeout_s=self.timeout_s, on_timeout=self.on_timeout, step=step)[:, 0]
      local = np.clip(np.nan_to_num(labels, nan=0.0), 0.0, 1.0)  # a missing label counts as incorrect
      rollout = rollout.update(labels=sharding.to_global(local, placement.mesh, placement.rules, b))
    if self.model:
      rollout, model_stats = self.rescore(rollout.update(host_outcome=outcome), state)
      stats.update(model_stats)
    return rollout, stats

  def rescore(self, rollout: Rollout, state: Mapping[str, Any]) -> tuple[Rollout, dict]:
    """The in-jit rewards of a scored rollout (again) with the models of `state`, added to its
    host-side outcome (`host_outcome`); and their means (`train/rewards/<name>`)."""
    seq, tok, means, pairs = self._model_terms({r: state[r]["params"] for r in self.role_names}, rollout)
    outcome = rollout["host_outcome"] + seq
    values = {"outcome_rewards": outcome, "rewards": outcome}
    if self.has_token_rewards:
      values["token_rewards"] = tok
      values["rewards"] = tok + advantages_lib.outcome_to_token_rewards(outcome, rollout.mask)
    stats = {f"train/rewards/{k}": float(v) for k, v in jax.device_get(means).items()}
    return rollout.update(**values), {**stats, **{k: float(v) for k, v in jax.device_get(pairs).items()}}
