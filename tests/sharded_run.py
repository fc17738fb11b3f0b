"""A short training run whose numbers must not depend on the mesh, shared by the sharding
tests and tests/multihost_worker.py."""
from configs import grpo_arithmetic
from jaxrl_reward.rewards import base as rewards_base

MESHES = {
    "data8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
    "fsdp8": (("data", 1), ("fsdp", 8), ("tensor", 1)),
    "data2_fsdp2_tensor2": (("data", 2), ("fsdp", 2), ("tensor", 2)),
}


@rewards_base.register_reward("test_length_mod3", overwrite=True)
def length_mod3(prompts, completions, **columns):
  """A reward that varies within groups even for an untrained model: non-zero advantages."""
  del prompts, columns
  return [float(len(c) % 3) for c in completions]


def config(mesh=(("data", 1),)):
  """The `tiny` variant on the micro model, with learning rates that act from step 0."""
  c = grpo_arithmetic.get_config("tiny")
  c.model.name = "micro"
  c.warmup.steps = 1
  c.train.steps = 2
  c.optim.warmup_steps = 0
  c.optim.lr = 1e-3
  c.objective.options.beta = 0.04  # exercises the sharded reference model
  c.rewards.names = ("test_length_mod3",)
  c.rewards.weights = (1.0,)
  c.eval.every = 2
  c.checkpoint_every = 1
  c.mesh = tuple(mesh)
  return c


def train_steps(experiment):
  """One warm-up step and two GRPO steps without evaluation: (metrics per step, state)."""
  state = experiment.initial_state()
  history = []
  for step in range(experiment.total_steps):
    stage = experiment.stages[experiment.stage_index(step)]
    if step == stage.start and step > 0:
      state = stage.enter(state)
    state, metrics = stage.step(state, step)
    history.append({k: float(v) for k, v in metrics.items()})
  return history, state
