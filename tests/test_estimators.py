"""Tests for objectives.estimators: wiring against the underlying functions, numpy goldens, errors."""
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import objectives  # noqa: F401  (registers everything)
from objectives import advantages as adv
from objectives import estimators, prime

G = 3  # group size
B, T = 6, 5
SETTINGS = hypothesis.settings(max_examples=12, deadline=None, derandomize=True)


def make_batch(seed=0, token_level=False, valid=None, empty_row=None):
  """Group-major batch; no fully masked row unless `empty_row`, one interior gap in row 1."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, B)
  lengths[0] = T
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  mask[1, 1] = 0.0  # an interior gap (e.g. tool output)
  if empty_row is not None:
    mask[empty_row] = 0.0
  outcome = rng.integers(0, 2, B).astype(np.float32) + rng.normal(0, 0.1, B).astype(np.float32)
  token_rewards = (rng.normal(0, 1, (B, T)) * mask).astype(np.float32)
  batch = {
      "outcome_rewards": outcome,
      "token_rewards": token_rewards,
      "mask": mask,
      "values": rng.normal(0, 1, (B, T)).astype(np.float32),
      "baseline_rewards": rng.normal(0.5, 0.3, B).astype(np.float32),
      "step_ends": (rng.random((B, T)) < 0.4).astype(np.float32),
  }
  if token_level:
    batch["rewards"] = np.asarray(adv.outcome_to_token_rewards(outcome, mask)) + token_rewards
  else:
    batch["rewards"] = outcome
  if valid is not None:
    batch["valid"] = np.asarray(valid, bool)
  return batch


# ----------------------------------------------------------------------------- direct calls


def _vmask(b):
  m = jnp.asarray(b["mask"])
  return m * jnp.asarray(b["valid"])[:, None] if "valid" in b else m


def _seq(b):
  r = jnp.asarray(b["rewards"])
  return jnp.sum(r * b["mask"], -1) if r.ndim == 2 else r


def _tok(b):
  r = jnp.asarray(b["rewards"])
  return adv.outcome_to_token_rewards(r, _vmask(b)) if r.ndim == 1 else r


def _direct(name, b):
  """The underlying function called by hand (with each estimator's default options)."""
  v, m, vm = b.get("valid"), b["mask"], _vmask(b)
  r = jnp.asarray(b["rewards"])
  if name == "group":
    return adv.group_advantages(r, group_size=G, mask=m if r.ndim == 2 else None, valid=v)
  if name == "rloo":
    return adv.rloo(_seq(b), group_size=G, valid=v)
  if name == "opo":
    return adv.opo(_seq(b), m.sum(-1), group_size=G, valid=v)
  if name == "gpg":
    return adv.gpg(_seq(b), group_size=G, valid=v)
  if name == "pass_at_k":
    return adv.pass_at_k(_seq(b), group_size=G, valid=v)
  if name == "reinforce_pp":
    return adv.reinforce_plus_plus(r, vm)[0]
  if name == "reinforce_pp_baseline":
    return adv.reinforce_plus_plus_baseline(r, m, group_size=G, valid=v)
  if name == "remax":
    return adv.remax(r, b["baseline_rewards"], vm)[0]
  if name == "gae":
    return adv.whiten(adv.gae(_tok(b), b["values"], vm)[0], vm)
  if name == "discounted":
    return adv.whiten(adv.discounted_returns(_tok(b), vm), vm)
  if name == "pure_min_form":
    outcome = adv.rloo(b["outcome_rewards"], group_size=G, valid=v)
    returns = adv.min_form_returns(b["token_rewards"], vm, temperature=0.1) + adv.discounted_returns(
        adv.outcome_to_token_rewards(outcome, vm), vm)
    return adv.whiten(returns, vm)
  if name == "prime":
    return prime.prime_advantages(b["token_rewards"], b["outcome_rewards"], vm, group_size=G)[0]
  if name == "pure":
    steps, step_mask, lengths = adv.pure_steps(b["token_rewards"], b["step_ends"], vm)
    p = adv.min_form_rewards(steps, step_mask, temperature=0.1)
    p = p - adv.pure_token_baseline(p, lengths, vm, group_size=G, valid=v)
    outcome = adv.rloo(b["outcome_rewards"], group_size=G, valid=v)
    return adv.whiten(adv.discounted_returns(p + adv.outcome_to_token_rewards(outcome, vm), vm), vm)
  if name == "jepo":  # numpy by hand: log-mean-exp over the group's valid rows minus the leave-one-out one
    x = np.asarray(_seq(b), np.float64).reshape(-1, G)
    ok = (np.asarray(m).sum(-1) > 0) & (np.ones(len(m), bool) if v is None else np.asarray(v, bool))
    ok = ok.reshape(-1, G)
    out = np.zeros_like(x)
    lme = lambda z: np.log(np.mean(np.exp(z)))  # noqa: E731
    for g in range(x.shape[0]):
      rows = np.flatnonzero(ok[g])
      for i in rows if len(rows) >= 2 else ():
        out[g, i] = lme(x[g, rows]) - lme(x[g, rows[rows != i]])
    return out.reshape(-1)
  raise AssertionError(f"no direct reference for {name!r}: add one when registering an estimator")


EXPECTED_NAMES = ["discounted", "gae", "gpg", "group", "jepo", "opo", "pass_at_k", "prime", "pure", "pure_min_form",
                  "reinforce_pp", "reinforce_pp_baseline", "remax", "rloo"]


def test_names_and_needs():
  assert estimators.names() == EXPECTED_NAMES
  assert estimators.needs("gae") == ("values",)
  assert estimators.needs("remax") == ("baseline_rewards",)
  assert estimators.needs("pure_min_form") == ("token_rewards",)
  assert estimators.needs("pure") == ("token_rewards", "step_ends")
  assert estimators.defaults("prime")["process_norm"] == "none"  # configs/prime.py selects "batch_norm"
  assert estimators.defaults("pure")["kl_coef"] == 0.0  # configs/pure.py selects PURE's 1e-3
  assert estimators.needs("group") == ()
  assert estimators.resolve_options("group", {}) == {"scale_rewards": "group", "eps": 1e-4}
  assert estimators.resolve_options("gae", {"lam": 0.95}) == {"gamma": 1.0, "lam": 0.95, "whiten": True}
  assert "group_size" not in estimators.defaults("rloo")


@pytest.mark.parametrize("token_level", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_matches_direct_call(name, token_level, with_valid):
  valid = [1, 1, 0, 1, 1, 1] if with_valid else None
  b = make_batch(1, token_level=token_level, valid=valid)
  out = estimators.compute(name, b, group_size=G)
  expected = _direct(name, b)
  assert out.dtype == jnp.float32 and out.shape == expected.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(out) != 0)


def test_options_reach_the_function():
  b = make_batch(2, token_level=True)
  np.testing.assert_allclose(
      estimators.compute("gae", b, group_size=G, options={"gamma": 0.9, "lam": 0.8, "whiten": False}),
      adv.gae(b["rewards"], b["values"], b["mask"], gamma=0.9, lam=0.8)[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      estimators.compute("group", b, group_size=G, options={"scale_rewards": "none"}),
      adv.group_advantages(b["rewards"], group_size=G, scale_rewards="none", mask=b["mask"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      estimators.compute("prime", b, group_size=G, options={"process_coef": 1.0, "whiten": False}),
      prime.prime_advantages(b["token_rewards"], b["outcome_rewards"], b["mask"], group_size=G, process_coef=1.0,
                             whiten=False)[0], rtol=1e-5, atol=1e-6)
  # prime without token rewards uses the outcome alone
  no_tok = {k: v for k, v in b.items() if k != "token_rewards"}
  np.testing.assert_allclose(estimators.compute("prime", no_tok, group_size=G),
                             prime.prime_advantages(None, b["outcome_rewards"], b["mask"], group_size=G)[0],
                             rtol=1e-5, atol=1e-6)


def test_jit_matches_eager():
  b = make_batch(3, token_level=True, valid=[1, 0, 1, 1, 1, 1])
  for name in ("group", "gae", "pure_min_form"):
    fn = jax.jit(functools.partial(estimators.compute, name, group_size=G))
    np.testing.assert_allclose(fn(b), estimators.compute(name, b, group_size=G), rtol=1e-5, atol=1e-6)


def test_rloo_token_rewards_use_row_sums():
  b = make_batch(4, token_level=True)
  sums = (b["rewards"] * b["mask"]).sum(-1)
  out = estimators.compute("rloo", b, group_size=G)
  expected = np.concatenate([s * G / (G - 1) - s.sum() / (G - 1) for s in sums.reshape(-1, G)])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # garbage on padding does not count
  dirty = dict(b, rewards=np.where(b["mask"] > 0, b["rewards"], 7.0).astype(np.float32))
  np.testing.assert_allclose(estimators.compute("rloo", dirty, group_size=G), out, rtol=1e-6)


# ----------------------------------------------------------------------------- numpy references


def np_whiten(x, mask):
  m = mask > 0
  mean = x[m].mean()
  var = ((x[m] - mean) ** 2).sum() / (m.sum() - 1)
  return np.where(m, (x - mean) / np.sqrt(var + 1e-8), 0.0)


def np_returns(r, mask, gamma):
  """Reverse discounted sum over each row's unmasked tokens (loop)."""
  out = np.zeros_like(r)
  for i in range(r.shape[0]):
    g = 0.0
    for t in reversed(range(r.shape[1])):
      if mask[i, t]:
        g = r[i, t] + gamma * g
        out[i, t] = g
  return out


def np_last(x, mask):
  out = np.zeros(mask.shape)
  for i, row in enumerate(mask):
    idx = np.nonzero(row)[0]
    if len(idx):
      out[i, idx[-1]] = x[i]
  return out


def np_pure(token_rewards, outcome, mask, group_size, temperature, outcome_coef, valid=None):
  """Min-form returns (softmax weights, reverse cumsum) + RLOO outcome at EOS, float64 loops."""
  valid = np.ones(len(outcome), bool) if valid is None else np.asarray(valid, bool)
  mask = mask * valid[:, None]
  process = np.zeros(mask.shape)
  loo = np.zeros(len(outcome))
  for i, row in enumerate(mask):
    others = [j for j in range(i - i % group_size, i - i % group_size + group_size) if j != i and valid[j]]
    if valid[i] and others:
      loo[i] = outcome[i] - np.mean(outcome[others])
    idx = np.nonzero(row)[0]
    if not len(idx):
      continue
    z = -token_rewards[i, idx] / temperature
    w = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    process[i, idx] = np.cumsum((w * token_rewards[i, idx])[::-1])[::-1]
  return process + np_returns(np_last(outcome_coef * loo, mask), mask, 1.0)


def test_discounted_matches_numpy_and_golden():
  b = make_batch(5, token_level=True)
  r, m = np.float64(b["rewards"]), b["mask"]
  out = estimators.compute("discounted", b, group_size=G, options={"gamma": 0.7, "whiten": False})
  np.testing.assert_allclose(out, np_returns(r, m, 0.7), rtol=1e-5, atol=1e-6)
  out = estimators.compute("discounted", b, group_size=G, options={"gamma": 0.7})
  np.testing.assert_allclose(out, np_whiten(np_returns(r, m, 0.7), m), rtol=1e-4, atol=1e-5)
  # [B] rewards sit on the last token: with gamma 1 every token of a row gets the row's reward
  b1 = make_batch(5)
  out = estimators.compute("discounted", b1, group_size=G, options={"whiten": False})
  np.testing.assert_allclose(out, b1["outcome_rewards"][:, None] * b1["mask"], rtol=1e-6)
  # by hand: r = [1, 2, pad, 4], gamma = 0.5 -> [1 + 0.5 (2 + 0.5 * 4), 2 + 0.5 * 4, 0, 4]
  tiny = {"rewards": np.array([[1.0, 2.0, 9.0, 4.0]] * 2, np.float32),
          "mask": np.array([[1, 1, 0, 1]] * 2, np.float32), "outcome_rewards": np.zeros(2, np.float32)}
  out = estimators.compute("discounted", tiny, group_size=2, options={"gamma": 0.5, "whiten": False})
  np.testing.assert_allclose(out[0], [3.0, 4.0, 0.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("valid", [None, [1, 1, 1, 1, 0, 1]])
def test_pure_min_form_matches_numpy(valid):
  b = make_batch(6, token_level=True, valid=valid)
  m = b["mask"] if valid is None else b["mask"] * np.asarray(valid, np.float32)[:, None]
  ref = np_pure(np.float64(b["token_rewards"]), np.float64(b["outcome_rewards"]), b["mask"], G, 0.5, 2.0, valid)
  opts = {"temperature": 0.5, "outcome_coef": 2.0, "whiten": False}
  out = estimators.compute("pure_min_form", b, group_size=G, options=opts)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  whitened = estimators.compute("pure_min_form", b, group_size=G, options={**opts, "whiten": True})
  np.testing.assert_allclose(whitened, np_whiten(ref, m), rtol=1e-4, atol=1e-4)


def test_pure_min_form_golden():
  """By hand, temperature 1: row 0 p = [0, 1] -> w = [e/(1+e), 1/(1+e)], p' = [0, 1/(1+e)],
  returns [1/(1+e)] * 2; row 1 p = [.5, .5] -> p' = [.25, .25], returns [.5, .25]. Outcomes
  [1, 0] -> RLOO [1, -1] on every token (gamma 1)."""
  b = {"rewards": np.array([1.0, 0.0], np.float32), "outcome_rewards": np.array([1.0, 0.0], np.float32),
       "token_rewards": np.array([[0.0, 1.0], [0.5, 0.5]], np.float32), "mask": np.ones((2, 2), np.float32)}
  out = estimators.compute("pure_min_form", b, group_size=2, options={"temperature": 1.0, "whiten": False})
  s = 1.0 / (1.0 + np.e)
  np.testing.assert_allclose(out, [[1.0 + s, 1.0 + s], [-0.5, -0.75]], rtol=1e-6)
  np.testing.assert_allclose(s, 0.26894142, rtol=1e-7)


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_names_and_suggests():
  with pytest.raises(KeyError, match=r"did you mean 'rloo'\?.*registered advantage estimators: \[.*'gae'"):
    estimators.spec("rlo")
  with pytest.raises(KeyError, match=r"did you mean 'group'"):
    estimators.compute("grup", make_batch(), group_size=G)
  with pytest.raises(KeyError, match="registered advantage estimators"):
    estimators.needs("zzz")


def test_unknown_option_names_accepted_ones():
  with pytest.raises(ValueError, match=r"'lamda' \(did you mean 'lam'\?\).*\['gamma', 'lam', 'whiten'\]"):
    estimators.compute("gae", make_batch(), group_size=G, options={"lamda": 0.9})
  with pytest.raises(ValueError, match=r"advantage estimator 'rloo' has no option 'eps'.*\[\]"):
    estimators.resolve_options("rloo", {"eps": 1.0})
  with pytest.raises(ValueError, match="group_size"):  # a run setting, not an option
    estimators.resolve_options("group", {"group_size": 4})


@pytest.mark.parametrize("name,key", [("gae", "values"), ("remax", "baseline_rewards"),
                                      ("pure_min_form", "token_rewards")])
def test_missing_needed_key_names_it(name, key):
  b = {k: v for k, v in make_batch().items() if k != key}
  with pytest.raises(ValueError, match=rf"advantage estimator '{name}' needs batch\['{key}'\]"):
    estimators.compute(name, b, group_size=G)
  # a dataclass-like batch may hold None for an absent field
  with pytest.raises(ValueError, match=rf"needs batch\['{key}'\]"):
    estimators.compute(name, dict(b, **{key: None}), group_size=G)


def test_gae_missing_values_message_points_to_roles():
  b = {k: v for k, v in make_batch().items() if k != "values"}
  with pytest.raises(ValueError, match=r"value estimates from a value role: add one to config\.roles"):
    estimators.compute("gae", b, group_size=G)


def test_bad_batch_layouts_name_the_key():
  b = make_batch()
  with pytest.raises(ValueError, match=r"batch\['mask'\]"):
    estimators.compute("rloo", dict(b, mask=b["mask"][:4]), group_size=G)
  with pytest.raises(ValueError, match=r"batch\['valid'\]"):
    estimators.compute("rloo", dict(b, valid=np.ones(4, bool)), group_size=G)
  with pytest.raises(ValueError, match=r"batch\['rewards'\]"):
    estimators.compute("rloo", dict(b, rewards=np.zeros((B, T, 2))), group_size=G)
  with pytest.raises(ValueError, match=r"needs batch\['rewards'\]"):
    estimators.compute("rloo", {k: v for k, v in b.items() if k != "rewards"}, group_size=G)
  with pytest.raises(ValueError, match="group_size"):
    estimators.compute("rloo", b, group_size=4)


def test_register_estimator():
  try:
    @estimators.register_estimator("_test_scaled", needs=("values",))
    def scaled(batch, *, group_size, scale=2.0):
      return scale * jnp.asarray(batch["rewards"])

    assert estimators.needs("_test_scaled") == ("values",)
    assert estimators.defaults("_test_scaled") == {"scale": 2.0}
    out = estimators.compute("_test_scaled", make_batch(), group_size=G, options={"scale": 3})
    np.testing.assert_allclose(out, 3 * make_batch()["rewards"], rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
      estimators.register_estimator("_test_scaled")(lambda batch, *, group_size: batch["rewards"])
    estimators.register_estimator("_test_scaled", overwrite=True)(lambda batch, *, group_size: batch["rewards"])
    assert estimators.defaults("_test_scaled") == {}
    with pytest.raises(ValueError, match="group_size"):
      estimators.register_estimator("_test_bad")(lambda batch, *, scale=1.0: batch["rewards"])
  finally:
    estimators._ESTIMATORS.remove("_test_scaled")
    estimators._ESTIMATORS.remove("_test_bad")


# ----------------------------------------------------------------------------- edge cases


def _edge_batch(seed, token_level):
  """Group 0 has equal rewards (zero variance); row 4 is fully masked; row 5 is invalid."""
  b = make_batch(seed, token_level=token_level, valid=[1, 1, 1, 1, 1, 0], empty_row=4)
  b["outcome_rewards"][:G] = 1.0
  b["token_rewards"][:G] = 0.5 * b["mask"][:G]
  if token_level:
    b["rewards"] = np.asarray(adv.outcome_to_token_rewards(b["outcome_rewards"], b["mask"])) + b["token_rewards"]
  else:
    b["rewards"] = b["outcome_rewards"].copy()
  return b


_JITTED = {}


def _jitted(name):
  if name not in _JITTED:  # compiled once per estimator: the shapes are fixed
    _JITTED[name] = jax.jit(functools.partial(estimators.compute, name, group_size=G))
  return _JITTED[name]


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**16), token_level=st.booleans())
def test_finite_and_zero_on_edge_rows(seed, token_level):
  b = _edge_batch(seed, token_level)
  for name in estimators.names():
    out = np.asarray(_jitted(name)(b))
    assert np.all(np.isfinite(out)), name
    np.testing.assert_array_equal(out[5], 0.0, err_msg=name)  # invalid
    np.testing.assert_array_equal(out[4], 0.0, err_msg=name)  # fully masked
    if out.ndim == 2:
      np.testing.assert_array_equal(out[b["mask"] == 0], 0.0, err_msg=name)
  # the zero-variance group gets 0 from the sequence-level group baselines
  for name in () if token_level else ("group", "rloo", "opo", "gpg", "pass_at_k"):
    np.testing.assert_allclose(np.asarray(_jitted(name)(b))[:G], 0.0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("token_level", [False, True])
def test_invalid_rows_do_not_affect_others(token_level):
  """Changing everything about an invalid row leaves every other row's advantage unchanged
  (prime: only its outcome reward enters the group baseline, which `prime` documents)."""
  b = make_batch(7, token_level=token_level, valid=[1, 1, 1, 1, 0, 1])
  changed = {k: np.array(v, copy=True) for k, v in b.items()}
  for key in ("rewards", "token_rewards", "values", "baseline_rewards", "outcome_rewards"):
    changed[key][4] = changed[key][4] + 3.0
  for name in estimators.names():
    other = dict(changed, outcome_rewards=b["outcome_rewards"]) if name == "prime" else changed
    np.testing.assert_allclose(estimators.compute(name, other, group_size=G),
                               estimators.compute(name, b, group_size=G), rtol=1e-5, atol=1e-6, err_msg=name)
