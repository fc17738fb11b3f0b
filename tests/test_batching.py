"""Tests for tokenisation into arrays and deterministic batching (jaxrl_reward/data/batching.py)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_reward.data.batching import (
    batch_indices,
    decode_completions,
    encode_prompts,
    encode_sft,
    repeat_for_groups,
)
from jaxrl_reward.data.tokenizer import build_arithmetic_tokenizer

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def tok():
  return build_arithmetic_tokenizer()


def _ids(tok, text):
  return tok(text, add_special_tokens=False)["input_ids"]


def test_encode_prompts_left_padding(tok):
  ids, mask = encode_prompts(tok, ["1+2=", "47+38="], max_length=8)
  assert ids.dtype == np.int32 and ids.shape == (2, 8) and mask.shape == (2, 8)
  np.testing.assert_array_equal(ids[0], [PAD, PAD, PAD, BOS] + _ids(tok, "1+2="))
  np.testing.assert_array_equal(mask[0], [0, 0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(ids[1], [PAD, BOS] + _ids(tok, "47+38="))
  np.testing.assert_array_equal(mask[1], [0, 1, 1, 1, 1, 1, 1, 1])


def test_encode_prompts_right_padding(tok):
  ids, mask = encode_prompts(tok, ["1+2=", "47+38="], max_length=7, padding_side="right")
  np.testing.assert_array_equal(ids[0], [BOS] + _ids(tok, "1+2=") + [PAD, PAD])
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(ids[1], [BOS] + _ids(tok, "47+38="))
  np.testing.assert_array_equal(mask[1], [1] * 7)


def test_encode_prompts_too_long(tok):
  with pytest.raises(ValueError, match="max_length=5"):
    encode_prompts(tok, ["47+38="], max_length=5)
  ids, mask = encode_prompts(tok, ["47+38="], max_length=5, truncate=True)
  np.testing.assert_array_equal(ids[0], _ids(tok, "7+38="))
  assert mask.all()
  with pytest.raises(ValueError, match="padding_side"):
    encode_prompts(tok, ["1="], max_length=5, padding_side="middle")


def test_encode_sft_masks(tok):
  out = encode_sft(tok, ["1+2=", "10+5="], ["3", "15"], max_length=10)
  assert set(out) == {"input_ids", "attention_mask", "loss_mask"}
  for value in out.values():
    assert value.shape == (2, 10) and value.dtype == np.int32
  row0 = [BOS] + _ids(tok, "1+2=") + _ids(tok, "3") + [EOS]
  np.testing.assert_array_equal(out["input_ids"][0], row0 + [PAD] * (10 - len(row0)))
  np.testing.assert_array_equal(out["attention_mask"][0], [1] * 7 + [0] * 3)
  np.testing.assert_array_equal(out["loss_mask"][0], [0] * 5 + [1, 1] + [0] * 3)
  np.testing.assert_array_equal(out["loss_mask"][1], [0] * 6 + [1, 1, 1] + [0])
  np.testing.assert_array_equal(out["input_ids"][1][out["loss_mask"][1] == 1], _ids(tok, "15") + [EOS])
  assert (out["loss_mask"] <= out["attention_mask"]).all()
  with pytest.raises(ValueError, match="max_length=8"):
    encode_sft(tok, ["10+5="], ["15"], max_length=8)
  with pytest.raises(ValueError, match="same length"):
    encode_sft(tok, ["1="], [], max_length=8)


def test_decode_completions_stops_at_mask(tok):
  ids = np.array([
      _ids(tok, "12") + [EOS] + _ids(tok, "999"),
      _ids(tok, "#### 5"),
      _ids(tok, "7") + [EOS, PAD, PAD, PAD, PAD],
  ], dtype=np.int32)
  mask = np.array([
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 1, 1],
      [1, 1, 0, 0, 0, 0],
  ])
  assert decode_completions(tok, ids, mask) == ["12", "#### 5", "7"]
  # Tokens after the first masked position are never decoded, even if the mask turns on again.
  mask2 = np.array([[1, 0, 1, 1, 1, 1]] * 3)
  assert decode_completions(tok, ids, mask2) == ["1", "#", "7"]


def test_batch_indices_deterministic_and_covering():
  a = batch_indices(10, 5, seed=0, step=3)
  b = batch_indices(10, 5, seed=0, step=3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(batch_indices(10, 5, seed=0, step=0), batch_indices(10, 5, seed=1, step=0))
  epoch = np.concatenate([batch_indices(10, 5, seed=0, step=s) for s in range(2)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
  next_epoch = np.concatenate([batch_indices(10, 5, seed=0, step=s) for s in range(2, 4)])
  np.testing.assert_array_equal(np.sort(next_epoch), np.arange(10))
  assert not np.array_equal(epoch, next_epoch)  # reshuffled each epoch


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 8), st.integers(0, 2**31 - 1), st.integers(0, 50))
def test_batch_indices_epoch_has_no_repeats(num_examples, batch_size, seed, epoch):
  batch_size = min(batch_size, num_examples)
  steps = num_examples // batch_size
  seen = np.concatenate([batch_indices(num_examples, batch_size, seed=seed, step=epoch * steps + s)
                         for s in range(steps)])
  assert len(seen) == steps * batch_size
  assert len(np.unique(seen)) == len(seen)
  assert ((0 <= seen) & (seen < num_examples)).all()


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
def test_process_slices_concatenate_to_global_batch(process_count):
  for step in range(5):
    whole = batch_indices(37, 8, seed=7, step=step)
    parts = [batch_indices(37, 8, seed=7, step=step, process_index=i, process_count=process_count)
             for i in range(process_count)]
    assert all(len(p) == 8 // process_count for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_batch_indices_errors():
  with pytest.raises(ValueError, match="process_count"):
    batch_indices(10, 5, seed=0, step=0, process_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    batch_indices(3, 5, seed=0, step=0)
  with pytest.raises(ValueError, match="process_index"):
    batch_indices(10, 4, seed=0, step=0, process_index=2, process_count=2)


def test_repeat_for_groups():
  assert repeat_for_groups(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]
  np.testing.assert_array_equal(repeat_for_groups(np.array([[1, 2], [3, 4]]), 2),
                                [[1, 2], [1, 2], [3, 4], [3, 4]])
  with pytest.raises(ValueError, match="group_size"):
    repeat_for_groups(["a"], 0)
