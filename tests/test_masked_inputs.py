"""Masked inputs are ignored: NaN or +-inf at masked positions (and in the per-row inputs of fully
masked or invalid rows) changes no loss, output or gradient of any objective, advantage estimator
or KL estimator, and invalid hyper-parameters are errors that name the option."""
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import objectives  # noqa: F401  (registers everything)
from objectives import aggregation, checks, estimators, grpo, implicit_prm, kl, logprob_rewards, prime, rdp, registry

SETTINGS = hypothesis.settings(max_examples=10, deadline=None, derandomize=True)
POISONS = (np.nan, np.inf, -np.inf)
G = 2  # group size: every batch below has an even number of rows

shapes = st.tuples(st.sampled_from([4, 6]), st.integers(3, 5))


# ----------------------------------------------------------------------------- helpers


def make_mask(rng, b, t, empty_row):
  """Random `[B, T]` 0/1 mask with a token in every row except, when `empty_row`, one fully masked row."""
  mask = (rng.random((b, t)) < 0.6).astype(np.float32)
  mask[np.arange(b), rng.integers(0, t, b)] = 1.0
  if empty_row:
    mask[rng.integers(b)] = 0.0
  return mask


def logprobs(rng, shape):
  return (-3.0 * rng.random(shape) - 0.05).astype(np.float32)


def normal(rng, shape):
  return rng.normal(size=shape).astype(np.float32)


def poison(x, where, value):
  """`x` with `value` (NaN or +-inf) where `where` (broadcast to x) is True."""
  return np.where(np.broadcast_to(where, np.shape(x)), np.float32(value), x).astype(np.asarray(x).dtype)


def assert_same(clean, poisoned, what):
  """Every leaf of `poisoned` is finite and equal to the matching leaf of `clean`."""
  clean_leaves, poisoned_leaves = jax.tree.leaves(clean), jax.tree.leaves(poisoned)
  assert len(clean_leaves) == len(poisoned_leaves), what
  for c, p in zip(clean_leaves, poisoned_leaves):
    p = np.asarray(p, np.float64)
    assert np.all(np.isfinite(p)), f"{what}: not finite: {p}"
    np.testing.assert_allclose(p, np.asarray(c, np.float64), rtol=1e-6, atol=1e-7, err_msg=what)


def value_and_grad(fn, argnums=0):
  """`fn(*args) -> (scalar, aux)` as `args -> ((scalar, aux), grad)`."""
  return jax.value_and_grad(fn, argnums=argnums, has_aux=True)


def objective_value_and_grad(fn, x):
  """A registered objective `fn(x) -> (sum, denominator, metrics)`: ((sum, (denominator, metrics)), grad)."""
  def split(y):
    total, den, metrics = fn(y)
    return total, (den, metrics)
  return value_and_grad(split)(jnp.asarray(x))


# ----------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("name", ["logp", "old_logp", "ref_logp", "advantages"])
def test_grpo_nan_in_a_fully_masked_row_regression(loss_type, name):
  """Was: NaN loss and NaN gradient for every loss_type (NaN * 0 in the masked sums)."""
  rng = np.random.default_rng(0)
  b, t = 3, 4
  mask = np.ones((b, t), np.float32)
  mask[2] = 0.0
  mask[0, 3] = 0.0
  inputs = {"logp": logprobs(rng, (b, t)), "old_logp": logprobs(rng, (b, t)),
            "ref_logp": logprobs(rng, (b, t)), "advantages": normal(rng, (b,))}
  bad = dict(inputs)
  bad[name] = poison(inputs[name], (mask.sum(-1) == 0) if name == "advantages" else mask == 0, np.nan)

  def run(x):
    fn = functools.partial(grpo.loss, loss_type=loss_type, beta=0.04)
    return value_and_grad(lambda lp: fn(lp, x["old_logp"], x["advantages"], mask, ref_logp=x["ref_logp"]))(
        jnp.asarray(x["logp"]))

  (value, metrics), grad = run(bad)
  (clean_value, clean_metrics), clean_grad = run(inputs)
  assert_same((clean_value, clean_metrics, clean_grad), (value, metrics, grad), f"grpo {loss_type} {name}")


def _padded_prm_inputs():
  rng = np.random.default_rng(1)
  b, t = 4, 5
  mask = np.ones((b, t), np.float32)
  mask[:, 3:] = 0.0
  logp, old, ref = logprobs(rng, (b, t)), logprobs(rng, (b, t)), logprobs(rng, (b, t))
  bad_ref = poison(ref, mask == 0, -np.inf)
  return logp, old, ref, bad_ref, mask, normal(rng, (b,))


def test_ce_loss_with_neg_inf_ref_logp_at_padding_regression():
  """Was: NaN loss (-inf * 0 in the masked log-ratio sum)."""
  logp, _, ref, bad_ref, mask, _ = _padded_prm_inputs()
  labels = np.array([1.0, 0.0, 1.0, 0.0], np.float32)

  def ce(r):
    fn = functools.partial(implicit_prm.ce_loss, beta=0.05)
    return value_and_grad(fn)(jnp.asarray(logp), r, mask, labels)

  assert_same(ce(ref), ce(bad_ref), "ce_loss")


def test_prdp_loss_with_neg_inf_ref_logp_at_padding_regression():
  """Was: NaN loss (-inf * 0 in the masked log-ratio sum)."""
  logp, old, ref, bad_ref, mask, rewards = _padded_prm_inputs()

  def prdp(r):
    fn = functools.partial(rdp.prdp_loss, beta=0.1, clip_eps=0.05)
    return value_and_grad(lambda lp: fn(lp, old[None], r[None], rewards[None], mask[None]))(
        jnp.asarray(logp)[None])

  assert_same(prdp(ref), prdp(bad_ref), "prdp_loss")


# ----------------------------------------------------------------------------- grpo and kl


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), per_token_adv=st.booleans(), on_policy=st.booleans(),
                  kl_estimator=st.sampled_from(kl.ESTIMATORS))
def test_grpo_ignores_masked_values(shape, seed, value, empty_row, per_token_adv, on_policy, kl_estimator):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  off, empty = mask == 0, mask.sum(-1) == 0
  clean = {"logp": logprobs(rng, (b, t)), "old_logp": logprobs(rng, (b, t)), "ref_logp": logprobs(rng, (b, t)),
           "advantages": normal(rng, (b, t) if per_token_adv else (b,)), "is_weight": rng.random((b, t)) + 0.5}
  bad = {k: poison(v, off if v.ndim == 2 else empty, value) for k, v in clean.items()}
  if on_policy:
    clean["old_logp"] = bad["old_logp"] = None

  def run(x, loss_type, level):
    fn = functools.partial(grpo.loss, loss_type=loss_type, beta=0.1, kl_estimator=kl_estimator,
                           importance_sampling_level=level, epsilon_high=0.28, delta=1.6)
    return value_and_grad(lambda lp: fn(lp, x["old_logp"], x["advantages"], mask, ref_logp=x["ref_logp"],
                                        is_weight=x["is_weight"]))(jnp.asarray(x["logp"]))

  for loss_type in grpo.LOSS_TYPES:
    for level in grpo.IMPORTANCE_SAMPLING_LEVELS:
      assert_same(run(clean, loss_type, level), run(bad, loss_type, level), f"grpo {loss_type} {level}")

  # The registered objective reads the same arrays from the batch.
  def registered(x):
    batch = {"mask": mask, **{k: v for k, v in x.items() if k != "logp" and v is not None}}
    return objective_value_and_grad(functools.partial(registry.get("grpo"), batch=batch, beta=0.1), x["logp"])

  assert_same(registered(clean), registered(bad), "registered grpo")


@pytest.mark.parametrize("estimator", kl.ESTIMATORS)
def test_every_kl_estimator_through_grpo_ignores_masked_values(estimator):
  rng = np.random.default_rng(5)
  mask = make_mask(rng, 4, 5, True)
  logp, ref, adv = logprobs(rng, (4, 5)), logprobs(rng, (4, 5)), normal(rng, (4,))

  def run(lp, r):
    fn = functools.partial(grpo.loss, loss_type="grpo", beta=0.5, kl_estimator=estimator)
    return value_and_grad(lambda x: fn(x, None, adv, mask, ref_logp=r))(jnp.asarray(lp))

  clean = run(logp, ref)
  for value in POISONS:
    assert_same(clean, run(poison(logp, mask == 0, value), poison(ref, mask == 0, -value)), f"kl {estimator}")


@pytest.mark.parametrize("estimator", kl.ESTIMATORS)
def test_kl_estimate_is_finite_on_masked_inputs_zero_filled(estimator):
  """Callers mask the inputs (`checks.fill_masked`), not the outputs: the estimate and its
  gradient are then finite, and 0 where masked."""
  rng = np.random.default_rng(2)
  mask = make_mask(rng, 4, 5, True)
  logp = poison(logprobs(rng, (4, 5)), mask == 0, np.nan)
  ref = poison(logprobs(rng, (4, 5)), mask == 0, -np.inf)

  def total(lp):
    est = kl.estimate(checks.fill_masked(lp, mask), checks.fill_masked(ref, mask), estimator=estimator)
    return jnp.sum(est * mask), est

  (value, est), grad = value_and_grad(total)(jnp.asarray(logp))
  assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(est))
  np.testing.assert_array_equal(np.asarray(est)[mask == 0], 0.0)
  np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)


# ----------------------------------------------------------------------------- rdp, prdp


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), reduce_steps=st.sampled_from(rdp.REDUCE_STEPS),
                  pairs=st.sampled_from(rdp.PAIRS))
def test_rdp_family_ignores_masked_values(shape, seed, value, empty_row, reduce_steps, pairs):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  off, empty = mask == 0, mask.sum(-1) == 0
  clean = {"logp": logprobs(rng, (b, t)), "old_logp": logprobs(rng, (b, t)), "ref_logp": logprobs(rng, (b, t)),
           "rewards": normal(rng, (b,))}
  bad = {k: poison(v, off if v.ndim == 2 else empty, value) for k, v in clean.items()}
  n = b // G
  nested = lambda x: x.reshape(n, G, *x.shape[1:])  # noqa: E731  [N, G, ...]
  options = dict(beta=0.5, reduce_steps=reduce_steps, pairs=pairs)

  def direct(x):
    lp = jnp.asarray(nested(x["logp"]))
    m, ref, old, r = nested(mask), nested(x["ref_logp"]), nested(x["old_logp"]), nested(x["rewards"])
    return (value_and_grad(lambda y: rdp.rdp_loss(y, ref, r, m, **options))(lp),
            value_and_grad(lambda y: rdp.prdp_loss(y, old, ref, r, m, clip_eps=0.05, **options))(lp),
            rdp.reduce_log_ratios(jnp.asarray(x["logp"]) - x["ref_logp"], mask, reduce_steps=reduce_steps))

  def registered(x):
    batch = {"mask": mask, "group_ids": np.repeat(np.arange(n), G),
             **{k: v for k, v in x.items() if k != "logp"}}
    out = []
    for name, extra in (("rdp", {}), ("prdp", {"clip_eps": 0.05})):
      fn = functools.partial(registry.get(name), batch=batch, **options, **extra)
      out.append(objective_value_and_grad(fn, x["logp"]))
    return out

  assert_same(direct(clean), direct(bad), "rdp_loss / prdp_loss / reduce_log_ratios")
  assert_same(registered(clean), registered(bad), "registered rdp / prdp")


# ----------------------------------------------------------------------------- implicit PRM


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), kl_reference=st.sampled_from([None, 0.3]))
def test_implicit_prm_ignores_masked_values(shape, seed, value, empty_row, kl_reference):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  rej_mask = make_mask(rng, b, t, not empty_row)
  off, empty = mask == 0, mask.sum(-1) == 0
  ends = (rng.random((b, t)) < 0.4) & (mask > 0)
  clean = {"logp": logprobs(rng, (b, t)), "ref_logp": logprobs(rng, (b, t)), "rej_logp": logprobs(rng, (b, t)),
           "rej_ref": logprobs(rng, (b, t)), "labels": rng.random(b).astype(np.float32),
           "tok": normal(rng, (b, t))}
  # Token rewards after a row's last step end belong to no step.
  after_last_end = np.flip(np.cumsum(np.flip(ends, -1), -1), -1) == 0
  where = {"logp": off, "ref_logp": off, "rej_logp": rej_mask == 0, "rej_ref": rej_mask == 0, "labels": empty,
           "tok": after_last_end}
  bad = {k: poison(v, where[k], value) for k, v in clean.items()}
  beta = 0.3

  def losses(x):
    lp, ref, labels = jnp.asarray(x["logp"]), x["ref_logp"], x["labels"]
    out = {
        "ce_loss": value_and_grad(functools.partial(implicit_prm.ce_loss, beta=beta))(lp, ref, mask, labels),
        "kto_loss": value_and_grad(functools.partial(implicit_prm.kto_loss, beta=beta, desirable_weight=1.5,
                                                     kl_reference=kl_reference))(lp, ref, mask, labels),
        "dpo_loss": value_and_grad(functools.partial(implicit_prm.dpo_loss, beta=beta), argnums=(0, 3))(
            lp, ref, mask, jnp.asarray(x["rej_logp"]), x["rej_ref"], rej_mask),
    }
    batch = {"ref_logp": ref, "mask": mask, "labels": labels, "group_ids": np.repeat(np.arange(b // G), G)}
    for name in ("implicit_prm_ce", "implicit_prm_dpo", "implicit_prm_kto"):
      out[name] = objective_value_and_grad(functools.partial(registry.get(name), batch=batch, beta=beta), lp)
    return out

  def rewards(x):
    def scores(lp):
      tok = implicit_prm.token_rewards(lp, x["ref_logp"], mask, beta=beta)
      q, score = implicit_prm.step_scores(tok, ends, aggregate=aggregate)
      r, _ = implicit_prm.step_rewards(tok, ends)
      seq = implicit_prm.sequence_rewards(lp, x["ref_logp"], mask, beta=beta)
      return jnp.sum(score) + jnp.sum(r) + jnp.sum(seq) + jnp.sum(tok), (tok, q, score, r, seq)

    def direct(tok):  # the step functions on token rewards that hold anything after the last step end
      q, score = implicit_prm.step_scores(tok, ends, aggregate=aggregate)
      r, _ = implicit_prm.step_rewards(tok, ends)
      return jnp.sum(score) + jnp.sum(r), (q, score, r)

    out = {}
    for aggregate in implicit_prm.AGGREGATES:
      out[aggregate] = (value_and_grad(scores)(jnp.asarray(x["logp"])),
                        value_and_grad(direct)(jnp.asarray(x["tok"])))
    return out

  clean_losses, bad_losses = losses(clean), losses(bad)
  for name in clean_losses:
    (c_value, c_aux), c_grad = clean_losses[name]
    (p_value, p_aux), p_grad = bad_losses[name]
    assert_same((c_value, c_grad), (p_value, p_grad), name)
    if name not in ("ce_loss", "implicit_prm_ce"):  # CE's accuracy reads the raw label of an empty row
      assert_same(c_aux, p_aux, f"{name} metrics")
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(p_aux)), name
  assert_same(rewards(clean), rewards(bad), "token_rewards / step_rewards / step_scores / sequence_rewards")


# ----------------------------------------------------------------------------- value


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), clip_range=st.sampled_from([None, 0.2]),
                  mode=st.sampled_from(aggregation.AGGREGATIONS), with_old=st.booleans())
def test_value_mse_ignores_masked_values(shape, seed, value, empty_row, clip_range, mode, with_old):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  clean = {"values": normal(rng, (b, t)), "old_values": normal(rng, (b, t)), "returns": normal(rng, (b, t))}
  bad = {k: poison(v, mask == 0, value) for k, v in clean.items()}

  def run(x):
    batch = {"mask": mask, "returns": x["returns"], **({"old_values": x["old_values"]} if with_old else {})}
    fn = functools.partial(registry.get("value_mse"), batch=batch, clip_range=clip_range, aggregation=mode)
    return objective_value_and_grad(fn, x["values"])

  assert_same(run(clean), run(bad), "value_mse")


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS), empty_row=st.booleans())
def test_outcome_rm_ignores_masked_values(shape, seed, value, empty_row):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  values = normal(rng, (b, t))
  labels = (rng.random(b) < 0.5).astype(np.float32)
  bad_labels = np.where(mask.sum(-1) > 0, labels, value).astype(np.float32)  # an empty row's label: unread

  def run(x, y):
    return objective_value_and_grad(functools.partial(registry.get("outcome_rm_bce"), batch={"mask": mask, "labels": y}), x)

  assert_same(run(values, labels), run(poison(values, mask == 0, value), bad_labels), "outcome_rm_bce")


# ----------------------------------------------------------------------------- PRIME, likelihood rewards


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), whiten=st.booleans(),
                  sources=st.sampled_from(["both", "process", "outcome"]))
def test_prime_advantages_ignore_masked_values(shape, seed, value, empty_row, whiten, sources):
  b, t = shape
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, b)
  if empty_row:
    lengths[rng.integers(b)] = 0
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)  # right-padded
  clean = {"process": normal(rng, (b, t)), "outcome": rng.integers(0, 2, b).astype(np.float32)}
  bad = {"process": poison(clean["process"], mask == 0, value),
         "outcome": poison(clean["outcome"], lengths == 0, value)}
  weights = normal(rng, (b, t))

  def run(x):
    def fn(p):
      adv, ret = prime.prime_advantages(p if sources != "outcome" else None,
                                        x["outcome"] if sources != "process" else None, mask, group_size=G,
                                        process_coef=2.0, outcome_coef=3.0, whiten=whiten)
      return jnp.sum(adv * weights), (adv, ret)
    return value_and_grad(fn)(jnp.asarray(x["process"]))

  assert_same(run(clean), run(bad), "prime_advantages")


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), sft_weights=st.booleans())
def test_logprob_rewards_ignore_masked_values(shape, seed, value, empty_row, sft_weights):
  b, t = shape
  rng = np.random.default_rng(seed)
  cot_mask, answer_mask = make_mask(rng, b, t, empty_row), make_mask(rng, b, t + 1, empty_row)
  clean = {"cot": logprobs(rng, (b, t)), "answer": logprobs(rng, (b, t + 1)), "advantages": normal(rng, (b,)),
           "sft_weights": rng.random(b).astype(np.float32)}
  # The registered objective reads "cot" under both masks.
  where = {"cot": (cot_mask == 0) & (answer_mask[:, :t] == 0), "answer": answer_mask == 0,
           "advantages": cot_mask.sum(-1) == 0,
           "sft_weights": answer_mask.sum(-1) == 0}
  bad = {k: poison(v, where[k], value) for k, v in clean.items()}

  def run(x):
    out = {}
    for kind in logprob_rewards.KINDS:
      fn = lambda a: (lambda r: (jnp.sum(r * jnp.arange(1.0, b + 1)), r))(  # noqa: E731
          logprob_rewards.answer_reward(a, answer_mask, kind=kind, empty_reward=-1.0))
      out[kind] = value_and_grad(fn)(jnp.asarray(x["answer"]))
    weights = x["sft_weights"] if sft_weights else None
    loss = functools.partial(logprob_rewards.likelihood_loss, sft_coef=0.5, sft_weights=weights)
    out["likelihood_loss"] = value_and_grad(lambda c, a: loss(c, cot_mask, a, answer_mask, x["advantages"]),
                                            argnums=(0, 1))(jnp.asarray(x["cot"]), jnp.asarray(x["answer"]))
    # The registered objective reads both terms from one [B, T] array: CoT mask and answer mask on it.
    batch = {"mask": cot_mask, "answer_mask": answer_mask[:, :t], "advantages": x["advantages"],
             "rewards": x["sft_weights"]}
    out["likelihood_objective"] = objective_value_and_grad(functools.partial(
        logprob_rewards.likelihood_objective, batch=batch, sft_weight="reward" if sft_weights else "one"),
        jnp.asarray(x["cot"]))
    return out

  assert_same(run(clean), run(bad), "answer_reward / likelihood_loss")


# ----------------------------------------------------------------------------- advantage estimators


@SETTINGS
@hypothesis.given(shape=shapes, seed=st.integers(0, 2**16), value=st.sampled_from(POISONS),
                  empty_row=st.booleans(), token_level=st.booleans(), with_valid=st.booleans())
def test_estimators_ignore_masked_and_invalid_entries(shape, seed, value, empty_row, token_level, with_valid):
  b, t = shape
  rng = np.random.default_rng(seed)
  mask = make_mask(rng, b, t, empty_row)
  valid = rng.random(b) > 0.3 if with_valid else np.ones(b, bool)
  clean = {
      "rewards": normal(rng, (b, t) if token_level else (b,)),
      "outcome_rewards": rng.integers(0, 2, b).astype(np.float32) + normal(rng, (b,)) * 0.1,
      "token_rewards": normal(rng, (b, t)),
      "values": normal(rng, (b, t)),
      "baseline_rewards": normal(rng, (b,)),
      "step_ends": (rng.random((b, t)) < 0.4).astype(np.float32),  # PURE's step-end mask
  }
  absent_row = (mask.sum(-1) == 0) | ~valid
  off = (mask == 0) | ~valid[:, None]  # per-token entries of invalid rows are ignored too
  bad = {k: poison(v, off if v.ndim == 2 else absent_row, value) for k, v in clean.items()}
  extra = {"mask": mask, **({"valid": valid} if with_valid else {})}
  for name in estimators.names():
    out = estimators.compute(name, {**bad, **extra}, group_size=G)
    assert_same(estimators.compute(name, {**clean, **extra}, group_size=G), out, name)
    if out.ndim == 2:
      np.testing.assert_array_equal(np.asarray(out)[off], 0.0, err_msg=name)
    else:
      np.testing.assert_array_equal(np.asarray(out)[absent_row], 0.0, err_msg=name)


# ----------------------------------------------------------------------------- hyper-parameter errors


def _grpo_inputs():
  rng = np.random.default_rng(3)
  return logprobs(rng, (4, 3)), logprobs(rng, (4, 3)), normal(rng, (4,)), np.ones((4, 3), np.float32)


@pytest.mark.parametrize("option", ["epsilon", "epsilon_high"])
def test_grpo_negative_clip_range_is_an_error_naming_it(option):
  logp, old, adv, mask = _grpo_inputs()
  with pytest.raises(ValueError, match=f"{option} must be >= 0"):
    grpo.loss(logp, old, adv, mask, **{option: -0.1})
  with pytest.raises(ValueError, match=f"{option} must be >= 0"):
    registry.get("grpo")(logp, {"old_logp": old, "advantages": adv, "mask": mask}, **{option: -0.1})
  # A traced clip range (e.g. a schedule) cannot be checked and is accepted.
  value = jax.jit(lambda e: grpo.loss(logp, old, adv, mask, **{option: e})[0])(0.2)
  assert np.isfinite(value)


def _prm_inputs():
  rng = np.random.default_rng(4)
  mask = np.ones((4, 3), np.float32)
  mask[3] = 0.0  # a row without tokens
  return logprobs(rng, (4, 3)), logprobs(rng, (4, 3)), mask


@pytest.mark.parametrize("bad_label", [1.5, -0.5, np.nan])
def test_ce_labels_outside_unit_interval_are_an_error_naming_them(bad_label):
  logp, ref, mask = _prm_inputs()
  labels = np.array([1.0, bad_label, 0.0, 1.0], np.float32)
  batch = {"ref_logp": ref, "mask": mask, "labels": labels}
  for call in (lambda: implicit_prm.ce_loss(logp, ref, mask, labels, beta=0.05),
               lambda: implicit_prm.ce_loss_terms(logp, ref, mask, labels, beta=0.05),
               lambda: registry.get("implicit_prm_ce")(logp, batch)):
    with pytest.raises(ValueError, match=r"labels .* must be in \[0, 1\]"):
      call()
  # The label of a row without tokens is not used, so it is not checked either.
  ok = np.array([1.0, 0.0, 0.5, bad_label], np.float32)
  assert np.isfinite(implicit_prm.ce_loss(logp, ref, mask, ok, beta=0.05)[0])
  # Traced labels (under jit) cannot be checked: documented, no error.
  assert jax.jit(lambda y: implicit_prm.ce_loss(logp, ref, mask, y, beta=0.05)[0])(labels).shape == ()


def test_other_hyper_parameter_errors_name_the_option():
  logp, ref, mask = _prm_inputs()
  labels = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
  batch = {"ref_logp": ref, "old_logp": ref, "mask": mask, "rewards": labels,
           "group_ids": np.array([0, 0, 1, 1])}
  with pytest.raises(ValueError, match="clip_eps must be >= 0"):
    rdp.prdp_loss(logp[None], ref[None], ref[None], labels[None], mask[None], beta=0.1, clip_eps=-1e-3)
  with pytest.raises(ValueError, match="clip_eps must be >= 0"):
    registry.get("prdp")(logp, batch, clip_eps=-1e-3)
  for beta in (0.0, -0.1):
    with pytest.raises(ValueError, match="beta must be > 0"):
      rdp.rdp_loss(logp[None], ref[None], labels[None], mask[None], beta=beta)
    with pytest.raises(ValueError, match="beta must be > 0"):
      registry.get("rdp")(logp, batch, beta=beta)
    for name in ("implicit_prm_ce", "implicit_prm_dpo", "implicit_prm_kto"):
      with pytest.raises(ValueError, match="beta must be > 0"):
        registry.get(name)(logp, {**batch, "labels": labels}, beta=beta)
  with pytest.raises(ValueError, match="beta must be >= 0"):
    grpo.loss(logp, ref, labels, mask, beta=-0.1, ref_logp=ref)
