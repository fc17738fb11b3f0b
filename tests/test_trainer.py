"""End-to-end trainer tests on the `tiny` variant with the `micro` model."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import grpo_arithmetic
from jaxrl_reward import trainer as trainer_lib
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


def micro_config(**overrides):
  c = grpo_arithmetic.get_config("tiny")
  c.model.name = "micro"
  c.log_every = 1
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def _trainer(config, workdir):
  """On one device: the trainer's logic, fast; tests/test_sharding.py covers the meshes."""
  return trainer_lib.Trainer(config, workdir, mesh=sharding.make_mesh((("data", 1),), devices=jax.devices()[:1]))


def _params_np(state):
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  t = _trainer(micro_config(), workdir)
  result = t.run()
  return workdir, t, result


def test_run_writes_workdir(full_run):
  workdir, t, result = full_run
  for name in ("config.json", "provenance.json", "metrics.jsonl", "reward_curve.png", "results.md"):
    assert (workdir / name).exists(), name
  assert (workdir / "reward_curve.png").stat().st_size > 1000
  rows = metrics_lib.read_metrics(workdir / "metrics.jsonl")
  steps = [r["step"] for r in rows if "train/stage" in r]
  assert steps == list(range(1, t.total_steps + 1))
  rl = [r for r in rows if r.get("train/stage") == 1.0]
  assert rl and all(np.isfinite(r["train/reward"]) and np.isfinite(r["loss/total"]) for r in rl)
  assert all(k.split("/")[0] in ("train", "loss", "stats", "optim", "eval", "step") or k == "step"
             for r in rows for k in r)
  evals = [r for r in rows if "eval/accuracy_greedy" in r]
  assert evals[0]["step"] == t.warmup_steps and evals[-1]["step"] == t.total_steps
  assert [r["stage"] for r in result["rows"]] == ["after warm-up", "after GRPO"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["name"] == "micro"


def test_steps_compile_once(full_run):
  """Every warm-up step, every GRPO update and every rollout reused one compiled program."""
  _, t, _ = full_run
  assert t.warmup_update._cache_size() == 1
  assert t.rl_update._cache_size() == 1
  assert t.rollout_sampler._cache_size() <= 2  # rollout batch and eval batch shapes
  assert t.greedy_sampler._cache_size() == 1


def test_resume_equals_uninterrupted(full_run, tmp_path):
  workdir_full, t_full, _ = full_run
  half = t_full.total_steps // 2 + 1  # stops inside the GRPO stage
  c = micro_config()
  c.checkpoint_every = 1
  _trainer(c, tmp_path).run(stop_at=half)  # as if killed after `half` steps
  resumed = _trainer(micro_config(), tmp_path)
  resumed.run()
  for a, b in zip(_params_np(t_full.state), _params_np(resumed.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  full_rows = metrics_lib.read_metrics(workdir_full / "metrics.jsonl")
  resumed_rows = metrics_lib.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in full_rows] == [r["step"] for r in resumed_rows]
  for a, b in zip(full_rows, resumed_rows):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_grad_accumulation_matches_full_batch(tmp_path):
  """The same rollout batch updated with 1 or 4 micro-batches gives the same parameters."""
  results = []
  for accum in (1, 4):
    t = _trainer(micro_config(**{"train.grad_accum_steps": accum, "train.num_minibatches": 1,
                                            "objective.options.loss_type": "grpo"}), tmp_path / str(accum))
    state = t._initial_state(t.warmup_steps)
    state, metrics = t.rl_step(state, t.warmup_steps)
    results.append((_params_np(state), metrics["loss/total"]))
  for a, b in zip(results[0][0], results[1][0]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_bad_config_values_are_named(tmp_path):
  with pytest.raises(ValueError, match="group_size"):
    _trainer(micro_config(**{"rollout.group_size": 1}), tmp_path)
  with pytest.raises(ValueError, match="num_minibatches"):
    _trainer(micro_config(**{"train.num_minibatches": 3}), tmp_path)
  with pytest.raises(KeyError, match="no_such_objective"):
    _trainer(micro_config(**{"objective.name": "no_such_objective"}), tmp_path)


def test_unwritable_workdir_is_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="workdir"):
    _trainer(micro_config(), blocker / "run")


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=configs/grpo_arithmetic.py:tiny",
       f"--workdir={tmp_path}", "--config.optim.lrr=1e-3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "lrr" in proc.stderr


def test_registered_objective_trains_without_engine_changes(tmp_path):
  """A three-line objective registered from user code drives the trainer."""
  import jax.numpy as jnp
  from objectives import registry

  @registry.register("test_vanilla_pg", overwrite=True)
  def vanilla_pg(logp, batch, **options):  # advantages + 1: a random policy's rewards are all 0
    return -jnp.sum(logp * (batch["advantages"][:, None] + 1) * batch["mask"]), jnp.sum(batch["mask"]), {}

  c = micro_config(**{"objective.name": "test_vanilla_pg", "optim.warmup_steps": 0})
  c.objective.options = type(c.objective.options)()  # the custom objective takes no options
  t = _trainer(c, tmp_path)
  before = _params_np(t._initial_state(t.warmup_steps))
  state, metrics = t.rl_step(t._initial_state(t.warmup_steps), t.warmup_steps)
  assert np.isfinite(metrics["loss/total"])
  assert any(not np.allclose(a, b) for a, b in zip(before, _params_np(state)))
  assert not registry.requires_reference("test_vanilla_pg", {})
  assert registry.requires_reference("grpo", {"beta": 0.04})


def test_hf_checkpoint_is_the_starting_policy(tmp_path):
  """`model.hf_path` replaces the random init by the folder's weights, on any step count."""
  from flax import nnx
  from models import hf
  from models import transformer

  c = micro_config(**{"warmup.steps": 1, "train.steps": 0})
  vocab = trainer_lib.build(c, sharding.make_mesh((("data", 1),), devices=jax.devices()[:1])).task.tokenizer
  cfg = transformer.get_config("micro", vocab_size=-(-len(vocab) // 8) * 8)
  source = transformer.Transformer(cfg, rngs=nnx.Rngs(123))  # not the config's seed
  hf.save(source, tmp_path / "hf")
  c.model.hf_path = str(tmp_path / "hf")
  t = _trainer(c, tmp_path / "run")
  expected = [np.asarray(x) for x in jax.tree.leaves(nnx.state(source, nnx.Param))]
  state = t._initial_state(0)
  for a, b in zip(expected, _params_np(state)):
    np.testing.assert_array_equal(a, b)
  t.warmup_step(state, 0)  # donates the state's buffers ...
  for a, b in zip(expected, _params_np(t._initial_state(0))):  # ... the loaded weights survive
    np.testing.assert_array_equal(a, b)
