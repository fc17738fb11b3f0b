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
  assert "above the first stage by more than the seeds' spread" in text and "rises in 3 of 3 seeds" in text
  assert "--config=configs/grpo_arithmetic.py" in text and "main_job --seeds=3" in text
  png = results / "main_job.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "](../results/main_job.png)" in text  # linked relative to the document


def test_claims_follow_the_numbers():
  close = [_record("main_job", "default", s, [("a", 1, 0.5, 0.5), ("b", 2, 0.5 + d, 0.5)])
           for s, d in enumerate((0.05, -0.05, 0.02))]
  text = reproduce.main_job_claims(close)
  assert "within the seeds' spread" in text and "rises in 2 of 3 seeds" in text
  one = reproduce.main_job_claims(close[:1])
  assert "one seed has no spread" in one


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
  assert "**shown**: BoN@64 ce higher (0.500 vs 0.210)" in claims
  assert "**shown** for ce, dpo" in claims and "(best BoN@64: ce)" in claims
  assert "strongest implicit PRM* (the paper, for Llama-3.1-8B): **not shown**" in claims
  worse = [r if r["label"] != "ce" else _prm_record("ce", r["seed"], 0.5, (0.2, 0.2, 0.2, 0.2), 0.5, shared)
           for r in records if r["label"] != "dpo"] + [_prm_record("dpo", s, 0.5, (0.2,) * 4, 0.5) for s in range(3)]
  assert "**not shown**: no scorer's BoN@64 is above pass@1" in reproduce.prm_claims(worse)
  assert "but no implicit PRM is above random choice" in reproduce.prm_claims(worse)
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
  assert "reward hacking* (the PRM's reward rises while accuracy falls): **shown**" in claims
  assert "*Min-form credit stays stable*: **shown**" in claims and "(min-form): **shown**" in claims
  collapsed = [r if r["label"] != "min" else _curve_record("pure", "min", r["seed"], (0.3, 0.1, 0.0), hacking)
               for r in records]
  assert "*Min-form credit stays stable*: **contradicted**" in reproduce.pure_claims(collapsed)
  prime = [_curve_record("prime", label, s, acc) for s in range(3) for label, acc in (
      ("prime", (0.3, 0.5, 0.6, 0.7 + 0.01 * s)), ("rloo", (0.3, 0.3, 0.31, 0.3 + 0.01 * s)))]
  claims = reproduce.prime_claims(prime)
  assert "greedy accuracy +0.410 on average" in claims and "**shown**" in claims
  assert "no verdict" in reproduce.prime_claims(prime[:1])
