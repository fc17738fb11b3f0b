"""Optimizer construction from a config: AdamW, linear warm-up, constant or cosine decay,
global-norm clipping."""
from __future__ import annotations

import optax

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(lr: float, *, warmup_steps: int, total_steps: int, schedule: str) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup_steps`, then constant or cosine decay to 0."""
  if schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={schedule!r} is not one of {SCHEDULES}")
  if warmup_steps < 0 or total_steps < 1:
    raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
  warmup_steps = min(warmup_steps, total_steps)
  warm = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
  if schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
  """AdamW with the schedule above, after global-norm clipping (skipped if max_grad_norm is None or <= 0)."""
  sched = learning_rate_schedule(lr, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule)
  parts = []
  if max_grad_norm is not None and max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(max_grad_norm))
  parts.append(optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay))
  return optax.chain(*parts)


def from_config(optim_config, lr: float, *, total_steps: int, warmup_steps: int, schedule: str
                ) -> optax.GradientTransformation:
  """`make_optimizer` with the run's shared settings (`config.optim`: weight decay, Adam betas,
  clipping) and the given rate and schedule."""
  return make_optimizer(lr, total_steps=max(int(total_steps), 1), warmup_steps=int(warmup_steps),
                        schedule=schedule, weight_decay=optim_config.weight_decay, b1=optim_config.b1,
                        b2=optim_config.b2, max_grad_norm=optim_config.max_grad_norm)
