"""GRPO on synthetic arithmetic: the project's default experiment.

A randomly initialised `mini` transformer (hidden 128, 3 layers, 0.75M parameters) is
first warmed up by supervised training on noisy worked solutions (40% end with a wrong
answer), then trained with GRPO against the arithmetic verifier. Held-out accuracy (greedy and sampled) is
measured after each stage.

    python -m experiments.train --config=configs/grpo_arithmetic.py --workdir=/tmp/grpo_arithmetic

Variants (`--config=configs/grpo_arithmetic.py:VARIANT`):
  (none)  the full default run, about 4 minutes on 2 CPU cores.
  tiny    a few steps of each stage, for tests and smoke runs (under a minute).
"""
from ml_collections import config_dict


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0

  c.model = config_dict.ConfigDict()
  c.model.name = "mini"  # a size in models.transformer.get_config
  c.model.dtype = "float32"  # compute dtype: float32 or bfloat16
  c.model.hf_path = ""  # a local Hugging Face model folder: its weights replace `name`'s random init

  c.task = config_dict.ConfigDict()
  c.task.name = "arithmetic"
  c.task.num_train = 8000
  c.task.num_eval = 256
  c.task.max_value = 99
  c.task.max_prompt_length = 8
  c.task.max_completion_length = 36
  # Fraction of warm-up solutions whose final answer is wrong (the column work stays right):
  # noisy demonstrations that the verifier-driven GRPO stage learns to see through.
  c.task.answer_noise = 0.4

  c.warmup = config_dict.ConfigDict()
  c.warmup.steps = 400
  c.warmup.batch_size = 64
  c.warmup.lr = 1e-3

  c.rollout = config_dict.ConfigDict()
  c.rollout.prompts_per_step = 16
  c.rollout.group_size = 8
  c.rollout.temperature = 1.0
  c.rollout.top_k = 0
  c.rollout.top_p = 1.0

  c.rewards = config_dict.ConfigDict()
  c.rewards.names = ("arithmetic_correctness",)
  c.rewards.weights = (1.0,)
  c.rewards.eval_name = "arithmetic_correctness"

  c.advantage = config_dict.ConfigDict()
  c.advantage.estimator = "group"  # group | rloo
  c.advantage.scale_rewards = "group"  # group | batch | none

  c.objective = config_dict.ConfigDict()
  c.objective.name = "grpo"
  c.objective.options = config_dict.ConfigDict()
  c.objective.options.loss_type = "dapo"
  c.objective.options.epsilon = 0.2
  c.objective.options.epsilon_high = 0.28
  c.objective.options.beta = 0.0
  c.objective.options.kl_estimator = "k3"
  c.objective.options.importance_sampling_level = "token"

  c.train = config_dict.ConfigDict()
  c.train.steps = 200  # GRPO steps after the warm-up
  c.train.num_iterations = 1  # mu: passes over each rollout batch
  c.train.num_minibatches = 1  # optimizer steps per pass
  c.train.grad_accum_steps = 1  # micro-batches per optimizer step

  c.optim = config_dict.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 10
  c.optim.schedule = "constant"  # constant | cosine (after the linear warm-up)
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.max_grad_norm = 1.0

  c.eval = config_dict.ConfigDict()
  c.eval.every = 50  # GRPO steps between held-out evaluations
  c.eval.batch_size = 128

  # Device mesh and logical-axis rules (jaxrl_reward/sharding.py). -1: the remaining devices.
  # Example: data 2 x fsdp 2 x tensor 2 on 8 devices:
  #   --config.mesh='(("data", 2), ("fsdp", 2), ("tensor", 2))'
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  # (logical_name, mesh_axes) pairs replacing entries of sharding.DEFAULT_RULES.
  c.sharding_rules = ()

  c.log_every = 1
  c.checkpoint_every = 50  # steps; warm-up and GRPO steps share one counter

  if variant in (None, ""):
    pass
  elif variant == "tiny":
    c.task.num_train = 512
    c.task.num_eval = 32
    c.warmup.steps = 4
    c.warmup.batch_size = 16
    c.rollout.prompts_per_step = 4  # 16 rows: 8 per mini-batch, one per device on 8 devices
    c.rollout.group_size = 4
    c.train.steps = 4
    c.train.num_iterations = 2  # exercises clipping against the rollout's log-probs
    c.train.num_minibatches = 2
    c.rewards.names = ("arithmetic_correctness", "format")
    c.rewards.weights = (1.0, 0.1)
    c.eval.every = 2
    c.eval.batch_size = 32
    c.checkpoint_every = 2
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/grpo_arithmetic.py; known: tiny")
  return c
