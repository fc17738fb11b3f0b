"""Shared defaults of the GRPO experiment configs: every key the trainer reads.

An experiment config starts from `grpo_config()`, adds its `task` block and overrides what
differs (see configs/grpo_arithmetic.py, configs/grpo_smollm2.py).
"""
from ml_collections import config_dict


def grpo_config() -> config_dict.ConfigDict:
  """The keys every GRPO experiment has, with the default experiment's values; `c.task` is
  left to the experiment."""
  c = config_dict.ConfigDict()
  c.seed = 0

  c.model = config_dict.ConfigDict()
  c.model.name = "mini"  # a size in models.transformer.get_config
  c.model.dtype = "float32"  # compute dtype: float32 or bfloat16
  c.model.hf_path = ""  # a local Hugging Face model folder: its weights replace `name`'s random init

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
  return c
