"""Step scores of an implicit process reward model on completions: from text steps to token rewards.

A task that knows its steps gives, for a completion's text, the character offset of each step's
last character (`chain_sums.step_end_offsets`). `step_end_mask` maps those offsets onto the
completion's tokens (1 at the token that holds a step's last character), and `step_rewards`
reads the PRM there (Yuan et al., arXiv 2412.01981):

    token reward  r_t = beta (log pi_prm(y_t) - log pi_ref(y_t))
    q^k           = sum of r_t up to the end of step k     (cumulative implicit reward)
    step reward   r^k = q^k - q^{k-1}                      (`objectives.implicit_prm.step_rewards`)

so the step rewards of a completion add up to its q at the last step end, and to the sequence
implicit reward r(y) = sum_t r_t when the last step ends the completion.

Character offsets become token positions through each token's decoded length, which is exact
for tokenizers whose tokens decode independently (the character-level tokenizer of the
synthetic tasks); for merged byte-level pieces it is an approximation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from objectives import implicit_prm


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
