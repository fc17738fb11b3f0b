"""Pure functional RL objectives over arrays. Importing the package registers them."""
from objectives import aggregation, registry  # noqa: F401
from objectives import advantages, grpo, kl  # noqa: F401
from objectives import ddpo, dpo, estimators, implicit_prm, logprob_rewards, outcome_rm, prime, rdp, value  # noqa: F401
