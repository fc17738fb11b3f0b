"""Tests for the character-level tokenizer (jaxrl_reward/data/tokenizer.py)."""
import pytest
from transformers import AutoTokenizer

from jaxrl_reward.data.arithmetic import make_splits
from jaxrl_reward.data.tokenizer import CHARACTERS, build_arithmetic_tokenizer, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return build_arithmetic_tokenizer()


def test_special_ids_and_vocab(tokenizer):
  assert tokenizer.pad_token_id == 0
  assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<bos>", "<eos>")
  assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
  assert len(tokenizer) < 64
  assert len(tokenizer) == 4 + len(CHARACTERS)
  assert tokenizer.convert_ids_to_tokens([4, 5]) == ["0", "1"]


def test_one_token_per_character_and_bos(tokenizer):
  ids = tokenizer("47+38=")["input_ids"]
  assert ids[0] == tokenizer.bos_token_id
  assert tokenizer.convert_ids_to_tokens(ids[1:]) == list("47+38=")
  assert tokenizer("47+38=", add_special_tokens=False)["input_ids"] == ids[1:]


def test_round_trip_is_exact_on_task_text(tokenizer):
  train, held_out = make_splits(seed=0, num_train=500, num_eval=100, num_operands=3)
  texts = [ex["prompt"] + ex["solution"] for ex in train + held_out]
  texts += ["a b  c", " leading and trailing ", "x , y . z ? !", "line\nbreak", "#### -12"]
  for text in texts:
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids
  batch = tokenizer(texts[:8], add_special_tokens=False)["input_ids"]
  assert tokenizer.batch_decode(batch) == texts[:8]


def test_unknown_characters_map_to_unk(tokenizer):
  ids = tokenizer("A", add_special_tokens=False)["input_ids"]
  assert ids == [tokenizer.unk_token_id]


def test_save_load_round_trip(tokenizer, tmp_path):
  save_tokenizer(tokenizer, tmp_path / "tok")
  for loaded in (load_tokenizer(tmp_path / "tok"), AutoTokenizer.from_pretrained(str(tmp_path / "tok"))):
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    text = "38-47=-(47-38) 17-8-0=9 4-3-1=0 #### -9"
    ids = loaded(text)["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_invalid_characters():
  with pytest.raises(ValueError, match="characters"):
    build_arithmetic_tokenizer("aab")
