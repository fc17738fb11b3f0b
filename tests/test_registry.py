"""Objectives own their options; the reward-model objectives on flat batches; the rollout's mapping view."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reward.rollout import Rollout
from objectives import implicit_prm, registry


def test_options_come_from_the_signature():
  assert registry.defaults("prdp") == {"beta": 3e-5, "clip_eps": 1e-6, "reduce_steps": "mean", "pairs": "all"}
  assert registry.defaults("grpo")["loss_type"] == "dapo" and registry.defaults("grpo")["epsilon_high"] == 0.28
  assert registry.resolve_options("prdp", {"clip_eps": 1e-4}) == {**registry.defaults("prdp"), "clip_eps": 1e-4}
  assert registry.spec("implicit_prm_ce").stage == "reward_model" and registry.spec("rdp").stage == "rl"
  assert registry.names("reward_model") == ["implicit_prm_ce", "implicit_prm_dpo", "implicit_prm_kto", "outcome_rm_bce"]


def test_unknown_and_missing_options_are_named():
  with pytest.raises(ValueError, match=r"'grpo' has no option 'epsilom' \(did you mean 'epsilon'\?\).*options are"):
    registry.resolve_options("grpo", {"epsilom": 0.1})

  @registry.register("test_needs_scale", overwrite=True)
  def needs_scale(logp, batch, *, scale):
    return jnp.sum(logp) * scale, 1.0, {}

  with pytest.raises(ValueError, match=r"'test_needs_scale' needs option\(s\) \['scale'\]"):
    registry.resolve_options("test_needs_scale", {})

  @registry.register("test_open", overwrite=True)
  def open_options(logp, batch, **options):
    return jnp.sum(logp), 1.0, {}

  assert registry.resolve_options("test_open", {"anything": 1}) == {"anything": 1}
  with pytest.raises(KeyError, match="did you mean 'prdp'"):
    registry.spec("prpd")
  with pytest.raises(ValueError, match="stage="):
    registry.register("test_bad_stage", stage="pretraining")


def test_needs_reference_follows_the_resolved_options():
  assert not registry.requires_reference("grpo") and registry.requires_reference("grpo", {"beta": 0.04})
  assert registry.requires_reference("rdp") and registry.requires_reference("implicit_prm_kto")


def _prm_batch(seed=0):
  rng = np.random.default_rng(seed)
  b, t = 6, 5
  mask = (np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None]).astype(np.float32)
  logp = (rng.normal(size=(b, t)) * 0.3 - 2).astype(np.float32)
  ref = (rng.normal(size=(b, t)) * 0.3 - 2).astype(np.float32)
  return logp, {"ref_logp": ref, "mask": mask, "labels": np.array([1, 0, 0, 1, 1, 0], np.float32),
                "group_ids": np.array([0, 0, 0, 1, 1, 1], np.int32)}


def test_registered_dpo_prm_pairs_correct_and_incorrect_samples_of_a_prompt():
  logp, batch = _prm_batch()
  beta = 0.3
  total, count, metrics = registry.get("implicit_prm_dpo")(jnp.asarray(logp), batch, beta=beta)
  rho = np.sum((logp - batch["ref_logp"]) * batch["mask"], axis=1)
  pairs = [(0, 1), (0, 2), (3, 5), (4, 5)]  # (correct, incorrect) within each prompt
  expected = sum(np.log1p(np.exp(-beta * (rho[i] - rho[j]))) for i, j in pairs)
  assert float(count) == len(pairs)
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
  # The gradient: d/drho_i of -log sigma(beta (rho_i - rho_j)) = -beta sigma(-beta (rho_i - rho_j)).
  grad = jax.grad(lambda x: registry.get("implicit_prm_dpo")(x, batch, beta=beta)[0])(jnp.asarray(logp))
  g = np.zeros(6)
  for i, j in pairs:
    s = 1.0 / (1.0 + np.exp(beta * (rho[i] - rho[j])))
    g[i] -= beta * s
    g[j] += beta * s
  np.testing.assert_allclose(np.asarray(grad), g[:, None] * batch["mask"], rtol=1e-5, atol=1e-7)
  assert 0.0 <= float(metrics["stats/prm_pair_accuracy"]) <= 1.0


def test_registered_kto_prm_is_the_batch_sum_of_kto_loss():
  logp, batch = _prm_batch(1)
  total, den, _ = registry.get("implicit_prm_kto")(jnp.asarray(logp), batch, beta=0.1, kl_reference=0.2)
  value, _ = implicit_prm.kto_loss(jnp.asarray(logp), batch["ref_logp"], batch["mask"], batch["labels"],
                                   beta=0.1, kl_reference=0.2)
  np.testing.assert_allclose(float(total), float(value) * 6, rtol=1e-6)
  assert float(den) == 6
  with pytest.raises(ValueError, match="kl_reference must be a number"):
    registry.get("implicit_prm_kto")(jnp.asarray(logp), batch, kl_reference=None)


def test_rollout_reads_like_a_mapping_and_is_a_pytree():
  r = Rollout(actions=jnp.zeros((2, 3), jnp.int32), mask=jnp.ones((2, 3)), old_logp=jnp.zeros((2, 3)),
              group_ids=jnp.array([0, 0]), extras={"labels": jnp.array([1.0, 0.0])})
  assert set(r) == {"actions", "mask", "old_logp", "group_ids", "labels"} and "ref_logp" not in r
  assert r.get("ref_logp") is None and r["labels"].shape == (2,)
  with pytest.raises(KeyError, match="no 'ref_logp'.*it has"):
    r["ref_logp"]  # noqa: B018
  r2 = r.update(ref_logp=jnp.ones((2, 3)), values=jnp.ones((2, 3)))
  assert "ref_logp" in r2 and "values" in r2.extras and len(r2) == 7
  half = jax.tree.map(lambda x: x[:1], r2)
  assert isinstance(half, Rollout) and half.num_rows == 1 and half["values"].shape == (1, 3)
  assert len(jax.tree.leaves(r2)) == 7
