"""An implicit process reward model trained from outcome labels of the policy's own samples.

Stages: supervised warm-up of the policy on the arithmetic task (as the default
experiment), then the reward-model stage: each step samples `group_size` solutions for each
of `prompts_per_step` problems from the warmed-up policy, labels each by the verifier only
(`rewards.eval_name`), and trains the `prm` role (initialised from the policy, with the
policy as its reference) with the implicit-PRM cross-entropy loss (Yuan et al., arXiv
2412.01981). `--config.objective.name=implicit_prm_dpo` (pairs of correct and incorrect
solutions of a problem) or `implicit_prm_kto` select the other losses. The evaluation
reports how well the PRM's outcome score orders correct above incorrect held-out samples.

    python -m experiments.train --config=configs/implicit_prm.py:tiny --workdir=/tmp/implicit_prm

Variants: (none) minutes on 2 CPU cores; tiny: seconds, for tests; chain_sums (and
chain_sums_tiny): the multi-step chain-of-sums task (`data/chain_sums.py`), one step per line,
whose step boundaries and (for evaluation only) step correctness are known, the setting of
`experiments/prm_best_of_n.py` (Best-of-N reranking and step-error localisation).
smollm2 (and its smoke run smollm2_cpu): the real-model variant, SmolLM2-135M-Instruct (the model
folder of configs/grpo_smollm2.py) on reasoning-gym `basic_arithmetic` chains of three one-digit
terms, worked one operation per line before the `<answer>` tag (`smollm2_chain_task`); no warm-up
(the instruct model follows the two worked chat examples: about 20% of its samples at temperature
0.7 are right), one GPU: 200 reward-model steps of 32 problems x 8 samples; `smollm2_cpu`: 2 steps
of 2 x 4 on 2 CPU cores. `experiments/prm_best_of_n.py` evaluates either (localisation included:
the task writes worked and flawed chains).
control (and control_tiny): the positive control (issue 23): the chain_sums setting, but the
reward-model stage trains on balanced (worked, flawed) solution pairs of the training problems
(`Task.solution_pair`, labels known, 50/50; `reward_model.data="solution_pairs"`, one pair per
problem, 32 problems a step) instead of on the policy's samples with outcome labels; its
evaluation is the held-out pair accuracy (`eval/pair_accuracy`: worked scored above flawed), and
`experiments/prm_best_of_n.py` gives step-error localisation and Best-of-N on the policy's samples.
`control`, `control,dpo` and `control,orm` are the CE, DPO and outcome-RM controls; a scorer that
fails it has a pipeline bug, not a hard task. Warm-up as chain_sums (`init_from` its warm-up run):

    python -m experiments.train --config=configs/implicit_prm.py:control --workdir=/tmp/prm_control \
        --config.stages='("reward_model",)' --config.init_from=/tmp/implicit_prm_chain_sums_warmup

`--config.reward_model.data=solution_pairs` does the same for any variant, and
`--config.objective.options.label_balance=True` weights the two classes of the CE loss equally
(`objectives.implicit_prm.class_weights`; off by default).
Modifiers, after a comma (`chain_sums,dpo`): `dpo` and `kto` select those losses; `orm` trains
an outcome reward model instead (the paper's baseline: the policy's backbone with a scalar head,
role `orm` of kind "value", binary cross-entropy on the label at the last token,
`objectives/outcome_rm.py`). One variant at most, first, and one modifier at most (each picks the
loss); a name twice is an error.
"""
from ml_collections import config_dict

from configs import grpo_arithmetic
from configs import grpo_smollm2
from configs import variants


VARIANTS = ("tiny", "chain_sums", "chain_sums_tiny", "control", "control_tiny", "smollm2", "smollm2_cpu")
SMOLLM2_SYSTEM_PROMPT = ("You are a careful calculator. Work left to right, one operation per line, then give the "
                         "result between <answer> and </answer> tags.")
SMOLLM2_CHAT_EXAMPLES = (
    ("Calculate 12 + 7 - 5.", "12 + 7 = 19\n19 - 5 = 14\n<answer>14</answer>"),
    ("Calculate 30 - 45 + 8 - 2.", "30 - 45 = -15\n-15 + 8 = -7\n-7 - 2 = -9\n<answer>-9</answer>"),
)
MODIFIERS = ("dpo", "kto", "orm")


def chain_sums_task(c: config_dict.ConfigDict) -> None:
  """The chain-of-sums task (3 or 4 operands in 0..20) in place of the arithmetic task."""
  c.task = config_dict.ConfigDict(dict(name="chain_sums", num_train=8000, num_eval=256, max_value=20, min_terms=3,
                                       max_terms=4, max_prompt_length=16, max_completion_length=64))


def smollm2_chain_task(cpu: bool) -> config_dict.ConfigDict:
  """configs/grpo_smollm2.py (its `cpu` variant when `cpu`) on multi-step chains: reasoning-gym
  `basic_arithmetic` with three one-digit terms and + / -, one operation per line (the chat
  examples show the format), sampled at temperature 0.7."""
  c = grpo_smollm2.get_config("cpu" if cpu else None)
  c.task.dataset_config = config_dict.ConfigDict(dict(
      min_terms=3, max_terms=3, min_digits=1, max_digits=1, operators=("+", "-"), allow_parentheses=False,
      allow_negation=False))
  c.task.num_train = 2000  # of about 4,000 distinct problems: the held-out ones stay unseen
  c.task.num_eval = 32 if cpu else 256
  c.task.system_prompt = SMOLLM2_SYSTEM_PROMPT
  c.task.chat_examples = SMOLLM2_CHAT_EXAMPLES
  c.task.max_prompt_length = 192  # rendered prompts are 168-175 tokens
  c.task.max_completion_length = 40 if cpu else 64  # a worked chain and its answer are about 25 tokens
  c.rollout.temperature = 0.7
  if cpu:
    c.rollout.prompts_per_step, c.rollout.group_size = 2, 4
  return c


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  base, modifiers = variants.split(variant, "configs/implicit_prm.py", VARIANTS, MODIFIERS, exclusive=(MODIFIERS,))
  c = _base(base or None)
  for name in modifiers:
    if name == "orm":
      c.objective.name = "outcome_rm_bce"
      c.roles = config_dict.ConfigDict(dict(orm=dict(kind="value", init="policy", trainable=True,
                                                     objective="outcome_rm_bce", lr=c.roles.prm.lr,
                                                     options=config_dict.ConfigDict())))
      c.reward_model.role = "orm"
    else:
      c.objective.name = c.roles.prm.objective = f"implicit_prm_{name}"
  return c


def _base(variant: str | None) -> config_dict.ConfigDict:
  if variant in ("smollm2", "smollm2_cpu"):
    c = smollm2_chain_task(cpu=variant == "smollm2_cpu")
  else:
    c = grpo_arithmetic.get_config("tiny" if variant in ("tiny", "chain_sums_tiny") else None)
    c.rewards.names = ("arithmetic_correctness",)
    c.rewards.weights = (1.0,)
  c.stages = ("sft", "reward_model")
  c.objective.name = "implicit_prm_ce"
  c.roles.prm = config_dict.ConfigDict(dict(kind="lm", init="policy", trainable=True, objective="implicit_prm_ce",
                                            lr=1e-4, options=config_dict.ConfigDict()))
  c.reward_model = config_dict.ConfigDict()
  c.reward_model.role = "prm"
  c.reward_model.steps = 100
  c.reward_model.eval_every = 50
  c.reward_model.data = "samples"  # or "solution_pairs": the positive control (see `control`)
  if variant in (None, ""):
    c.task.num_eval = 64
  elif variant == "tiny":
    c.model.name = "micro"
    c.reward_model.steps = 3
    c.reward_model.eval_every = 0
    c.task.num_eval = 8
  elif variant == "chain_sums":
    chain_sums_task(c)
    c.warmup.steps = 600  # the warmed-up `mini` policy solves about 30% greedy, 20% sampled: mixed outcomes
    c.task.num_eval = 64
  elif variant == "chain_sums_tiny":
    chain_sums_task(c)
    c.model.name = "micro"
    c.task.num_train, c.task.num_eval = 512, 8
    c.reward_model.steps = 3
    c.reward_model.eval_every = 0
  elif variant in ("control", "control_tiny"):
    chain_sums_task(c)
    c.reward_model.data = "solution_pairs"
    c.rollout.prompts_per_step, c.rollout.group_size = 32, 2  # one (worked, flawed) pair of 32 problems a step
    if variant == "control":
      c.warmup.steps = 600  # chain_sums' warm-up: its policy's samples are the Best-of-N candidates
      c.task.num_eval = 64
    else:
      c.model.name = "micro"
      c.task.num_train, c.task.num_eval = 512, 32
      c.reward_model.steps = 3
      c.reward_model.eval_every = 0
  elif variant in ("smollm2", "smollm2_cpu"):
    c.stages = ("reward_model",)  # the pretrained instruct model is the policy: no warm-up
    c.roles.prm.lr = 1e-6  # PRIME's PRM learning rate for 7B models; the mini model's 1e-4 drifts
    c.reward_model.steps = 200
    if variant == "smollm2_cpu":
      c.reward_model.steps, c.reward_model.eval_every = 2, 2
      c.checkpoint_every = 2
  else:
    raise ValueError(f"unknown variant {variant!r} of configs/implicit_prm.py; known: {VARIANTS}")
  return c
