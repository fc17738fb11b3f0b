"""Language models behind the policy interface: prompts in, completion tokens out.

`LanguageModel` is the policy (and the scorer of any other language-model role: reference,
process reward model): it tokenises prompts into conditions, samples completions with the
jitted KV-cache sampler (`jaxrl_reward.sampling`) into a `Rollout`, decodes completions
for host-side rewards, and recomputes teacher-forced log-probs with the lean vocabulary-
chunked path (`jaxrl_reward.logprobs`), at the rollout temperature. `ValueHead` scores a
rollout with a `models.value.ValueModel`: `[B, T]` values of the prefixes before each
completion token.

Every compiled function runs under the role's placement: parameters in their shardings,
rows over the mesh's batch axes. With several processes, `conditions` takes this process's
prompts and `decode` returns this process's completions (`sharding.host_rows`).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_reward import logprobs as logprobs_lib
from jaxrl_reward import sampling
from jaxrl_reward import sharding
from jaxrl_reward.data import batching
from jaxrl_reward.rollout import Rollout


def _completion_inputs(rollout: Rollout):
  # `token_mask` (the tokens present, when a reward spliced a reference answer after the chain of
  # thought) is wider than `mask` (the steps the RL term trains); without it they are the same.
  return (rollout["prompt_ids"], rollout["prompt_mask"], rollout.actions, rollout.get("token_mask", rollout.mask))


class LanguageModel:
  """A decoder LM as a policy (see `policies.base.Policy`); T = completion tokens."""
  kind = "logprobs"

  def __init__(self, graphdef, placement: sharding.Placement, tokenizer, *, max_prompt_length: int,
               max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    if not temperature > 0:
      raise ValueError(f"rollout.temperature must be > 0 for a sampling policy, got {temperature}")
    self.graphdef = graphdef
    self.placement = placement
    self.tokenizer = tokenizer
    self.max_prompt_length = int(max_prompt_length)
    self.max_new_tokens = int(max_new_tokens)
    self.temperature = float(temperature)
    self.eos_id = tokenizer.eos_token_id
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
    rows, replicated = placement.rows, placement.replicated
    options = {False: dict(temperature=temperature, top_k=top_k, top_p=top_p), True: dict(temperature=0.0)}
    self._samplers = {greedy: placement.jit(functools.partial(self._sample, **options[greedy]),
                                            in_shardings=(placement.params, rows, rows, rows, replicated),
                                            out_shardings=rows)
                      for greedy in (False, True)}
    self.compute_logprobs = placement.jit(self.logprobs, in_shardings=(placement.params, rows),
                                          out_shardings=rows)

  # -- host side -------------------------------------------------------------------------

  def conditions(self, prompts: Sequence[str], group_ids: Sequence[int], global_rows: int) -> dict[str, Any]:
    """This process's prompts (and their group ids) -> global `[B, ...]` condition arrays."""
    ids, mask = batching.encode_prompts(self.tokenizer, list(prompts), max_length=self.max_prompt_length,
                                        padding_side="left")
    local = {"prompt_ids": ids, "prompt_mask": mask, "group_ids": np.asarray(group_ids, np.int32)}
    return sharding.to_global(local, self.placement.mesh, self.placement.rules, global_rows)

  def decode(self, rollout: Rollout) -> list[str]:
    """The completions of this process's rows, special tokens removed."""
    return batching.decode_completions(self.tokenizer, sharding.local_rows(rollout.actions),
                                       sharding.local_rows(rollout.mask))

  # -- compiled --------------------------------------------------------------------------

  def _sample(self, params, prompt_ids, prompt_mask, group_ids, key, *, temperature, top_k=0, top_p=1.0):
    model = nnx.merge(self.graphdef, params)
    out = sampling.sample(model, prompt_ids, prompt_mask, key, max_new_tokens=self.max_new_tokens,
                          temperature=temperature, top_k=top_k, top_p=top_p, eos_id=self.eos_id,
                          pad_id=self.pad_id)
    return Rollout(actions=out.tokens, mask=out.mask.astype(jnp.float32), old_logp=out.logprobs,
                   group_ids=group_ids.astype(jnp.int32),
                   extras={"prompt_ids": prompt_ids, "prompt_mask": prompt_mask})

  def sample(self, params, conditions, key, *, greedy: bool = False) -> Rollout:
    """Completions of every condition row; `old_logp` are the sampler's log-probs (at the
    rollout temperature; greedy decoding reports them at temperature 1)."""
    return self._samplers[bool(greedy)](params, conditions["prompt_ids"], conditions["prompt_mask"],
                                        conditions["group_ids"], key)

  def logprobs(self, params, rollout: Rollout) -> jax.Array:
    """Teacher-forced `[B, T]` log-probs of the completion tokens (traceable); 0 where
    `token_mask` (default `mask`) is 0."""
    model = nnx.merge(self.graphdef, params)
    return logprobs_lib.completion_logprobs(model, *_completion_inputs(rollout), temperature=self.temperature)

  outputs = logprobs

  def sampler_traces(self) -> dict[str, int]:
    """How many programs each sampler compiled (one per batch shape)."""
    return {("greedy" if g else "sampled"): fn.traces for g, fn in self._samplers.items()}


class ValueHead:
  """A `models.value.ValueModel` role as a rollout scorer: `[B, T]` values of each prefix."""
  kind = "values"

  def __init__(self, graphdef, placement: sharding.Placement):
    self.graphdef = graphdef
    self.placement = placement
    self.compute_outputs = placement.jit(self.outputs, in_shardings=(placement.params, placement.rows),
                                         out_shardings=placement.rows)

  def outputs(self, params, rollout: Rollout) -> jax.Array:
    model = nnx.merge(self.graphdef, params)
    hidden = logprobs_lib.completion_hidden(model.backbone, *_completion_inputs(rollout))  # [B, T, D]
    return model.values(hidden) * rollout.mask
