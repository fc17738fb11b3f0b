"""Reproductions: kept lines -> REPRODUCTIONS.md, run errors, and one quick run of the main job."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import reproduce

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _record(name, label, seed, rows, *, date="2026-11-27T10:00:00+00:00", quick=False, commit="abc1234def",
            overrides=None):
  """A hand-written kept line; `rows`: [(stage, step, greedy, sampled)]."""
  results = [{"stage": s, "step": t, "accuracy_greedy": g, "accuracy_sampled": p} for s, t, g, p in rows]
  return {"reproduction": name, "label": label, "seed": seed, "quick": quick,
          "config": "configs/grpo_arithmetic.py", "overrides": overrides or {}, "results": results,
          "eval_curve": [{"step": t, "accuracy_greedy": g, "accuracy_sampled": p} for _, t, g, p in rows],
          "train_reward": [{"step": t, "reward": g / 2} for _, t, g, _ in rows],
          "wall_s": 200.0, "resumed": False, "commit": commit, "dirty": False, "jax": "0.10.2",
          "host": "x86_64", "cpu_count": 2, "device": "cpu", "workdir": "/tmp/x", "date_utc": date}


def _write(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


# Stage labels of the hand-written lines: deliberately not today's, they are opaque strings.
GREEDY = {0: (0.20, 0.90), 1: (0.25, 0.85), 2: (0.15, 0.95)}
SAMPLED = {0: (0.30, 0.70), 1: (0.32, 0.74), 2: (0.28, 0.69)}


def _main_job_lines(stages=("after sft", "after rl")):
  return [_record("main_job", "default", s, [(stages[0], 400, GREEDY[s][0], SAMPLED[s][0]),
                                              (stages[1], 600, GREEDY[s][1], SAMPLED[s][1])])
          for s in (0, 1, 2)]


def _table_row(text, stage):
  return next(line for line in text.splitlines() if line.startswith(f"| {stage} |"))


def test_render_means_stds_per_seed_and_plot(tmp_path):
  results, output = tmp_path / "results", tmp_path / "docs" / "R.md"
  _write(results / "main_job.jsonl", _main_job_lines())
  text = reproduce.render_document(results, output)
  assert output.read_text() == text
  assert "python -m experiments.reproduce --render_only" in text.splitlines()[2]
  for i, stage in enumerate(("after sft", "after rl")):
    row = _table_row(text, stage)
    for table in (GREEDY, SAMPLED):
      values = [table[s][i] for s in (0, 1, 2)]
      assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in row
      assert ", ".join(f"{s}: {table[s][i]:.3f}" for s in (0, 1, 2)) in row
    assert "| 3 |" in row  # seeds
  assert text.index("after sft") < text.index("after rl")  # the stages keep their order
  mean, std, n = reproduce.summarise([0.2, 0.25, 0.15])
  np.testing.assert_allclose([mean, std], [np.mean([0.2, 0.25, 0.15]), np.std([0.2, 0.25, 0.15], ddof=1)])
  assert n == 3 and reproduce.summarise([0.5])[1] is None
  # No paper: said so. Claims computed from the numbers: greedy 0.20 -> 0.90 is beyond the spread.
  assert "**Paper.** None" in text and "paper:" not in text
  assert "the change per seed (0: +0.700, 1: +0.600, 2: +0.800), mean +0.700" in text
  assert "a rise: **shown**" in text
  assert "--config=configs/grpo_arithmetic.py" in text and "main_job --seeds=3" in text
  png = results / "main_job.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "](../results/main_job.png)" in text  # linked relative to the document


def test_claims_follow_the_numbers():
  close = [_record("main_job", "default", s, [("a", 1, 0.5, 0.5), ("b", 2, 0.5 + d, 0.5)])
           for s, d in enumerate((0.05, -0.05, 0.02))]
  text = reproduce.main_job_claims(close)
  assert "the change per seed (0: +0.050, 1: -0.050, 2: +0.020)" in text
  assert "a rise: **not decided (3 seeds); a comparison that 3 seeds do not decide needs 5 seeds" in text
  one = reproduce.main_job_claims(close[:1])
  assert "one seed: no interval" in one and "not decided (1 seed)" in one


def test_latest_line_per_seed_wins_and_quick_files_are_ignored(tmp_path):
  results = tmp_path / "results"
  _write(results / "main_job.jsonl", _main_job_lines())
  late = _record("main_job", "default", 1,
                 [("after sft", 400, 0.111, 0.222), ("after rl", 600, 0.777, 0.666)],
                 date="2026-11-28T10:00:00+00:00", commit="fedcba98765")
  _write(results / "main_job.jsonl", [late])
  before_quick = reproduce.render_document(results, tmp_path / "R.md")
  row = _table_row(before_quick, "after rl")
  assert "1: 0.777" in row and "1: 0.850" not in row
  assert f"{np.mean([0.90, 0.777, 0.95]):.3f} ± {np.std([0.90, 0.777, 0.95], ddof=1):.3f}" in row
  assert "2026-11-27 to 2026-11-28" in before_quick and "fedcba9" in before_quick
  _write(results / "main_job.quick.jsonl",
         [_record("main_job", "default", 0, [("after sft", 4, 0.999, 0.999)], quick=True)])
  assert reproduce.render_document(results, tmp_path / "R.md") == before_quick
  assert "0.999" not in before_quick


def test_paper_numbers_appear_beside_ours(tmp_path, monkeypatch):
  paper = reproduce.Paper("Someone et al. (2025), Table 1",
                          {("ours", -1, "accuracy_greedy"): 0.612,  # by position: the last row
                           ("baseline", "after rl", "accuracy_greedy"): 0.433})  # by stage
  demo = reproduce.Reproduction(
      name="demo", title="Demo with a paper", description="A test reproduction.",
      runs=(reproduce.RunSpec("ours", "configs/grpo_arithmetic.py", {"optim.lr": 1e-4}),
            reproduce.RunSpec("baseline", "configs/grpo_arithmetic.py")),
      paper=paper, claims="A fixed statement.")
  monkeypatch.setitem(reproduce.REGISTRY, "demo", demo)
  results = tmp_path / "results"

  def rows(seed):
    return [("after sft", 4, 0.1 + seed / 10, 0.2), ("after rl", 8, 0.5 + seed / 10, 0.3)]

  lines = [_record("demo", label, s, rows(s),
                   overrides={"optim.lr": 1e-4} if label == "ours" else None)
           for label in ("baseline", "ours") for s in (0, 1)]
  _write(results / "demo.jsonl", lines)
  text = reproduce.render_document(results, tmp_path / "R.md")
  section = text[text.index("## Demo with a paper"):]
  assert "paper: accuracy_greedy" in section and "paper: accuracy_sampled" not in section
  ours_last = next(line for line in section.splitlines() if line.startswith("| ours | after rl"))
  base_last = next(line for line in section.splitlines() if line.startswith("| baseline | after rl"))
  assert ours_last.endswith("| 0.612 |") and base_last.endswith("| 0.433 |")
  assert section.index("| ours |") < section.index("| baseline |")  # the order of `runs`
  assert "Someone et al. (2025), Table 1" in section and "A fixed statement." in section
  assert "--config.optim.lr=0.0001" in section
  assert (results / "demo.png").is_file()


def test_unknown_reproduction_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"unknown reproduction 'nope'; known: .*main_job"):
    reproduce.get("nope")
  result = subprocess.run([sys.executable, "-m", "experiments.reproduce", "nope"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert "unknown reproduction 'nope'; known: implicit_prm, likelihood_rewards, main_job, prdp" in result.stdout + result.stderr


def test_runs_can_be_chosen_by_label_and_overrides_take_the_seed(tmp_path):
  demo = reproduce.Reproduction(name="demo2", title="Demo", description="",
                                runs=(reproduce.RunSpec("a", "configs/does_not_exist.py"),
                                      reproduce.RunSpec("b", "configs/x.py", {"init_from": "runs/a/seed{seed}"})))
  with pytest.raises(ValueError, match=r"--runs: \['c'\] are not runs of 'demo2'"):
    reproduce.run_reproduction(demo, seeds=1, only=("c",), root=tmp_path, results_dir=tmp_path, echo=lambda _: None)
  with pytest.raises(reproduce.RunFailed, match="does_not_exist"):  # only "a" runs
    reproduce.run_reproduction(demo, seeds=1, only=("a",), root=tmp_path, results_dir=tmp_path, echo=lambda _: None)
  assert not (tmp_path / "demo2" / "b").exists()
  assert "--config.init_from=runs/a/seed2" in demo.runs[1].args("W", 2)


def test_failing_run_raises_with_the_log_tail(tmp_path):
  broken = reproduce.Reproduction(name="broken", title="Broken", description="",
                                  runs=(reproduce.RunSpec("missing", "configs/does_not_exist.py"),))
  with pytest.raises(reproduce.RunFailed) as info:
    reproduce.run_reproduction(broken, seeds=1, root=tmp_path / "runs", results_dir=tmp_path / "results",
                               echo=lambda _: None)
  message = str(info.value)
  log = tmp_path / "runs" / "broken" / "missing" / "seed0" / reproduce.LOG_FILE
  assert "exit status" in message and str(log) in message
  assert "does_not_exist.py" in message.split("last lines of", 1)[1]  # the error, read back from the log
  assert "does_not_exist.py" in log.read_text()
  assert not (tmp_path / "results" / "broken.jsonl").exists()


@pytest.mark.slow
def test_quick_main_job_run_end_to_end(tmp_path):
  results, output = tmp_path / "results", tmp_path / "R.md"
  _write(results / "main_job.jsonl", _main_job_lines())
  before = reproduce.render_document(results, output)
  records = reproduce.run_reproduction(reproduce.get("main_job"), quick=True, root=tmp_path / "runs",
                                       results_dir=results, echo=lambda _: None)
  assert len(records) == 1
  (line,) = reproduce.read_records(results / "main_job.quick.jsonl")
  assert line["quick"] and line["seed"] == 0 and line["config"] == "configs/grpo_arithmetic.py:tiny"
  workdir = tmp_path / "runs" / "main_job.quick" / "default" / "seed0"
  assert line["results"] == json.loads((workdir / "results.json").read_text()) and line["results"]
  assert all({"stage", "step", "accuracy_greedy", "accuracy_sampled"} <= set(r) for r in line["results"])
  assert line["eval_curve"] and all("accuracy_greedy" in p for p in line["eval_curve"])
  assert line["wall_s"] > 0 and line["jax"] and line["date_utc"] and not line["resumed"]
  assert (workdir / reproduce.LOG_FILE).is_file()
  assert reproduce.render_document(results, output) == before  # quick lines never rendered


def test_runs_placeholder_names_the_reproductions_run_directory():
  spec = reproduce.RunSpec("ce", "configs/x.py", {"init_from": "{runs}/warmup/seed{seed}"})
  assert "--config.init_from=/r/implicit_prm/warmup/seed1" in spec.args("/r/implicit_prm/ce/seed1", 1)


def _prm_record(label, seed, pair, bon, f1=None, extra=None):
  evaluation = {("best_of_n/outcome" if label == "orm" else "best_of_n/min"): dict(zip(("1", "4", "16", "64"), bon)),
                "localisation": None if f1 is None else {"f1": f1}, **(extra or {})}
  record = _record("implicit_prm", label, seed, [])
  record["results"] = [{"stage": "after reward model", "step": 700, "pair_accuracy": pair}]
  return {**record, "evaluation": evaluation}


def test_prm_table_and_claims_follow_the_numbers():
  shared = {"random": 0.2, "majority_vote": {"1": 0.2, "4": 0.25, "16": 0.3, "64": 0.3},
            "pass_at_n": {"1": 0.2, "4": 0.5, "16": 0.7, "64": 0.8}}
  records = []
  for seed, jitter in enumerate((0.0, 0.01, -0.01)):
    records += [_prm_record("ce", seed, 0.7, (0.2, 0.3, 0.4, 0.5 + jitter), 0.6, shared),
                _prm_record("dpo", seed, 0.6, (0.2, 0.25, 0.3, 0.35 + jitter), 0.5),
                _prm_record("kto", seed, 0.5, (0.2, 0.2, 0.2, 0.2 + jitter), 0.4),
                _prm_record("orm", seed, 0.5, (0.2, 0.21, 0.22, 0.21 + jitter))]
  table = reproduce.prm_table(records)
  assert _table_row(table, "ce").split("|")[6].strip() == "0.500 ± 0.010"  # BoN@64
  assert _table_row(table, "oracle (pass@N)").split("|")[6].strip() == "0.800 ± 0.000"
  assert _table_row(table, "orm").split("|")[7].strip() == "-"  # an ORM localises nothing
  claims = reproduce.prm_claims(records)
  # Paired by seed: ce - orm is +0.29 in every seed, dpo - orm +0.14, kto - orm -0.01.
  assert "reranks better than an outcome reward model trained on the same labels* (the paper's Best-of-N " \
         "tables): **shown for ce, dpo**" in claims
  assert "BoN@64 ce minus orm per seed (0: +0.290, 1: +0.290, 2: +0.290)" in claims
  assert "kto minus orm per seed (0: -0.010, 1: -0.010, 2: -0.010), mean -0.010" in claims
  assert "beats random choice* (a precondition of every other claim): **shown** for ce, dpo" in claims
  assert "strongest implicit PRM* (the paper, for Llama-3.1-8B): **contradicted**" in claims  # dpo - ce = -0.15
  assert "anti-correlated" not in claims
  worse = [r if r["label"] != "ce" else _prm_record("ce", r["seed"], 0.5, (0.2, 0.2, 0.2, 0.2), 0.5, shared)
           for r in records if r["label"] != "dpo"] + [_prm_record("dpo", s, 0.5, (0.2,) * 4, 0.5) for s in range(3)]
  assert "**not decided (3 seeds); a comparison that 3 seeds do not decide needs 5 seeds (a later rerun with " \
         "`--seeds=5`)** for ce, dpo, kto, orm" in reproduce.prm_claims(worse)
  assert "none of which is shown to do better than chance" in reproduce.prm_claims(worse)
  # A scorer whose Best-of-N falls as N grows is anti-correlated, not "not shown".
  falling = [r if r["label"] != "ce" else _prm_record("ce", r["seed"], 0.4, (0.2, 0.15, 0.1, 0.05 + 0.01 * r["seed"]),
                                                        0.5, shared) for r in records]
  text = reproduce.prm_claims(falling)
  assert "ce is **anti-correlated**: its Best-of-N falls as N grows (mean BoN@1, 4, 16, 64: 0.200, 0.150, 0.100, " \
         "0.060; BoN@64 minus BoN@1 per seed (0: -0.150, 1: -0.140, 2: -0.130)" in text
  assert "**shown** for dpo" in text and "not shown" not in text
  assert "no verdict" in reproduce.prm_claims(records[:2])


def _curve_record(name, label, seed, accuracies, rewards=()):
  record = _record(name, label, seed, [("initial", 0, accuracies[0], 0.1), ("after GRPO", 50, accuracies[-1], 0.1)])
  record["eval_curve"] = [{"step": 25 * i, "accuracy_greedy": a} for i, a in enumerate(accuracies)]
  record["train_reward"] = [{"step": i + 1, "reward": r} for i, r in enumerate(rewards)]
  return record


def test_pure_and_prime_claims_follow_the_numbers():
  hacking, flat = [0.0] * 5 + [2.0] * 5, [0.1] * 10
  records = [_curve_record("pure", label, s, acc, rw) for s in range(3) for label, acc, rw in (
      ("sum", (0.3, 0.2, 0.05), hacking), ("min", (0.3, 0.3, 0.32), flat),
      ("sum_verified", (0.3, 0.2, 0.1), hacking), ("min_verified", (0.3, 0.35, 0.4 + 0.01 * s), flat))]
  claims = reproduce.pure_claims(records)
  assert ("reward hacking* (read as: the PRM's reward rises while accuracy falls, both paired by seed): "
          "**shown**") in claims
  assert "`sum` greedy accuracy change per seed (0: -0.250, 1: -0.250, 2: -0.250)" in claims
  assert "*Min-form credit stays stable* (read as: min-form's accuracy does not fall, and changes more than " \
         "sum-form's): **shown**" in claims
  assert "above each other arm's): **shown**" in claims
  collapsed = [r if r["label"] != "min" else _curve_record("pure", "min", r["seed"], (0.3, 0.1, 0.0), hacking)
               for r in records]
  assert "changes more than sum-form's): **contradicted**" in reproduce.pure_claims(collapsed)
  noisy = [r if r["label"] != "sum" else _curve_record("pure", "sum", r["seed"], (0.3, 0.2, 0.05),
                                                       [0.0] * 5 + [(2.0, -1.0, 0.5)[r["seed"]]] * 5) for r in records]
  assert "both paired by seed): **not decided (3 seeds)" in reproduce.pure_claims(noisy)  # the reward rise is noise
  prime = [_curve_record("prime", label, s, acc) for s in range(3) for label, acc in (
      ("prime", (0.3, 0.5, 0.6, 0.7 + 0.01 * s)), ("rloo", (0.3, 0.3, 0.31, 0.3 + 0.01 * s)))]
  claims = reproduce.prime_claims(prime)
  assert "*PRIME improves the SFT model* (paper: +16.7% on average over its benchmarks): **shown**" in claims
  assert "per seed (0: +0.400, 1: +0.410, 2: +0.420), mean +0.410" in claims
  # RLOO does not learn (+0.00, +0.01, +0.02: not decided): the comparison cannot test the claim.
  assert "**not decided**: the RLOO baseline is not shown to learn here" in claims
  learning = [_curve_record("prime", label, s, acc) for s in range(3) for label, acc in (
      ("prime", (0.3, 0.5, 0.6, 0.7 + 0.01 * s)), ("rloo", (0.3, 0.35, 0.4, 0.45 + 0.02 * s)))]
  assert "a sample-efficiency measure): **shown**: PRIME minus RLOO per seed" in reproduce.prime_claims(learning)
  assert "no verdict" in reproduce.prime_claims(prime[:1])


def _likelihood_record(label, seed, final, warmup=0.3):
  record = _record("likelihood_rewards", label, seed, [("after warm-up", 400, warmup, 0.2),
                                                       ("after RL", 600, final, 0.3)])
  for row, ppl in zip(record["results"], (1.3, 1.2)):
    row["answer_perplexity"] = ppl
  return record


def test_likelihood_verdicts_are_paired():
  # Log-prob below the verifier in every seed by a small amount: contradicted, although the two arms'
  # spreads (0.055 and 0.031 in the kept records) overlap.
  verifier = {0: 0.898, 1: 0.852, 2: 0.910}
  logprob = {s: verifier[s] + d for s, d in {0: -0.082, 1: -0.105, 2: -0.055}.items()}
  records = [_likelihood_record(label, s, v[s]) for label, v in (("logprob", logprob), ("verifier", verifier))
             for s in range(3)]
  text = reproduce.likelihood_verdicts(records)
  assert "on greedy accuracy (paper: 56.84 vs 55.85): **contradicted**: log-prob minus verifier per seed " \
         "(0: -0.082, 1: -0.105, 2: -0.055), mean -0.081, 90% interval [-0.123, -0.038] (t, 2 dof)" in text
  assert "not contradicted" not in text


def _prdp_record(label, seed, config, reward, log_ratio):
  record = _record("prdp", label, seed, [])
  record.update(config=config, overrides={"stages": ["rl"], "init_from": f"runs/pretrain/seed{seed}"})
  record["results"] = [{"stage": "initial", "step": 0, "reward": 0.0, "guard": 0.6, "log_ratio": 0.0},
                       {"stage": "after", "step": 40, "reward": reward, "guard": 0.3, "log_ratio": log_ratio}]
  return record


def test_prdp_versus_ddpo_is_read_at_matched_log_ratio():
  prdp, ddpo = reproduce.PRDP_CONFIG, f"{reproduce.PRDP_CONFIG}:ddpo"
  records = [_prdp_record(label, s, config, reward + 0.01 * s, log_ratio)
             for s in range(3) for label, config, reward, log_ratio in (
                 ("prdp_beta1", prdp, 5.0, 16.0), ("prdp", prdp, 3.0, 10.0), ("prdp_beta100", prdp, 0.0, 2.0),
                 ("ddpo", ddpo, 2.0, 6.0))]
  text = reproduce.matched_kl_claim(records, prdp, ddpo, "PRDP", "DDPO")
  # More reward at one setting, reached by moving further from the reference: no verdict without a frontier.
  assert text.startswith("**not decided**") and "1 of DDPO (`ddpo`)" in text and "has not been run" in text
  assert "matches or beats" not in text and "shown" not in text
  assert "At one setting of each, reward prdp" in text
  # With a DDPO sweep: DDPO's frontier (2, 0.5) - (10, 4.5) lies above PRDP's (2, 0) - (10, 3) on [2, 10].
  swept = records + [_prdp_record(label, s, ddpo, reward, log_ratio) for s in range(3)
                     for label, reward, log_ratio in (("ddpo_lr_low", 0.5, 2.0), ("ddpo_clip_high", 4.5, 10.0))]
  text = reproduce.matched_kl_claim(swept, prdp, ddpo, "PRDP", "DDPO")
  assert text.startswith("**contradicted**: PRDP minus DDPO reward at matched log-ratio")
