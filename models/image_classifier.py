"""A small MLP over images: a classifier (logits `[B, K]`) or a regressor (`[B, 1]`).

It is the reward model and the guard of diffusion fine-tuning (`jaxrl_reward.rewards.images`):
trained here on the same images as the denoiser, then frozen. Parameters carry logical axis
names (`mlp`) like every model of the project.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from models.diffusion import Dense


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  image_size: int = 8
  channels: int = 1
  hidden: int = 128
  outputs: int = 10  # classes; 1 for a regressor


class ImageClassifier(nnx.Module):
  """f(x) for images `[B, H, W, C]` in [-1, 1]: two hidden GELU layers, then `outputs` values."""

  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    d_in = cfg.image_size * cfg.image_size * cfg.channels
    self.fc1 = Dense(d_in, cfg.hidden, (None, "mlp"), rngs=rngs)
    self.fc2 = Dense(cfg.hidden, cfg.hidden, ("mlp", None), rngs=rngs)
    self.out = Dense(cfg.hidden, cfg.outputs, (None, None), rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    h = images.reshape(images.shape[0], -1).astype(jnp.float32)
    h = jax.nn.gelu(self.fc1(h))
    h = jax.nn.gelu(self.fc2(h))
    return self.out(h)
