"""Character-level tokenizer for the synthetic tasks, as a `transformers` fast tokenizer.

Built with the `tokenizers` library and wrapped in `transformers.PreTrainedTokenizerFast`,
so the engine handles it exactly like a real Hugging Face tokenizer (`tokenizer(...)`,
`pad_token_id`, `eos_token_id`, `decode`, `save_pretrained` / `AutoTokenizer.from_pretrained`).

- Model: `WordLevel` over single characters; the pre-tokenizer isolates every character
  (`Split` on the regex `[\\s\\S]`), so each character is one token.
- Special tokens: `<pad>` = 0, `<bos>` = 1, `<eos>` = 2, `<unk>` = 3 (any character outside
  `CHARACTERS`). `tokenizer(text)` prepends `<bos>` (a `TemplateProcessing` post-processor);
  pass `add_special_tokens=False` for targets.
- Decoding concatenates tokens with no separator (`decoders.Fuse`; WordLevel's default
  would insert spaces) and `clean_up_tokenization_spaces=False`, so
  `decode(encode(s), skip_special_tokens=True) == s` for every string over `CHARACTERS`.
"""
from __future__ import annotations

import os
import string

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
CHARACTERS = string.digits + " \n+-*/=()#:;,.?!<>_|%" + string.ascii_lowercase


def build_arithmetic_tokenizer(characters: str = CHARACTERS):
  """Returns a character-level `PreTrainedTokenizerFast` (vocab: 4 special tokens + `characters`).

  Args:
    characters: the characters of the vocabulary, in id order starting at 4; duplicates
      are not allowed.
  """
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  if len(set(characters)) != len(characters) or any(len(ch) != 1 for ch in characters):
    raise ValueError(f"characters must be distinct single characters, got characters={characters!r}")
  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(characters))}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token=PAD,
      bos_token=BOS,
      eos_token=EOS,
      unk_token=UNK,
      clean_up_tokenization_spaces=False,
  )


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
  """Writes `tokenizer` to `directory` (created if needed) with `save_pretrained`."""
  os.makedirs(directory, exist_ok=True)
  tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory_or_name: str | os.PathLike):
  """Loads a tokenizer saved by `save_tokenizer`, or any HF tokenizer, with `AutoTokenizer`."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(directory_or_name))
