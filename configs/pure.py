"""PURE: RL on a process reward model's rewards with min-form credit (Cheng et al., arXiv 2504.15275).

Stages: supervised warm-up of the `mini` policy on worked chain sums, then an implicit PRM trained
from the verifier's outcome labels of the policy's samples (the reward-model stage of
`configs/implicit_prm.py:chain_sums`, with its own objective `reward_model.objective`), then RL in
which that PRM is frozen and its per-token rewards beta log pi_prm / pi_ref are the reward. Credit:

- min-form (default; `advantage.estimator = "pure"`, as PURE's code): the PRM's token rewards are
  summed into step rewards at the step ends (`Task.step_ends`, carried into the rollout as a
  step-end mask; the last step ends at the last token), each step reward is weighted by
  softmax(-r / T) over the completion's steps (a soft minimum, PURE's remedy for reward hacking),
  PURE's token baseline is subtracted, the verifier's RLOO reward is added at the end and a KL
  penalty of 1e-3 (PURE's `--init_kl_coef 0.001`, k1 in the reward) on every token. T is 0.1 x
  the std of the batch's step rewards (`temperature_scale="batch_std"`): PURE's T = 0.1 is for
  rewards in [-1, 1], while the implicit PRM's rewards are about 1e-3, where an absolute 0.1 makes
  the weights uniform (mean-form). `stats/min_form_weight_entropy` (1.0 = uniform) shows whether
  the transform is in effect;
- sum-form (modifier `sum`; the `prime` estimator on the process rewards, leave-one-out baselines,
  gamma 1): the return is the sum of the process rewards that follow, the usual credit.

Modifier `verified`: the verifier's outcome reward is added on 10% of the problems
(`rewards.verified_fraction`), PURE's best setting. To fine-tune from the PRM of an earlier run
instead of training one, pass `--config.stages='("rl",)' --config.init_from=<that run>`.

    python -m experiments.train --config=configs/pure.py --workdir=/tmp/pure
    python -m experiments.train --config=configs/pure.py:sum,verified --workdir=/tmp/pure_sum_verified

Variants: (none) the chain-sums run on 2 CPU cores; tiny: seconds, for tests; smollm2: the
real-model variant for one GPU, SmolLM2-135M-Instruct on reasoning-gym chains worked one operation
per line (`configs/implicit_prm.py`'s `smollm2_chain_task`; no warm-up, 200 PRM steps then 200 RL
steps of 32 problems x 8 samples), and smollm2_cpu its smoke run (2 + 2 steps) on 2 CPU cores.
One variant at most, first; the modifiers `sum` and `verified` combine (they set different keys); a
name twice is an error.
"""
from ml_collections import config_dict

from configs import implicit_prm
from configs import variants

VARIANTS = ("tiny", "smollm2", "smollm2_cpu")
MODIFIERS = ("sum", "verified")
PRM_BETA = 0.05
PRM_LR = 1e-5  # as the implicit_prm reproduction's PRMs
VERIFIED_FRACTION = 0.1
KL_COEF = 1e-3  # PURE's train_pure.sh: --init_kl_coef 0.001 (KL in the reward, OpenRLHF)


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  base, modifiers = variants.split(variant, "configs/pure.py", VARIANTS, MODIFIERS)
  smollm2 = base.startswith("smollm2")
  c = implicit_prm.get_config(base if smollm2 else "chain_sums_tiny" if base == "tiny" else "chain_sums")
  c.stages = ("reward_model", "rl") if smollm2 else ("sft", "reward_model", "rl")
  c.reward_model.objective = "implicit_prm_ce"
  c.reward_model.options = config_dict.ConfigDict(dict(beta=PRM_BETA))
  c.roles.prm = config_dict.ConfigDict(dict(kind="lm", init="policy", trainable=False, objective="implicit_prm_ce",
                                            lr=c.roles.prm.lr if smollm2 else PRM_LR,
                                            options=config_dict.ConfigDict()))
  c.objective.name = "grpo"
  c.objective.options = config_dict.ConfigDict()
  c.rewards.names, c.rewards.weights = ("implicit_prm",), (1.0,)
  c.rewards.options = config_dict.ConfigDict(dict(implicit_prm=dict(beta=PRM_BETA)))
  c.advantage.estimator = "pure"
  c.advantage.options = config_dict.ConfigDict(dict(temperature=0.1, temperature_scale="batch_std", outcome_coef=1.0,
                                                    kl_coef=KL_COEF, baseline="token"))
  c.train.steps = {"": 100, "smollm2": 200}.get(base, 2)
  c.eval.every = {"": 25, "smollm2": 50}.get(base, 2)
  for name in modifiers:
    if name == "sum":
      c.advantage.estimator = "prime"
      c.advantage.options = config_dict.ConfigDict(dict(process_coef=1.0, outcome_coef=1.0))
    else:
      c.rewards.names, c.rewards.weights = (c.rewards.eval_name, "implicit_prm"), (1.0, 1.0)
      c.rewards.verified_fraction = VERIFIED_FRACTION
  return c
