"""Step scores of an implicit process reward model on completions: from text steps to token rewards.

A task that knows its steps gives, for a completion's text, the character offset of each step's
last character (`Task.step_ends`: lines before the answer marker for chain sums and reasoning-gym
tasks). `step_end_mask` maps those offsets onto the completion's tokens (1 at the token that holds
a step's last character), and `step_rewards` reads the PRM there (Yuan et al., arXiv 2412.01981):

    token reward  r_t = beta (log pi_prm(y_t) - log pi_ref(y_t))
    q^k           = sum of r_t up to the end of step k     (cumulative implicit reward)
    step reward   r^k = q^k - q^{k-1}                      (`objectives.implicit_prm.step_rewards`)

so the step rewards of a completion add up to its q at the last step end, and to the sequence
implicit reward r(y) = sum_t r_t when the last step ends the completion.

Character offsets become token positions through each token's decoded length, which is exact
for tokenizers whose tokens decode independently (the character-level tokenizer of the
synthetic tasks, and byte-level BPE pieces of ASCII text); a token that decodes to part of a
multi-byte character makes it an approximation.

`evaluate` scores a trained PRM run on held-out problems (`experiments/prm_best_of_n.py`), after
checking that the config given is the run's where it lays out the checkpoint and the data
(`check_run_config`):
Best-of-N reranking of the policy's samples, correct meaning a verifier score
(`config.rewards.eval_name`) of at least 0.5, and step-error localisation of worked vs flawed
solutions when the task has them (`Task.solution_pair`). The run's `config.reward_model.role` is
the model scored: an implicit PRM, or an outcome reward model (a value role), which has one
score per response and so only a Best-of-N ("best_of_n/outcome") and no localisation.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import experiment
from jaxrl_reward import prm_eval
from jaxrl_reward import provenance
from jaxrl_reward import stages
from jaxrl_reward.data import task as task_lib
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import scoring
from jaxrl_reward.rollout import Rollout
from jaxrl_reward.stages import reward_model as reward_model_stage
from objectives import implicit_prm
from objectives import outcome_rm


def token_char_ends(tokenizer, tokens: Sequence[int], *, cache: dict | None = None) -> np.ndarray:
  """`[T]` number of characters decoded after each token (cumulative), special tokens as empty."""
  cache = {} if cache is None else cache
  lengths = []
  for t in tokens:
    t = int(t)
    if t not in cache:
      cache[t] = len(tokenizer.decode([t], skip_special_tokens=True))
    lengths.append(cache[t])
  return np.cumsum(np.asarray(lengths, np.int64)) if lengths else np.zeros((0,), np.int64)


def step_end_mask(tokenizer, actions: np.ndarray, mask: np.ndarray, completions: Sequence[str],
                  step_ends: Callable[[str], list[int]], *, require_steps: bool = False) -> np.ndarray:
  """`[B, T]` float32: 1 at the token holding the last character of each step of each completion.

  Args:
    tokenizer: decodes single token ids.
    actions, mask: `[B, T]` completion tokens and their mask (host arrays).
    completions: the B decoded texts (special tokens removed), as the task reads them.
    step_ends: text -> character offsets of the last character of each step.
    require_steps: raise for a completion without any step (teacher-forced solutions that must
      have steps); otherwise such a row simply has no step.
  """
  actions, mask = np.asarray(actions), np.asarray(mask)
  if actions.shape != mask.shape or actions.ndim != 2 or len(completions) != actions.shape[0]:
    raise ValueError(f"actions {actions.shape} and mask {mask.shape} must be [B, T] with B = "
                     f"len(completions) = {len(completions)}")
  out = np.zeros(actions.shape, np.float32)
  cache: dict = {}
  for b, text in enumerate(completions):
    ends = step_ends(text)
    if require_steps and not ends:
      raise ValueError(f"completion {b} has no step (no line before the answer marker): {text!r}")
    length = int(mask[b].sum())
    char_ends = token_char_ends(tokenizer, actions[b, :length], cache=cache)
    for offset in ends:
      t = int(np.searchsorted(char_ends, offset, side="right"))  # first token whose end passes the offset
      if t >= length:
        raise ValueError(f"step end at character {offset} of completion {b} lies beyond its {length} tokens")
      out[b, t] = 1.0
  return out


def step_rewards(prm_logp, ref_logp, mask, step_ends_mask, *, beta: float, max_steps: int | None = None):
  """(step rewards `[B, S]`, step mask `[B, S]`, token rewards `[B, T]`) of an implicit PRM."""
  tokens = implicit_prm.token_rewards(jnp.asarray(prm_logp), jnp.asarray(ref_logp), jnp.asarray(mask), beta=beta)
  rewards, step_mask = implicit_prm.step_rewards(tokens, jnp.asarray(step_ends_mask), max_steps=max_steps)
  return rewards, step_mask, tokens


# ----------------------------------------------------------------------------- a PRM run


def check_best_of_n(ns, samples, num):
  bad = [n for n in ns if not 1 <= n <= samples]
  if bad:
    raise ValueError(f"--ns {bad} must be in [1, --samples={samples}]: Best-of-N draws N of the M samples")
  if num < 2:
    raise ValueError(f"--num={num} must be >= 2 (localisation chooses its threshold on one half)")


def role_logprobs(context, state, rollout, role: str = "prm"):
  """(PRM log-probs, reference log-probs) `[B, T]` of a rollout's completion tokens."""
  roles = context.roles
  return (roles[role].scorer.compute_logprobs(state[role]["params"], rollout),
          roles["reference"].scorer.compute_logprobs(state["reference"]["params"], rollout))


def is_outcome_model(context, role: str) -> bool:
  """Whether `role` is an outcome reward model (a value head: one score per response, no steps)."""
  return context.roles.specs[role].kind == "value"


def task_step_ends(context) -> Callable[[str], list[int]]:
  """The task's step splitter (`Task.step_ends`), or a clear error when the task has no steps."""
  if context.task.step_ends is None:
    raise ValueError(f"task.name={context.config.task.name!r} has no step boundaries (Task.step_ends): a process "
                     "reward model's step scores need a task whose solutions have steps (chain_sums, reasoning_gym)")
  return context.task.step_ends


def answer_key(answer):
  """A final answer as a vote: an int when it is one ("07" and "7" agree), else the stripped text."""
  if answer is None:
    return None
  text = str(answer).strip()
  try:
    return int(text.replace(",", ""))
  except ValueError:
    return text or None


def verifier_correct(context, examples, texts) -> np.ndarray:
  """`[B]` 1.0 where the verifier (`config.rewards.eval_name`) scores a completion at least 0.5."""
  scores = host_rewards.compute_rewards([context.config.rewards.eval_name], [e["prompt"] for e in examples], texts,
                                        scoring.columns_of(examples))[:, 0]
  return (np.nan_to_num(scores, nan=0.0) >= 0.5).astype(float)  # a missing score counts as wrong


def final_answers(context, texts) -> list:
  """Each completion's final answer as a vote (`answer_key`), read where the task writes it."""
  fmt = context.task.answer_format
  if fmt is None:
    raise ValueError(f"task.name={context.config.task.name!r} has no answer marker (Task.answer_format): "
                     "majority vote needs each completion's final answer")
  return [answer_key(task_lib.final_answer(fmt, t)) for t in texts]


def well_formed(task, example: dict, text: str) -> bool:
  """Whether a completion has the task's form: its final answer is written where the task writes it
  (`Task.answer_format`) and, when the example says how many steps its solution has (`num_steps`:
  chain sums) and the task has steps, it has exactly that many. The set over which a length-controlled
  Best-of-N compares scorers: a scorer that learned a length penalty cannot win there by picking
  short, unfinished completions."""
  if task.answer_format is not None and task_lib.final_answer(task.answer_format, text) is None:
    return False
  if task.step_ends is not None and "num_steps" in example:
    return len(task.step_ends(text)) == int(example["num_steps"])
  return True


def sample_and_score(context, states: dict, examples, samples: int, key, *, beta: float, problems_per_batch: int,
                     role: str = "prm") -> list[dict]:
  """Per problem, a dict of the policy's `samples` (M) completions: for each scorer of `states`
  (name -> a state holding `role`, e.g. the trained and the untrained model) its step rewards
  `rewards[name]` `[M, S]`, and the number of step slots each one fills `slots [M]`; `correct [M]`,
  the policy's mean log-prob per token of each sample `likelihood [M]` (its own confidence, a scorer
  that needs no reward model), `length [M]` (tokens), `steps [M]` (the task's steps of the text, 0
  without `Task.step_ends`), `well_formed [M]` (`well_formed`) and final `answers` (a list).

  An outcome reward model (`is_outcome_model`) gives one "step" per response: its score `[M, 1]`.
  """
  policy, tokenizer = context.roles.policy, context.task.tokenizer
  step_ends = None if is_outcome_model(context, role) else task_step_ends(context)
  out = []
  for start in range(0, len(examples), problems_per_batch):
    chunk = examples[start:start + problems_per_batch]
    conditions, local = stages.prompt_groups(context, chunk, samples)
    rollout = policy.sample(states[next(iter(states))]["policy"]["params"], conditions, jax.random.fold_in(key, start))
    texts = policy.decode(rollout)
    actions, mask = np.asarray(rollout.actions), np.asarray(rollout.mask)
    rewards = {}
    for name, state in states.items():
      if is_outcome_model(context, role):
        rewards[name] = outcome_scores(context, state, rollout, beta=beta, role=role)[:, None]
        slots = np.ones((mask.shape[0],), np.int64)
      else:
        prm_logp, ref_logp = role_logprobs(context, state, rollout, role)
        ends = step_end_mask(tokenizer, actions, mask, texts, step_ends)
        step_r, step_mask, _ = step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
        rewards[name], slots = np.asarray(step_r), np.asarray(step_mask).sum(-1)
    correct = verifier_correct(context, local, texts)
    answers = final_answers(context, texts)
    likelihood = (np.asarray(rollout.old_logp) * mask).sum(-1) / np.maximum(mask.sum(-1), 1)
    steps = np.asarray([len(context.task.step_ends(t)) if context.task.step_ends else 0 for t in texts], np.int64)
    formed = np.asarray([well_formed(context.task, e, t) for e, t in zip(local, texts)], bool)
    for i in range(len(chunk)):
      rows = slice(i * samples, (i + 1) * samples)
      out.append({"rewards": {k: v[rows] for k, v in rewards.items()}, "slots": slots[rows], "correct": correct[rows],
                  "likelihood": likelihood[rows], "length": mask[rows].sum(-1), "steps": steps[rows],
                  "well_formed": formed[rows], "answers": answers[rows]})
  return out


def teacher_forced_rollout(context, prompts, solutions):
  """(rollout, token ids `[B, T]`, mask `[B, T]`) of given solutions of `prompts`, teacher-forced."""
  ids, mask = encode_solutions(context.task.tokenizer, solutions, context.config.task.max_completion_length)
  b = len(prompts)
  conditions = context.roles.policy.conditions(prompts, np.arange(b), b)
  rollout = Rollout(actions=jax.numpy.asarray(ids), mask=jax.numpy.asarray(mask, jax.numpy.float32),
                    old_logp=jax.numpy.zeros(ids.shape, jax.numpy.float32), group_ids=conditions["group_ids"],
                    extras={"prompt_ids": conditions["prompt_ids"], "prompt_mask": conditions["prompt_mask"]})
  return rollout, ids, mask


def outcome_scores(context, state, rollout, *, beta: float, role: str = "prm") -> np.ndarray:
  """`[B]` a scorer's score of each whole response: its last-token value for an outcome reward
  model, the implicit reward r = beta sum_t (log pi_prm - log pi_ref) for an implicit PRM."""
  if is_outcome_model(context, role):
    values = context.roles[role].scorer.compute_outputs(state[role]["params"], rollout)
    return np.asarray(outcome_rm.last_token_scores(values, rollout.mask))
  prm_logp, ref_logp = role_logprobs(context, state, rollout, role)
  return np.asarray(implicit_prm.sequence_rewards(prm_logp, ref_logp, rollout.mask, beta=beta))


def pair_accuracy(context, states: dict, examples, *, beta: float, seed: int, role: str = "prm") -> dict:
  """Per scorer (`states`: name -> state holding `role`), the fraction of held-out (worked, flawed)
  pairs (`Task.solution_pair`, one per example) whose worked solution it scores above the flawed one,
  a tie counting one half (as `eval/pair_accuracy` of the reward-model stage's control)."""
  rng = np.random.default_rng([seed, reward_model_stage.EVAL_PAIRS_SEED])
  prompts, texts, labels, _ = reward_model_stage.solution_pairs(context.task, examples, 1, rng)
  rollout, _, _ = teacher_forced_rollout(context, prompts, texts)
  pairs = np.arange(len(texts)) // 2  # each worked solution with its flawed partner
  return {name: float(scoring.pair_accuracy(outcome_scores(context, state, rollout, beta=beta, role=role),
                                            labels, pairs)[0])
          for name, state in states.items()}


def teacher_forced_step_rewards(context, state, prompts, solutions, *, beta: float, role: str = "prm"):
  """Step rewards `[B, S]` and step counts `[B]` of given solutions (each must have steps)."""
  tokenizer = context.task.tokenizer
  rollout, ids, mask = teacher_forced_rollout(context, prompts, solutions)
  prm_logp, ref_logp = role_logprobs(context, state, rollout, role)
  ends = step_end_mask(tokenizer, ids, mask, solutions, task_step_ends(context), require_steps=True)
  rewards, step_mask, _ = step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
  return np.asarray(rewards), np.asarray(step_mask).sum(-1)


# Right-padded completion tokens (text then EOS) `[B, length]` and their mask.
encode_solutions = reward_model_stage.encode_solutions


def localisation(context, state, examples, *, beta: float, seed: int, role: str = "prm") -> dict:
  """ProcessBench-style F1 of the first wrong step on each example's worked and flawed solutions
  (`Task.solution_pair`), the threshold chosen on the first half of the examples."""
  rng = np.random.default_rng(seed)
  prompts, solutions, truth = [], [], []
  for e in examples:
    worked, flawed, first_wrong = context.task.solution_pair(e, rng)
    prompts += [e["prompt"], e["prompt"]]
    solutions += [worked, flawed]
    truth += [-1, first_wrong]
  rewards, steps = teacher_forced_step_rewards(context, state, prompts, solutions, beta=beta, role=role)
  truth = np.asarray(truth)
  half = 2 * (len(examples) // 2)
  threshold, f1_fit = prm_eval.choose_threshold(rewards[:half], steps[:half], truth[:half])
  pred = prm_eval.predict_first_error(rewards[half:], steps[half:], threshold)
  return {"threshold": float(threshold), "f1_threshold_split": float(f1_fit),
          **{k: float(v) for k, v in prm_eval.localisation_scores(pred, truth[half:]).items()}}


# The config blocks that lay out a run's checkpoint (its models, their roles, the stages' order)
# and its problems (the task): a config that differs there cannot read the run.
RUN_BLOCKS = ("model", "roles", "stages", "task")


def check_run_config(config, workdir) -> None:
  """Raises in one line, naming `workdir` and the keys, unless the config the run in `workdir`
  recorded equals `config` in `RUN_BLOCKS` (a key added to the configs since, left empty, is equal)."""
  workdir = pathlib.Path(workdir)
  if not (workdir / provenance.CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{workdir} holds no run ({provenance.CONFIG_FILE} missing); pass a training run's workdir")
  changes = provenance.config_changes(workdir, config)
  differ = [k for k, (old, new) in changes.items()
            if k.split(".")[0] in RUN_BLOCKS and not (old is None and new in ("", None, [], 0))]
  if differ:
    listed = "; ".join(f"{k}: {changes[k][0]!r} there, {changes[k][1]!r} here" for k in differ[:8])
    more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
    raise experiment.ConfigMismatch(f"{workdir} holds a run of another config: {listed}{more}; pass the run's own "
                                    f"--config (its {workdir / provenance.CONFIG_FILE} records it)")


def _number(x: float) -> float | None:
  """A finite float, or None for an undefined value (NaN): the result line is strict JSON."""
  return None if np.isnan(x) else float(x)


def evaluate(config, workdir, *, num: int, samples: int, ns, aggregations, problems_per_batch: int = 4,
             untrained: bool = True) -> dict:
  """Best-of-N, localisation and the diagnostics of issue 23 for a trained reward-model run.

  Scorers: the run's role with each aggregation of its step rewards ("min", "sum", ...; "outcome"
  for an outcome reward model), the policy's own likelihood ("policy_likelihood") and, with
  `untrained`, the role at its initial parameters ("untrained/<aggregation>": `Roles.create`, i.e.
  the policy for an implicit PRM, whose scores are then all 0, and a fresh value head for an ORM).

  Returns a dict: run fields; "random", "pass_at_n", "majority_vote" (baselines); per scorer
  "best_of_n/<scorer>" {n: accuracy}; "score_length_corr" and "score_steps_corr" {scorer: Pearson
  correlation of its score with the completion's length in tokens / its number of steps, over all
  samples (`prm_eval.pearson`; NaN when undefined, e.g. constant scores)}; "well_formed" {"frac",
  "num_problems", "random" and "pass_at_n" {n: ...}} and "best_of_n_well_formed/<scorer>" {n: ...}:
  Best-of-N among the well-formed samples only (`well_formed`, `prm_eval.best_of_n_subset`), the
  length-controlled comparison; "pair_accuracy" {"trained", "untrained"} on one held-out (worked,
  flawed) pair per problem (`pair_accuracy`; None without `Task.solution_pair`); "localisation"
  (None for an ORM or without `Task.solution_pair`).
  """
  ns = [int(n) for n in ns]
  check_best_of_n(ns, samples, num)
  check_run_config(config, workdir)
  e = experiment.Experiment(config)
  state, step = e.restore(workdir)
  role = config.reward_model.role
  if role not in state:
    raise ValueError(f"{workdir}: the checkpoint of step {step} has no {role!r} role (config.reward_model.role; "
                     f"roles: {sorted(state)})")
  context = e.context
  outcome_only = is_outcome_model(context, role)
  beta = float(dict(config.objective.options).get("beta", 0.05))
  examples = context.task.eval[:num]
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1 << 22)
  states = {"trained": state}
  if untrained:
    states["untrained"] = {**state, role: {"params": context.roles.create(role, state)}}
  scored = sample_and_score(context, states, examples, samples, key, beta=beta, problems_per_batch=problems_per_batch,
                            role=role)
  stack = lambda field: np.stack([x[field] for x in scored])  # noqa: E731  [P, M]
  correct, lengths, steps, formed = stack("correct"), stack("length"), stack("steps"), stack("well_formed")
  result = {"workdir": str(workdir), "step": step, "objective": config.objective.name, "seed": config.seed,
            "num": len(examples), "samples": samples, "frac_correct": float(correct.mean()),
            "random": prm_eval.random_choice(correct),
            "pass_at_n": {n: prm_eval.pass_at_n(correct, n) for n in ns},
            "majority_vote": {n: prm_eval.majority_vote(np.asarray([x["answers"] for x in scored], object),
                                                        [answer_key(ex["answer"]) for ex in examples], n) for n in ns}}
  scores = {"policy_likelihood": stack("likelihood")}
  for name in states:
    prefix = "" if name == "trained" else f"{name}/"
    if outcome_only:  # one score per response: no aggregation, no step to localise
      scores[f"{prefix}outcome"] = np.stack([x["rewards"][name][:, 0] for x in scored])
    else:
      for how in aggregations:
        scores[f"{prefix}{how}"] = np.stack([prm_eval.aggregate_steps(x["rewards"][name], x["slots"], how=how)
                                             for x in scored])
  subsets = {n: prm_eval.best_of_n_subset(np.zeros(correct.shape), correct, formed, n) for n in ns}
  result["well_formed"] = {"frac": float(formed.mean()), "num_problems": subsets[ns[0]]["num_problems"],
                           "random": _number(subsets[ns[0]]["random"]),
                           "pass_at_n": {n: _number(subsets[n]["pass_at_n"]) for n in ns}}
  result["score_length_corr"], result["score_steps_corr"] = {}, {}
  for name, x in scores.items():
    result[f"best_of_n/{name}"] = {n: prm_eval.best_of_n(x, correct, n) for n in ns}
    result[f"best_of_n_well_formed/{name}"] = {
        n: _number(prm_eval.best_of_n_subset(np.where(formed, x, 0.0), correct, formed, n)["best_of_n"]) for n in ns}
    result["score_length_corr"][name] = _number(prm_eval.pearson(x, lengths))
    result["score_steps_corr"][name] = _number(prm_eval.pearson(x, steps)) if context.task.step_ends else None
  has_pairs = context.task.solution_pair is not None
  result["pair_accuracy"] = pair_accuracy(context, states, examples, beta=beta, seed=config.seed,
                                          role=role) if has_pairs else None
  # A task without step labels (no worked and flawed solutions) has no localisation score.
  result["localisation"] = None if outcome_only or not has_pairs else localisation(
      context, state, examples, beta=beta, seed=config.seed, role=role)
  return result
