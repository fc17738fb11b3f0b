"""PRIME: online RL with an implicit PRM updated from the verifier's outcomes (Cui et al., arXiv 2502.01456).

Stages: supervised warm-up of the `mini` policy on worked chain sums (as `configs/implicit_prm.py:chain_sums`),
then RL. Each RL step samples `group_size` solutions for each of `prompts_per_step` problems,
scores them with the verifier (outcome rewards) and with the `prm` role (an implicit PRM,
initialised from the warmed-up policy, whose reference is that policy: per-token rewards
beta log pi_prm / pi_ref, the `implicit_prm` in-jit reward), drops the groups whose accuracy is
outside [0.2, 0.8] (`rewards.accuracy_filter`), updates the PRM with the cross-entropy loss on
the outcomes, builds advantages with leave-one-out baselines per source (`advantage.estimator =
"prime"`: 5 x process + 5 x outcome, whitened) and updates the policy with the clipped loss.

The PRM scores a batch before it is updated on that batch (PRIME's `update="after"`, one
forward pass); PRIME's default `update="before"` (update first, then score again) is not built.

    python -m experiments.train --config=configs/prime.py --workdir=/tmp/prime

Variants: (none) the chain-sums run on 2 CPU cores; tiny: seconds, for tests. Modifier `rloo`
(after a comma: `tiny,rloo`): the outcome-only baseline, the same run without the PRM (RLOO
advantages of the verifier's reward, the same accuracy filter), i.e. equal samples.
"""
from ml_collections import config_dict

from configs import implicit_prm
from configs import variants

VARIANTS = ("tiny",)
MODIFIERS = ("rloo",)
PRM_BETA = 0.05  # PRIME's beta_train and the reward's beta
PRM_LR = 1e-5  # the PRM's learning rate (PRIME: 1e-6 for 7B models; see REPRODUCTIONS.md, implicit_prm)


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  base, modifiers = variants.split(variant, "configs/prime.py", VARIANTS, MODIFIERS)
  c = implicit_prm.get_config("chain_sums_tiny" if base == "tiny" else "chain_sums")
  c.stages = ("sft", "rl")
  del c.reward_model  # the PRM trains inside the RL stage
  c.objective.name = "grpo"
  c.objective.options = config_dict.ConfigDict()
  c.roles.prm = config_dict.ConfigDict(dict(kind="lm", init="policy", trainable=True, objective="implicit_prm_ce",
                                            lr=PRM_LR, options=config_dict.ConfigDict(dict(beta=PRM_BETA))))
  c.rewards.names = ("arithmetic_correctness", "implicit_prm")
  c.rewards.weights = (1.0, 1.0)
  c.rewards.options = config_dict.ConfigDict(dict(implicit_prm=dict(beta=PRM_BETA)))
  c.rewards.accuracy_filter = (0.2, 0.8)
  c.advantage.estimator = "prime"
  c.advantage.options = config_dict.ConfigDict(dict(process_coef=5.0, outcome_coef=5.0))
  c.train.steps = 100 if base == "" else 4
  c.eval.every = 25 if base == "" else 2
  for name in modifiers:
    c.roles = config_dict.ConfigDict()
    c.rewards.names, c.rewards.weights = ("arithmetic_correctness",), (1.0,)
    c.rewards.options = config_dict.ConfigDict()
    c.advantage.estimator = "rloo"
    c.advantage.options = config_dict.ConfigDict()
  return c
