"""What is knowable at start-up is checked at start-up, in one line naming the key or the file;
and a generated document is never replaced by a smaller one by mistake.

Each test builds configs and calls the checking function (or builds the Experiment of a tiny
config); nothing trains.
"""
import json
import pathlib
import subprocess
import sys

import pytest

import support
from configs import grpo_math_file
from configs import implicit_prm
from configs import likelihood_rewards
from configs import prdp_digits
from configs import prime
from configs import pure
from experiments import reproduce
from jaxrl_reward import experiment as experiment_lib
from jaxrl_reward import process_rewards
from jaxrl_reward import provenance
from jaxrl_reward.data import tasks
from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer, save_tokenizer
from jaxrl_reward.rewards import likelihood

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- config variants ---------------------------------------------------------------------------


@pytest.mark.parametrize("config, variant, message", [
    (prdp_digits, "tiny,ddpo,prdp", "variants 'ddpo' and 'prdp' of configs/prdp_digits.py conflict: pick one"),
    (prdp_digits, "tiny,large", "variants 'tiny' and 'large' of configs/prdp_digits.py conflict: pick one"),
    (prdp_digits, "large,tiny", "variants 'large' and 'tiny' of configs/prdp_digits.py conflict: pick one"),
    (prdp_digits, "tiny,mnist", "variants 'tiny' and 'mnist' of configs/prdp_digits.py conflict: pick one"),
    (prdp_digits, "styles,large,rdp", "variants 'styles' and 'large' of configs/prdp_digits.py conflict"),
    (prdp_digits, "tiny,ddpo,tiny", "variant 'tiny' of configs/prdp_digits.py is given twice"),
    (prime, "tiny,rloo,update_first", "variants 'rloo' and 'update_first' of configs/prime.py conflict: pick one"),
    (prime, "tiny,smollm2", "variants 'tiny' and 'smollm2' of configs/prime.py conflict: pick one"),
    (prime, "tiny,rloo,rloo", "variant 'rloo' of configs/prime.py is given twice"),
    (prime, "rloo,tiny", "variant 'tiny' of configs/prime.py comes before the modifiers: tiny,rloo"),
    (pure, "sum,verified,sum", "variant 'sum' of configs/pure.py is given twice"),
    (implicit_prm, "chain_sums,orm,dpo", "variants 'orm' and 'dpo' of configs/implicit_prm.py conflict: pick one"),
    (implicit_prm, "chain_sums,chain_sums_tiny", "variants 'chain_sums' and 'chain_sums_tiny' of "
     "configs/implicit_prm.py conflict"),
    (likelihood_rewards, "tiny,long", "variants 'tiny' and 'long' of configs/likelihood_rewards.py conflict"),
    (likelihood_rewards, "nope", "unknown variant 'nope' of configs/likelihood_rewards.py; known: tiny, long"),
])
def test_conflicting_or_repeated_variants_are_refused_naming_both(config, variant, message):
  with pytest.raises(ValueError) as raised:
    config.get_config(variant)
  assert message in str(raised.value) and "\n" not in str(raised.value)


def test_variants_that_combine_still_do_in_any_order():
  assert prdp_digits.get_config("large,ddpo").to_dict() == prdp_digits.get_config("ddpo,large").to_dict()
  assert prdp_digits.get_config("tiny,rdp").objective.name == "rdp"
  assert pure.get_config("tiny,sum,verified").to_dict() == pure.get_config("tiny,verified,sum").to_dict()
  assert prime.get_config("tiny,rloo").advantage.estimator == "rloo"
  assert implicit_prm.get_config("chain_sums_tiny,orm").reward_model.role == "orm"


# -- likelihood rewards: reference answers against max_answer_tokens --------------------------


def test_likelihood_answers_longer_than_max_answer_tokens_are_refused_at_start_up():
  c = likelihood_rewards.get_config("tiny")
  c.model.name = "micro"
  c.rewards.options.likelihood.max_answer_tokens = 2
  task = tasks.build_task(c.task, seed=c.seed)
  fmt = task.answer_format
  lengths = [len(ids) for ids in likelihood.answer_tokens(task.tokenizer, [e["answer"] for e in task.train], fmt,
                                                          eos=True)]
  row = lengths.index(max(lengths))
  with pytest.raises(ValueError) as raised:
    support.experiment(c)  # Experiment.__init__: before any step
  message = str(raised.value)
  assert f"training example {row} ({task.train[row]['answer']!r}) takes {max(lengths)} tokens" in message
  assert "rewards.options.likelihood.max_answer_tokens=2; raise it to at least" in message
  assert "\n" not in message


# -- math files: every row against the task's lengths -----------------------------------------


def _rows(count, long_row=None, *, question="x" * 5000, answer=None):
  rows = [{"question": f"what is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(count)]
  if long_row is not None:
    rows[long_row] = {"question": question, "answer": answer or rows[long_row]["answer"]}
  return rows


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


@pytest.fixture
def math_config(tmp_path):
  save_tokenizer(build_arithmetic_tokenizer(), tmp_path / "tokenizer")
  return lambda **overrides: support.with_keys(grpo_math_file.get_config("tiny"), **{
      "task.train_file": _jsonl(tmp_path / "train.jsonl", _rows(24)),
      "task.eval_file": _jsonl(tmp_path / "test.jsonl", _rows(10)), "task.tokenizer_dir": str(tmp_path / "tokenizer"),
      **overrides})


def test_a_math_file_row_longer_than_the_prompt_limit_is_refused_naming_file_and_row(math_config, tmp_path):
  huge = _jsonl(tmp_path / "huge.jsonl", _rows(24, long_row=5))
  for overrides, source, row in (({"task.train_file": huge}, huge, 5),
                                 ({"task.eval_file": huge}, huge, 5),  # held out: its first num_eval rows
                                 ({"task.train_file": huge, "task.eval_file": ""}, huge, 5)):  # split of one file
    c = math_config(**overrides)
    with pytest.raises(ValueError) as raised:
      tasks.build_task(c.task, seed=c.seed)
    assert str(raised.value) == (f"row {row} of {source!r}: its prompt takes 5002 tokens, more than "
                                 "task.max_prompt_length=48; raise the limit or drop the row")
  # A held-out row past num_eval is never used: not checked.
  tasks.build_task(math_config(**{"task.eval_file": huge, "task.num_eval": 5}).task, seed=0)


def test_math_file_prompt_limit_is_exact(math_config, tmp_path):
  # The character tokenizer: BOS + one token a character; the template adds "\n".
  fits = _jsonl(tmp_path / "fits.jsonl", _rows(24, long_row=3, question="y" * 46))
  tasks.build_task(math_config(**{"task.train_file": fits}).task, seed=0)
  over = _jsonl(tmp_path / "over.jsonl", _rows(24, long_row=3, question="y" * 47))
  with pytest.raises(ValueError, match=r"row 3 of .*over.jsonl.*takes 49 tokens, more than task.max_prompt_length=48"):
    tasks.build_task(math_config(**{"task.train_file": over}).task, seed=0)


def test_a_worked_solution_too_long_for_the_warm_up_names_file_and_row(math_config, tmp_path):
  long_solution = _jsonl(tmp_path / "solution.jsonl",
                         _rows(24, long_row=7, question="q?", answer="1 + 1 = 2\n" * 20 + "#### 2"))
  c = math_config(**{"task.train_file": long_solution})
  task = tasks.build_task(c.task, seed=c.seed)  # the RL stage never reads worked solutions
  with pytest.raises(ValueError) as raised:
    task.sft_targets(task.train[:2], 0)  # the warm-up's first batch checks every train row
  assert str(raised.value).startswith(
      f"row 7 of {long_solution!r}: its prompt, worked solution and EOS take 211 tokens, more than "
      "task.max_prompt_length + task.max_completion_length = 64")


# -- diffusion RL without trained image models --------------------------------------------------


@pytest.mark.parametrize("overrides, why", [
    ({"pretrain.steps": 0}, r"config.pretrain.steps=0 and config.init_from is empty"),
    ({"stages": ("rl",)}, r"config.stages=\('rl',\) has no 'pretrain' stage before 'rl' and config.init_from is "
                          "empty"),
])
def test_diffusion_rl_with_untrained_reward_model_and_guard_is_refused(overrides, why):
  c = support.with_keys(prdp_digits.get_config("tiny"), **overrides)
  with pytest.raises(ValueError, match=why + r": the image models guard, reward_model .* would be untrained; "
                     r"pretrain them, set config.init_from to a pre-trained run, or set "
                     r"config.allow_untrained_reward=True"):
    experiment_lib.check_config(c)
  experiment_lib.check_config(support.with_keys(c, allow_untrained_reward=True))
  experiment_lib.check_config(support.with_keys(prdp_digits.get_config("tiny"), **overrides, init_from="/a/run"))
  experiment_lib.check_config(prdp_digits.get_config("tiny"))


# -- REPRODUCTIONS.md is never replaced by a smaller document ----------------------------------


def _record(seed):
  rows = [{"stage": "after sft", "step": 4, "accuracy_greedy": 0.2 + seed / 10, "accuracy_sampled": 0.1},
          {"stage": "after rl", "step": 8, "accuracy_greedy": 0.5 + seed / 10, "accuracy_sampled": 0.3}]
  return {"reproduction": "main_job", "label": "default", "seed": seed, "quick": False,
          "config": "configs/grpo_arithmetic.py", "overrides": {}, "results": rows, "eval_curve": [],
          "train_reward": [], "wall_s": 10.0, "resumed": False, "commit": "abc1234", "dirty": False,
          "jax": "0.10.2", "host": "x86_64", "cpu_count": 2, "device": "cpu", "workdir": "/tmp/x",
          "date_utc": "2026-11-27T10:00:00+00:00"}


def _old_document(path):
  path.write_text("# Reproductions\n" + "".join(f"\n## Section {i}\n" + "line\n" * 22 for i in range(9)))
  return path.read_text()


def test_render_with_no_records_writes_nothing_and_says_so(tmp_path):
  output = tmp_path / "R.md"
  old = _old_document(output)
  assert len(old.splitlines()) == 217
  with pytest.raises(FileNotFoundError, match=r"no kept result lines in .*empty .*main_job.jsonl.*R.md left as it was"):
    reproduce.render_document(tmp_path / "empty", output)
  assert output.read_text() == old


def test_render_refuses_to_shrink_the_document_unless_allowed(tmp_path):
  results, output = tmp_path / "results", tmp_path / "R.md"
  results.mkdir()
  (results / "main_job.jsonl").write_text("".join(json.dumps(_record(s)) + "\n" for s in (0, 1)))
  old = _old_document(output)
  with pytest.raises(ValueError) as raised:
    reproduce.render_document(results, output)
  message = str(raised.value)
  assert message.startswith(f"refusing to replace {output} (217 lines, 9 sections) with ")
  assert " lines, 1 sections from " in message and message.endswith("pass --allow_shrink to write it anyway")
  assert output.read_text() == old
  text = reproduce.render_document(results, output, allow_shrink=True)
  assert output.read_text() == text and "## " in text
  assert reproduce.render_document(results, output) == text  # the same size again: written


def test_render_only_cli_on_an_empty_results_dir_exits_non_zero_in_one_line(tmp_path):
  output = tmp_path / "R.md"
  old = _old_document(output)
  (tmp_path / "empty").mkdir()
  proc = subprocess.run([sys.executable, "-m", "experiments.reproduce", "--render_only",
                         f"--results_dir={tmp_path / 'empty'}", f"--output={output}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.strip().splitlines()[-1].startswith("error: no kept result lines in ")
  assert "Traceback" not in proc.stderr
  assert output.read_text() == old


# -- prm_best_of_n on the workdir of another config ----------------------------------------------


def test_prm_evaluation_of_a_workdir_of_another_config_names_the_keys(tmp_path):
  provenance.write_config(tmp_path, implicit_prm.get_config("tiny"))  # the run: arithmetic task
  config = implicit_prm.get_config("chain_sums_tiny")
  with pytest.raises(experiment_lib.ConfigMismatch) as raised:
    process_rewards.evaluate(config, tmp_path, num=2, samples=2, ns=[1], aggregations=["min"])
  message = str(raised.value)
  assert message.startswith(f"{tmp_path} holds a run of another config: ")
  assert "task.name: 'arithmetic' there, 'chain_sums' here" in message
  assert message.endswith(f"pass the run's own --config (its {tmp_path / 'config.json'} records it)")
  assert "\n" not in message
  process_rewards.check_run_config(implicit_prm.get_config("tiny"), tmp_path)  # its own config: fine
  with pytest.raises(FileNotFoundError, match="holds no run"):
    process_rewards.check_run_config(config, tmp_path / "nothing")
