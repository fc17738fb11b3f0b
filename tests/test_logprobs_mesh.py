"""token_logprobs under a mesh with the vocabulary sharded over `tensor` (8 fake CPU devices).

The lean (chunked) and naive (full-logit) paths must give the same log-probs, entropies and
gradients with respect to the hidden states and the unembedding, untied ([D, V] weight) and
tied (embedding.T of a [V, D] table), with padding masks and temperature != 1. The compiled,
partitioned lean function must also never hold a per-device [B, T, V] float32 buffer, while
the naive one does.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrl_reward import logprobs as lp
from jaxrl_reward import sharding

MESH_AXES = (("data", 2), ("fsdp", 1), ("tensor", 4))
RULES = sharding.merge_rules(())


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices; tests/conftest.py sets them")
  return sharding.make_mesh(MESH_AXES)


def np_reference(hidden, w, targets, temperature):
  """float64 numpy: log_softmax(h W / temperature)[y] and the entropy."""
  z = np.einsum("btd,dv->btv", hidden.astype(np.float64), w.astype(np.float64)) / temperature
  z = z - z.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
  return logp, -(np.exp(logp_all) * logp_all).sum(-1)


def inputs(b, t, d, v, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(b, t, d)).astype(np.float32)
  w = (rng.normal(size=(d, v)) / np.sqrt(d) * 3).astype(np.float32)
  targets = rng.integers(0, v, (b, t)).astype(np.int32)
  lengths = rng.integers(1, t + 1, b)
  lengths[0] = t  # one full row, the others padded
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  return hidden, w, targets, mask


def place(mesh, hidden, weight, targets, mask, *, tied):
  """Rows over `data`; the vocabulary over `tensor` ([D, V] untied, [V, D] tied)."""
  rows = NamedSharding(mesh, P("data"))
  weight_spec = P("tensor", None) if tied else P(None, "tensor")
  return (jax.device_put(hidden, NamedSharding(mesh, P("data", None, None))),
          jax.device_put(weight, NamedSharding(mesh, weight_spec)),
          jax.device_put(targets, rows), jax.device_put(mask, rows))


def make_fns(mesh, *, tied, temperature, chunk_size, coeffs):
  """(lean, naive): (hidden, weight, targets, mask) -> ((logp, entropy), (d hidden, d weight))."""
  c1, c2 = coeffs

  def outputs(impl):
    def fn(hidden, weight, targets, mask):
      unembedding = weight.T if tied else weight  # [D, V]
      with sharding.activate(mesh, RULES):
        if impl == "lean":
          return lp.token_logprobs(hidden, unembedding, targets, temperature=temperature,
                                   chunk_size=chunk_size, return_entropy=True, mask=mask)
        logits = jnp.einsum("btd,dv->btv", hidden, unembedding)  # [B, T, V]
        logits = sharding.constrain(logits, ("act_batch", None, "act_vocab"))
        return lp.naive_token_logprobs(logits, targets, temperature=temperature,
                                       return_entropy=True, mask=mask)

    def loss(hidden, weight, targets, mask):
      logp, ent = fn(hidden, weight, targets, mask)
      return jnp.sum(c1 * logp) + jnp.sum(c2 * ent)

    grads = jax.grad(loss, argnums=(0, 1))
    return jax.jit(lambda *a: (fn(*a), grads(*a)))

  return outputs("lean"), outputs("naive")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_lean_equals_naive_under_mesh(mesh, tied):
  b, t, d, v, temperature, chunk_size = 4, 13, 16, 48, 0.7, 4  # T % chunk != 0: padded chunk
  hidden, w, targets, mask = inputs(b, t, d, v, seed=int(tied))
  weight = np.ascontiguousarray(w.T) if tied else w  # tied: the [V, D] embedding table
  rng = np.random.default_rng(7)
  coeffs = rng.normal(size=(2, b, t)).astype(np.float32)
  lean, naive = make_fns(mesh, tied=tied, temperature=temperature, chunk_size=chunk_size,
                         coeffs=coeffs)
  args = place(mesh, hidden, weight, targets, mask, tied=tied)
  first = [np.asarray(x) for x in jax.tree.leaves(lean(*args))]
  (lean_logp, lean_ent), lean_grads = lean(*args)
  (naive_logp, naive_ent), naive_grads = naive(*args)

  # Values: both paths against a float64 reference, zero on padding.
  want_logp, want_ent = np_reference(hidden, w, targets, temperature)
  for got in (lean_logp, naive_logp):
    np.testing.assert_allclose(got, want_logp * mask, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[mask == 0], 0.0)
  for got in (lean_ent, naive_ent):
    # logZ - E[z] in float32 loses about 1e-5 absolute on peaked rows.
    np.testing.assert_allclose(got, want_ent * mask, atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(lean_ent, naive_ent, atol=2e-5, rtol=1e-5)
  assert (mask == 0).any() and (mask == 1).any()

  # Gradients with respect to hidden and the (tied or untied) weight.
  for got, want in zip(lean_grads, naive_grads):
    assert got.shape == want.shape
    assert float(jnp.max(jnp.abs(want))) > 1e-3
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  # Padded positions get no gradient.
  np.testing.assert_array_equal(np.asarray(lean_grads[0])[mask == 0], 0.0)

  # The same numbers as one device without a mesh (up to the order of the sharded sums).
  single = jax.jit(lambda h, w_, y, m: lp.token_logprobs(
      h, w_.T if tied else w_, y, temperature=temperature, chunk_size=chunk_size,
      return_entropy=True, mask=m))(hidden, weight, targets, mask)
  np.testing.assert_allclose(lean_logp, single[0], atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(lean_ent, single[1], atol=1e-4, rtol=1e-5)
  # Deterministic under the mesh.
  for a, b_ in zip(first, jax.tree.leaves(lean(*args))):
    np.testing.assert_array_equal(a, b_)


def _f32_shapes(hlo_text):
  return [tuple(int(x) for x in dims.split(",")) for dims in re.findall(r"f32\[([0-9,]+)\]", hlo_text)]


def test_partitioned_lean_path_never_holds_full_logits(mesh):
  b, t, d, v, chunk_size = 4, 384, 16, 512, 8
  hidden, w, targets, mask = inputs(b, t, d, v, seed=3)
  coeffs = np.ones((2, b, t), np.float32)
  args = place(mesh, hidden, w, targets, mask, tied=False)
  # Per device: B/2 rows and V/4 vocabulary entries; a lean block is B/2 x T rows by one
  # chunk of `chunk_size` vocabulary columns.
  local_logits = (b // 2) * t * (v // 4)
  local_chunk = (b // 2) * t * chunk_size
  lean, naive = make_fns(mesh, tied=False, temperature=1.3, chunk_size=chunk_size, coeffs=coeffs)
  stats = {}
  for name, fn in (("lean", lean), ("naive", naive)):
    compiled = fn.lower(*args).compile()
    shapes = _f32_shapes(compiled.as_text())
    memory = compiled.memory_analysis()
    stats[name] = (shapes, None if memory is None else memory.temp_size_in_bytes)

  lean_shapes, lean_temp = stats["lean"]
  naive_shapes, naive_temp = stats["naive"]
  assert not [s for s in lean_shapes if np.prod(s) >= local_logits]
  assert [s for s in naive_shapes if np.prod(s) >= local_logits]
  # Apart from the weight-shaped gradient, no float32 buffer is larger than the local hidden
  # states [B/2, T, D] or one vocabulary chunk of the local rows.
  local_hidden = (b // 2) * t * d
  assert max(np.prod(s) for s in lean_shapes if s != (d, v)) <= max(local_chunk, local_hidden)
  assert any(np.prod(s) == local_chunk and s[-1] == chunk_size for s in lean_shapes), lean_shapes
  # Only the weight-shaped gradient [D, V] spans the whole vocabulary (it is gathered over
  # `tensor`; a weight-sized cost, not a logits-sized one).
  assert not [s for s in lean_shapes if v in s and s != (d, v)], "float32 logits over all of V"
  if lean_temp is not None and naive_temp is not None:
    assert lean_temp < local_logits * 4 <= naive_temp
