"""End-to-end runs of the engine on the `tiny` variant with the `micro` model."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import support
from configs import implicit_prm as implicit_prm_config
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import metrics as metrics_lib
from objectives import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


_with = support.with_keys
micro_config = support.micro_config
_experiment = support.experiment


def _params_np(state, role="policy"):
  return [np.asarray(x) for x in jax.tree.leaves(state[role]["params"])]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  t = _experiment(micro_config())
  result = t.run(workdir)
  return workdir, t, result


def test_run_writes_workdir(full_run):
  workdir, t, result = full_run
  for name in ("config.json", "provenance.json", "metrics.jsonl", "reward_curve.png", "results.md"):
    assert (workdir / name).exists(), name
  assert (workdir / "reward_curve.png").stat().st_size > 1000
  rows = metrics_lib.read_metrics(workdir / "metrics.jsonl")
  steps = [r["step"] for r in rows if "train/stage" in r]
  assert steps == list(range(1, t.total_steps + 1))
  assert [s.name for s in t.stages] == ["sft", "rl"]
  rl = [r for r in rows if r.get("train/stage") == 1.0]
  assert rl and all(np.isfinite(r["train/reward"]) and np.isfinite(r["loss/total"]) for r in rl)
  assert all(k.split("/")[0] in ("train", "loss", "stats", "optim", "eval", "step") or k == "step"
             for r in rows for k in r)
  evals = [r for r in rows if "eval/accuracy_greedy" in r]
  assert evals[0]["step"] == t.stage("rl").start and evals[-1]["step"] == t.total_steps
  assert [r["stage"] for r in result["rows"]] == ["after warm-up", "after GRPO"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["name"] == "micro"


def test_steps_compile_once(full_run):
  """Every warm-up step, every GRPO update and every rollout reused one compiled program."""
  _, t, _ = full_run
  assert t.stage("sft").update.traces == 1
  assert t.stage("rl").updates["policy"].traces == 1
  samplers = t.roles.policy.sampler_traces()
  assert samplers["sampled"] <= 2  # rollout batch and eval batch shapes
  assert samplers["greedy"] == 1


def test_resume_equals_uninterrupted(full_run, tmp_path):
  workdir_full, t_full, _ = full_run
  half = t_full.total_steps // 2 + 1  # stops inside the GRPO stage
  every_step = micro_config(**{"checkpoint_every": 1})  # the checkpoint cadence changes no number
  resumed = _experiment(every_step)
  resumed.run(tmp_path, stop_at=half)  # as if killed after `half` steps
  resumed.run(tmp_path)
  for a, b in zip(_params_np(t_full.state), _params_np(resumed.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  full_rows = metrics_lib.read_metrics(workdir_full / "metrics.jsonl")
  resumed_rows = metrics_lib.read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in full_rows] == [r["step"] for r in resumed_rows]
  for a, b in zip(full_rows, resumed_rows):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_bad_config_values_are_named():
  with pytest.raises(ValueError, match="group_size"):
    experiment_lib.check_config(micro_config(**{"rollout.group_size": 1}))
  with pytest.raises(ValueError, match="num_minibatches"):
    experiment_lib.check_config(micro_config(**{"train.num_minibatches": 3}))
  with pytest.raises(ValueError, match="prompts_per_step.*grad_accum_steps"):
    experiment_lib.check_config(micro_config(**{"train.grad_accum_steps": 3, "train.num_minibatches": 1}))
  with pytest.raises(KeyError, match="no_such_objective"):
    experiment_lib.check_config(micro_config(**{"objective.name": "no_such_objective"}))
  with pytest.raises(KeyError, match="did you mean 'grpo'"):
    experiment_lib.check_config(micro_config(**{"objective.name": "grp"}))
  with pytest.raises(ValueError, match="stage"):
    experiment_lib.check_config(micro_config(**{"stages": ("sft", "nope")}))


def test_objective_for_another_stage_is_an_error_at_start_up():
  with pytest.raises(ValueError, match="'implicit_prm_ce' is an objective of the 'reward_model' stage"):
    experiment_lib.check_config(micro_config(**{"objective.name": "implicit_prm_ce"}))
  with pytest.raises(ValueError, match="'grpo' is an objective of the 'rl' stage"):
    experiment_lib.check_config(_with(implicit_prm_config.get_config("tiny"), **{"objective.name": "grpo"}))


def test_unknown_and_bad_options_fail_before_the_first_step(tmp_path):
  """An unknown option fails on the config alone; a bad value when the loss is first traced
  (on abstract inputs, at start-up); both name the key, and nothing has run."""
  with pytest.raises(ValueError, match=r"'prdp' has no option 'clip_epz' \(did you mean 'clip_eps'\?\)"):
    experiment_lib.check_config(_with(micro_config(**{"objective.name": "prdp"}),
                                      **{"objective.options.clip_epz": 1e-4}))
  with pytest.raises(ValueError, match="'grpo' has no option 'clip_eps'"):
    experiment_lib.check_config(_with(micro_config(), **{"objective.options.clip_eps": 1e-4}))
  with pytest.raises(ValueError, match="loss_type='foo'"):
    _experiment(_with(micro_config(), **{"objective.options.loss_type": "foo"}))
  with pytest.raises(ValueError, match="reduce_steps='avg'"):
    _experiment(_with(micro_config(**{"objective.name": "rdp"}), **{"objective.options.reduce_steps": "avg"}))
  with pytest.raises(ValueError, match="scale_rewards"):
    _experiment(_with(micro_config(), **{"advantage.options.scale_rewards": "rows"}))
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", registry.names("rl"))
def test_every_rl_objective_trains_two_steps(tmp_path, name):
  """Selected by name alone, each RL objective brings its option defaults and trains."""
  if registry.spec(name).inputs != "logprobs":
    pytest.skip(f"{name} trains a value model, not the policy")
  c = micro_config(**{"objective.name": name, "warmup.steps": 1, "train.steps": 2, "train.num_iterations": 1,
                      "eval.every": 2, "optim.warmup_steps": 0, "optim.lr": 1e-3})
  if name == "likelihood":  # its SFT term reads the reference answers that the likelihood reward splices in
    c.rewards.names, c.rewards.weights = ("likelihood",), (1.0,)
    c.rewards.options = {"likelihood": {"no_marker": "append"}}
  t = _experiment(c)
  t.run(tmp_path)
  rows = [r for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl") if r.get("train/stage") == 1.0]
  assert len(rows) == 2 and all(np.isfinite(r["loss/total"]) for r in rows)
  before = jax.tree.leaves(t.stage("rl").enter({})["policy"]["params"])  # a fresh start, for contrast
  assert any(not np.allclose(a, b) for a, b in zip(before, _params_np(t.state)))
  config = json.loads((tmp_path / "provenance.json").read_text())
  assert config["objective"] == {"name": name, "options": registry.resolve_options(name)}


def test_reward_model_stage_trains_its_role(tmp_path):
  """The implicit-PRM config: warm-up, then the PRM role (not the policy) learns from labels."""
  c = implicit_prm_config.get_config("tiny")
  t = _experiment(c)
  result = t.run(tmp_path)
  assert [s.name for s in t.stages] == ["sft", "reward_model"]
  rows = [r for r in metrics_lib.read_metrics(tmp_path / "metrics.jsonl") if r.get("train/stage") == 1.0]
  assert rows and all(np.isfinite(r["loss/prm"]) and "stats/prm_accuracy" in r for r in rows)
  assert set(t.state) == {"policy", "reference", "prm"} and "opt_state" not in t.state["policy"]
  for a, b in zip(jax.tree.leaves(t.state["policy"]["params"]), jax.tree.leaves(t.state["reference"]["params"])):
    np.testing.assert_array_equal(a, b)  # the policy is frozen; the reference is its copy
  assert any(not np.allclose(a, b) for a, b in zip(_params_np(t.state, "prm"), _params_np(t.state, "policy")))
  assert result["rows"][-1]["stage"] == "after reward model" and "pair_accuracy" in result["rows"][-1]
def test_unwritable_workdir_is_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="workdir"):
    _experiment(micro_config()).run(blocker / "run")


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
  t = _experiment(c)
  rl = t.stage("rl")
  before = _params_np(rl.enter({}))
  state, metrics = rl.step(rl.enter({}), rl.start)
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
  vocab = _experiment(c).context.task.tokenizer
  cfg = transformer.get_config("micro", vocab_size=-(-len(vocab) // 8) * 8)
  source = transformer.Transformer(cfg, rngs=nnx.Rngs(123))  # not the config's seed
  hf.save(source, tmp_path / "hf")
  c.model.hf_path = str(tmp_path / "hf")
  t = _experiment(c)
  expected = [np.asarray(x) for x in jax.tree.leaves(nnx.state(source, nnx.Param))]
  state = t.initial_state()
  for a, b in zip(expected, _params_np(state)):
    np.testing.assert_array_equal(a, b)
  t.stages[0].step(state, 0)  # donates the state's buffers ...
  for a, b in zip(expected, _params_np(t.initial_state())):  # ... the loaded weights survive
    np.testing.assert_array_equal(a, b)


def test_init_from_ignores_how_roles_train_but_not_what_they_model():
  from configs import prdp_digits
  lm, images = implicit_prm_config.get_config("chain_sums"), prdp_digits.get_config("tiny")
  free = experiment_lib._free_for_init_from  # pylint: disable=protected-access
  assert free("roles.prm.lr", lm) and free("roles.prm.objective", lm) and free("roles.prm.options.beta", lm)
  assert free("task.num_prompts", images)
  assert not free("roles.prm.kind", lm) and not free("roles.prm.init", lm) and not free("model.name", lm)
  # An image role's options say what it predicts: a change there is a different model.
  assert not free("roles.reward_model.options.target", images)
  # A role that only one of the two runs has carries nothing over (an ORM run from a PRM run's warm-up).
  orm = implicit_prm_config.get_config("chain_sums,orm")
  assert free("roles.prm.kind", orm, {"prm"}) and free("roles.orm.kind", orm, {"prm"})
  assert not free("roles.orm.kind", orm, {"orm"})


def test_recorded_config_fills_new_keys_but_takes_roles_and_options_whole(tmp_path):
  from jaxrl_reward import provenance
  (tmp_path / provenance.CONFIG_FILE).write_text(json.dumps(
      {"stages": ["sft"], "roles": {"prm": {"kind": "lm"}}, "rewards": {"names": ["a"], "options": {}}}))
  defaults = {"stages": ("rl",), "roles": {"orm": {"kind": "value"}}, "new_block": {"x": 1},
              "rewards": {"names": ("b",), "options": {"b": {"beta": 1}}, "accuracy_filter": ()}}
  got = provenance.recorded_config(tmp_path, defaults).to_dict()
  assert got["stages"] == ("sft",) and got["rewards"]["names"] == ("a",)  # the record wins, lists as tuples
  assert got["roles"] == {"prm": {"kind": "lm"}} and got["rewards"]["options"] == {}  # whole from the record
  assert got["new_block"] == {"x": 1} and got["rewards"]["accuracy_filter"] == ()  # keys the record lacks
