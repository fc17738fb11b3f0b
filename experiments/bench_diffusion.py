"""Throughput of the diffusion side: denoiser training steps/s, DDIM sampler images/s, and the
PRDP update (recomputed per-step log-probs and their gradient) in trajectories/s.

    python -m experiments.bench_diffusion [--sizes=dit_small:8,dit_mnist:28] [--repeats=5]

Each measurement compiles once, then times `repeats` calls (blocking on the result) and
reports the median. One JSON line per (size, measurement) goes to stdout.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags
from flax import nnx

from models import diffusion
from objectives import rdp

_SIZES = flags.DEFINE_string("sizes", "dit_small:8,dit_mnist:28", "name:image_size pairs")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (the median is kept)")
_BATCH = flags.DEFINE_integer("batch", 128, "images per training step, per sampler call and per PRDP update")
_STEPS = flags.DEFINE_integer("num_steps", 10, "DDIM steps of the sampler and of the PRDP trajectories")


def _median_time(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench(name: str, size: int) -> list[dict]:
  cfg = diffusion.get_config(name, image_size=size, num_conditions=10)
  model = diffusion.Denoiser(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  schedule = diffusion.linear_schedule()
  b, s = _BATCH.value, _STEPS.value
  opt = optax.adamw(1e-3)
  images = jax.random.uniform(jax.random.PRNGKey(1), (b, size, size, 1), minval=-1, maxval=1)
  conditions = jnp.arange(b) % 10
  key = jax.random.PRNGKey(2)

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(diffusion.ddpm_loss(nnx.merge(graphdef, p), schedule, images, conditions, key)))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def sample(params):
    return diffusion.ddim_sample(nnx.merge(graphdef, params), schedule, conditions, key, num_steps=s, eta=1.0)

  traj = sample(params)
  mask = jnp.ones((b, s))
  rewards = jax.random.normal(key, (b,))

  @jax.jit
  def prdp_grad(params):
    def loss(p):
      logp = diffusion.trajectory_logprobs(nnx.merge(graphdef, p), schedule, traj.latents, conditions, eta=1.0)
      groups = lambda x: x.reshape((b // 8, 8) + x.shape[1:])  # noqa: E731
      return rdp.prdp_loss(groups(logp), groups(traj.logprobs), groups(traj.logprobs), groups(rewards),
                           groups(mask), beta=10.0, clip_eps=1e-3)[0]
    return jax.grad(loss)(params)

  params_count = sum(x.size for x in jax.tree.leaves(params))
  base = {"model": name, "image_size": size, "params": params_count, "batch": b, "ddim_steps": s,
          "device": jax.devices()[0].device_kind}
  t_train = _median_time(train_step, params, opt.init(params))
  t_sample = _median_time(sample, params)
  t_prdp = _median_time(prdp_grad, params)
  return [{**base, "what": "pretrain_step", "steps_per_s": 1 / t_train, "images_per_s": b / t_train},
          {**base, "what": "ddim_sample", "images_per_s": b / t_sample},
          {**base, "what": "prdp_update_grad", "trajectories_per_s": b / t_prdp}]


def main(argv):
  del argv
  for item in _SIZES.value.split(","):
    name, size = item.split(":")
    for line in bench(name, int(size)):
      print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in line.items()}), flush=True)


if __name__ == "__main__":
  app.run(main)
