"""Advantage estimators selectable by name from a config, all with one signature.

    fn(batch, *, group_size, option=default, ...) -> advantages [B] or [B, T]

Each registered estimator is a thin wrapper that reads what it needs from `batch` and calls
the functions of `objectives.advantages` / `objectives.prime`; the maths lives there.
`compute(name, batch, group_size=..., options=...)` resolves the options (defaults updated
by the config's, unknown ones rejected), checks that the batch holds the keys the estimator
needs, and returns a stop-gradiented float32 array.

The batch is a mapping (the engine's rollout reads like a dict; tests pass a dict), rows
group-major (rows [g*G:(g+1)*G] are the G samples of prompt g):
- `rewards`: the combined reward, `[B]` when every reward is per sequence, else `[B, T]`
  (sequence rewards on each row's last unmasked token, plus the token rewards);
- `outcome_rewards` `[B]`: the weighted sum of the per-sequence rewards (always present);
- `token_rewards` `[B, T]`: the weighted sum of the per-token rewards (only when some reward
  is per token);
- `mask` `[B, T]`: 1 on completion tokens; `valid` (optional) `[B]` bool: False where a
  sample has no reward;
- `values` `[B, T]` (for "gae"); `baseline_rewards` `[B]` (for "remax").

Conventions shared by every estimator:
- Invalid rows (`valid` False) and fully masked rows (no token for an advantage to act on) get
  advantage 0 and stay out of group and batch statistics: they are passed as invalid to the
  functions that take `valid`; for the others their tokens are masked out (so they are also
  left out of any whitening).
- Sequence estimators (returning `[B]`) given `[B, T]` rewards use each row's sum over its
  unmasked tokens.
- Masked and invalid entries are ignored whatever they hold (NaN and +-inf included): the
  per-token inputs (`rewards`, `token_rewards`, `values`) where `mask` is 0 or the row is
  invalid, and the per-row inputs (`rewards`, `outcome_rewards`, `baseline_rewards`) of invalid
  or fully masked rows change no output.
- No estimator returns NaN for zero-variance groups, fully masked rows or invalid rows.

Registering a new estimator:

    @register_estimator("my_baseline", needs=("values",))
    def my_baseline(batch, *, group_size, scale=1.0):
      return scale * (batch["rewards"] - batch["values"][:, -1])
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from objectives import advantages as adv
from objectives import checks, logprob_rewards, prime, registry

Array = jax.Array
EstimatorFn = Callable[..., Array]

# Keys every estimator reads; `needs` lists the others.
ALWAYS_NEEDED = ("rewards", "mask")

# Where a missing key comes from, for the error message of `compute`.
_NEED_HINTS = {
    "values": "value estimates from a value role: add one to config.roles",
    "baseline_rewards": "the rewards of a greedy (argmax) completion of each row's prompt, ReMax's baseline",
    "token_rewards": "per-token rewards: add a per-token reward (e.g. an implicit PRM) to the rewards",
    "outcome_rewards": "the weighted sum of the per-sequence rewards",
    "rewards": "the combined reward",
    "mask": "the completion mask",
    "step_ends": "a [B, T] step-end mask (1 at the last token of each step), from a task with steps "
                 "(Task.step_ends)",
    "old_logp": "the sampling log-probs",
    "ref_logp": "the reference role's log-probs (the KL term needs a reference)",
}


@dataclasses.dataclass(frozen=True)
class Estimator:
  """A registered estimator: the function, the batch keys it needs beyond `rewards`/`mask`,
  and its options (the keyword-only arguments with defaults, `group_size` excluded)."""
  name: str
  fn: EstimatorFn
  needs: tuple[str, ...]
  options: registry.Options
  stats: Callable[..., dict] | None = None


_ESTIMATORS = registry.Registry("advantage estimator")


def register_estimator(name: str, *, needs: tuple[str, ...] | list[str] = (), overwrite: bool = False,
                       stats: Callable[..., dict] | None = None) -> Callable[[EstimatorFn], EstimatorFn]:
  """Decorator that registers `fn(batch, *, group_size, **options)` under `name`.

  Args:
    name: the config name of the estimator.
    needs: batch keys the estimator reads beyond `rewards` and `mask` (e.g. `("values",)`);
      `compute` checks that they are present.
    overwrite: replace an estimator already registered under `name`.
    stats: optional `stats(batch, *, group_size, **options) -> {key: scalar}`, the estimator's
      diagnostics (`compute_stats`), e.g. PURE's `stats/min_form_weight_entropy`.
  """
  if isinstance(needs, str) or not all(isinstance(k, str) and k for k in needs):
    raise ValueError(f"needs must be a tuple of batch key names, got {needs!r}")
  needs = tuple(needs)

  def decorator(fn: EstimatorFn) -> EstimatorFn:
    params = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "group_size" not in params and not takes_kwargs:
      raise ValueError(f"advantage estimator {name!r} must take a keyword argument group_size; "
                       f"its signature is {inspect.signature(fn)}")
    opts = registry.signature_options(fn, positional=1)
    # group_size comes from the run (samples per prompt), not from the estimator's options.
    opts = registry.Options({k: v for k, v in opts.defaults.items() if k != "group_size"},
                            tuple(r for r in opts.required if r != "group_size"), opts.open)
    _ESTIMATORS.add(name, Estimator(name, fn, needs, opts, stats), overwrite=overwrite)
    return fn

  return decorator


def spec(name: str) -> Estimator:
  """The registration of `name`, or a KeyError naming the registered estimators."""
  return _ESTIMATORS[name]


def names() -> list[str]:
  """Registered estimator names, sorted."""
  return _ESTIMATORS.names()


def needs(name: str) -> tuple[str, ...]:
  """The batch keys estimator `name` reads beyond `rewards` and `mask`."""
  return spec(name).needs


defaults = _ESTIMATORS.defaults  # the option defaults of an estimator
resolve_options = _ESTIMATORS.resolve  # its options: the defaults updated by a config's, checked


def _present(batch: Mapping[str, Array], key: str) -> bool:
  # A dataclass-backed batch may hold None for an absent optional field.
  return key in batch and batch[key] is not None


def _require(batch: Mapping[str, Array], key: str, name: str) -> Array:
  if not _present(batch, key):
    hint = _NEED_HINTS.get(key)
    raise ValueError(f"advantage estimator {name!r} needs batch[{key!r}]" + (f" ({hint})" if hint else "")
                     + f"; the batch has {sorted(k for k in batch if batch[k] is not None)}")
  return batch[key]


def _check_batch(batch: Mapping[str, Array]) -> None:
  """Layouts of `rewards`, `mask` and `valid`; errors name the key."""
  rewards, mask = batch["rewards"], batch["mask"]
  if jnp.ndim(rewards) not in (1, 2):
    raise ValueError(f"batch['rewards'] must be [B] or [B, T], got shape {jnp.shape(rewards)}")
  checks.check_rank("batch['mask']", mask, 2, "[B, T]")
  if jnp.ndim(rewards) == 2:
    checks.check_shape("batch['mask']", mask, jnp.shape(rewards), "batch['rewards']")
  elif jnp.shape(mask)[0] != jnp.shape(rewards)[0]:
    raise ValueError(f"batch['mask'] {jnp.shape(mask)} must have the batch size of batch['rewards'] "
                     f"{jnp.shape(rewards)}")
  if _present(batch, "valid"):
    checks.check_shape("batch['valid']", batch["valid"], jnp.shape(rewards)[:1], "the rows of batch['rewards']")


def compute(name: str, batch: Mapping[str, Array], *, group_size: int,
            options: Mapping[str, Any] | None = None) -> Array:
  """Advantages of estimator `name` on `batch`, float32 and without gradient.

  Args:
    name: a registered estimator (`names()`).
    batch: the mapping described in the module docstring.
    group_size: G samples per prompt (group-major rows); estimators without a group
      baseline ignore it.
    options: the config's overrides of the estimator's option defaults.

  Returns:
    `[B]` or `[B, T]` advantages (see each estimator).

  Raises:
    KeyError: unknown `name` (naming the registered ones).
    ValueError: an unknown option, a missing batch key or a bad layout (naming it).
  """
  est = spec(name)
  resolved = resolve_options(name, options)
  for key in ALWAYS_NEEDED + est.needs:
    _require(batch, key, name)
  _check_batch(batch)
  out = est.fn(batch, group_size=group_size, **resolved)
  return jax.lax.stop_gradient(jnp.asarray(out).astype(jnp.float32))


def compute_stats(name: str, batch: Mapping[str, Array], *, group_size: int,
                  options: Mapping[str, Any] | None = None) -> dict[str, Array]:
  """The diagnostics of estimator `name` on `batch` (`register_estimator(stats=...)`), float32
  scalars without gradient; {} for an estimator without any."""
  est = spec(name)
  if est.stats is None:
    return {}
  out = est.stats(batch, group_size=group_size, **resolve_options(name, options))
  return {k: jax.lax.stop_gradient(jnp.asarray(v, jnp.float32)) for k, v in out.items()}


# ----------------------------------------------------------------------------- batch helpers


def _valid(batch: Mapping[str, Array]) -> Array:
  """`[B]` bool: the rows that have a reward (`batch["valid"]`, all by default) and a token."""
  has_tokens = jnp.any(_mask(batch) > 0, axis=-1)
  if not _present(batch, "valid"):
    return has_tokens
  return has_tokens & jnp.asarray(batch["valid"]).astype(bool)


def _mask(batch: Mapping[str, Array]) -> Array:
  """`[B, T]` float32 completion mask."""
  return jnp.asarray(batch["mask"]).astype(jnp.float32)


def _valid_mask(batch: Mapping[str, Array]) -> Array:
  """The completion mask with invalid rows fully masked, for the functions without `valid=`:
  it gives those rows 0 and keeps them out of whitening statistics."""
  mask = _mask(batch)
  return mask * _valid(batch)[:, None].astype(mask.dtype)


def _sequence_rewards(batch: Mapping[str, Array]) -> Array:
  """`[B]` rewards: `rewards` itself, or for `[B, T]` rewards each row's sum over unmasked tokens."""
  rewards = jnp.asarray(batch["rewards"])
  if rewards.ndim == 2:
    mask = _mask(batch)
    rewards = jnp.sum(checks.fill_masked(rewards, mask) * mask, axis=-1)
  return rewards


def _token_rewards(batch: Mapping[str, Array], mask: Array) -> Array:
  """`[B, T]` rewards: `[B]` rewards go on each row's last unmasked token (verl convention)."""
  rewards = jnp.asarray(batch["rewards"])
  return adv.outcome_to_token_rewards(rewards, mask) if rewards.ndim == 1 else rewards


def _per_sequence(advantages: Array, batch: Mapping[str, Array]) -> Array:
  """Zeroes `[B]` advantages on fully masked rows (no token for them to act on)."""
  return advantages * jnp.any(_mask(batch) > 0, axis=-1).astype(advantages.dtype)


# ----------------------------------------------------------------------------- group baselines


@register_estimator("group")
def group(batch, *, group_size: int, scale_rewards: str | bool = "group", eps: float = 1e-4) -> Array:
  """GRPO / Dr. GRPO group z-score, `advantages.group_advantages` (arXiv 2402.03300, 2503.20783).

  A = (r - mean_group(r)) / (std + eps) ("group"; "batch" takes the batch std, "none" no std).
  `[B]` rewards give `[B]`; `[B, T]` rewards give `[B, T]` with the statistics over the
  group's unmasked tokens (no summing to returns).
  """
  rewards = jnp.asarray(batch["rewards"])
  mask = _mask(batch) if rewards.ndim == 2 else None
  out = adv.group_advantages(rewards, group_size=group_size, scale_rewards=scale_rewards, eps=eps, mask=mask,
                             valid=_valid(batch))
  return out if rewards.ndim == 2 else _per_sequence(out, batch)


@register_estimator("rloo")
def rloo(batch, *, group_size: int) -> Array:
  """RLOO, A_i = r_i - mean_{j != i} r_j (arXiv 2402.14740), `advantages.rloo`.

  `[B]`; `[B, T]` rewards are summed over each row's unmasked tokens first.
  """
  return _per_sequence(adv.rloo(_sequence_rewards(batch), group_size=group_size, valid=_valid(batch)), batch)


@register_estimator("opo")
def opo(batch, *, group_size: int) -> Array:
  """OPO length-weighted baseline (arXiv 2505.23585), `advantages.opo` with lengths = mask.sum(-1).

  `[B]`; `[B, T]` rewards are summed over each row's unmasked tokens first.
  """
  lengths = jnp.sum(_mask(batch), axis=-1)
  out = adv.opo(_sequence_rewards(batch), lengths, group_size=group_size, valid=_valid(batch))
  return _per_sequence(out, batch)


@register_estimator("gpg")
def gpg(batch, *, group_size: int, f_norm: float = 1.0) -> Array:
  """GPG (arXiv 2504.02546), `advantages.gpg`: alpha (r - mean_group(r)) / f_norm.

  `[B]`; `[B, T]` rewards are summed over each row's unmasked tokens first.
  """
  out = adv.gpg(_sequence_rewards(batch), group_size=group_size, f_norm=f_norm, valid=_valid(batch))
  return _per_sequence(out, batch)


@register_estimator("pass_at_k")
def pass_at_k(batch, *, group_size: int, norm_adv_by_std: bool = True, eps: float = 1e-6) -> Array:
  """Pass@k advantage (arXiv 2503.19595; verl `grpo_passk`), `advantages.pass_at_k`.

  `[B]`: only each group's best sample is non-zero, (r_max - r_second) [/ (std + eps)].
  `[B, T]` rewards are summed over each row's unmasked tokens first.
  """
  out = adv.pass_at_k(_sequence_rewards(batch), group_size=group_size, norm_adv_by_std=norm_adv_by_std,
                      eps=eps, valid=_valid(batch))
  return _per_sequence(out, batch)


# ----------------------------------------------------------------------------- returns-based


@register_estimator("reinforce_pp")
def reinforce_pp(batch, *, group_size: int, gamma: float = 1.0) -> Array:
  """REINFORCE++ (arXiv 2501.03262), the advantages of `advantages.reinforce_plus_plus`.

  `[B, T]`: returns_t = r_t + gamma returns_{t+1}, whitened over the batch's unmasked tokens.
  `group_size` is unused (no group baseline).
  """
  del group_size
  advantages, _ = adv.reinforce_plus_plus(jnp.asarray(batch["rewards"]), _valid_mask(batch), gamma=gamma)
  return advantages


@register_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline(batch, *, group_size: int) -> Array:
  """REINFORCE++ with a group-mean baseline, `advantages.reinforce_plus_plus_baseline`.

  `[B, T]`: (score_i - mean_group(score)) on the row's tokens, whitened over the batch, with
  score_i the row's reward (sum over unmasked tokens for `[B, T]` rewards).
  """
  return adv.reinforce_plus_plus_baseline(jnp.asarray(batch["rewards"]), _mask(batch), group_size=group_size,
                                          valid=_valid(batch))


@register_estimator("remax", needs=("baseline_rewards",))
def remax(batch, *, group_size: int) -> Array:
  """ReMax (arXiv 2310.10505), the advantages of `advantages.remax`.

  `[B, T]`: A_t = sum_{s >= t} r_s - b, with b = `batch["baseline_rewards"]` `[B]`, the reward
  of a greedy completion of the row's prompt. `group_size` is unused.
  """
  del group_size
  advantages, _ = adv.remax(jnp.asarray(batch["rewards"]), jnp.asarray(batch["baseline_rewards"]),
                            _valid_mask(batch))
  return advantages


@register_estimator("gae", needs=("values",))
def gae(batch, *, group_size: int, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True) -> Array:
  """GAE (arXiv 1506.02438) on `batch["values"]` `[B, T]`, `advantages.gae`.

  `[B, T]`: A_t = delta_t + gamma lam A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t; `[B]`
  rewards go on each row's last unmasked token first. With `whiten`, the advantages are then
  whitened over the batch's unmasked tokens, as verl does. `group_size` is unused.
  """
  del group_size
  mask = _valid_mask(batch)
  advantages, _ = adv.gae(_token_rewards(batch, mask), jnp.asarray(batch["values"]), mask, gamma=gamma, lam=lam)
  return adv.whiten(advantages, mask) if whiten else advantages


@register_estimator("discounted")
def discounted(batch, *, group_size: int, gamma: float = 1.0, whiten: bool = True) -> Array:
  """Per-token discounted returns of `rewards`, `advantages.discounted_returns` (no baseline).

  `[B, T]`: G_t = r_t + gamma G_{t'} over unmasked tokens (t' the next unmasked one); `[B]`
  rewards go on each row's last unmasked token first, so with gamma = 1 every token of a row
  gets its sequence reward. With `whiten`, the returns are whitened over the batch's unmasked
  tokens (which also centres them). `group_size` is unused.
  """
  del group_size
  mask = _valid_mask(batch)
  returns = adv.discounted_returns(_token_rewards(batch, mask), mask, gamma=gamma)
  return adv.whiten(returns, mask) if whiten else returns


# ----------------------------------------------------------------------------- process rewards


@register_estimator("pure_min_form", needs=("token_rewards",))
def pure_min_form(batch, *, group_size: int, temperature: float = 0.1, outcome_coef: float = 1.0,
                  whiten: bool = True) -> Array:
  """PURE min-form credit assignment (Cheng et al., arXiv 2504.15275).

  `[B, T]`, with p_t = `batch["token_rewards"]` and o_i = `batch["outcome_rewards"]`:

      w_t = softmax_t(-p_t / temperature) over the row's unmasked tokens,  p'_t = w_t p_t,
      G_t = sum_{s >= t} p'_s + outcome_coef (o_i - mean_{j != i} o_j)   (RLOO in the group),

  i.e. `advantages.min_form_returns` plus the RLOO-centred outcome (`advantages.rloo`) placed
  on the last unmasked token and summed to returns with gamma = 1; with `whiten` the returns
  are then whitened over the batch's unmasked tokens, as in PURE's code.

  Simplifications against PURE's code:
  - PURE also centres the process rewards with a per-token leave-one-out baseline across the
    group; this is not done here (the process part is the raw min-form return).
  - Every unmasked token counts as a step (suits the implicit PRM's per-token rewards). PURE
    takes the softmax over the step-end tokens only; with step rewards placed at step ends
    and zeros elsewhere, the zeros here enter the soft minimum as steps of reward 0.
  - `rewards` is not read: the process and outcome parts come from `token_rewards` and
    `outcome_rewards` separately.
  """
  mask = _valid_mask(batch)
  name = "pure_min_form"
  process = adv.min_form_returns(jnp.asarray(_require(batch, "token_rewards", name)), mask,
                                 temperature=temperature)
  outcome = adv.rloo(jnp.asarray(_require(batch, "outcome_rewards", name)), group_size=group_size,
                     valid=_valid(batch))
  outcome = adv.discounted_returns(adv.outcome_to_token_rewards(outcome_coef * outcome, mask), mask, gamma=1.0)
  returns = process + outcome
  return adv.whiten(returns, mask) if whiten else returns


TEMPERATURE_SCALES = ("absolute", "batch_std")


def _pure_step_weights(batch, mask, temperature, temperature_scale):
  """(step rewards, step mask, step lengths, min-form weights) of PURE's layout on `batch`."""
  if temperature_scale not in TEMPERATURE_SCALES:
    raise ValueError(f"temperature_scale={temperature_scale!r} is not one of {TEMPERATURE_SCALES}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  name = "pure"
  steps, step_mask, lengths = adv.pure_steps(jnp.asarray(_require(batch, "token_rewards", name)),
                                             jnp.asarray(_require(batch, "step_ends", name)), mask)
  t = temperature
  if temperature_scale == "batch_std":  # T x the std of the batch's step rewards (a scale, no gradient)
    n = jnp.maximum(jnp.sum(step_mask), 1.0)
    mean = jnp.sum(steps * step_mask) / n
    std = jnp.sqrt(jnp.sum(((steps - mean) * step_mask) ** 2) / n)
    t = temperature * jax.lax.stop_gradient(jnp.maximum(std, 1e-8))
  return steps, step_mask, lengths, adv.min_form_weights(steps, step_mask, temperature=t)


def _pure_stats(batch, *, group_size: int, temperature: float = 0.1, temperature_scale: str = "absolute",
                **_) -> dict:
  del group_size
  mask = _valid_mask(batch)
  _, step_mask, _, w = _pure_step_weights(batch, mask, temperature, temperature_scale)
  return {"stats/min_form_weight_entropy": adv.min_form_weight_entropy(w, step_mask),
          "stats/steps_per_completion": jnp.sum(step_mask) / jnp.maximum(jnp.sum(jnp.any(mask > 0, axis=-1)), 1)}


@register_estimator("pure", needs=("token_rewards", "step_ends"), stats=_pure_stats)
def pure(batch, *, group_size: int, temperature: float = 0.1, temperature_scale: str = "absolute",
         outcome_coef: float = 1.0, kl_coef: float = 0.0, baseline: str = "token", whiten: bool = True) -> Array:
  """PURE, min-form credit assignment over step-end rewards (Cheng et al., arXiv 2504.15275).

  As PURE's code (`openrlhf/utils/utils.py::turn_process_reward_logits_to_reward`,
  `openrlhf/trainer/ppo_utils/experience_maker.py`; formulas.md section 4), `[B, T]`:

  1. Steps (`advantages.pure_steps`): each row's steps end at `batch["step_ends"]` `[B, T]` (1 at
     the last token of each step, from `Task.step_ends`) and at its last token (PURE's final step
     ends at EOS); step k's reward r_k is the sum of `token_rewards` over its tokens, placed at
     its end.
  2. Min-form: w_k = softmax_k(-r_k / T) over the row's steps only, r'_k = w_k r_k
     (`advantages.min_form_weights`). T = `temperature` ("absolute", PURE: 0.1 on rewards in
     [-1, 1]) or `temperature` x the std of the batch's step rewards (`temperature_scale=
     "batch_std"`: a temperature at the rewards' scale, for PRMs whose rewards are far from
     [-1, 1]).
  3. Token baseline (`baseline="token"`, PURE's `reward_baseline=token`,
     `advantages.pure_token_baseline`): b_i = sum_{j != i} sum_k r'_{j,k} / sum_{j != i} len_j per
     token, b_i n_{i,k} subtracted at the end of step k (n_{i,k} its tokens); "none": no baseline.
  4. Verifiable reward: outcome_coef x RLOO(`outcome_rewards`) on the last token.
  5. KL in the reward (OpenRLHF's `reward - kl_coef * kl`, k1 estimator): -kl_coef (old_logp -
     ref_logp) on every token; needs `old_logp` and `ref_logp` when kl_coef > 0 (PURE's recipe:
     `--init_kl_coef 0.001`, which `configs/pure.py` sets).
  6. Returns: reverse cumulative sums (gamma = 1), whitened over the batch's unmasked tokens with
     `whiten`.

  Not ported: PURE also zeroes the returns at its step-separator tokens (no loss there); here
  every completion token keeps its return. `stats/min_form_weight_entropy` (1.0: uniform weights,
  mean-form; 0.0: a hard minimum) shows whether the transform is in effect.
  """
  if baseline not in ("token", "none"):
    raise ValueError(f"baseline={baseline!r} is not one of ('token', 'none')")
  mask = _valid_mask(batch)
  steps, _, lengths, w = _pure_step_weights(batch, mask, temperature, temperature_scale)
  process = w * steps
  if baseline == "token":
    process = process - adv.pure_token_baseline(process, lengths, mask, group_size=group_size, valid=_valid(batch))
  outcome = adv.rloo(jnp.asarray(_require(batch, "outcome_rewards", "pure")), group_size=group_size,
                     valid=_valid(batch))
  rewards = process + adv.outcome_to_token_rewards(outcome_coef * outcome, mask)
  if kl_coef:
    kl = checks.fill_masked(jnp.asarray(_require(batch, "old_logp", "pure"), jnp.float32)
                            - jnp.asarray(_require(batch, "ref_logp", "pure"), jnp.float32), mask)
    rewards = rewards - kl_coef * kl * mask
  returns = adv.discounted_returns(rewards, mask, gamma=1.0)
  return adv.whiten(returns, mask) if whiten else returns


@register_estimator("prime")
def prime_estimator(batch, *, group_size: int, process_coef: float = 5.0, outcome_coef: float = 5.0,
                    process_gamma: float = 1.0, outcome_gamma: float = 1.0, whiten: bool = True,
                    process_norm: str = "none") -> Array:
  """PRIME (arXiv 2502.01456), the advantages of `prime.prime_advantages`.

  `[B, T]`: leave-one-out baselines on the process rewards `batch["token_rewards"]` (when
  present) and on `batch["outcome_rewards"]`, each weighted and summed to returns, then
  whitened over the batch's unmasked tokens. Invalid rows are passed fully masked, so they get
  0 and are left out of the whitening and of their group's leave-one-out baselines (as rows
  without tokens are in `prime_advantages`).

  `process_norm` normalises the process rewards before the leave-one-out transform:
  "batch_norm" is PRIME's `prime_norm` (`prime.prime_norm`: scores / (max over the batch's
  valid rows and tokens of |reverse cumulative sum| + 1e-6), PRIME's recipe default, which
  `configs/prime.py` selects); "none" (the registry default) uses them as given.
  """
  token_rewards = batch["token_rewards"] if _present(batch, "token_rewards") else None
  outcome = jnp.asarray(_require(batch, "outcome_rewards", "prime"))
  mask = _valid_mask(batch)
  if token_rewards is not None:
    token_rewards = prime.prime_norm(jnp.asarray(token_rewards), mask, method=process_norm)
  elif process_norm not in prime.PRIME_NORMS:
    raise ValueError(f"process_norm={process_norm!r} is not one of {prime.PRIME_NORMS}")
  advantages, _ = prime.prime_advantages(
      token_rewards, outcome, mask,
      group_size=group_size, process_coef=process_coef, outcome_coef=outcome_coef, process_gamma=process_gamma,
      outcome_gamma=outcome_gamma, whiten=whiten)
  return advantages


@register_estimator("jepo")
def jepo(batch, *, group_size: int, multi_sample: bool = True) -> Array:
  """JEPO (arXiv 2503.19618) on `rewards` = log pi(a* | x, c_i) (the likelihood reward, kind "logprob").

  multi_sample=True: A_i = L_hat - vtilde_i with L_hat = log (1/n) sum_j pi(a*|x,c_j) and
  vtilde_i = log (1/(n-1)) sum_{j != i} pi(a*|x,c_j) over the group's n valid rows
  (`logprob_rewards.jepo_advantages`); multi_sample=False: the single-sample bound, whose
  leave-one-out baseline is RLOO's. Rows without a reward count as probability 0 in no one's
  sum and get 0; groups with fewer than two valid rows get 0.
  """
  r = _sequence_rewards(batch)
  valid = _valid(batch)
  if not multi_sample:
    return _per_sequence(adv.rloo(r, group_size=group_size, valid=valid), batch)
  checks.check_rank("rewards", r, 1, "[B]")
  x = jnp.where(valid, r, -jnp.inf).reshape(-1, group_size)
  v = valid.reshape(-1, group_size)
  n = jnp.sum(v, axis=1, keepdims=True).astype(x.dtype)
  ok = v & (n >= 2)
  safe = jnp.where(jnp.any(v, axis=1, keepdims=True), x, 0.0)  # an all-invalid group: no -inf - -inf
  group_bound = jax.nn.logsumexp(safe, axis=1, keepdims=True) - jnp.log(jnp.maximum(n, 1.0))
  others = jnp.where(jnp.eye(group_size, dtype=bool)[None], -jnp.inf, safe[:, None, :])
  others = jnp.where(ok[:, :, None], others, 0.0)  # rows that get 0 anyway: keep them finite
  loo = jax.nn.logsumexp(others, axis=-1) - jnp.log(jnp.maximum(n - 1.0, 1.0))
  out = jnp.where(ok, group_bound - loo, 0.0).reshape(-1)
  return _per_sequence(out, batch)
