"""Nothing lost, nothing silent: reruns with another config, damaged checkpoints, missing or
non-finite rewards, interrupts. One Experiment object runs in several workdirs, so its
compiled steps are shared by the runs of a test."""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import support
from jaxrl_reward import evaluation
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import interrupts
from jaxrl_reward import metrics as metrics_lib
from jaxrl_reward import workdir_lock
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
  """Checkpoints 4 and 5 of sft [0, 2) + rl [2, 6): a warm-up one step longer would repeat a batch
  in a longer RL stage; a shorter RL stage would end below the checkpoint. Both are refused, even
  when allowed, naming the change and the boundary; longer training from a checkpoint is not."""
  t, full, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  before = (tmp_path / "config.json").read_bytes()
  with pytest.raises(experiment_lib.ConfigMismatch, match=r"\(warmup.steps 2 -> 3\) moves the end of stage 'sft' "
                                                          r"from step 2 to step 3, at or below the newest checkpoint \(step 5\)"):
    support.experiment(_config(**{"warmup.steps": 3})).run(tmp_path, allow_config_change=["warmup"])
  with pytest.raises(experiment_lib.ConfigMismatch, match="moves the end of stage 'rl' from step 6 to step 4"):
    support.experiment(_config(**{"train.steps": 2})).check_workdir(tmp_path, ["train"])
  assert (tmp_path / "config.json").read_bytes() == before
  longer = support.experiment(_config(**{"train.steps": 8}))
  assert longer.check_workdir(full, ["train"]) == {"train.steps": (4, 8)}  # a finished run trains on


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
  """A deterministic reward that, on its call number `CALLS["at"]`, sends the signals in `CALLS["signals"]`,
  or raises (`CALLS["action"] == "raise"`), or hangs until `CALLS["release"]` ("hang"); with
  `CALLS["none"]` every reward is missing."""
  CALLS["n"] += 1
  if CALLS["n"] == CALLS.get("at"):
    action = CALLS.get("action", "signal")
    if action == "raise":
      raise ZeroDivisionError("the reward's own bug")
    while action == "hang" and not CALLS.get("release"):
      time.sleep(0.05)
    for s in CALLS.get("signals", ()):
      os.kill(os.getpid(), s)
      # Handled by the main thread (this one is the reward thread) before the next is sent: two
      # signals of one kind pending at once would count as one.
      deadline = time.monotonic() + 5
      while interrupts.pending() is None and time.monotonic() < deadline:
        time.sleep(0.001)
  if CALLS.get("none"):
    return [None] * len(completions)
  return [len(c) % 3 / 2.0 for c in completions]


def _calls(**kwargs):
  CALLS.clear()
  CALLS.update(n=0, **kwargs)


@pytest.fixture(scope="module")
def interrupt_runs(tmp_path_factory):
  t = support.experiment(_config(**{"rewards.names": ("test_signal_once",), "checkpoint_every": 100}))
  full = tmp_path_factory.mktemp("uninterrupted")
  _calls()
  t.run(full)
  return t, full


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(interrupt_runs, tmp_path, signum):
  t, full = interrupt_runs
  _calls(at=2, signals=[signum])  # during the second RL step (step 4)
  with pytest.raises(interrupts.Interrupted) as stopped:
    t.run(tmp_path)
  assert stopped.value.exit_code == 128 + signum and stopped.value.step == 4
  assert "run the same command to resume" in str(stopped.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  _calls()
  t.run(tmp_path)
  _assert_same_metrics(_rows(full), _rows(tmp_path))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are restored


def test_second_sigint_aborts_at_once(interrupt_runs, tmp_path):
  t, _ = interrupt_runs
  _calls(at=1, signals=[signal.SIGINT, signal.SIGINT])
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


def test_sigterm_message_does_not_promise_ctrl_c_again(capfd):
  with interrupts.StopRequests() as stops:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stops.requested() == signal.SIGTERM
  err = capfd.readouterr().err
  assert "SIGTERM: stopping after this step with a checkpoint" in err and "again" not in err


# ----------------------------------------------------------------------------- 7. errors inside the loop


def _checkpoint_dirs(workdir):
  return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


def test_an_error_in_the_loop_finishes_the_save_and_names_step_stage_and_checkpoint(interrupt_runs, tmp_path):
  """The reward raises in step 3 while the checkpoint of step 2 (the warm-up's end) is still being
  written in the background: that checkpoint is finished, and the error says where the run stopped."""
  t, _ = interrupt_runs
  _calls(at=1, action="raise")
  with pytest.raises(experiment_lib.RunFailed, match=r"^step 3 \(stage 'rl'\) failed: .*test_signal_once.*"
                                                     r"ZeroDivisionError.*the last checkpoint: step 2 in ") as failed:
    t.run(tmp_path)
  assert len(str(failed.value).splitlines()) == 1
  assert isinstance(failed.value.__cause__, Exception)
  assert _checkpoint_dirs(tmp_path) == ["2"]  # finalised; no orbax-checkpoint-tmp left
  assert (tmp_path / "checkpoints" / "2" / "_CHECKPOINT_METADATA").is_file()


def test_the_missing_reward_counter_survives_a_resume(interrupt_runs, tmp_path):
  """Every reward missing from step 3 on: uninterrupted, the run stops at step 5 (3 steps in a row);
  interrupted after step 4 and resumed, it stops at step 5 too (the counter is in the checkpoint)."""
  t, _ = interrupt_runs
  _calls(none=True)
  with pytest.raises(experiment_lib.RunFailed, match=r"^step 5 .*3 RL steps in a row"):
    t.run(tmp_path / "uninterrupted")
  _calls(none=True, at=2, signals=[signal.SIGINT])
  with pytest.raises(interrupts.Interrupted):
    t.run(tmp_path / "resumed")
  _calls(none=True)
  with pytest.raises(experiment_lib.RunFailed, match=r"^step 5 .*3 RL steps in a row"):
    t.run(tmp_path / "resumed")


def test_ctrl_c_during_a_hung_reward_stops_in_seconds_with_the_last_finished_step(interrupt_runs, tmp_path):
  """The reward of step 4 never returns; Ctrl-C stops the run within seconds with a checkpoint of
  step 3 (none was due there), and the resumed run gives the uninterrupted run's numbers."""
  t, full = interrupt_runs
  _calls(at=2, action="hang")
  timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
  timer.start()
  try:
    with pytest.raises(interrupts.Interrupted, match=r"during step 4 \(reward function 'test_signal_once' was "
                                                     r"still running\): the checkpoint of step 3 is in") as stopped:
      t.run(tmp_path)
    waited = time.monotonic()
  finally:
    CALLS["release"] = True  # the abandoned call ends
    timer.join()
  assert stopped.value.exit_code == 130 and stopped.value.step == 3
  assert _checkpoint_dirs(tmp_path) == ["2", "3"]
  del waited
  _calls()
  t.run(tmp_path)
  _assert_same_metrics(_rows(full), _rows(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("reward,error", [
    ("test_always_none", r"error: step 5 \(stage 'rl'\) failed: RuntimeError: 3 RL steps in a row without any reward"),
    ("test_raises", r"error: step 3 \(stage 'rl'\) failed: .*'test_raises'.*ZeroDivisionError")])
def test_cli_error_in_the_loop_is_one_line_and_keeps_the_checkpoint(tmp_path, reward, error):
  proc = subprocess.run([sys.executable, "tests/train_with_test_rewards.py", "--config=configs/grpo_arithmetic.py:tiny",
                         f"--workdir={tmp_path}", "--config.model.name=micro", "--config.warmup.steps=2",
                         f"--config.rewards.names=('{reward}',)", "--config.rewards.weights=(1.0,)",
                         "--config.checkpoint_every=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # What is left once the progress bar and the per-step warnings are taken out: the error, in one line.
  lines = [line for line in proc.stderr.replace("\r", "\n").splitlines()
           if line.strip() and not line.startswith(("train:", "warning: step"))]
  assert len(lines) == 1 and re.match(error, lines[0]), proc.stderr[-3000:]
  last = int(re.search(r"the last checkpoint: step (\d+)", lines[0]).group(1))
  assert _checkpoint_dirs(tmp_path) == [str(last - 1), str(last)]  # both finalised, nothing half-written


# ----------------------------------------------------------------------------- 8. one run per workdir


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_first(tmp_path):
  """Another process holds the workdir: the real command stops at start-up, in one line naming that
  process, and writes nothing."""
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxrl_reward import workdir_lock\n"
                             f"with workdir_lock.hold({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(120)"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/grpo_arithmetic.py:tiny",
                           f"--workdir={tmp_path}", "--config.model.name=micro"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  finally:
    holder.kill()
    holder.wait()
  assert proc.returncode == 1
  [line] = proc.stderr.strip().splitlines()
  assert f"is in use by another run (host {socket.gethostname()} pid {holder.pid}" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no config.json, metrics or checkpoints


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capfd):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  pid = int(dead.stdout)
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
  with workdir_lock.hold(tmp_path):
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):  # held: a second holder waits
      with workdir_lock.hold(tmp_path):
        pass
  assert f"the run that held it (host {socket.gethostname()} pid {pid}" in capfd.readouterr().err
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps({"host": "another-machine", "pid": 1}))
  with pytest.raises(workdir_lock.WorkdirLocked, match="run on another machine .*host another-machine pid 1.*delete"):
    with workdir_lock.hold(tmp_path):
      pass


# ----------------------------------------------------------------------------- 9. init_from


def test_init_from_a_run_that_stopped_half_way_is_refused_unless_its_step_is_named(runs):
  _, full, stopped = runs
  rl_only = {"stages": ("rl",)}
  with pytest.raises(ValueError, match=r"init_from=.* stopped at step 5 of 6 \(in stage 'rl'\); .*"
                                       r"config.init_from_step=5"):
    support.experiment(_config(**rl_only, init_from=str(stopped)))
  accepted = support.experiment(_config(**rl_only, init_from=str(stopped), init_from_step=4))
  source = accepted._provenance()["init_from"]  # pylint: disable=protected-access
  assert source["path"] == str(stopped) and source["step"] == 4 and "commit" in source
  whole = support.experiment(_config(**rl_only, init_from=str(full)))
  assert whole.init_source["step"] == 6


def test_restore_reads_a_named_step(runs):
  t, _, stopped = runs
  assert t.restore(stopped, step=4)[1] == 4 and t.restore(stopped)[1] == 5


# ----------------------------------------------------------------------------- 10. one-line errors at start-up


@pytest.mark.parametrize("workdir", ["a_file", "a_file/run"])
def test_cli_workdir_that_is_or_is_under_a_file_is_one_line(tmp_path, workdir):
  (tmp_path / "a_file").write_text("x")
  proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/grpo_arithmetic.py:tiny",
                         f"--workdir={tmp_path / workdir}", "--config.model.name=micro"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith(f"error: workdir '{tmp_path / workdir}' is not writable")


def test_cli_config_file_that_raises_is_one_line(tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text("def get_config(arg=None):\n  raise RuntimeError('a bug in the config file')\n")
  proc = subprocess.run([sys.executable, "-m", "experiments.train", f"--config={bad}", f"--workdir={tmp_path / 'w'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: --config={bad}: RuntimeError: a bug in the config file  (--traceback shows where)"]


# ----------------------------------------------------------------------------- 11. provenance of a resumed run


def test_a_resumed_run_records_both_segments_and_their_commits(runs, tmp_path, monkeypatch):
  from experiments import reproduce
  from jaxrl_reward import provenance
  t, _, stopped = runs
  shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
  first = json.loads((tmp_path / "provenance.json").read_text())["segments"]
  assert [(s["start_step"], s["end_step"]) for s in first] == [(0, 5)]
  monkeypatch.setattr(provenance, "git_info", lambda path=None: {"commit": "f" * 40, "dirty": False})
  t.run(tmp_path)
  segments = json.loads((tmp_path / "provenance.json").read_text())["segments"]
  assert [(s["commit"], s["start_step"], s["end_step"]) for s in segments] == [
      (first[0]["commit"], 0, 5), ("f" * 40, 5, 6)]
  spec = reproduce.RunSpec("x", "configs/grpo_arithmetic.py", {})
  demo = reproduce.Reproduction(name="segments_demo", title="Demo", description="", runs=(spec,))
  record = reproduce.collect_record(demo, spec, 0, tmp_path,
                                    wall_s=1.0, quick=False, resumed=True)
  line = reproduce.provenance_line([record])
  assert f"commit {(first[0]['commit'] or 'unknown')[:7]}" in line and "fffffff" in line
