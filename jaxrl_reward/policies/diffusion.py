"""Diffusion models behind the policy interface: condition ids in, denoising trajectories out.

`DiffusionPolicy` (T = the S steps of the DDIM sampler, `models.diffusion`):

    conditions = policy.conditions(ids, group_ids, global_rows)
    rollout = policy.sample(params, conditions, key)
      # actions [B, S + 1, H, W, C] (x_T ... x_0), old_logp [B, S], mask [B, S] (ones),
      # group_ids [B], extras["conditions"] [B]
    logp = policy.logprobs(params, rollout)      # [B, S], traceable, over chunks of steps
    images = policy.images(rollout)              # [B, H, W, C] final samples x_0, clipped to [-1, 1]

`ImageModel` scores images with a frozen `models.image_classifier.ImageClassifier` role (the
reward model and the guard). Every compiled function runs under the role's placement:
parameters in their shardings, rows over the mesh's batch axes.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_reward import sharding
from jaxrl_reward.rollout import Rollout
from models import diffusion


class DiffusionPolicy:
  """A conditional denoiser as a policy (see `policies.base.Policy`); T = denoising steps."""
  kind = "logprobs"

  def __init__(self, graphdef, placement: sharding.Placement, schedule: diffusion.Schedule, *, num_steps: int,
               eta: float = 1.0, guidance: float = 1.0, step_chunk: int = 0):
    if not eta > 0:
      raise ValueError(f"diffusion.eta must be > 0 for a sampling policy (eta=0 has no density), got {eta}")
    if num_steps < 1:
      raise ValueError(f"diffusion.num_steps must be >= 1, got {num_steps}")
    self.graphdef = graphdef
    self.placement = placement
    self.schedule = schedule
    self.num_steps, self.eta, self.guidance, self.step_chunk = int(num_steps), float(eta), float(guidance), int(step_chunk)
    rows, replicated = placement.rows, placement.replicated
    self._sampler = placement.jit(self._sample, in_shardings=(placement.params, rows, rows, replicated),
                                  out_shardings=rows)
    self.compute_logprobs = placement.jit(self.logprobs, in_shardings=(placement.params, rows),
                                          out_shardings=rows)

  def conditions(self, ids: Sequence[int], group_ids: Sequence[int], global_rows: int) -> dict:
    """This process's condition ids (and their group ids) -> global `[B]` arrays."""
    local = {"conditions": np.asarray(ids, np.int32), "group_ids": np.asarray(group_ids, np.int32)}
    return sharding.to_global(local, self.placement.mesh, self.placement.rules, global_rows)

  def _sample(self, params, conditions, group_ids, key) -> Rollout:
    model = nnx.merge(self.graphdef, params)
    traj = diffusion.ddim_sample(model, self.schedule, conditions, key, num_steps=self.num_steps, eta=self.eta,
                                 guidance=self.guidance)
    return Rollout(actions=traj.latents, mask=jnp.ones_like(traj.logprobs), old_logp=traj.logprobs,
                   group_ids=group_ids.astype(jnp.int32), extras={"conditions": conditions})

  def sample(self, params, conditions, key) -> Rollout:
    """One trajectory per condition row; `old_logp` are the sampler's per-step log-probs."""
    return self._sampler(params, conditions["conditions"], conditions["group_ids"], key)

  def logprobs(self, params, rollout: Rollout) -> jax.Array:
    """`[B, S]` log-probs of the stored transitions under `params` (traceable); 0 where the mask is 0."""
    model = nnx.merge(self.graphdef, params)
    logp = diffusion.trajectory_logprobs(model, self.schedule, rollout.actions, rollout["conditions"], eta=self.eta,
                                         guidance=self.guidance, step_chunk=self.step_chunk)
    return logp * rollout.mask

  outputs = logprobs

  @staticmethod
  def images(rollout: Rollout) -> jax.Array:
    """The final samples x_0 `[B, H, W, C]`, clipped to the data range [-1, 1]."""
    return jnp.clip(rollout.actions[:, -1], -1.0, 1.0)


class ImageModel:
  """A frozen image classifier / regressor role: `apply(params, images) -> [B, K]`."""
  kind = "images"

  def __init__(self, graphdef, placement: sharding.Placement):
    self.graphdef = graphdef
    self.placement = placement
    self.compute = placement.jit(self.apply, in_shardings=(placement.params, placement.rows),
                                 out_shardings=placement.rows)

  def apply(self, params, images: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, params)(images)
