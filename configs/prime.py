"""PRIME: online RL with an implicit PRM updated from the verifier's outcomes (Cui et al., arXiv 2502.01456).

Stages: supervised warm-up of the `mini` policy on worked chain sums (as `configs/implicit_prm.py:chain_sums`),
then RL. Each RL step samples `group_size` solutions for each of `prompts_per_step` problems,
scores them with the verifier (outcome rewards) and with the `prm` role (an implicit PRM,
initialised from the warmed-up policy, whose reference is that policy: per-token rewards
beta log pi_prm / pi_ref, the `implicit_prm` in-jit reward), drops the groups whose accuracy is
outside [0.2, 0.8] (`rewards.accuracy_filter`), updates the PRM with the cross-entropy loss on
the outcomes, normalises the PRM's token scores over the batch as PRIME's reward-model worker does
(`advantage.options.process_norm = "batch_norm"`, `objectives.prime.prime_norm`: scores / (max
|reverse cumulative sum| + 1e-6); the estimator's registry default is "none"), builds advantages
with leave-one-out baselines per source (`advantage.estimator = "prime"`: 5 x process + 5 x
outcome, whitened) and updates the policy with the clipped loss. Each RL batch logs the PRM's
online pair accuracy (`stats/prm_pair_accuracy`, before its update on the batch).

Scoring order. PRIME's recipe defaults to `update: before` ("``before`` for double-forward,
``after`` for single-forward", verl `recipe/prime/config/prime_trainer.yaml`): the PRM is updated
on the batch first and the batch is then scored with the updated PRM. This config's default is the
other order, PRIME's `update="after"` (one forward pass: the PRM scores the batch before it is
updated on it); modifier `update_first` (`roles.prm.score_after_update=True`) gives PRIME's
default `update="before"`.

    python -m experiments.train --config=configs/prime.py --workdir=/tmp/prime

Variants: (none) the chain-sums run on 2 CPU cores; tiny: seconds, for tests; smollm2: the
real-model variant for one GPU, SmolLM2-135M-Instruct on reasoning-gym chains worked one operation
per line (`configs/implicit_prm.py`'s `smollm2_chain_task`; no warm-up, PRM lr 1e-6, 200 RL steps
of 32 problems x 8 samples), and smollm2_cpu its 2-step smoke run on 2 CPU cores. Modifier `rloo`
(after a comma: `tiny,rloo`): the outcome-only baseline, the same run without the PRM (RLOO
advantages of the verifier's reward, the same accuracy filter), i.e. equal samples; `update_first`
(`tiny,update_first`): PRIME's update-before order (above). One variant at most, first; `rloo` and
`update_first` conflict (`rloo` has no PRM to update first); a name twice is an error.
"""
from ml_collections import config_dict

from configs import implicit_prm
from configs import variants

VARIANTS = ("tiny", "smollm2", "smollm2_cpu")
MODIFIERS = ("rloo", "update_first")
PRM_BETA = 0.05  # PRIME's beta_train and the reward's beta
PRM_LR = 1e-5  # the PRM's learning rate (PRIME: 1e-6 for 7B models; see REPRODUCTIONS.md, implicit_prm)
SMOLLM2_PRM_LR = 1e-6


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  base, modifiers = variants.split(variant, "configs/prime.py", VARIANTS, MODIFIERS, exclusive=(MODIFIERS,))
  smollm2 = base.startswith("smollm2")
  c = implicit_prm.get_config(base if smollm2 else "chain_sums_tiny" if base == "tiny" else "chain_sums")
  c.stages = ("rl",) if smollm2 else ("sft", "rl")
  del c.reward_model  # the PRM trains inside the RL stage
  c.objective.name = "grpo"
  c.objective.options = config_dict.ConfigDict()
  c.roles.prm = config_dict.ConfigDict(dict(kind="lm", init="policy", trainable=True, objective="implicit_prm_ce",
                                            lr=SMOLLM2_PRM_LR if smollm2 else PRM_LR,
                                            options=config_dict.ConfigDict(dict(beta=PRM_BETA))))
  verifier = c.rewards.eval_name
  c.rewards.names = (verifier, "implicit_prm")
  c.rewards.weights = (1.0, 1.0)
  c.rewards.options = config_dict.ConfigDict(dict(implicit_prm=dict(beta=PRM_BETA)))
  c.rewards.accuracy_filter = (0.2, 0.8)
  c.advantage.estimator = "prime"
  c.advantage.options = config_dict.ConfigDict(dict(process_coef=5.0, outcome_coef=5.0, process_norm="batch_norm"))
  c.train.steps = {"": 100, "smollm2": 200}.get(base, 4)
  c.eval.every = {"": 25, "smollm2": 50}.get(base, 2)
  if base == "smollm2_cpu":
    c.train.steps = c.eval.every = c.checkpoint_every = 2
  for name in modifiers:
    if name == "update_first":
      c.roles.prm.score_after_update = True
      continue
    c.roles = config_dict.ConfigDict()
    c.rewards.names, c.rewards.weights = (verifier,), (1.0,)
    c.rewards.options = config_dict.ConfigDict()
    c.advantage.estimator = "rloo"
    c.advantage.options = config_dict.ConfigDict()
  return c
