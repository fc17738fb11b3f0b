"""Meshes, logical-axis rules, and training that gives the same numbers on any mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import sharded_run
from jaxrl_reward import checkpoint as checkpoint_lib
from jaxrl_reward import sampling
from jaxrl_reward import sharding
from jaxrl_reward import experiment
from models import transformer

RULES = sharding.merge_rules(())


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ----------------------------------------------------------------------------- meshes and specs


def test_make_mesh_fills_the_remaining_axis():
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.make_mesh((("data", 2),), devices=jax.devices()[:2]).size == 2


@pytest.mark.parametrize("axes, message", [
    ((("data", -1), ("fsdp", -1)), "at most one"),
    ((("data", 3),), "needs 3 devices"),
    ((("data", 2), ("data", 4)), "distinct"),
    ((("data", 0), ("fsdp", -1)), "positive"),
])
def test_make_mesh_errors(axes, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(axes)


def test_logical_to_spec():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  assert sharding.logical_to_spec(("embed", "mlp"), RULES, mesh, (32, 64)) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("act_batch", "act_seq", "act_embed"), RULES, mesh) == P(("data", "fsdp"), None, None)
  # A dim that does not divide stays replicated; a mesh axis is used once per tensor.
  assert sharding.logical_to_spec(("embed", "mlp"), RULES, mesh, (3, 64)) == P(None, "tensor")
  assert sharding.logical_to_spec(("heads", "kv_heads"), RULES, mesh, (4, 4)) == P("tensor", None)
  # Axes of size 1 are dropped.
  dp = sharding.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  assert sharding.logical_to_spec(("embed", "vocab"), RULES, dp, (32, 64)) == P(None, None)
  with pytest.raises(KeyError, match="no_such_axis"):
    sharding.logical_to_spec(("no_such_axis",), RULES, mesh)


def test_config_rules_replace_defaults():
  rules = dict(sharding.merge_rules((("vocab", None), ("act_batch", ["data"]))))
  assert rules["vocab"] is None and rules["act_batch"] == ("data",) and rules["embed"] == "fsdp"
  with pytest.raises(ValueError, match="pairs"):
    sharding.merge_rules((("vocab",),))


# ----------------------------------------------------------------------------- parameter memory


def _sharded_micro(mesh, rules=RULES):
  cfg = transformer.get_config("micro", vocab_size=64)
  make = lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0))  # noqa: E731
  _, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  shardings = sharding.param_shardings(abstract, mesh, rules)
  return jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[1], out_shardings=shardings)()


def test_fsdp_holds_an_eighth_of_the_parameters_per_device():
  mesh = sharding.make_mesh((("fsdp", 8),))
  params = _sharded_micro(mesh)
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  norms = sum(x.nbytes for x in jax.tree.leaves(params) if x.ndim == 1)  # [D] scales: replicated
  per_device = [sharding.per_device_bytes(params, d) for d in jax.devices()]
  assert len(set(per_device)) == 1
  assert per_device[0] == (total - norms) // 8 + norms
  assert per_device[0] < total / 7
  assert sharding.unsharded_report(params, min_size=1000) == []
  # A rule that leaves the hidden dim unsharded shows up in the report.
  replicated = _sharded_micro(mesh, sharding.merge_rules((("embed", None),)))
  report = dict(sharding.unsharded_report(replicated, min_size=1000))
  assert "['embed_tokens']['embedding'].value" in report or any("embed_tokens" in k for k in report)
  assert len(report) >= 2 * 2 + 1  # gate/up per layer and the embedding at least


# ----------------------------------------------------------------------------- sampler


def test_sampler_under_a_mesh_matches_one_device():
  cfg = transformer.get_config("micro", vocab_size=64)
  graphdef, params = nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(3)), nnx.Param)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 64, size=(8, 6)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[::2, :2] = 0  # ragged, left-padded rows
  key = jax.random.PRNGKey(7)
  kw = dict(max_new_tokens=10, temperature=1.0, top_k=20, eos_id=2, pad_id=0)
  plain = sampling.make_sampler(graphdef, **kw)(params, ids, mask, key)

  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  placement = sharding.placement_for(params, mesh, RULES)
  sharded_params = jax.device_put(params, placement.params)
  fn = sampling.make_sampler(graphdef, placement=placement, **kw)
  out = fn(sharded_params, ids, mask, key)
  assert out.tokens.sharding.spec == placement.rows.spec
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))
  np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(plain.mask))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(plain.logprobs), atol=1e-5)
  fn(sharded_params, ids, mask, jax.random.PRNGKey(8))
  assert fn.traces == 1


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def one_device():
  mesh = sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])
  return sharded_run.train_steps(experiment.Experiment(sharded_run.config(), mesh=mesh))


@pytest.fixture(scope="module")
def mesh_runs():
  runs = {}

  def run(name):
    if name not in runs:
      t = experiment.Experiment(sharded_run.config(sharded_run.MESHES[name]))
      runs[name] = (t, *sharded_run.train_steps(t))
    return runs[name]
  return run


@pytest.mark.parametrize("name", list(sharded_run.MESHES))
def test_training_is_the_same_on_any_mesh(one_device, mesh_runs, name):
  ref_history, ref_state = one_device
  t, history, state = mesh_runs(name)
  assert len(history) == 3 and abs(history[-1]["loss/total"]) > 1e-6  # the GRPO steps learn
  for ref, got in zip(ref_history, history):
    assert ref.keys() == got.keys()
    for k in ref:
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise moves a weight
  # by a fraction of the learning rate (1e-3). A wrong sharding moves weights by ~lr.
  for role in ("policy", "reference"):
    for a, b in zip(_leaves(ref_state[role]["params"]), _leaves(state[role]["params"])):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5)
  # The state lives on the whole mesh, sharded by the rules; every step compiled once.
  embedding = state["policy"]["params"]["embed_tokens"]["embedding"][...]
  assert embedding.sharding.mesh.shape == t.mesh.shape
  assert embedding.sharding.spec == sharding.logical_to_spec(("vocab", "embed"), RULES, t.mesh, embedding.shape)
  assert t.stage("sft").update.traces == 1
  assert t.stage("rl").updates["policy"].traces == 1
  assert t.roles.policy.sampler_traces()["sampled"] == 1


def test_restore_onto_a_mesh_of_another_shape(mesh_runs, tmp_path):
  t8, _, state = mesh_runs("fsdp8")
  step = t8.total_steps
  with checkpoint_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(step, state)
  mesh = sharding.make_mesh((("data", 4), ("fsdp", 1), ("tensor", 2)))
  t42 = experiment.Experiment(sharded_run.config(((("data", 4), ("fsdp", 1), ("tensor", 2)))))
  with checkpoint_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    restored, _ = ckpt.restore(t42.abstract_state(step))
  for a, b in zip(_leaves(state), _leaves(restored)):
    np.testing.assert_array_equal(a, b)
  kernel = restored["policy"]["params"]["layers"][0]["mlp"]["gate_proj"]["kernel"][...]
  assert dict(kernel.sharding.mesh.shape) == dict(mesh.shape)
  assert kernel.sharding.spec == P(None, "tensor")


def test_batch_that_does_not_divide_over_the_mesh_is_named():
  c = sharded_run.config(sharded_run.MESHES["data8"])
  c.warmup.batch_size = 12
  with pytest.raises(ValueError, match="warmup.batch_size"):
    experiment.Experiment(c)


def test_host_rows_and_to_global_round_trip():
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  assert sharding.host_rows(mesh, RULES, 8) == slice(0, 8)  # one process holds every row
  x = np.arange(16, dtype=np.float32).reshape(8, 2)
  g = sharding.to_global({"x": x}, mesh, RULES, 8)["x"]
  assert g.sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(sharding.local_rows(g), x)
  np.testing.assert_array_equal(sharding.gather_rows(x), x)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.host_rows(mesh, RULES, 6)
