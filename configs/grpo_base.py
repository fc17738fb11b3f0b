"""Shared defaults of the language-model experiment configs: every key the engine reads.

An experiment config starts from `grpo_config()`, adds its `task` block and overrides what
differs (see configs/grpo_arithmetic.py, configs/grpo_smollm2.py, configs/implicit_prm.py).

Open blocks: `objective.options`, `advantage.options`, `rewards.options` and `roles` start
empty and take any key from the command line; the engine checks them when the run starts
against what the selected objective, estimator, reward or role accepts. Selecting an
objective by name brings its own defaults, so

    --config.objective.name=prdp --config.objective.options.clip_eps=1e-4

needs no other change (`objectives.registry.defaults("prdp")` lists them).
"""
from ml_collections import config_dict


def grpo_config() -> config_dict.ConfigDict:
  """The keys every GRPO experiment has, with the default experiment's values; `c.task` is
  left to the experiment."""
  c = config_dict.ConfigDict()
  c.seed = 0
  # The stages run in order over one step counter (jaxrl_reward/stages): supervised warm-up
  # (`warmup`), then RL (`rollout`, `rewards`, `advantage`, `objective`, `train`, `optim`).
  c.stages = ("sft", "rl")
  # A workdir of a run of the same models and data whose trained roles this run starts from
  # (its stages are done there), e.g. a warm-up run shared by several RL or reward-model runs:
  #   --config.stages='("reward_model",)' --config.init_from=/tmp/warmed_up
  c.init_from = ""
  # The source run must be complete (every step of its stages done); a step number here accepts
  # that step of a run that stopped early instead (0: complete runs only).
  c.init_from_step = 0

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
  c.rewards.eval_name = "arithmetic_correctness"  # the verifier: held-out accuracy, reward-model labels
  c.rewards.options = config_dict.ConfigDict()  # per in-jit reward: {name: {option: value}}
  c.rewards.nonfinite = "error"  # a NaN/inf from a reward function: "error" (naming it) or "missing"
  # Seconds a host reward function's call may take before it is given up on (0: no deadline), and what
  # that is: "error" (naming it) or "missing" (its rows get no reward for that step, with a warning).
  c.rewards.timeout_s = 600.0
  c.rewards.on_timeout = "error"
  c.rewards.stop_after_missing_steps = 3  # RL steps in a row without any reward before the run stops (0: never)
  # > 0: RLPR's std filter, groups whose reward std is below this x the EMA of the mean std leave the update.
  c.rewards.std_filter_beta = 0.0
  # The RL step from which it filters (RLPR: 11); the EMA starts from the mean of the steps from (start + 1) // 2.
  c.rewards.std_filter_start_step = 11
  # (low, high): PRIME's accuracy filter, groups whose verifier accuracy (rewards.eval_name) is
  # outside [low, high] leave the update of every trained role (PRIME: (0.2, 0.8)); () is off.
  c.rewards.accuracy_filter = ()
  # PURE's setting: the host-side rewards (the verifier) on this fraction of the problems only (a
  # fixed set, by a hash of the prompt), 0 on the others; None: every problem.
  c.rewards.verified_fraction = None

  c.advantage = config_dict.ConfigDict()
  c.advantage.estimator = "group"  # any of objectives.estimators.names()
  c.advantage.options = config_dict.ConfigDict()  # the estimator's options (group: scale_rewards, eps)

  c.objective = config_dict.ConfigDict()
  c.objective.name = "grpo"  # registry defaults: DAPO token-mean, clip 0.2 / 0.28, no KL
  c.objective.options = config_dict.ConfigDict()

  # Further models by name (jaxrl_reward/state.py): e.g. a process reward model updated online,
  #   c.roles.prm = dict(kind="lm", init="policy", trainable=True, objective="implicit_prm_ce", lr=1e-6)
  c.roles = config_dict.ConfigDict()

  c.train = config_dict.ConfigDict()
  c.train.steps = 200  # GRPO steps after the warm-up
  c.train.num_iterations = 1  # mu: passes over each rollout batch
  c.train.num_minibatches = 1  # optimizer steps per pass
  c.train.grad_accum_steps = 1  # micro-batches per optimizer step
  # Old log-probs of the ratio: "sampler" (the sampler's), "recompute" (teacher-forced under
  # the rollout parameters) or "auto" (recompute in bfloat16, where the two differ).
  c.train.old_logp = "auto"
  c.train.tis_cap = 0.0  # > 0: truncated importance weight min(pi_learner / pi_sampler, cap) (recompute)

  c.optim = config_dict.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 10
  c.optim.schedule = "constant"  # constant | cosine (after the linear warm-up)
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.max_grad_norm = 1.0

  c.eval = config_dict.ConfigDict()
  c.eval.every = 50  # RL steps between held-out evaluations
  c.eval.batch_size = 128
  # Also report the perplexity of the reference answers after greedy chains of thought
  # (`eval/answer_perplexity`; needs a task with an answer marker).
  c.eval.answer_perplexity = False

  # Device mesh and logical-axis rules (jaxrl_reward/sharding.py). -1: the remaining devices.
  # Example: data 2 x fsdp 2 x tensor 2 on 8 devices:
  #   --config.mesh='(("data", 2), ("fsdp", 2), ("tensor", 2))'
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  # (logical_name, mesh_axes) pairs replacing entries of sharding.DEFAULT_RULES.
  c.sharding_rules = ()

  # Several processes: a process without a heartbeat for this long ends the run with one line
  # naming it (below jax.distributed's own 100 s, so this message comes first).
  c.multihost_timeout_s = 60.0
  c.log_every = 1
  c.checkpoint_every = 50  # steps; warm-up and GRPO steps share one counter
  return c


def pretrained_on_one_host(c: config_dict.ConfigDict) -> config_dict.ConfigDict:
  """The settings the pretrained-model configs share: no warm-up by default, 32 prompts x 8
  completions per step in two optimizer steps, 300 RL steps at 2e-6, evaluation batches of
  256 (they divide over 8 devices)."""
  c.warmup.steps = 0
  c.warmup.batch_size = 16
  c.warmup.lr = 1e-5
  c.rollout.prompts_per_step = 32
  c.train.steps = 300
  c.train.num_minibatches = 2  # two optimizer steps per rollout batch of 256
  c.optim.lr = 2e-6
  c.eval.batch_size = 256
  return c
