"""A small class-conditional diffusion model: DiT denoiser, noise schedule, DDPM loss, DDIM sampler.

- `Denoiser`: a DiT (Peebles & Xie 2023, arXiv 2212.09748) over `patch x patch` patches of a
  `[B, H, W, C]` image in [-1, 1], conditioned on the timestep and on a condition id (a class, or a
  (class, style) pair) by adaLN-zero modulation. Id `num_conditions` is the null condition of
  classifier-free guidance. Every parameter carries logical axis names (`embed`, `mlp`, `heads`,
  `head_dim`, `norm`), so it shards under the same rules as the language model.
- `Schedule`: DDPM's linear beta schedule over `num_train_steps` (1,000) and the DDIM timesteps
  of an `S`-step sampler (diffusers' "leading" spacing with offset 1, so the last step goes from
  t = 1 to alpha_bar_prev = alpha_bar[0] and keeps a positive variance).
- `ddpm_loss`: epsilon-prediction mean squared error (Ho et al. 2020), with condition dropout for
  guidance.
- `ddim_sample`: the DDIM sampler with eta > 0 (Song et al. 2021) as one `lax.scan` over the
  steps, returning the whole trajectory and each transition's Gaussian log-prob (DDPO's
  convention, `ddim_logprob`); `trajectory_logprobs` recomputes those log-probs under other
  parameters, over chunks of steps so memory stays bounded.

DDPO (Black et al. 2023, arXiv 2305.13301; jannerm/ddpo `scheduling_ddim_flax.py`) treats each
DDIM step as a Gaussian policy x_{t-1} ~ N(mu_theta(x_t, t, c), sigma_t^2 I):

    x0_hat  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))
    mu      = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps
    log p   = mean over pixels of [-(x_{t-1} - mu)^2 / (2 sigma_t^2) - log sigma_t - log sqrt(2 pi)]

with sigma_t floored at 1e-6. The log-prob is a mean over the pixel dimensions, not a sum.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from models import partitioning

Array = jax.Array
SIGMA_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  image_size: int = 8
  channels: int = 1
  patch: int = 2
  width: int = 64
  depth: int = 2
  heads: int = 4
  mlp_ratio: int = 2
  num_conditions: int = 10  # real conditions; id `num_conditions` is the null condition

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch) ** 2

  @property
  def patch_dim(self) -> int:
    return self.patch * self.patch * self.channels


SIZES = {
    "dit_tiny": dict(width=32, depth=1, heads=2, patch=2),
    "dit_small": dict(width=64, depth=2, heads=4, patch=2),
    "dit_mnist": dict(width=128, depth=4, heads=4, patch=4),
}


def get_config(name: str, *, image_size: int, channels: int = 1, num_conditions: int) -> DiffusionConfig:
  """The named denoiser size (`SIZES`) for images of `image_size` and `num_conditions` conditions."""
  if name not in SIZES:
    raise KeyError(f"unknown diffusion model.name={name!r}; known: {sorted(SIZES)}")
  cfg = DiffusionConfig(image_size=image_size, channels=channels, num_conditions=num_conditions, **SIZES[name])
  if image_size % cfg.patch:
    raise ValueError(f"image_size={image_size} is not a multiple of the patch size {cfg.patch} of {name!r}")
  return cfg


# ----------------------------------------------------------------------------- denoiser


def _param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, names, eager_sharding=False)(rngs.params(), shape, jnp.float32))


_normal = nnx.initializers.normal(0.02)
_zeros = nnx.initializers.zeros
_lecun = nnx.initializers.lecun_normal()


class Dense(nnx.Module):
  """x @ kernel + bias with named kernel axes (`names` = (in, out))."""

  def __init__(self, d_in: int, d_out: int, names, *, rngs: nnx.Rngs, zero: bool = False):
    self.kernel = _param(rngs, _zeros if zero else _lecun, (d_in, d_out), names)
    self.bias = _param(rngs, _zeros, (d_out,), (names[1],))

  def __call__(self, x: Array) -> Array:
    return x @ self.kernel[...] + self.bias[...]


def _layer_norm(x: Array, eps: float = 1e-6) -> Array:
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


def timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """Sinusoidal embedding `[B, dim]` of (float) timesteps `[B]`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Block(nnx.Module):
  """A DiT block: adaLN-zero modulated self-attention and MLP."""

  def __init__(self, cfg: DiffusionConfig, *, rngs: nnx.Rngs):
    w, h = cfg.width, cfg.heads
    self.heads = h
    self.modulation = Dense(w, 6 * w, ("embed", "mlp"), rngs=rngs, zero=True)
    self.qkv = _param(rngs, _lecun, (w, 3, h, w // h), ("embed", None, "heads", "head_dim"))
    self.out = _param(rngs, _lecun, (h, w // h, w), ("heads", "head_dim", "embed"))
    self.fc1 = Dense(w, cfg.mlp_ratio * w, ("embed", "mlp"), rngs=rngs)
    self.fc2 = Dense(cfg.mlp_ratio * w, w, ("mlp", "embed"), rngs=rngs)

  def __call__(self, x: Array, c: Array) -> Array:
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(jax.nn.silu(c))[:, None], 6, axis=-1)
    y = _layer_norm(x) * (1 + scale1) + shift1
    q, k, v = jnp.unstack(jnp.einsum("bnd,dshk->sbnhk", y, self.qkv[...]), axis=0)
    attn = jax.nn.dot_product_attention(q, k, v)  # [B, N, H, K]
    x = x + gate1 * jnp.einsum("bnhk,hkd->bnd", attn, self.out[...])
    y = _layer_norm(x) * (1 + scale2) + shift2
    return x + gate2 * self.fc2(jax.nn.gelu(self.fc1(y)))


class Denoiser(nnx.Module):
  """eps_theta(x_t, t, c): the noise in `x_t` `[B, H, W, C]` at timesteps `t` `[B]`, conditions `c` `[B]`."""

  def __init__(self, cfg: DiffusionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    w = cfg.width
    self.patch_in = Dense(cfg.patch_dim, w, (None, "embed"), rngs=rngs)
    self.position = _param(rngs, _normal, (cfg.num_patches, w), (None, "embed"))
    self.condition = _param(rngs, nnx.initializers.normal(1.0), (cfg.num_conditions + 1, w), (None, "embed"))
    self.time1 = Dense(w, w, ("embed", "mlp"), rngs=rngs)
    self.time2 = Dense(w, w, ("mlp", "embed"), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.final_modulation = Dense(w, 2 * w, ("embed", "mlp"), rngs=rngs, zero=True)
    self.patch_out = Dense(w, cfg.patch_dim, ("embed", None), rngs=rngs, zero=True)

  def __call__(self, x: Array, t: Array, c: Array) -> Array:
    cfg = self.config
    b, p, g = x.shape[0], cfg.patch, cfg.image_size // cfg.patch
    patches = x.reshape(b, g, p, g, p, cfg.channels).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, cfg.patch_dim)
    cond = self.time2(jax.nn.silu(self.time1(timestep_embedding(t, cfg.width)))) + self.condition[...][c]
    # The condition also joins every token: a direct path that conditions from the first steps,
    # where the zero-initialised adaLN modulation alone learns it slowly.
    h = self.patch_in(patches) + self.position[...][None] + cond[:, None]
    h = partitioning.constrain(h, ("act_batch", None, "act_embed"))
    for block in self.blocks:
      h = block(h, cond)
    shift, scale = jnp.split(self.final_modulation(jax.nn.silu(cond))[:, None], 2, axis=-1)
    out = self.patch_out(_layer_norm(h) * (1 + scale) + shift)
    return out.reshape(b, g, g, p, p, cfg.channels).transpose(0, 1, 3, 2, 4, 5).reshape(x.shape)


# ----------------------------------------------------------------------------- schedule


class Schedule(NamedTuple):
  """DDPM's linear schedule: `alpha_bar[t]` for t in [0, num_train_steps)."""
  alpha_bar: Array  # [num_train_steps] float32

  @property
  def num_train_steps(self) -> int:
    return int(self.alpha_bar.shape[0])

  def ddim_timesteps(self, num_steps: int) -> tuple[Array, Array, Array]:
    """(t, abar_t, abar_prev), each `[S]`, from the noisiest step to the last.

    "Leading" spacing with offset 1 (diffusers' DDIMScheduler with steps_offset=1): t_i =
    i * (num_train_steps // S) + 1; the step after t_0 lands on alpha_bar[0], not on 1, so
    every step has a positive variance (and a finite log-prob).
    """
    if not 1 <= num_steps <= self.num_train_steps:
      raise ValueError(f"num_steps={num_steps} must be in [1, {self.num_train_steps}]")
    stride = self.num_train_steps // int(num_steps)
    t = (jnp.arange(num_steps - 1, -1, -1) * stride + 1).clip(max=self.num_train_steps - 1)
    prev = t - stride
    abar_prev = jnp.where(prev >= 0, self.alpha_bar[jnp.maximum(prev, 0)], self.alpha_bar[0])
    return t.astype(jnp.int32), self.alpha_bar[t], abar_prev


def linear_schedule(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
  betas = jnp.linspace(beta_start, beta_end, num_train_steps, dtype=jnp.float32)
  return Schedule(jnp.cumprod(1.0 - betas))


# ----------------------------------------------------------------------------- training


def ddpm_loss(model: Denoiser, schedule: Schedule, images: Array, conditions: Array, key: Array, *,
              cond_dropout: float = 0.1) -> Array:
  """Mean squared error of the predicted noise (Ho et al. 2020, eq. 14), `[B]` per image.

  A fraction `cond_dropout` of the conditions is replaced by the null condition, so that the same
  model also gives the unconditional noise for classifier-free guidance.
  """
  kt, kn, kd = jax.random.split(key, 3)
  b = images.shape[0]
  t = jax.random.randint(kt, (b,), 0, schedule.num_train_steps)
  noise = jax.random.normal(kn, images.shape, jnp.float32)
  abar = schedule.alpha_bar[t].reshape((b,) + (1,) * (images.ndim - 1))
  noisy = jnp.sqrt(abar) * images + jnp.sqrt(1.0 - abar) * noise
  null = jnp.full_like(conditions, model.config.num_conditions)
  conditions = jnp.where(jax.random.uniform(kd, (b,)) < cond_dropout, null, conditions)
  err = jnp.square(model(noisy, t, conditions) - noise)
  return jnp.mean(err.reshape(b, -1), axis=-1)


# ----------------------------------------------------------------------------- DDIM


def _per_image(x: Array, ndim: int) -> Array:
  """Broadcast a `[B]` (or scalar) schedule value over `ndim`-dim images."""
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(x.shape + (1,) * (ndim - x.ndim)) if x.ndim else x


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta: float) -> Array:
  """sigma_t of a DDIM step (Song et al. 2021, eq. 16), with DDPO's floor of 1e-6."""
  var = (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev)
  return jnp.maximum(eta * jnp.sqrt(jnp.maximum(var, 0.0)), SIGMA_FLOOR)


def ddim_mean(x_t: Array, eps: Array, alpha_bar_t, alpha_bar_prev, sigma, *, clip_x0: bool = False) -> Array:
  """mu of the DDIM step from x_t to x_prev, given the predicted noise (x0_hat clipped to [-1, 1]
  with `clip_x0`, as diffusers' `clip_sample`; eps is kept as predicted)."""
  n = x_t.ndim
  at, ap, s = _per_image(alpha_bar_t, n), _per_image(alpha_bar_prev, n), _per_image(sigma, n)
  x0 = (x_t - jnp.sqrt(1.0 - at) * eps) / jnp.sqrt(at)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1.0 - ap - s ** 2, 0.0)) * eps


def _check_eta(eta) -> None:
  if not isinstance(eta, jax.Array) and not float(eta) > 0:
    raise ValueError(f"eta must be > 0 for the DDIM step to have a density (eta=0 is deterministic), got {eta!r}")


def ddim_logprob(x_t: Array, x_prev: Array, eps: Array, alpha_bar_t, alpha_bar_prev, *, eta: float,
                 clip_x0: bool = False) -> Array:
  """Log-density `[B]` of the transition x_t -> x_prev of a DDIM step with eta > 0 (DDPO's convention).

  log p = mean over the pixel dims of -(x_prev - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi),
  mu and sigma as in the module docstring (sigma floored at 1e-6).

  Args:
    x_t: `[B, ...]` the noisier image.
    x_prev: `[B, ...]` the next (less noisy) image; treated as data (no gradient through it).
    eps: `[B, ...]` the predicted noise eps_theta(x_t, t, c) (carries the gradient).
    alpha_bar_t, alpha_bar_prev: scalars or `[B]`.
    eta: > 0; eta = 0 (DDIM's deterministic step) has no density and is an error.
    clip_x0: clip x0_hat to [-1, 1] before forming mu (the sampler's option of the same name).
  """
  _check_eta(eta)
  if x_t.shape != x_prev.shape or x_t.shape != eps.shape:
    raise ValueError(f"x_t {x_t.shape}, x_prev {x_prev.shape} and eps {eps.shape} must have one shape [B, ...]")
  sigma = ddim_sigma(jnp.asarray(alpha_bar_t, jnp.float32), jnp.asarray(alpha_bar_prev, jnp.float32), eta)
  mu = ddim_mean(x_t, eps, alpha_bar_t, alpha_bar_prev, sigma, clip_x0=clip_x0)
  s = _per_image(sigma, x_t.ndim)
  x_prev = jax.lax.stop_gradient(x_prev)
  logp = -jnp.square(x_prev - mu) / (2 * s ** 2) - jnp.log(s) - 0.5 * math.log(2 * math.pi)
  return jnp.mean(logp.reshape(x_t.shape[0], -1), axis=-1)


def guided_eps(model: Denoiser, x: Array, t: Array, conditions: Array, guidance: float) -> Array:
  """eps with classifier-free guidance eps_u + w (eps_c - eps_u); `guidance` 1 is the plain conditional."""
  if guidance == 1.0:
    return model(x, t, conditions)
  null = jnp.full_like(conditions, model.config.num_conditions)
  both = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([conditions, null]))
  cond, uncond = jnp.split(both, 2)
  return uncond + guidance * (cond - uncond)


class Trajectory(NamedTuple):
  latents: Array  # [B, S + 1, H, W, C]: x_T, ..., x_0
  logprobs: Array  # [B, S]: log p(latents[:, s + 1] | latents[:, s]) under the sampling parameters


def ddim_sample(model: Denoiser, schedule: Schedule, conditions: Array, key: Array, *, num_steps: int,
                eta: float = 1.0, guidance: float = 1.0, clip_x0: bool = False) -> Trajectory:
  """Samples images for `conditions` `[B]` with an S-step DDIM sampler (one `lax.scan`)."""
  _check_eta(eta)
  cfg = model.config
  b = conditions.shape[0]
  t_all, at_all, ap_all = schedule.ddim_timesteps(num_steps)
  k0, key = jax.random.split(key)
  x = jax.random.normal(k0, (b, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)

  def step(x, inputs):
    t, at, ap, k = inputs
    eps = guided_eps(model, x, jnp.full((b,), t), conditions, guidance)
    sigma = ddim_sigma(at, ap, eta)
    mu = ddim_mean(x, eps, at, ap, sigma, clip_x0=clip_x0)
    x_prev = mu + sigma * jax.random.normal(k, x.shape, jnp.float32)
    return x_prev, (x_prev, ddim_logprob(x, x_prev, eps, at, ap, eta=eta, clip_x0=clip_x0))

  keys = jax.random.split(key, num_steps)
  _, (xs, logps) = jax.lax.scan(step, x, (t_all, at_all, ap_all, keys))
  latents = jnp.concatenate([x[:, None], jnp.moveaxis(xs, 0, 1)], axis=1)
  return Trajectory(latents, jnp.moveaxis(logps, 0, 1))


def trajectory_logprobs(model: Denoiser, schedule: Schedule, latents: Array, conditions: Array, *, eta: float,
                        guidance: float = 1.0, clip_x0: bool = False, step_chunk: int = 0) -> Array:
  """`[B, S]` log-probs of each stored transition latents[:, s] -> latents[:, s + 1] under `model`.

  The S steps run as a `lax.map` over chunks of `step_chunk` steps (0: all at once), so the
  activations held for the gradient grow with the chunk, not with S.
  """
  b, s = latents.shape[0], latents.shape[1] - 1
  t_all, at_all, ap_all = schedule.ddim_timesteps(s)

  def one(inputs):
    x, x_prev, t, at, ap = inputs
    eps = guided_eps(model, x, jnp.full((b,), t), conditions, guidance)
    return ddim_logprob(x, x_prev, eps, at, ap, eta=eta, clip_x0=clip_x0)

  steps = (jnp.moveaxis(latents[:, :-1], 1, 0), jnp.moveaxis(latents[:, 1:], 1, 0), t_all, at_all, ap_all)
  chunk = s if not step_chunk or step_chunk >= s else int(step_chunk)
  return jnp.moveaxis(jax.lax.map(one, steps, batch_size=chunk), 0, 1)
