"""Tests for jaxrl_reward/logprobs.py."""
import re

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from jaxrl_reward import logprobs as lp
from models import transformer as tf


def np_logp_entropy(hidden, w, targets, temperature):
  """float64 numpy reference: log_softmax(h W / temperature)[y] and entropy."""
  z = np.einsum("btd,dv->btv", hidden.astype(np.float64), w.astype(np.float64)) / temperature
  z = z - z.max(-1, keepdims=True)
  logz = np.log(np.exp(z).sum(-1))
  logp_all = z - logz[..., None]
  logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(-1)
  return logp, entropy


def random_inputs(b=2, t=13, d=8, v=50, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(b, t, d)).astype(np.float32)
  w = rng.normal(size=(d, v)).astype(np.float32)
  targets = rng.integers(0, v, (b, t))
  mask = (rng.random((b, t)) < 0.7).astype(np.int32)
  return hidden, w, targets, mask


class TokenLogprobsTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1.0, 4), (0.7, 5), (1.3, 128))
  def test_values_match_reference(self, temperature, chunk_size):
    hidden, w, targets, mask = random_inputs()
    fn = self.variant(lambda h, w, y, m: lp.token_logprobs(
        h, w, y, temperature=temperature, chunk_size=chunk_size, return_entropy=True, mask=m))
    logp, ent = fn(hidden, w, targets, mask)
    want_logp, want_ent = np_logp_entropy(hidden, w, targets, temperature)
    self.assertEqual(logp.dtype, jnp.float32)
    np.testing.assert_allclose(logp, want_logp * mask, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, want_ent * mask, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(logp)[mask == 0], 0.0)
    # Without a mask every position is filled, and logp alone is returned.
    alone = lp.token_logprobs(hidden, w, targets, temperature=temperature, chunk_size=chunk_size)
    np.testing.assert_allclose(alone, want_logp, atol=1e-5, rtol=1e-5)

  def test_naive_matches_reference(self):
    hidden, w, targets, mask = random_inputs()
    logits = jnp.einsum("btd,dv->btv", hidden, w)
    logp, ent = lp.naive_token_logprobs(logits, targets, temperature=0.7, return_entropy=True)
    want_logp, want_ent = np_logp_entropy(hidden, w, targets, 0.7)
    np.testing.assert_allclose(logp, want_logp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, want_ent, atol=1e-5, rtol=1e-5)

  @parameterized.parameters((1.0, 4), (0.6, 5))
  def test_gradients_match_naive(self, temperature, chunk_size):
    hidden, w, targets, mask = random_inputs(seed=1)
    rng = np.random.default_rng(2)
    c1, c2 = rng.normal(size=(2,) + targets.shape).astype(np.float32)

    def objective(fn):
      def f(h, w):
        logp, ent = fn(h, w)
        return jnp.sum(c1 * logp * mask) + jnp.sum(c2 * ent * mask)
      return jax.jit(jax.grad(f, argnums=(0, 1)))

    lean = objective(lambda h, w: lp.token_logprobs(
        h, w, targets, temperature=temperature, chunk_size=chunk_size, return_entropy=True))
    naive = objective(lambda h, w: lp.naive_token_logprobs(
        jnp.einsum("btd,dv->btv", h, w), targets, temperature=temperature,
        return_entropy=True))
    for got, want in zip(lean(hidden, w), naive(hidden, w)):
      self.assertGreater(float(jnp.max(jnp.abs(want))), 1e-3)
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)

  @hypothesis.settings(max_examples=8, deadline=None)
  @hypothesis.given(t=st.integers(1, 9), chunk_size=st.integers(1, 12))
  def test_chunk_size_does_not_change_result(self, t, chunk_size):
    hidden, w, targets, _ = random_inputs(b=1, t=t, d=4, v=7, seed=t)
    got = lp.token_logprobs(hidden, w, targets, chunk_size=chunk_size)
    want, _ = np_logp_entropy(hidden, w, targets, 1.0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  def test_errors(self):
    hidden, w, targets, _ = random_inputs()
    with self.assertRaisesRegex(ValueError, "temperature"):
      lp.token_logprobs(hidden, w, targets, temperature=0.0)
    with self.assertRaisesRegex(ValueError, "targets"):
      lp.token_logprobs(hidden, w, targets[:, :3])
    with self.assertRaisesRegex(ValueError, "unembedding"):
      lp.token_logprobs(hidden, w.T, targets)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("chunk_size", [None, 64])  # one chunk (the loop disappears), four
def test_bfloat16_gradients_run_on_cpu_and_match_reference(chunk_size, tied):
  """bfloat16 hidden states, float32 weight (tied: the transposed [V, D] table), gradients
  for both. These failed at run time on XLA:CPU when the products took bfloat16 operands
  (a product in a layout only a generic kernel takes, which has no bfloat16 case)."""
  rng = np.random.default_rng(4)
  b, t, d, v = 2, 256, 64, 256
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(d, v)) * 0.2, jnp.float32)
  weight = w.T if tied else w
  targets = rng.integers(0, v, (b, t))
  dh, dweight = jax.jit(jax.grad(lambda h, wt: jnp.sum(lp.token_logprobs(
      h, wt.T if tied else wt, jnp.asarray(targets), chunk_size=chunk_size)),
      argnums=(0, 1)))(hidden, weight)
  dw = dweight.T if tied else dweight
  assert (dh.dtype, dw.dtype) == (jnp.bfloat16, jnp.float32)
  h64 = np.asarray(hidden, np.float64)
  w64 = np.asarray(w.astype(jnp.bfloat16), np.float64)
  logits = h64 @ w64
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  dz = np.eye(v)[targets] - probs
  np.testing.assert_allclose(dw, np.einsum("btd,btv->dv", h64, dz), rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(dh, np.float64), dz @ w64.T, rtol=2e-2, atol=2e-2)


def test_vocab_chunk_for_bounds_the_block():
  assert lp.vocab_chunk_for(4096, 151936) == lp.DEFAULT_BLOCK_ELEMENTS // 4096  # 2,048 columns
  assert lp.vocab_chunk_for(1, 100) == 100  # never more than V
  assert lp.vocab_chunk_for(10**9, 151936) == 128  # never fewer than 128
  assert lp.vocab_chunk_for(10**9, 50) == 50


def test_float32_unembedding_gradient_is_summed_in_float32_under_bf16_compute():
  """float32 parameters, bfloat16 hidden states (the trainer's bf16 setting): the weight
  gradient, a sum over 2,048 rows, must be accumulated and returned in float32."""
  rng = np.random.default_rng(0)
  b, t, d, v = 2, 1024, 64, 256
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(d, v)) * 0.3, jnp.float32)
  targets = rng.integers(0, v, (b, t))
  h64 = np.asarray(hidden, np.float64)
  w64 = np.asarray(w.astype(jnp.bfloat16), np.float64)  # the matmul sees bf16 weights
  logits = h64 @ w64
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  onehot = np.eye(v)[targets]
  expected = np.einsum("btd,btv->dv", h64, onehot - probs)  # d/dW sum log p(target)
  grad = jax.jit(jax.grad(lambda w: jnp.sum(lp.token_logprobs(hidden, w, jnp.asarray(targets),
                                                                chunk_size=16))))(w)
  assert grad.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(grad, np.float64) - expected) / np.linalg.norm(expected)
  assert rel < 4e-3, rel


def _big_f32_buffers(hlo_text, min_elements):
  """Shapes f32[...] in HLO text with at least min_elements elements."""
  out = []
  for dims in re.findall(r"f32\[([0-9,]+)\]", hlo_text):
    shape = tuple(int(x) for x in dims.split(","))
    if np.prod(shape) >= min_elements:
      out.append(shape)
  return out


class MemoryTest(parameterized.TestCase):

  def test_lean_path_never_builds_full_logits(self):
    b, t, d, v, chunk = 2, 256, 16, 512, 16
    hidden, w, targets, _ = random_inputs(b=b, t=t, d=d, v=v)
    full = b * t * v  # elements of [B, T, V]; a chunk has B * T * chunk = full / 32

    def lean_loss(h, w):
      logp, ent = lp.token_logprobs(h, w, targets, chunk_size=chunk, return_entropy=True)
      return jnp.sum(logp) + jnp.sum(ent)

    def naive_loss(h, w):
      logp, ent = lp.naive_token_logprobs(jnp.einsum("btd,dv->btv", h, w), targets,
                                          return_entropy=True)
      return jnp.sum(logp) + jnp.sum(ent)

    reports = {}
    for name, loss in (("lean", lean_loss), ("naive", naive_loss)):
      for what, fn in (("fwd", loss), ("grad", jax.grad(loss, argnums=(0, 1)))):
        compiled = jax.jit(fn).lower(hidden, w).compile()
        stats = compiled.memory_analysis()
        temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
        reports[name, what] = (_big_f32_buffers(compiled.as_text(), full), temp)
    for what in ("fwd", "grad"):
      lean_buffers, lean_temp = reports["lean", what]
      naive_buffers, naive_temp = reports["naive", what]
      self.assertEmpty(lean_buffers, what)
      self.assertNotEmpty(naive_buffers, what)
      if lean_temp is not None and naive_temp is not None:
        self.assertLess(lean_temp, full * 4, what)
        self.assertGreaterEqual(naive_temp, full * 4, what)


def make_model(**overrides):
  config = tf.get_config("micro", initializer_range=0.3, **overrides)
  return tf.Transformer(config, rngs=nnx.Rngs(0))


class CompletionLogprobsTest(parameterized.TestCase):

  @parameterized.parameters(1.0, 0.7)
  def test_matches_full_logits(self, temperature):
    model = make_model()
    prompt = jnp.asarray([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    prompt_mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    comp = jnp.asarray([[9, 10, 11, 0], [12, 13, 14, 15]])
    comp_mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]])
    got, ent = jax.jit(lambda m, *a: lp.completion_logprobs(
        m, *a, temperature=temperature, chunk_size=3, return_entropy=True))(
            model, prompt, prompt_mask, comp, comp_mask)
    # Reference: each row alone, unpadded, full logits.
    forward = jax.jit(lambda m, ids: m(ids))
    for row in range(2):
      real = np.asarray(prompt[row])[np.asarray(prompt_mask[row], bool)]
      n = int(comp_mask[row].sum())
      seq = jnp.asarray(np.concatenate([real, np.asarray(comp[row, :n])]))[None]
      logits = forward(model, seq)[0, len(real) - 1:-1]  # [n, V]
      want = jax.nn.log_softmax(logits / temperature)
      want_ent = -jnp.sum(jnp.exp(want) * want, -1)
      want = want[jnp.arange(n), comp[row, :n]]
      np.testing.assert_allclose(got[row, :n], want, atol=1e-5)
      np.testing.assert_allclose(ent[row, :n], want_ent, atol=1e-5)
      np.testing.assert_array_equal(got[row, n:], 0.0)

  def test_right_padded_prompt_equals_left_padded(self):
    model = make_model(qk_norm=True)
    left = jnp.asarray([[0, 0, 5, 6, 7]])
    right = jnp.asarray([[5, 6, 7, 0, 0]])
    comp, comp_mask = jnp.asarray([[9, 10]]), jnp.asarray([[1, 1]])
    a = lp.completion_logprobs(model, left, jnp.asarray([[0, 0, 1, 1, 1]]), comp, comp_mask)
    b = lp.completion_logprobs(model, right, jnp.asarray([[1, 1, 1, 0, 0]]), comp, comp_mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    self.assertTrue(bool(jnp.all(a < 0)))

  def test_left_align(self):
    ids = jnp.asarray([[5, 6, 7, 0, 0], [0, 1, 2, 3, 4], [0, 8, 9, 0, 0], [0, 0, 0, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    got_ids, got_mask = lp.left_align(ids, mask)
    np.testing.assert_array_equal(
        got_ids, [[0, 0, 5, 6, 7], [0, 1, 2, 3, 4], [0, 0, 0, 8, 9], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        got_mask, [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])


if __name__ == "__main__":
  pytest.main([__file__])
