"""Command-line overrides: a key the config file lacks is a one-line error, the open blocks
take new keys, and an objective selected by name trains with its own options."""
import pathlib
import subprocess
import sys

import pytest

from jaxrl_reward import config_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "configs/grpo_arithmetic.py:tiny"


def _train(tmp_path, *overrides, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.train", f"--config={TINY}", f"--workdir={tmp_path}",
                         "--config.model.name=micro", *overrides],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_parse_argv():
  spec, keys = config_cli.parse_argv(["x", "--config", "a.py:tiny", "--config.train.steps=3", "--config.seed", "1"])
  assert spec == "a.py:tiny" and keys == ["train.steps", "seed"]


def test_unknown_keys_outside_the_open_blocks():
  config = config_cli.load(TINY)
  keys = ["train.steps", "train.stepz", "objective.options.clip_eps", "advantage.options.lam",
          "rewards.options.implicit_prm", "roles.prm", "objective.optionz.beta"]
  assert config_cli.unknown_keys(config, keys) == ["train.stepz", "objective.optionz.beta"]


def test_cli_rejects_unknown_config_key_in_one_line(tmp_path):
  proc = _train(tmp_path, "--config.optim.lrr=1e-3")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--config.optim.lrr (did you mean optim.lr?)" in lines[0]
  assert not (tmp_path / "config.json").exists()


def test_cli_unknown_option_fails_before_anything_runs(tmp_path):
  proc = _train(tmp_path, "--config.objective.name=prdp", "--config.objective.options.clip_epz=1e-4")
  assert proc.returncode != 0
  assert "'prdp' has no option 'clip_epz' (did you mean 'clip_eps'?)" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_cli_selects_an_objective_and_its_options_by_name(tmp_path):
  proc = _train(tmp_path, "--config.objective.name=prdp", "--config.objective.options.clip_eps=1e-4",
                "--config.objective.options.beta=0.1", "--config.warmup.steps=1", "--config.train.steps=2",
                "--config.eval.every=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # noqa: PLC0415
  provenance = json.loads((tmp_path / "provenance.json").read_text())
  assert provenance["objective"] == {"name": "prdp", "options": {
      "beta": 0.1, "clip_eps": 1e-4, "reduce_steps": "mean", "pairs": "all"}}
  assert "after PRDP" in proc.stdout
