"""Nothing lost, nothing silent: reruns with another config, damaged checkpoints, missing or
non-finite rewards, interrupts. One Experiment object runs in several workdirs, so its
compiled steps are shared by the runs of a test."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import support
from jaxrl_reward import evaluation
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import interrupts
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward.rewards import base as rewards_base

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = {"warmup.steps": 2, "train.steps": 4, "eval.every": 4, "checkpoint_every": 1, "optim.warmup_steps": 0,
         "optim.lr": 1e-3}


@rewards_base.register_reward("test_length_reward", overwrite=True)
def length_reward(prompts, completions, **columns):
  return [len(c) % 3 / 2.0 for c in completions]


def _config(**overrides):
  return support.micro_config(**{**STEPS, "rewards.names": ("test_length_reward",), "rewards.weights": (1.0,),
                                 **overrides})


def _rows(workdir):
  return metrics_lib.read_metrics(pathlib.Path(workdir) / "metrics.jsonl")


def _assert_same_metrics(a, b):
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-6, err_msg=f"step {x['step']} {k}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One experiment; an uninterrupted run and a run stopped after step 5 (checkpoints 4 and 5)."""
  t = support.experiment(_config())
  full, stopped = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("stopped")
  t.run(full)
  t.run(stopped, stop_at=5)
  return t, full, stopped


# ----------------------------------------------------------------------------- 1. rerun with another config


def test_rerun_with_another_config_is_refused_naming_the_keys(runs):
  _, full, _ = runs
  before = (full / "config.json").read_bytes()
  changed = support.experiment(support.with_keys(_config(**{"optim.lr": 1e-2}),
                                                 **{"objective.options.loss_type": "dr_grpo"}))
  with pytest.raises(experiment_lib.ConfigMismatch, match=r"objective\.options\.loss_type None -> 'dr_grpo'.*"
                                                          r"optim\.lr 0\.001 -> 0\.01.*--allow_config_change="):
    changed.run(full)
  assert (full / "config.json").read_bytes() == before


def test_allowed_changes_resume_and_are_recorded(runs, tmp_path):
  _, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  longer = support.experiment(_config(**{"train.steps": 6, "eval.every": 6}))
  with pytest.raises(experiment_lib.ConfigMismatch, match="train.steps 4 -> 6"):
    longer.check_workdir(tmp_path)
  longer.run(tmp_path, allow_config_change=["train.steps", "eval"])
  assert [r["step"] for r in _rows(tmp_path) if "train/stage" in r] == list(range(1, 9))
  [line] = [json.loads(x) for x in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert line["step"] == 5 and line["changes"] == {"eval.every": [4, 6], "train.steps": [4, 6]}
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 6


def test_a_change_that_moves_a_stage_boundary_is_refused(runs, tmp_path):
  _, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  with pytest.raises(experiment_lib.ConfigMismatch, match="step 5 in stage 'sft'"):
    support.experiment(_config(**{"warmup.steps": 6})).run(tmp_path, allow_config_change=["warmup"])


def test_a_run_older_than_a_new_config_key_resumes_when_the_key_is_at_its_default(runs, tmp_path):
  t, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  recorded = json.loads((tmp_path / "config.json").read_text())
  del recorded["init_from"]  # the run predates the key
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  assert t.check_workdir(tmp_path) == {}
  recorded["init_from"] = "/elsewhere"  # a value, not the default: a real change
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  with pytest.raises(experiment_lib.ConfigMismatch, match="init_from '/elsewhere' -> ''"):
    t.check_workdir(tmp_path)


def test_checkpoints_without_config_file_are_refused(runs, tmp_path):
  """A workdir whose config.json is gone cannot be checked: refused, nothing written."""
  t, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  (tmp_path / "config.json").unlink()
  with pytest.raises(experiment_lib.ConfigMismatch, match="holds checkpoints but no config.json"):
    t.run(tmp_path)
  assert not (tmp_path / "config.json").exists()


def test_cli_rerun_with_another_config_is_one_line(runs):
  _, full, _ = runs
  proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/grpo_arithmetic.py:tiny",
                         f"--workdir={full}", "--config.model.name=micro", "--config.optim.lr=0.5"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "holds a run with another config" in lines[0] and "optim.lr" in lines[0]


# ----------------------------------------------------------------------------- 2. damaged checkpoints


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
  path.write_bytes(bytes(data))


DAMAGE = {
    "truncated_data_file": _truncate,
    "deleted_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "deleted_state": lambda d: shutil.rmtree(d / "state"),
    "overwritten_bytes": _overwrite,
}
# What the warning names as the cause: tensorstore's own error, not orbax's pages-long wrapper.
CAUSE = {
    "truncated_data_file": "Error reading",
    "deleted_metadata": "_METADATA is missing",
    "deleted_state": "state is missing",
    "overwritten_bytes": "do not match the fingerprint",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(runs, tmp_path, capfd, damage):
  t, full, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  DAMAGE[damage](tmp_path / "checkpoints" / "5")
  t.run(tmp_path)
  warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: checkpoint step")]
  assert len(warnings) == 1 and "step 5" in warnings[0] and "unreadable-5" in warnings[0]
  assert CAUSE[damage] in warnings[0] and "TensorStore(" not in warnings[0], warnings[0]
  assert (tmp_path / "checkpoints" / "unreadable-5").is_dir()
  _assert_same_metrics(_rows(full), _rows(tmp_path))  # from step 4 on, exactly the uninterrupted run


def test_no_readable_checkpoint_is_one_clear_error(runs, tmp_path):
  t, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  for step in ("4", "5"):
    shutil.rmtree(tmp_path / "checkpoints" / step / "state")
  with pytest.raises(RuntimeError, match=r"no checkpoint in .* can be restored: step 5: .*; step 4: "):
    t.run(tmp_path)


def test_unfinished_save_is_ignored_on_rerun(runs, tmp_path):
  """A run killed (SIGKILL) while saving step 6 leaves an unfinalised directory: the rerun
  resumes from step 5 and gives the uninterrupted run's numbers."""
  t, full, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(tmp_path / "checkpoints" / "5", partial)
  (partial / "commit_success.txt").unlink()
  t.run(tmp_path)
  _assert_same_metrics(_rows(full), _rows(tmp_path))


# ----------------------------------------------------------------------------- 3. missing and non-finite rewards

CALLS = {"n": 0}


@rewards_base.register_reward("test_always_none", overwrite=True)
def always_none(prompts, completions, **columns):
  return [None] * len(completions)


@rewards_base.register_reward("test_nan_sometimes", overwrite=True)
def nan_sometimes(prompts, completions, **columns):
  return [float("nan") if i % 4 == 0 else 1.0 for i in range(len(completions))]


@rewards_base.register_reward("test_one_short", overwrite=True)
def one_short(prompts, completions, **columns):
  return [1.0] * (len(completions) - 1)


def _rl(**overrides):
  t = support.experiment(_config(**{"warmup.steps": 1, **overrides}))
  rl = t.stage("rl")
  return t, rl, rl.enter({})


def test_all_missing_rewards_warn_then_stop_the_run(capfd):
  _, rl, state = _rl(**{"rewards.names": ("test_always_none",), "rewards.stop_after_missing_steps": 2})
  state, metrics = rl.step(state, rl.start)
  assert metrics["train/rewards/missing_frac"] == 1.0 and metrics["train/frac_valid"] == 0.0
  assert "every host-side reward ['test_always_none'] was missing" in capfd.readouterr().err
  with pytest.raises(RuntimeError, match="2 RL steps in a row without any reward from \\['test_always_none'\\]"):
    rl.step(state, rl.start + 1)


def test_non_finite_rewards_are_errors_or_counted_as_missing():
  _, rl, state = _rl(**{"rewards.names": ("test_nan_sometimes",)})
  with pytest.raises(ValueError, match="reward function 'test_nan_sometimes' returned nan at index 0"):
    rl.step(state, rl.start)
  _, rl, state = _rl(**{"rewards.names": ("test_nan_sometimes",), "rewards.nonfinite": "missing"})
  _, metrics = rl.step(state, rl.start)
  assert metrics["train/rewards/missing_frac"] == 0.25 and metrics["train/frac_valid"] == 0.75
  assert np.isfinite(metrics["loss/total"])
  with pytest.raises(ValueError, match="returned inf at index 2"):
    rewards_base.compute_rewards([lambda prompts, completions: [0.0, 1.0, float("inf")]], ["p"] * 3, ["c"] * 3)


def test_eval_reward_with_a_wrong_count_or_nan_is_an_error():
  t, _, state = _rl(**{"rewards.eval_name": "test_one_short"})
  with pytest.raises(ValueError, match="'test_one_short' returned 31 rewards for 32 completions"):
    evaluation.policy_accuracy(t.context, state["policy"]["params"], 0)
  t, _, state = _rl(**{"rewards.eval_name": "test_nan_sometimes"})
  with pytest.raises(ValueError, match="'test_nan_sometimes' returned nan"):
    evaluation.policy_accuracy(t.context, state["policy"]["params"], 0)


# ----------------------------------------------------------------------------- 6. interrupts


@rewards_base.register_reward("test_signal_once", overwrite=True)
def signal_once(prompts, completions, **columns):
  """A deterministic reward that, on its call number `CALLS["at"]`, sends the signals in `CALLS["signals"]`."""
  CALLS["n"] += 1
  if CALLS["n"] == CALLS.get("at"):
    for s in CALLS["signals"]:
      os.kill(os.getpid(), s)
  return [len(c) % 3 / 2.0 for c in completions]


@pytest.fixture(scope="module")
def interrupt_runs(tmp_path_factory):
  t = support.experiment(_config(**{"rewards.names": ("test_signal_once",), "checkpoint_every": 100}))
  full = tmp_path_factory.mktemp("uninterrupted")
  CALLS.update(n=0, at=None)
  t.run(full)
  return t, full


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(interrupt_runs, tmp_path, signum):
  t, full = interrupt_runs
  CALLS.update(n=0, at=2, signals=[signum])  # during the second RL step (step 4)
  with pytest.raises(interrupts.Interrupted) as stopped:
    t.run(tmp_path)
  assert stopped.value.exit_code == 128 + signum and stopped.value.step == 4
  assert "run the same command to resume" in str(stopped.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  CALLS.update(n=0, at=None)
  t.run(tmp_path)
  _assert_same_metrics(_rows(full), _rows(tmp_path))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored


def test_second_sigint_aborts_at_once(interrupt_runs, tmp_path):
  t, _ = interrupt_runs
  CALLS.update(n=0, at=1, signals=[signal.SIGINT, signal.SIGINT])
  with pytest.raises(KeyboardInterrupt):
    t.run(tmp_path)
  assert not (tmp_path / "checkpoints" / "3").exists()


@pytest.mark.slow
def test_cli_ctrl_c_exits_130_with_one_line(tmp_path):
  proc = subprocess.Popen([sys.executable, "-m", "experiments.train", "--config=configs/grpo_arithmetic.py:tiny",
                           f"--workdir={tmp_path}", "--config.model.name=micro", "--config.warmup.steps=200",
                           "--config.checkpoint_every=1000"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  metrics = tmp_path / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  stopped = [line for line in err.splitlines() if line.startswith("stopped by SIGINT")]
  assert len(stopped) == 1 and "Traceback" not in err
  step = int(stopped[0].split("after step ")[1].split(":")[0])
  assert (tmp_path / "checkpoints" / str(step)).is_dir()
