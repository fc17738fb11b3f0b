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

`evaluate` scores a trained PRM run on held-out problems (`experiments/prm_best_of_n.py`):
Best-of-N reranking of the policy's samples, correct meaning a verifier score
(`config.rewards.eval_name`) of at least 0.5, and step-error localisation of worked vs flawed
solutions when the task has them (`Task.solution_pair`). The run's `config.reward_model.role` is
the model scored: an implicit PRM, or an outcome reward model (a value role), which has one
score per response and so only a Best-of-N ("best_of_n/outcome") and no localisation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import experiment
from jaxrl_reward import prm_eval
from jaxrl_reward import stages
from jaxrl_reward.data import task as task_lib
from jaxrl_reward.rewards import base as host_rewards
from jaxrl_reward.rewards import scoring
from jaxrl_reward.rollout import Rollout
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


def sample_and_score(context, state, examples, samples: int, key, *, beta: float, problems_per_batch: int,
                     role: str = "prm"):
  """Per problem: step rewards `[M, S]`, steps `[M]`, correctness `[M]`, the policy's mean log-prob
  per token of each sample `[M]` (its own confidence, a scorer that needs no reward model) and
  final answers (lists).

  An outcome reward model (`is_outcome_model`) gives one "step" per response: its score `[M, 1]`.
  """
  policy, tokenizer = context.roles.policy, context.task.tokenizer
  step_ends = None if is_outcome_model(context, role) else task_step_ends(context)
  out = []
  for start in range(0, len(examples), problems_per_batch):
    chunk = examples[start:start + problems_per_batch]
    conditions, local = stages.prompt_groups(context, chunk, samples)
    rollout = policy.sample(state["policy"]["params"], conditions, jax.random.fold_in(key, start))
    texts = policy.decode(rollout)
    if is_outcome_model(context, role):
      values = context.roles[role].scorer.compute_outputs(state[role]["params"], rollout)
      rewards = np.asarray(outcome_rm.last_token_scores(values, rollout.mask))[:, None]
      steps = np.ones((rewards.shape[0],), np.int64)
    else:
      prm_logp, ref_logp = role_logprobs(context, state, rollout, role)
      actions, mask = np.asarray(rollout.actions), np.asarray(rollout.mask)
      ends = step_end_mask(tokenizer, actions, mask, texts, step_ends)
      rewards, step_mask, _ = step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
      rewards, steps = np.asarray(rewards), np.asarray(step_mask).sum(-1)
    correct = verifier_correct(context, local, texts)
    answers = final_answers(context, texts)
    sample_mask = np.asarray(rollout.mask)
    likelihood = (np.asarray(rollout.old_logp) * sample_mask).sum(-1) / np.maximum(sample_mask.sum(-1), 1)
    for i in range(len(chunk)):
      rows = slice(i * samples, (i + 1) * samples)
      out.append((rewards[rows], steps[rows], correct[rows], likelihood[rows], answers[rows]))
  return out


def teacher_forced_step_rewards(context, state, prompts, solutions, *, beta: float, role: str = "prm"):
  """Step rewards `[B, S]` and step counts `[B]` of given solutions (each must have steps)."""
  policy, tokenizer = context.roles.policy, context.task.tokenizer
  t = context.config.task.max_completion_length
  ids, mask = encode_solutions(tokenizer, solutions, t)
  b = len(prompts)
  conditions = policy.conditions(prompts, np.arange(b), b)
  rollout = Rollout(actions=jax.numpy.asarray(ids), mask=jax.numpy.asarray(mask, jax.numpy.float32),
                    old_logp=jax.numpy.zeros(ids.shape, jax.numpy.float32), group_ids=conditions["group_ids"],
                    extras={"prompt_ids": conditions["prompt_ids"], "prompt_mask": conditions["prompt_mask"]})
  prm_logp, ref_logp = role_logprobs(context, state, rollout, role)
  ends = step_end_mask(tokenizer, ids, mask, solutions, task_step_ends(context), require_steps=True)
  rewards, step_mask, _ = step_rewards(prm_logp, ref_logp, mask, ends, beta=beta)
  return np.asarray(rewards), np.asarray(step_mask).sum(-1)


def encode_solutions(tokenizer, texts, length: int):
  """Right-padded completion tokens (text then EOS) `[B, length]` and their mask."""
  ids = np.full((len(texts), length), tokenizer.pad_token_id or tokenizer.eos_token_id, np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(tokens) > length:
      raise ValueError(f"solution {i} has {len(tokens)} tokens, more than task.max_completion_length={length}")
    ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1
  return ids, mask


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


def evaluate(config, workdir, *, num: int, samples: int, ns, aggregations, problems_per_batch: int = 4) -> dict:
  ns = [int(n) for n in ns]
  check_best_of_n(ns, samples, num)
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
  scored = sample_and_score(context, state, examples, samples, key, beta=beta, problems_per_batch=problems_per_batch,
                            role=role)
  correct = np.stack([c for _, _, c, _, _ in scored])
  result = {"workdir": str(workdir), "step": step, "objective": config.objective.name, "seed": config.seed,
            "num": len(examples), "samples": samples, "frac_correct": float(correct.mean()),
            "random": prm_eval.random_choice(correct),
            "pass_at_n": {n: prm_eval.pass_at_n(correct, n) for n in ns},
            "majority_vote": {n: prm_eval.majority_vote(np.asarray([a for *_, a in scored], object),
                                                        [answer_key(ex["answer"]) for ex in examples], n) for n in ns},
            "best_of_n/policy_likelihood": {n: prm_eval.best_of_n(np.stack([lp for *_, lp, _ in scored]), correct, n)
                                            for n in ns}}
  if outcome_only:  # one score per response: no aggregation, no step to localise
    scores = np.stack([r[:, 0] for r, *_ in scored])
    result["best_of_n/outcome"] = {n: prm_eval.best_of_n(scores, correct, n) for n in ns}
    result["localisation"] = None
    return result
  for how in aggregations:
    scores = np.stack([prm_eval.aggregate_steps(r, s, how=how) for r, s, *_ in scored])
    result[f"best_of_n/{how}"] = {n: prm_eval.best_of_n(scores, correct, n) for n in ns}
  # A task without step labels (no worked and flawed solutions) has no localisation score.
  result["localisation"] = None if context.task.solution_pair is None else localisation(
      context, state, examples, beta=beta, seed=config.seed, role=role)
  return result
