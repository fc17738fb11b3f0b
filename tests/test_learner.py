"""The learner step: whole groups in every micro- and mini-batch, and the same update for any
split, for every registered objective, on one device and on 8."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import support
from jaxrl_reward import learner
from jaxrl_reward import sharding
from jaxrl_reward.policies import lm
from jaxrl_reward.rollout import Rollout
from models import transformer
from models import value as value_model
from objectives import registry

B, G, P, T = 16, 4, 4, 6  # rows, group size, prompt and completion length
# Options that make every term active (a KL term, moderate RDP targets).
OPTIONS = {"grpo": {"beta": 0.04, "loss_type": "grpo"}, "rdp": {"beta": 0.5}, "prdp": {"beta": 0.5, "clip_eps": 0.05}}


class _Tokens:
  eos_token_id = None
  pad_token_id = 0


def _rollout(seed=0) -> Rollout:
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, T + 1, B)
  lengths[5] = 0  # a fully masked row
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  prompt_mask = np.ones((B, P), np.int32)
  prompt_mask[::3, :2] = 0
  # The likelihood objective's layout: two reference-answer tokens after each row's chain of thought.
  answer_mask = ((np.arange(T)[None, :] >= lengths[:, None]) & (np.arange(T)[None, :] < lengths[:, None] + 2))
  answer_mask = answer_mask.astype(np.float32)
  f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
  return Rollout(
      actions=rng.integers(1, 64, (B, T)).astype(np.int32), mask=mask, old_logp=(f(B, T) * 0.1 - 3) * mask,
      group_ids=np.repeat(np.arange(B // G), G).astype(np.int32), rewards=f(B), advantages=f(B),
      ref_logp=(f(B, T) * 0.1 - 3) * mask,
      extras={"prompt_ids": rng.integers(1, 64, (B, P)).astype(np.int32), "prompt_mask": prompt_mask,
              "labels": (rng.random(B) > 0.5).astype(np.float32), "returns": f(B, T) * mask,
              "old_values": f(B, T) * 0.1 * mask, "answer_mask": answer_mask,
              "token_mask": np.maximum(mask, answer_mask)})


def _scorer_and_params(inputs: str, mesh):
  cfg = transformer.get_config("micro", vocab_size=64, num_layers=1)  # one layer: quick to compile
  if inputs == "values":
    make = lambda: value_model.ValueModel(cfg, rngs=nnx.Rngs(1))  # noqa: E731
  else:
    make = lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(1))  # noqa: E731
  graphdef, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  placement = sharding.placement_for(abstract, mesh, sharding.merge_rules(()))
  params = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[1], out_shardings=placement.params)()
  if inputs == "values":
    return lm.ValueHead(graphdef, placement), params, placement
  return lm.LanguageModel(graphdef, placement, _Tokens(), max_prompt_length=P, max_new_tokens=T), params, placement


def _update_once(name, mesh, num_microbatches):
  spec = registry.spec(name)
  scorer, params, placement = _scorer_and_params(spec.inputs, mesh)
  optimizer = optax.sgd(0.1)  # gradients show directly in the parameters
  placement = placement.with_optimizer(optimizer, params)
  loss = learner.objective_loss(scorer, spec.fn, registry.resolve_options(name, OPTIONS.get(name, {})))
  update = learner.make_update(loss, optimizer, placement, num_microbatches=num_microbatches, group_size=G)
  batch = sharding.to_global(_rollout(), placement.mesh, placement.rules, B)
  new_params, _, metrics = update(params, optimizer.init(params), batch)
  return [np.asarray(x) for x in jax.tree.leaves(new_params)], float(metrics["loss/total"])


@pytest.fixture(scope="module")
def meshes():
  return {"one": sharding.make_mesh((("data", 1),), devices=jax.devices()[:1]),
          "data8": sharding.make_mesh((("data", 8),))}


@pytest.mark.parametrize("name", [n for n in registry.names() if not n.startswith("test_")])
def test_update_does_not_depend_on_the_split_or_the_mesh(meshes, name):
  """grad_accum_steps 1, 2, 4 and 1 vs 8 devices give the same parameters and loss. Group
  objectives (RDP/PRDP pairs, DPO pairs of a prompt) fail this with row-strided micro-batches."""
  ref_params, ref_loss = _update_once(name, meshes["one"], 1)
  for mesh_name, accum in (("one", 2), ("one", 4), ("data8", 4)):
    params, value = _update_once(name, meshes[mesh_name], accum)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5, atol=1e-6, err_msg=f"{mesh_name} accum {accum}")
    for a, b in zip(params, ref_params):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{mesh_name} accum {accum}")


def test_the_update_moves_the_parameters(meshes):
  """The comparison above is not between two no-ops."""
  before = [np.asarray(x) for x in jax.tree.leaves(_scorer_and_params("logprobs", meshes["one"])[1])]
  after, _ = _update_once("prdp", meshes["one"], 1)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(after, before)) > 1e-4


def test_micro_and_mini_batches_hold_whole_groups():
  group_ids = np.repeat(np.arange(8), G)  # 8 groups, group-major
  micro = np.asarray(learner.split_microbatches({"g": group_ids}, 4, G)["g"])  # [4, 8]
  for row in micro:
    ids, counts = np.unique(row, return_counts=True)
    assert len(ids) == 2 and np.all(counts == G) and np.all(np.diff(row[::G]) != 0)
  # Micro-batch m holds groups m and m + 4: spread over the batch, not a contiguous block.
  assert [sorted(set(row)) for row in micro] == [[0, 4], [1, 5], [2, 6], [3, 7]]
  minis = learner.minibatch_rows(8, G, 2, np.random.default_rng(0))
  assert sorted(np.concatenate(minis).tolist()) == list(range(8 * G))
  for rows in minis:
    ids = group_ids[rows]
    assert np.all(ids.reshape(-1, G) == ids.reshape(-1, G)[:, :1])  # whole groups, group-major
  with pytest.raises(ValueError, match="whole groups"):
    learner.split_microbatches({"g": group_ids}, 3, G)
  with pytest.raises(ValueError, match="mini-batches of whole groups"):
    learner.minibatch_rows(6, G, 4, np.random.default_rng(0))


@registry.register("test_group_probe", overwrite=True)
def group_probe(logp, batch):
  """A policy-gradient loss that reports whether its micro-batch holds only whole groups."""
  gid = batch["group_ids"]
  counts = jnp.sum(gid[:, None] == gid[None, :], axis=1)  # rows sharing each row's group id
  mask = batch["mask"]
  metrics = {"stats/whole_groups": jnp.all(counts == G).astype(jnp.float32),
             "stats/rows": jnp.asarray(gid.shape[0], jnp.float32)}
  return -jnp.sum(logp * batch["advantages"][:, None] * mask), jnp.sum(mask), metrics


def test_rl_stage_batches_hold_whole_groups():
  """Through the RL stage: 2 mini-batches x 2 micro-batches, each of whole groups."""
  t = support.micro_experiment(**{"objective.name": "test_group_probe", "rollout.prompts_per_step": 8,
                          "rollout.group_size": G, "train.num_minibatches": 2, "train.grad_accum_steps": 2,
                          "train.num_iterations": 1})
  rl = t.stage("rl")
  _, metrics = rl.step(rl.enter({}), rl.start)
  assert metrics["stats/whole_groups"] == 1.0
  assert metrics["stats/rows"] == 8 * G / 4
