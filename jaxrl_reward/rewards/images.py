"""Rewards of images sampled by a diffusion policy, by name (`config.rewards.names`/`weights`).

- "reward_model": the output of a frozen image role (`config.rewards.reward_role`, default
  "reward_model"): a regressor trained here on the task's images (for example the stroke
  thickness of `data.image_task`), a target that differs from the conditioning, so that
  fine-tuning must move the model away from its pre-training distribution.
- "jpeg_compressibility" / "jpeg_incompressibility": DDPO's rewards (Black et al. 2023,
  `ddpo_pytorch/rewards.py`): the image rounded to uint8 and saved as JPEG at quality 95;
  incompressibility = its size in kB, compressibility = minus that. Computed on the host (PIL).

The guard (`config.rewards.guard_role`, default "guard"; "" for none) is logged beside the
reward, never optimised: an independently trained classifier's probability of the conditioned
class, which falls when fine-tuning hacks the reward by leaving the data distribution.
"""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_reward import sharding

IN_JIT = ("reward_model",)
HOST = ("jpeg_compressibility", "jpeg_incompressibility")
NAMES = IN_JIT + HOST


def to_uint8(images: np.ndarray) -> np.ndarray:
  """`[B, H, W, C]` in [-1, 1] -> uint8 `[B, H, W, C]`, rounded as DDPO does."""
  return np.round((np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def jpeg_kilobytes(images: np.ndarray, quality: int = 95) -> np.ndarray:
  """`[B]` float32: the JPEG size in kB of each image of `[B, H, W, C]` in [-1, 1]."""
  from PIL import Image  # noqa: PLC0415  (host-side only)
  out = []
  for image in to_uint8(images):
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=quality)
    out.append(buffer.tell() / 1000.0)
  return np.asarray(out, np.float32)


class ImageRewards:
  """The weighted rewards of a config on a batch of images, and the guard metric."""

  def __init__(self, rewards_config, roles, num_styles: int):
    names = tuple(rewards_config.names)
    weights = tuple(rewards_config.get("weights") or (1.0,) * len(names))
    unknown = [n for n in names if n not in NAMES]
    if not names or unknown:
      raise ValueError(f"config.rewards.names={names!r}: unknown image reward(s) {unknown}; known: {NAMES}")
    if len(weights) != len(names):
      raise ValueError(f"config.rewards.weights has {len(weights)} values for {len(names)} rewards.names")
    self.names, self.weights = names, tuple(float(w) for w in weights)
    self.roles, self.num_styles = roles, int(num_styles)
    self.reward_role = rewards_config.get("reward_role", "reward_model")
    self.guard_role = rewards_config.get("guard_role", "guard")
    for key, name, needed in (("reward_role", self.reward_role, "reward_model" in names),
                              ("guard_role", self.guard_role, bool(self.guard_role))):
      if needed and (name not in roles.specs or roles.specs[name].kind != "image"):
        raise ValueError(f"config.rewards.{key}={name!r} is not an image role of config.roles "
                         f"(image roles: {[n for n, s in roles.specs.items() if s.kind == 'image']})")

  def score(self, state, images: jax.Array, conditions: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(`[B]` weighted reward, per-reward `[B]` values and `guard` `[B]` by name)."""
    parts = {}
    for name in self.names:
      if name == "reward_model":
        role = self.roles[self.reward_role]
        parts[name] = role.scorer.compute(state[self.reward_role]["params"], images)[:, 0]
      else:
        sizes = jpeg_kilobytes(sharding.local_rows(images))
        values = sizes if name == "jpeg_incompressibility" else -sizes
        parts[name] = sharding.to_global(values, self.roles.mesh, self.roles.rules, images.shape[0])
    total = sum(w * parts[n] for n, w in zip(self.names, self.weights))
    if self.guard_role:
      parts["guard"] = self.guard(state, images, conditions)
    return total, parts

  def guard(self, state, images: jax.Array, conditions: jax.Array) -> jax.Array:
    """`[B]` the guard classifier's probability of each image's conditioned class."""
    logits = self.roles[self.guard_role].scorer.compute(state[self.guard_role]["params"], images)
    labels = jnp.asarray(conditions) // self.num_styles  # condition id = class * num_styles + style
    return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[:, None], axis=1)[:, 0]
