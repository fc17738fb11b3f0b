"""Tests for jaxrl_reward/sampling.py (micro config, float32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from flax import nnx

from jaxrl_reward import logprobs as lp
from jaxrl_reward import sampling
from models import transformer as tf

N = 6
PROMPTS = jnp.asarray([[0, 0, 0, 5, 6, 7],
                       [1, 2, 3, 4, 5, 6],
                       [0, 0, 0, 0, 9, 2]])
PROMPT_MASK = jnp.asarray([[0, 0, 0, 1, 1, 1],
                           [1, 1, 1, 1, 1, 1],
                           [0, 0, 0, 0, 1, 1]])


def setUpModule():
  global MODEL, GRAPHDEF, PARAMS, GREEDY
  config = tf.get_config("micro", initializer_range=0.3)
  MODEL = tf.Transformer(config, rngs=nnx.Rngs(0))
  GRAPHDEF, PARAMS = nnx.split(MODEL, nnx.Param)
  GREEDY = sampling.make_sampler(GRAPHDEF, max_new_tokens=N, temperature=0.0)


@jax.jit
def _teacher_forced(params, prompts, prompt_mask, tokens, mask, temperature):
  model = nnx.merge(GRAPHDEF, params)
  return lp.completion_logprobs(model, prompts, prompt_mask, tokens, mask,
                                temperature=temperature)


def teacher_forced(prompts, prompt_mask, out, temperature):
  """completion_logprobs on the sampled tokens (temperature is traced: one compile)."""
  return _teacher_forced(PARAMS, prompts, prompt_mask, out.tokens, out.mask,
                         jnp.float32(temperature))


class SamplingTest(parameterized.TestCase):

  @parameterized.parameters(dict(temperature=0.7, top_k=0), dict(temperature=1.0, top_k=5))
  def test_logprobs_match_teacher_forcing(self, temperature, top_k):
    sampler = sampling.make_sampler(GRAPHDEF, max_new_tokens=N, temperature=temperature,
                                    top_k=top_k, eos_id=3)
    out = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(1))
    self.assertEqual(out.tokens.shape, (3, N))
    self.assertEqual(out.tokens.dtype, jnp.int32)
    self.assertEqual(out.logprobs.dtype, jnp.float32)
    want = teacher_forced(PROMPTS, PROMPT_MASK, out, temperature)
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4)
    # Full (untruncated) distribution: log-probs are < 0 even though top-k cut it.
    self.assertTrue(bool(jnp.all(jnp.where(out.mask == 1, out.logprobs < 0, True))))

  def test_greedy_logprobs_at_temperature_one(self):
    out = GREEDY(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    np.testing.assert_allclose(out.logprobs, teacher_forced(PROMPTS, PROMPT_MASK, out, 1.0),
                               atol=1e-4)
    np.testing.assert_array_equal(out.mask, 1)

  def test_eos_stops_and_masks(self):
    free = GREEDY(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    free_tokens = np.asarray(free.tokens)
    eos = int(free_tokens[0, 2])
    pad = -1
    sampler = sampling.make_sampler(GRAPHDEF, max_new_tokens=N, temperature=0.0, eos_id=eos,
                                    pad_id=pad)
    out = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    for row in range(3):
      hits = np.flatnonzero(free_tokens[row] == eos)
      length = hits[0] + 1 if hits.size else N  # up to and including EOS
      np.testing.assert_array_equal(tokens[row, :length], free_tokens[row, :length])
      np.testing.assert_array_equal(tokens[row, length:], pad)
      np.testing.assert_array_equal(mask[row], np.arange(N) < length)
      np.testing.assert_array_equal(np.asarray(out.logprobs)[row, length:], 0.0)
    self.assertLessEqual(np.flatnonzero(free_tokens[0] == eos)[0], 2)
    # A batch whose rows all stopped leaves the loop early; the rest is padding.
    alone = sampler(PARAMS, PROMPTS[:1], PROMPT_MASK[:1], jax.random.key(0))
    np.testing.assert_array_equal(alone.tokens, tokens[:1])
    np.testing.assert_array_equal(alone.mask, mask[:1])
    np.testing.assert_allclose(
        out.logprobs, teacher_forced(PROMPTS, PROMPT_MASK, out, 1.0), atol=1e-4)

  def test_determinism(self):
    sampler = sampling.make_sampler(GRAPHDEF, max_new_tokens=N, temperature=1.0)
    a = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(7))
    b = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(7))
    c = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(8))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    self.assertFalse(np.array_equal(a.tokens, c.tokens))
    # Right-padding the same prompts gives exactly the same samples.
    right, right_mask = right_pad(PROMPTS, PROMPT_MASK)
    d = sampler(PARAMS, right, right_mask, jax.random.key(7))
    np.testing.assert_array_equal(d.tokens, a.tokens)
    np.testing.assert_allclose(d.logprobs, a.logprobs, atol=1e-6)

  def test_ragged_batch_equals_prompts_alone(self):
    batch = GREEDY(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    for row in (0, 2):
      real = PROMPTS[row][PROMPT_MASK[row] == 1][None]
      alone = GREEDY(PARAMS, real, jnp.ones_like(real), jax.random.key(0))
      np.testing.assert_array_equal(alone.tokens[0], batch.tokens[row])
      np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[row], atol=1e-5)

  def test_right_padded_equals_left_padded_greedy(self):
    right, right_mask = right_pad(PROMPTS, PROMPT_MASK)
    a = GREEDY(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    b = GREEDY(PARAMS, right, right_mask, jax.random.key(0))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)

  @parameterized.parameters(dict(top_k=1), dict(top_p=1e-6))
  def test_truncation_to_one_token_is_greedy(self, top_k=0, top_p=1.0):
    greedy = GREEDY(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(0))
    sampler = sampling.make_sampler(GRAPHDEF, max_new_tokens=N, temperature=1.0, top_k=top_k,
                                    top_p=top_p)
    out = sampler(PARAMS, PROMPTS, PROMPT_MASK, jax.random.key(3))
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-5)

  def test_empirical_distribution_with_top_k(self):
    b, k, temperature = 4000, 3, 0.5
    prompts = jnp.tile(PROMPTS[1:2], (b, 1))
    out = jax.jit(lambda m, ids, key: sampling.sample(
        m, ids, jnp.ones_like(ids), key, max_new_tokens=1, temperature=temperature, top_k=k))(
            MODEL, prompts, jax.random.key(0))
    logits = np.asarray(MODEL(PROMPTS[1:2])[0, -1], np.float64) / temperature
    top = np.argsort(-logits)[:k]
    probs = np.exp(logits[top] - logits[top].max())
    probs /= probs.sum()
    counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=64)
    self.assertEqual(counts[top].sum(), b)  # nothing outside the top k
    np.testing.assert_allclose(counts[top] / b, probs, atol=0.04)
    self.assertGreater(probs.min(), 0.02)  # the test distinguishes the k tokens

  def test_filter_logits(self):
    logits = jnp.log(jnp.asarray([[0.5, 0.05, 0.3, 0.15]]))
    inf = -np.inf
    np.testing.assert_array_equal(
        np.isinf(sampling.filter_logits(logits, top_k=2)), [[False, True, False, True]])
    # Nucleus: 0.5 < 0.7, then 0.5 + 0.3 >= 0.7 -> keep {0.5, 0.3}.
    got = sampling.filter_logits(logits, top_p=0.7)
    np.testing.assert_array_equal(np.asarray(got) == inf, [[False, True, False, True]])
    got = sampling.filter_logits(logits, top_p=0.85)
    np.testing.assert_array_equal(np.asarray(got) == inf, [[False, True, False, False]])
    np.testing.assert_array_equal(sampling.filter_logits(logits), logits)

  def test_option_errors(self):
    for kwargs, name in ((dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
                         (dict(top_k=-2), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")):
      options = {"max_new_tokens": 2, **kwargs}
      with self.assertRaisesRegex(ValueError, name):
        sampling.make_sampler(GRAPHDEF, **options)


def right_pad(ids, mask):
  """Moves each row's real tokens to the front."""
  order = jnp.argsort(1 - mask, axis=1, stable=True)
  return jnp.take_along_axis(ids, order, 1), jnp.take_along_axis(mask, order, 1)


if __name__ == "__main__":
  absltest.main()
