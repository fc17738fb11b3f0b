"""Reward functions, selectable by name (`get_reward("arithmetic_correctness")`).

Importing this package registers the built-in rewards:

- "arithmetic_correctness": 1.0 when the final answer equals the `answer` column.
- "format": 1.0 when the completion follows the arithmetic worked-solution format.
- "math_verify": 1.0 when the final answer is symbolically equal to `answer` (math-verify).
- "reasoning_gym": the reasoning-gym dataset's own `score_answer` of the `<answer>` tag.
- "long_answer_exact" / "long_answer_result": exact match of the long final answer / its last
  integer against the `result` column (the `arithmetic_long` task).

In-jit rewards (`model_rewards`, `likelihood`) register when `rewards.scoring` is imported.
"""
from jaxrl_reward.rewards import arithmetic, base  # noqa: F401
from jaxrl_reward.rewards import format  # noqa: F401,A004  (the submodule; registers "format")
from jaxrl_reward.rewards import long_answer, math_verify_reward, reasoning_gym_reward  # noqa: F401  (register)
from jaxrl_reward.rewards.arithmetic import arithmetic_correctness, extract_final_answer
from jaxrl_reward.rewards.base import (
    RewardFn,
    completion_text,
    compute_rewards,
    get_reward,
    register_reward,
    reward_names,
)
from jaxrl_reward.rewards.format import SOLUTION_PATTERN, format_reward, matches_format

__all__ = [
    "RewardFn",
    "SOLUTION_PATTERN",
    "arithmetic_correctness",
    "completion_text",
    "compute_rewards",
    "extract_final_answer",
    "format_reward",
    "get_reward",
    "matches_format",
    "register_reward",
    "reward_names",
]
