"""Process rewards on a real-model task: steps as lines of a chat model's reasoning-gym solution.

The configs' `smollm2` variants (configs/implicit_prm.py, prime.py, pure.py) run here on a tiny
random Llama with a byte-level BPE tokenizer and a ChatML template (`support.tiny_chat_model_folder`),
so the whole path, from chat prompts to step scores read at BPE tokens, runs without a download.
"""
import numpy as np
import pytest

from jaxrl_reward import process_rewards
from jaxrl_reward.data import task as task_lib
import support

pytest.importorskip("reasoning_gym")

from jaxrl_reward.data import reasoning_gym_source as source  # noqa: E402
from jaxrl_reward.rewards import reasoning_gym_reward  # noqa: E402

CHAIN = dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2, operators=("+", "-"), allow_parentheses=False,
             allow_negation=False)


def test_final_answer_reads_after_the_last_marker():
  tags = task_lib.AnswerFormat(marker="<answer>", suffix="</answer>")
  assert task_lib.final_answer(tags, "1 + 2 = 3\n<answer> 3 </answer><|im_end|>") == "3"
  assert task_lib.final_answer(tags, "<answer>1</answer> no, <answer>-4") == "-4"
  assert task_lib.final_answer(tags, "1 + 2 = 3") is None
  assert task_lib.final_answer(tags, "<answer> </answer>") is None
  assert task_lib.final_answer(task_lib.AnswerFormat(marker="####", prefix=" "), "1+2=3\n#### 3") == "3"
  assert [process_rewards.answer_key(a) for a in ("07", "-3", "1,000", " x ", None, "")] == [7, -3, 1000, "x", None,
                                                                                            None]


def test_line_step_ends_on_hand_made_texts():
  ends = task_lib.line_step_ends("<answer>")
  text = "1 + 2 = 3\n\n3 + 4 = 7  \n<answer>7</answer>\nextra = 1"
  assert ends(text) == [8, 19]
  assert [text[e] for e in ends(text)] == ["3", "7"]
  assert ends("no steps <answer>1</answer>") == [7]  # the text before the tag on its line is a step
  assert ends("<answer>1</answer>") == [] and ends("") == []
  assert ends("a\nb") == [0, 2]  # no answer: every line is a step
  with pytest.raises(ValueError, match="marker"):
    task_lib.line_step_ends("")


def test_a_task_without_steps_or_answer_marker_is_a_clear_error():
  import types
  context = types.SimpleNamespace(task=task_lib.Task(None, [], [], answer_format=None),
                                  config=types.SimpleNamespace(task=types.SimpleNamespace(name="arithmetic")))
  with pytest.raises(ValueError, match="task.name='arithmetic' has no step boundaries"):
    process_rewards.task_step_ends(context)
  with pytest.raises(ValueError, match="task.name='arithmetic' has no answer marker"):
    process_rewards.final_answers(context, ["1"])


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_worked_and_flawed_chains_of_reasoning_gym_problems(name):
  config = CHAIN if name == "basic_arithmetic" else dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2)
  train, _ = source.make_splits(name, num_train=24, num_eval=0, config=config)
  reward = reasoning_gym_reward.ReasoningGymReward(timeout_s=None)
  ends = task_lib.line_step_ends("<answer>")
  rng = np.random.default_rng(0)
  firsts = set()
  for example in train:
    operands, ops = source.chain_of(example)
    worked, flawed, first = source.solution_pair(example, rng)
    firsts.add(first)
    worked_lines, flawed_lines = worked.split("\n"), flawed.split("\n")
    assert len(ends(worked)) == len(ends(flawed)) == len(ops) == len(operands) - 1
    assert worked_lines[-1] == f"<answer>{example['answer']}</answer>"
    assert worked_lines[:first] == flawed_lines[:first] and worked_lines[first] != flawed_lines[first]
    # each worked line is "a op b = c" with c right; the flawed line `first` is wrong
    for line in worked_lines[:-1]:
      a, op, b, _, c = line.split(" ")
      assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    a, op, b, _, c = flawed_lines[first].split(" ")
    assert int(c) != (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert reward([example["prompt"]] * 2, [worked, flawed], entry=[example["entry"]] * 2,
                  reasoning_gym_dataset=[example["reasoning_gym_dataset"]] * 2) == [1.0, 0.0]
  assert len(firsts) > 1  # the first wrong step varies


def test_a_problem_that_is_not_a_chain_has_no_worked_solution():
  config = dict(CHAIN, operators=("+", "*"), min_terms=3, max_terms=3)
  train, _ = source.make_splits("basic_arithmetic", num_train=16, num_eval=0, config=config)
  products = [e for e in train if "*" in e["entry"]["metadata"]["expression"]]
  assert products
  with pytest.raises(ValueError, match="not a chain of \\+ and -"):
    source.chain_of(products[0])
  assert not source._all_chains(train)


# ----------------------------------------------------------------------------- configs


def _all_variants():
  from configs import implicit_prm, prime, pure
  return [(m.__name__.split(".")[-1], ",".join(filter(None, (v, mod))))
          for m in (implicit_prm, prime, pure) for v in ("", *m.VARIANTS) for mod in ("", *m.MODIFIERS)]


@pytest.mark.parametrize("name,variant", _all_variants())
def test_every_process_reward_variant_passes_the_config_checks(name, variant):
  import importlib

  from jaxrl_reward import experiment
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  experiment.check_config(config)
  verifier = config.rewards.eval_name
  assert verifier == ("reasoning_gym" if "smollm2" in variant else "arithmetic_correctness")
  if name != "implicit_prm" and "rloo" not in variant and "verified" not in variant and name != "pure":
    assert config.rewards.names == (verifier, "implicit_prm")  # PRIME: the task's verifier and the PRM


def test_the_smollm2_smoke_runs_are_smaller():
  from configs import implicit_prm, prime, pure
  for module in (implicit_prm, prime, pure):
    full, cpu = module.get_config("smollm2"), module.get_config("smollm2_cpu")
    assert full.model.dtype == "bfloat16" and cpu.model.dtype == "float32"
    assert cpu.rollout.prompts_per_step * cpu.rollout.group_size < full.rollout.prompts_per_step * full.rollout.group_size
    assert cpu.task.num_eval < full.task.num_eval and "sft" not in full.stages
    steps = lambda c: c.reward_model.steps if "reward_model" in c.stages else c.train.steps  # noqa: E731
    assert steps(cpu) < steps(full)


# ----------------------------------------------------------------------------- a tiny chat model


def _corpus():
  from configs import implicit_prm
  train, _ = source.make_splits("basic_arithmetic", num_train=64, num_eval=0, config=CHAIN)
  rng = np.random.default_rng(1)
  texts = [implicit_prm.SMOLLM2_SYSTEM_PROMPT, *[t for pair in implicit_prm.SMOLLM2_CHAT_EXAMPLES for t in pair]]
  for example in train:
    texts += [example["prompt"], *source.solution_pair(example, rng)[:2]]
  return texts


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
  return str(support.tiny_chat_model_folder(tmp_path_factory.mktemp("tiny_chat"), _corpus()))


def test_step_ends_land_on_bpe_tokens_and_step_rewards_add_up(chat_folder):
  from models import hf
  tokenizer = hf.load_tokenizer(chat_folder)
  train, _ = source.make_splits("basic_arithmetic", num_train=6, num_eval=0, config=CHAIN)
  rng = np.random.default_rng(0)
  texts = [t for e in train for t in source.solution_pair(e, rng)[:2]]
  ids, mask = process_rewards.encode_solutions(tokenizer, texts, 64)
  step_ends = task_lib.line_step_ends("<answer>")
  ends = process_rewards.step_end_mask(tokenizer, ids, mask, texts, step_ends)
  assert any(len(tokenizer(t[:8])["input_ids"]) < 8 for t in texts)  # merged pieces, not characters
  for b, text in enumerate(texts):
    offsets = step_ends(text)
    marked = np.flatnonzero(ends[b])
    assert len(marked) == len(offsets)
    for t, offset in zip(marked, offsets):  # the marked token holds the step's last character
      assert len(tokenizer.decode(ids[b, :t])) <= offset < len(tokenizer.decode(ids[b, :t + 1]))
  rng = np.random.default_rng(2)
  prm, ref = rng.normal(size=ids.shape), rng.normal(size=ids.shape)
  rewards, step_mask, tokens = process_rewards.step_rewards(prm, ref, mask, ends, beta=0.1)
  token_r = 0.1 * (prm - ref) * mask
  np.testing.assert_allclose(np.asarray(tokens), token_r, rtol=1e-5, atol=1e-6)
  for b in range(len(texts)):
    cumulative = np.cumsum(token_r[b])[np.flatnonzero(ends[b])]
    got = np.asarray(rewards[b])[np.asarray(step_mask[b]) > 0]
    np.testing.assert_allclose(got, np.diff(cumulative, prepend=0.0), rtol=1e-4, atol=1e-5)


def _on_folder(config, folder, **overrides):
  config.model.hf_path = config.task.tokenizer_dir = folder
  config.model.dtype = "float32"
  config.task.num_train, config.task.num_eval = 64, 4
  config.task.max_prompt_length = 320
  config.task.max_completion_length = 48
  return support.with_keys(config, **overrides)


def test_implicit_prm_on_a_chat_model_trains_and_is_evaluated(chat_folder, tmp_path):
  from configs import implicit_prm
  from jaxrl_reward import experiment
  config = _on_folder(implicit_prm.get_config("smollm2_cpu"), chat_folder, **{"reward_model.steps": 1,
                                                                              "reward_model.eval_every": 0})
  prompts = [e["prompt"] for e in experiment.Experiment(config).context.task.eval]
  assert all(p.endswith("<|im_start|>assistant\n") and "<answer>14</answer>" in p for p in prompts)
  support.experiment(config).run(tmp_path)
  result = process_rewards.evaluate(config, tmp_path, num=4, samples=4, ns=[1, 4], aggregations=["min", "sum"])
  assert result["step"] == 1 and result["num"] == 4 and result["samples"] == 4
  assert set(result) >= {"best_of_n/min", "best_of_n/sum", "majority_vote", "best_of_n/policy_likelihood"}
  assert result["pass_at_n"][4] >= result["pass_at_n"][1] == pytest.approx(result["frac_correct"])
  loc = result["localisation"]  # worked and flawed chains of the held-out problems, teacher-forced
  assert loc is not None and 0.0 <= loc["f1"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", [("prime", "smollm2_cpu"), ("prime", "smollm2_cpu,rloo"),
                                          ("pure", "smollm2_cpu,verified")])
def test_rl_variants_on_a_chat_model_run(chat_folder, tmp_path, name, variant):
  import importlib

  from jaxrl_reward import metrics
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  config = _on_folder(config, chat_folder, **{"train.steps": 1, "eval.every": 0, "checkpoint_every": 1})
  if "reward_model" in config.stages:
    config.reward_model.steps, config.reward_model.eval_every = 1, 0
  support.experiment(config).run(tmp_path)
  rows = metrics.read_metrics(tmp_path / "metrics.jsonl")
  rl = [r for r in rows if "train/reward" in r]
  assert len(rl) == 1 and all(np.isfinite(v) for v in rl[0].values() if isinstance(v, float))
  keys = set(rl[0])
  assert "train/rewards/reasoning_gym" in keys  # the task's verifier, not the arithmetic one
  if variant == "smollm2_cpu":  # PRIME: the PRM's token rewards, and its CE update in the same step
    assert {"train/rewards/implicit_prm", "loss/prm_ce", "train/accuracy_filter/kept_frac"} <= keys
  elif name == "prime":  # the outcome-only baseline
    assert "train/rewards/implicit_prm" not in keys and "loss/prm_ce" not in keys
  else:  # PURE: the frozen PRM's rewards, the verifier on a fixed fraction of the problems only
    assert "train/rewards/implicit_prm" in keys and "loss/prm_ce" not in keys
    assert 0.0 <= rl[0]["train/rewards/verified_frac"] <= 1.0
