"""Tokenisation into fixed-shape arrays and deterministic, process-sharded batching.

All array outputs are numpy (host side) with static shapes (`max_length`), so a jitted
step compiles once. Works with any Hugging Face tokenizer that has `pad_token_id` (or
`eos_token_id`, used as padding when there is no pad token) and `eos_token_id`.

Batches of completions are laid out group-major: rows `[g*G:(g+1)*G]` are the `G`
completions of prompt `g` (`repeat_for_groups`).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def _pad_id(tokenizer) -> int:
  pad_id = tokenizer.pad_token_id
  if pad_id is None:
    pad_id = tokenizer.eos_token_id
  if pad_id is None:
    raise ValueError("tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token")
  return int(pad_id)


def _eos_id(tokenizer) -> int:
  if tokenizer.eos_token_id is None:
    raise ValueError("tokenizer.eos_token_id is None; set tokenizer.eos_token")
  return int(tokenizer.eos_token_id)


def _token_ids(tokenizer, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[int]]:
  if isinstance(texts, str):
    raise TypeError("expected a list of strings, got a single str")
  if not texts:
    return []
  return list(tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"])


def encode_prompts(
    tokenizer,
    prompts: Sequence[str],
    *,
    max_length: int,
    padding_side: str = "left",
    truncate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises prompts (with the tokenizer's special tokens, e.g. `<bos>`) into a padded batch.

  Args:
    tokenizer: a Hugging Face tokenizer.
    prompts: B strings.
    max_length: P, the width of the output (always padded to exactly P).
    padding_side: "left" (default: prompts end at the same column, as for generation)
      or "right".
    truncate: if False (default) a prompt longer than `max_length` tokens raises; if True
      its first tokens are dropped (the end of a prompt is kept).

  Returns:
    `(ids [B, P] int32, mask [B, P] int32)`; mask is 1 on prompt tokens, 0 on padding.
  """
  if padding_side not in ("left", "right"):
    raise ValueError(f"padding_side must be 'left' or 'right', got padding_side={padding_side!r}")
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got max_length={max_length}")
  rows = _token_ids(tokenizer, prompts, add_special_tokens=True)
  pad_id = _pad_id(tokenizer)
  ids = np.full((len(rows), max_length), pad_id, dtype=np.int32)
  mask = np.zeros((len(rows), max_length), dtype=np.int32)
  for i, row in enumerate(rows):
    if len(row) > max_length:
      if not truncate:
        raise ValueError(f"prompt {i} has {len(row)} tokens, more than max_length={max_length} "
                         "(raise max_length or pass truncate=True)")
      row = row[len(row) - max_length:]
    n = len(row)
    if padding_side == "left":
      ids[i, max_length - n:] = row
      mask[i, max_length - n:] = 1
    else:
      ids[i, :n] = row
      mask[i, :n] = 1
  return ids, mask


def encode_sft(
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    max_length: int,
) -> dict[str, np.ndarray]:
  """Tokenises (prompt, target) pairs for supervised fine-tuning, right padded.

  Each row is `prompt tokens (with special tokens) + target tokens + eos`, then padding.
  `loss_mask[b, t]` is 1 when token `t` of row `b` is a target token (eos included): the
  loss on it uses the logits at position `t - 1` (the caller shifts).

  Args:
    tokenizer: a Hugging Face tokenizer with an eos token.
    prompts: B strings.
    targets: B strings (the completions to learn), without eos.
    max_length: L, the width of the output; a longer row raises a ValueError.

  Returns:
    dict with `input_ids`, `attention_mask`, `loss_mask`, each `[B, L]` int32.
  """
  if len(prompts) != len(targets):
    raise ValueError(f"prompts and targets must have the same length, got {len(prompts)} and {len(targets)}")
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got max_length={max_length}")
  prompt_rows = _token_ids(tokenizer, prompts, add_special_tokens=True)
  target_rows = _token_ids(tokenizer, targets, add_special_tokens=False)
  eos_id, pad_id = _eos_id(tokenizer), _pad_id(tokenizer)
  batch = len(prompt_rows)
  input_ids = np.full((batch, max_length), pad_id, dtype=np.int32)
  attention_mask = np.zeros((batch, max_length), dtype=np.int32)
  loss_mask = np.zeros((batch, max_length), dtype=np.int32)
  for i, (p, t) in enumerate(zip(prompt_rows, target_rows)):
    row = list(p) + list(t) + [eos_id]
    if len(row) > max_length:
      raise ValueError(f"example {i} has {len(row)} tokens (prompt {len(p)} + target {len(t)} + eos), "
                       f"more than max_length={max_length}")
    input_ids[i, :len(row)] = row
    attention_mask[i, :len(row)] = 1
    loss_mask[i, len(p):len(row)] = 1
  return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def decode_completions(tokenizer, ids, mask) -> list[str]:
  """Decodes sampled completions, each up to its first masked position.

  Args:
    ids: [B, N] token ids (numpy or jax array).
    mask: [B, N], 1 on generated tokens up to and including eos, then 0.

  Returns:
    B strings, special tokens (eos, pad) removed.
  """
  ids, mask = np.asarray(ids), np.asarray(mask)
  if ids.ndim != 2 or ids.shape != mask.shape:
    raise ValueError(f"ids and mask must both be [B, N], got ids {ids.shape} and mask {mask.shape}")
  rows = []
  for row_ids, row_mask in zip(ids, mask):
    zeros = np.flatnonzero(row_mask == 0)
    length = int(zeros[0]) if zeros.size else row_ids.shape[0]
    rows.append([int(t) for t in row_ids[:length]])
  return list(tokenizer.batch_decode(rows, skip_special_tokens=True)) if rows else []


def batch_indices(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
  """Example indices of this process's share of the global batch at `step`.

  Epoch `e` visits the examples in the order `default_rng([seed, e]).permutation(num_examples)`;
  step `s` is batch `s % steps_per_epoch` of epoch `s // steps_per_epoch`, with
  `steps_per_epoch = num_examples // batch_size` (the last partial batch of an epoch is
  dropped, so no example repeats within an epoch). The global batch is the same for any
  `process_count`; process `i` gets its contiguous slice `[i*b:(i+1)*b]`,
  `b = batch_size // process_count`.

  Args:
    num_examples: size of the dataset.
    batch_size: global batch size (over all processes), at most `num_examples`.
    seed: data-order seed.
    step: training step (>= 0); the result is a pure function of the arguments.
    process_index, process_count: this process and the number of processes
      (`jax.process_index()`, `jax.process_count()`).

  Returns:
    [batch_size // process_count] int64 indices into the dataset.
  """
  if not 1 <= batch_size <= num_examples:
    raise ValueError(f"need 1 <= batch_size <= num_examples, got batch_size={batch_size}, "
                     f"num_examples={num_examples}")
  if step < 0:
    raise ValueError(f"step must be >= 0, got step={step}")
  if process_count < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by process_count={process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got process_index={process_index}, "
                     f"process_count={process_count}")
  steps_per_epoch = num_examples // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  global_batch = order[position * batch_size:(position + 1) * batch_size]
  per_process = batch_size // process_count
  return global_batch[process_index * per_process:(process_index + 1) * per_process].astype(np.int64)


def repeat_for_groups(items: Sequence[T] | np.ndarray, group_size: int) -> list[T] | np.ndarray:
  """Repeats each item `group_size` times consecutively (group-major layout).

  `[a, b]`, 3 -> `[a, a, a, b, b, b]`. A numpy array is repeated along axis 0 and stays
  an array; any other sequence becomes a list.
  """
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got group_size={group_size}")
  if isinstance(items, np.ndarray):
    return np.repeat(items, group_size, axis=0)
  return [item for item in items for _ in range(group_size)]
