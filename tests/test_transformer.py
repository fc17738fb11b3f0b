"""Tests for models/transformer.py (micro config, float32)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

from models import transformer as tf

AXIS_NAMES = {"embed", "vocab", "mlp", "heads", "kv_heads", "head_dim", "norm", "layers"}


def make_model(seed=0, **overrides):
  config = tf.get_config("micro", initializer_range=0.3, **overrides)
  return tf.Transformer(config, rngs=nnx.Rngs(seed))


@jax.jit
def _forward(model, ids, mask):
  return model(ids, mask), model(ids, mask, return_hidden=True)


def run(model, ids, mask=None, return_hidden=False):
  """Jitted forward (eager op-by-op dispatch is slow on CPU)."""
  ids = jnp.asarray(ids)
  mask = jnp.ones_like(ids) if mask is None else jnp.asarray(mask)
  return _forward(model, ids, mask)[1 if return_hidden else 0]


def params_of(model):
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ----------------------------------------------------------------------------------------
# Independent numpy reference of the forward pass (HF Llama/Qwen conventions).


def np_rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_rope(x, pos, theta):  # x [T, heads, H], pos [T]
  h = x.shape[-1]
  inv = 1.0 / theta ** (np.arange(0, h, 2) / h)
  ang = pos[:, None] * inv[None]  # [T, H/2]
  emb = np.concatenate([ang, ang], -1)[:, None, :]
  rot = np.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1)
  return x * np.cos(emb) + rot * np.sin(emb)


def np_forward(params, config, ids):
  """Unpadded single sequence ids [T] -> logits [T, V] in float64."""
  c = config
  p = {k: v.astype(np.float64) for k, v in params.items()}
  t = len(ids)
  pos = np.arange(t, dtype=np.float64)
  x = p[("embed_tokens", "embedding")][ids]
  g = c.num_heads // c.num_kv_heads
  for i in range(c.num_layers):
    pre = ("layers", i)
    y = np_rms(x, p[pre + ("input_layernorm", "scale")], c.rms_norm_eps)
    q = np.einsum("td,dnh->tnh", y, p[pre + ("self_attn", "q_proj", "kernel")])
    k = np.einsum("td,dnh->tnh", y, p[pre + ("self_attn", "k_proj", "kernel")])
    v = np.einsum("td,dnh->tnh", y, p[pre + ("self_attn", "v_proj", "kernel")])
    if c.qkv_bias:
      q = q + p[pre + ("self_attn", "q_proj", "bias")]
      k = k + p[pre + ("self_attn", "k_proj", "bias")]
      v = v + p[pre + ("self_attn", "v_proj", "bias")]
    if c.qk_norm:
      q = np_rms(q, p[pre + ("self_attn", "q_norm", "scale")], c.rms_norm_eps)
      k = np_rms(k, p[pre + ("self_attn", "k_norm", "scale")], c.rms_norm_eps)
    q, k = np_rope(q, pos, c.rope_theta), np_rope(k, pos, c.rope_theta)
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # head n uses kv head n // g
    s = np.einsum("tnh,snh->nts", q, k) / np.sqrt(c.head_dim)
    s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    o = np.einsum("nts,snh->tnh", a, v)
    x = x + np.einsum("tnh,nhd->td", o, p[pre + ("self_attn", "o_proj", "kernel")])
    y = np_rms(x, p[pre + ("post_attention_layernorm", "scale")], c.rms_norm_eps)
    gate = y @ p[pre + ("mlp", "gate_proj", "kernel")]
    up = y @ p[pre + ("mlp", "up_proj", "kernel")]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ p[pre + ("mlp", "down_proj", "kernel")]
  x = np_rms(x, p[("norm", "scale")], c.rms_norm_eps)
  w = p[("embed_tokens", "embedding")].T if c.tie_word_embeddings else p[("lm_head", "kernel")]
  return x @ w


class TransformerTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("llama", {}),
      ("qwen2_bias_tied", dict(qkv_bias=True, tie_word_embeddings=True)),
      ("qwen3_qknorm", dict(qk_norm=True, rope_theta=1e6)),
  )
  def test_matches_numpy_reference(self, overrides):
    model = make_model(**overrides)
    params = params_of(model)
    for path in params:  # non-trivial biases and norm scales
      if path[-1] in ("bias", "scale"):
        params[path] = np.random.default_rng(len(path)).normal(1.0, 0.3, params[path].shape)
        nnx.update(model, nnx.from_flat_state({path: nnx.Param(jnp.asarray(params[path],
                                                                           jnp.float32))}))
    ids = np.array([3, 17, 42, 5, 9, 60, 1])
    got = run(model, jnp.asarray(ids)[None])[0]
    want = np_forward(params, model.config, ids)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_dtypes(self):
    model = make_model()
    graphdef, state = nnx.split(model)
    ids = jnp.ones((3, 5), jnp.int32)

    @self.variant
    def run(state, ids):
      m = nnx.merge(graphdef, state)
      cache = m.init_cache(3, 9)
      logits_c, cache = m(ids, cache=cache)
      return m(ids), m(ids, return_hidden=True), logits_c, cache

    logits, hidden, logits_c, cache = run(state, ids)
    chex.assert_shape(logits, (3, 5, 64))
    chex.assert_shape(hidden, (3, 5, 32))
    chex.assert_shape(logits_c, (3, 5, 64))
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_shape(cache.k + cache.v, (3, 2, 9, 8))
    self.assertEqual(int(cache.index), 5)
    np.testing.assert_array_equal(cache.key_mask[:, :5], True)
    np.testing.assert_array_equal(cache.key_mask[:, 5:], False)
    # The cache is a pytree (it crosses jit boundaries).
    self.assertLen(jax.tree_util.tree_leaves(cache), 2 * 2 + 2)  # k and v per layer, mask, index

  def test_cached_decoding_matches_full_forward_ragged_left_padded(self):
    model = make_model(qkv_bias=True)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 64, (3, 9)))
    mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 1, 1],
                        [1, 1, 1, 1, 1, 1, 1, 1, 1],
                        [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    full = run(model, ids, mask)  # [B, 9, V]
    step = jax.jit(lambda m, i, mk, c: m(i, mk, cache=c))
    cache = model.init_cache(3, 12)
    logits, cache = step(model, ids[:, :6], mask[:, :6], cache)  # prefill
    pieces = [logits]
    for t in range(6, 9):  # decode one token at a time
      logits, cache = step(model, ids[:, t:t + 1], mask[:, t:t + 1], cache)
      pieces.append(logits)
    cached = jnp.concatenate(pieces, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-4)
    self.assertEqual(int(cache.index), 9)
    np.testing.assert_array_equal(cache.key_mask[:, :9], real)

  def test_padding_does_not_change_real_logits(self):
    model = make_model()
    ids = jnp.asarray([[7, 3, 9, 11, 2]])
    alone = run(model, ids)[0]
    left = run(model, [[0, 0, 7, 3, 9, 11, 2]], [[0, 0, 1, 1, 1, 1, 1]])
    right = run(model, [[7, 3, 9, 11, 2, 5, 5]], [[1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_allclose(left[0, 2:], alone, atol=1e-5)
    np.testing.assert_allclose(right[0, :5], alone, atol=1e-5)
    # A fully padded row stays finite.
    empty = run(model, ids, jnp.zeros_like(ids))
    self.assertTrue(bool(jnp.all(jnp.isfinite(empty))))

  def test_causality(self):
    model = make_model()
    ids = jnp.asarray([[4, 8, 15, 16, 23, 42]])
    changed = ids.at[0, 3].set(50)
    a, b = run(model, ids), run(model, changed)
    np.testing.assert_array_equal(a[0, :3], b[0, :3])
    self.assertGreater(float(jnp.max(jnp.abs(a[0, 3:] - b[0, 3:]))), 1e-3)

  def test_tied_vs_untied(self):
    tied, untied = make_model(tie_word_embeddings=True), make_model()
    self.assertIsNone(tied.lm_head)
    np.testing.assert_array_equal(tied.unembedding(), tied.embed_tokens.embedding[...].T)
    n_tied = sum(x.size for x in params_of(tied).values())
    n_untied = sum(x.size for x in params_of(untied).values())
    self.assertEqual(n_untied - n_tied, 32 * 64)
    ids = jnp.asarray([[1, 2, 3]])
    before = run(untied, ids)
    untied.lm_head.kernel[...] = untied.lm_head.kernel[...] * 2.0
    np.testing.assert_allclose(run(untied, ids), 2.0 * before, rtol=1e-5)

  def test_qkv_bias_is_used(self):
    base, biased = make_model(), make_model(qkv_bias=True)
    nnx.update(biased, nnx.state(base, nnx.Param))  # same kernels, zero biases
    ids = jnp.asarray([[5, 6, 7, 8]])
    np.testing.assert_allclose(run(biased, ids), run(base, ids), atol=1e-6)
    attn = biased.layers[0].self_attn
    attn.k_proj.bias[...] = jnp.ones_like(attn.k_proj.bias[...])
    attn.v_proj.bias[...] = jnp.ones_like(attn.v_proj.bias[...])
    self.assertGreater(float(jnp.max(jnp.abs(run(biased, ids) - run(base, ids)))), 1e-3)

  def test_qk_norm_is_used(self):
    base, normed = make_model(), make_model(qk_norm=True)
    nnx.update(normed, nnx.state(base, nnx.Param))
    ids = jnp.asarray([[5, 6, 7, 8]])
    out = run(normed, ids)
    self.assertTrue(bool(jnp.all(jnp.isfinite(out))))
    self.assertGreater(float(jnp.max(jnp.abs(out - run(base, ids)))), 1e-3)
    # RMSNorm makes the output invariant to the scale of q_proj / k_proj kernels.
    for layer in normed.layers:
      layer.self_attn.q_proj.kernel[...] = layer.self_attn.q_proj.kernel[...] * 3.0
      layer.self_attn.k_proj.kernel[...] = layer.self_attn.k_proj.kernel[...] * 0.5
    np.testing.assert_allclose(run(normed, ids), out, atol=1e-4)

  @parameterized.parameters({}, dict(qkv_bias=True, qk_norm=True, tie_word_embeddings=True))
  def test_every_param_has_logical_axis_names(self, **overrides):
    model = make_model(**overrides)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    self.assertNotEmpty(flat)
    for path, var in flat:
      names = var.get_metadata().get("out_sharding")
      self.assertIsNotNone(names, path)
      self.assertLen(names, var[...].ndim, path)
      self.assertContainsSubset(set(names), AXIS_NAMES, path)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    self.assertEqual(tuple(specs["embed_tokens"]["embedding"].get_value()), ("vocab", "embed"))

  def test_bf16_compute_close_to_fp32(self):
    fp32 = make_model()
    bf16 = make_model(dtype="bfloat16")
    self.assertEqual(bf16.embed_tokens.embedding[...].dtype, jnp.float32)  # param_dtype
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    a, b = run(fp32, ids), run(bf16, ids)
    self.assertEqual(b.dtype, jnp.float32)
    self.assertEqual(run(bf16, ids, return_hidden=True).dtype, jnp.bfloat16)
    err = float(jnp.max(jnp.abs(a - b)))
    self.assertLess(err, 0.05 * float(jnp.max(jnp.abs(a))))
    self.assertGreater(err, 0.0)  # really computed in bf16

  def test_config_errors(self):
    self.assertEqual(tf.get_config("tiny", vocab_size=100).vocab_size, 100)
    self.assertEqual(tf.get_config("tiny").vocab_size, 64)
    with self.assertRaisesRegex(ValueError, "unknown config name 'huge'"):
      tf.get_config("huge")
    with self.assertRaisesRegex(ValueError, "hidden_sise"):
      tf.get_config("micro", hidden_sise=3)
    with self.assertRaisesRegex(ValueError, "num_kv_heads"):
      tf.get_config("micro", num_kv_heads=3)
    with self.assertRaisesRegex(ValueError, "dtype"):
      tf.get_config("micro", dtype="float8")

  def test_small_config_size(self):
    config = tf.get_config("small")
    model = nnx.eval_shape(lambda: tf.Transformer(config, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    self.assertBetween(n, 40e6, 60e6)


class MatmulTest(parameterized.TestCase):
  """models.transformer.matmul: products in the compute dtype, float32 accumulation."""

  def _inputs(self):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(96, 40)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(40, 24)) * 0.2, jnp.float32)
    g = jnp.asarray(rng.normal(size=(96, 24)), jnp.float32)  # output cotangent
    return x, w, g

  def test_float32_equals_plain_matmul_and_autodiff(self):
    x, w, g = self._inputs()
    y, vjp = jax.vjp(lambda x, w: tf.matmul(x, w, jnp.float32), x, w)
    want, want_vjp = jax.vjp(lambda x, w: x @ w, x, w)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    for got, ref in zip(vjp(g), want_vjp(g)):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

  def test_bfloat16_products_float32_gradients(self):
    x, w, g = self._inputs()
    y, vjp = jax.jit(lambda x, w: jax.vjp(lambda x, w: tf.matmul(x, w, jnp.bfloat16), x, w))(x, w)
    dx, dw = vjp(g.astype(jnp.bfloat16))
    self.assertEqual(y.dtype, jnp.bfloat16)
    # Gradients come back in the inputs' dtypes: float32 parameters get float32 gradients.
    self.assertEqual((dx.dtype, dw.dtype), (jnp.float32, jnp.float32))
    # Reference: float64 products of the bfloat16-rounded operands.
    r = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)
    xb, wb, gb = r(x), r(w), r(g)
    np.testing.assert_allclose(np.asarray(y, np.float64), xb @ wb, rtol=1e-2, atol=1e-2)
    # dw sums 96 products in float32: far closer to float64 than a bfloat16 result could be.
    np.testing.assert_allclose(dw, xb.T @ gb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gb @ wb.T, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(False, True)
  def test_bfloat16_model_gradients_close_to_float32(self, tied):
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 64, (3, 11)))

    def grads(dtype):
      graphdef, params, rest = nnx.split(make_model(dtype=dtype, tie_word_embeddings=tied),
                                         nnx.Param, ...)
      def loss(p):
        logits = nnx.merge(graphdef, p, rest)(ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
      return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

    for g16, g32 in zip(grads("bfloat16"), grads("float32")):
      self.assertEqual(g16.dtype, jnp.float32)  # float32 parameters, float32 gradients
      scale = float(jnp.max(jnp.abs(g32)))
      self.assertLess(float(jnp.max(jnp.abs(g16 - g32))), 0.1 * scale + 1e-6)


if __name__ == "__main__":
  pytest.main([__file__])
