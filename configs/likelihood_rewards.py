"""Likelihood rewards: the policy's own log-prob of the reference answer as the reward.

After the supervised warm-up of the default experiment (flawed demonstrations: 60% end with
an answer off by +1), each RL step samples a chain of thought per completion, cuts it after
the answer marker `####`, splices the reference answer (and EOS) in place of what the policy
wrote, and rewards the chain of thought with the policy's likelihood of that answer
(`jaxrl_reward/rewards/likelihood.py`; kinds logprob, avg_logprob, prob, avg_prob, rlpr).
The objective is the likelihood paper's full gradient (arXiv 2602.03979): an RL term on the
chain of thought with RLOO advantages plus an SFT term on the reference answer
(`objectives.logprob_rewards.likelihood_objective`). No verifier is used for training; the
verifier (`rewards.eval_name`) only measures held-out accuracy, and
`eval/answer_perplexity` measures the reference answers' perplexity after greedy chains of
thought.

    python -m experiments.train --config=configs/likelihood_rewards.py --workdir=/tmp/likelihood

Choose the reward kind or the advantage estimator from the command line:

    --config.rewards.options.likelihood.kind=prob          # VeriFree
    --config.rewards.options.likelihood.kind=rlpr --config.rewards.std_filter_beta=0.5   # RLPR
    --config.advantage.estimator=jepo                       # JEPO (kind logprob)

or use the `verifier` variant for the binary verifier reward.

Variants (`--config=configs/likelihood_rewards.py:VARIANT`):
  (none)   the arithmetic task, about 3 minutes on 2 CPU cores.
  tiny     a few steps of each stage, for tests (under a minute).
  long     the long-answer task (`arithmetic_long`): the reference answer is one of four
           phrasings of a sentence ending with the result, so exact match fails a correct
           policy three times in four; accuracy is the sentence's last integer.
  verifier, long_verifier
           the baselines: the binary verifier reward (exact answer; exact sentence on the
           long task) with the same RLOO advantages and the GRPO loss, on-policy.
  smollm2  SmolLM2-135M-Instruct on reasoning-gym `basic_arithmetic` with a short chain of
           thought before the `<answer>` tag, for one GPU (see configs/grpo_smollm2.py for the
           model folder); `smollm2_cpu` is its smoke run on 2 CPU cores.
One variant at a time: each sets the task, the scale and the reward together, so two (e.g.
`tiny,long`; `long_tiny` is that one) are an error naming both.
"""
from ml_collections import config_dict

from configs import grpo_arithmetic, grpo_smollm2
from configs import variants

VARIANTS = ("tiny", "long", "long_tiny", "verifier", "long_verifier", "smollm2", "smollm2_cpu")

SMOLLM2_SYSTEM_PROMPT = ("You are a careful calculator. Think briefly, then give only the result between "
                         "<answer> and </answer> tags.")
SMOLLM2_CHAT_EXAMPLES = (
    ("Calculate 12 + 39.", "12 + 39: 2 + 9 = 11, carry 1; 1 + 3 + 1 = 5. <answer>51</answer>"),
    ("Calculate 7 - 9.", "7 - 9 is negative: 9 - 7 = 2. <answer>-2</answer>"),
)


def _likelihood(c: config_dict.ConfigDict, *, max_answer_tokens: int) -> config_dict.ConfigDict:
  c.rewards.names = ("likelihood",)
  c.rewards.weights = (1.0,)
  c.rewards.options = config_dict.ConfigDict({"likelihood": dict(kind="logprob", max_answer_tokens=max_answer_tokens)})
  c.advantage.estimator = "rloo"
  c.objective.name = "likelihood"
  c.train.num_iterations = 1  # the RL term is plain REINFORCE: on-policy
  c.train.num_minibatches = 1
  c.eval.answer_perplexity = True
  return c


def get_config(variant: str | None = None) -> config_dict.ConfigDict:
  variant, _ = variants.split(variant, "configs/likelihood_rewards.py", VARIANTS, ())
  if variant.startswith("smollm2"):
    c = grpo_smollm2.get_config("cpu" if variant == "smollm2_cpu" else None)
    c.task.system_prompt = SMOLLM2_SYSTEM_PROMPT
    c.task.chat_examples = SMOLLM2_CHAT_EXAMPLES
    c.task.max_prompt_length = 192
    c.task.max_completion_length = 32 if variant == "smollm2_cpu" else 96
    _likelihood(c, max_answer_tokens=12)  # "-38</answer><|im_end|>"
    return c

  c = grpo_arithmetic.get_config("tiny" if variant in ("tiny", "long_tiny") else None)
  _likelihood(c, max_answer_tokens=8)  # " -198" and EOS at most
  long = variant in ("long", "long_tiny", "long_verifier")
  if long:
    c.task.name = "arithmetic_long"
    c.task.max_completion_length = 68  # the longest solution is 65 characters, then EOS
    c.rewards.options.likelihood.max_answer_tokens = 36  # " " + 34 characters + EOS
    c.rewards.eval_name = "long_answer_result"
  if variant in ("verifier", "long_verifier"):  # the baseline: the binary verifier reward, same estimator
    c.rewards.names = ("long_answer_exact",) if long else ("arithmetic_correctness",)
    c.rewards.options = config_dict.ConfigDict()
    c.objective.name = "grpo"
  if variant in ("", "long", "verifier", "long_verifier"):
    c.train.steps = 200
  else:  # tiny, long_tiny
    c.train.num_iterations = 1
    c.train.num_minibatches = 1
    # Four warm-up steps teach no marker yet: score the answer after the whole completion.
    c.rewards.options.likelihood.no_marker = "append"
  return c
