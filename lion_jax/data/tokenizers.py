"""Tokenizers of LION without `transformers`: FlanT5's SentencePiece and the Q-Former's BERT WordPiece.

Both reproduce the HF tokenizers that LION uses, id for id, so checkpoints and prompts carry over:

- `T5Tokenizer` = HF `T5TokenizerFast` of `google/flan-t5-*`, run on the `sentencepiece` package alone.
  HF splits the raw text on its added tokens (`<pad>`, `</s>`, `<unk>`, `<extra_id_N>`) before
  normalising, and tokenises every piece between them on its own, as if it began a text: outer
  whitespace dropped, a "▁" prefixed. So "to <extra_id_0>, you" is `▁to`, `<extra_id_0>`, then the
  tokens of "▁, you": a "▁" appears after the sentinel although the text has no space there, and the
  space before the sentinel is lost. SentencePiece's own `encode` of each piece gives exactly that.
- `BertTokenizer` = HF `BertTokenizerFast(do_lower_case=True)` of `bert-base-uncased` with LAVIS's
  extra bos token `[DEC]`, built from the same `tokenizers` components HF uses.

Truncation cuts the content and keeps the special tokens, as HF does with `truncation=True`. The
batch methods pad to a fixed `max_length`, so a jitted step sees one shape and compiles once; with
`return_lengths` they also give each text's untruncated length, so a caller can count what was cut.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from etils import epath
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from lion_jax.errors import MissingFile, UserError

TRUNCATION_SIDES = ("left", "right")
SPACE_PIECE = "▁"  # SentencePiece's (and HF Metaspace's) marker for a preceding space
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BERT_DEC_TOKEN = "[DEC]"
LENGTH_BUCKET = 32  # untruncated texts are padded to a multiple of this (bucketed_length)


def _truncate(content: list[int], max_length: int | None, num_special: int, truncation_side: str) -> list[int]:
  """Keeps at most `max_length - num_special` content ids, cut from `truncation_side` (HF semantics)."""
  if truncation_side not in TRUNCATION_SIDES:
    raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}, got {truncation_side!r}")
  if max_length is None:
    return content
  budget = max_length - num_special
  if budget < 0:
    raise ValueError(f"max_length={max_length} leaves no room for the {num_special} special token(s)")
  if len(content) <= budget:
    return content
  return content[len(content) - budget :] if truncation_side == "left" else content[:budget]


def pad_batch(rows: list[list[int]], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads to exactly `max_length` so every batch has the same shape."""
  ids = np.full((len(rows), max_length), pad_id, np.int32)
  mask = np.zeros((len(rows), max_length), np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
    mask[i, : len(row)] = 1
  return ids, mask


def bucketed_length(n: int, minimum: int = LENGTH_BUCKET) -> int:
  """The padded length of `n` ids that are not truncated: `minimum`, or the next multiple of
  LENGTH_BUCKET above it, so that prompts of any length compile only a few shapes."""
  return max(minimum, -(-n // LENGTH_BUCKET) * LENGTH_BUCKET)


def _check_batch(texts: Sequence[str]) -> None:
  if isinstance(texts, str):
    raise TypeError("encode_batch takes a sequence of strings; use encode for a single string")


def _batch(
  rows: list[list[int]], full_lengths: list[int], max_length: int, pad_id: int, return_lengths: bool
) -> tuple[np.ndarray, ...]:
  """(ids, mask), plus the untruncated lengths [len(rows)] int32 when `return_lengths`."""
  ids, mask = pad_batch(rows, max_length, pad_id)
  return (ids, mask, np.asarray(full_lengths, np.int32)) if return_lengths else (ids, mask)


class T5Tokenizer:
  """FlanT5's tokenizer: SentencePiece ids, then `num_extra_ids` sentinels counted down from the top.

  Ids follow the SentencePiece model (pad 0, eos 1, unk 2); `<extra_id_N>` is
  `sp_size + num_extra_ids - 1 - N`, so `<extra_id_0>` is 32099 with the real 32000-piece vocab.
  """

  def __init__(self, model_file: str | os.PathLike, num_extra_ids: int = 100):
    path = epath.Path(model_file)  # local or a bucket
    try:
      proto = path.read_bytes()
    except FileNotFoundError:
      raise MissingFile(f"T5 SentencePiece model not found: {path}") from None
    except OSError as e:
      raise OSError(f"cannot read T5 SentencePiece model {path}: {e}") from e
    self._load(proto, num_extra_ids, source=str(path))

  @classmethod
  def from_proto(cls, proto: bytes, num_extra_ids: int = 100) -> T5Tokenizer:
    """Builds the tokenizer from a serialized model (e.g. one trained in memory)."""
    tokenizer = cls.__new__(cls)
    tokenizer._load(proto, num_extra_ids, source="<in-memory model proto>")
    return tokenizer

  def _load(self, proto: bytes, num_extra_ids: int, source: str) -> None:
    if num_extra_ids < 0:
      raise ValueError(f"num_extra_ids must be >= 0, got {num_extra_ids}")
    self._sp = spm.SentencePieceProcessor()
    try:  # not model_proto=: that silently skips loading an empty proto
      self._sp.LoadFromSerializedProto(proto)
    except (RuntimeError, TypeError) as e:
      raise UserError(f"not a valid SentencePiece model: {source}: {e}") from e
    layout = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id())
    if layout != (0, 1, 2):
      raise UserError(f"{source}: (pad, eos, unk) ids are {layout}, but T5 needs (0, 1, 2)")
    self._sp_size = self._sp.get_piece_size()
    self._num_extra_ids = num_extra_ids
    # HF's added tokens: they are matched in the raw text, longest first, and never split further.
    self._special_ids = {self._sp.id_to_piece(i): i for i in layout}
    self._special_ids.update({f"<extra_id_{n}>": self.sentinel_id(n) for n in range(num_extra_ids)})
    alternatives = sorted(self._special_ids, key=len, reverse=True)
    self._special_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

  @property
  def vocab_size(self) -> int:
    return self._sp_size + self._num_extra_ids

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def sentinel_id(self, n: int = 0) -> int:
    if not 0 <= n < self._num_extra_ids:
      raise ValueError(f"sentinel <extra_id_{n}> does not exist (num_extra_ids={self._num_extra_ids})")
    return self.vocab_size - 1 - n

  def _content(self, text: str) -> list[int]:
    parts = self._special_pattern.split(text)  # the capturing group puts special tokens at odd indices
    content: list[int] = []
    for i, part in enumerate(parts):
      content += [self._special_ids[part]] if i % 2 else self._sp.encode(part)
    return content

  def _finish(self, content: list[int], max_length: int | None, truncation_side: str, add_eos: bool) -> list[int]:
    content = _truncate(content, max_length, int(add_eos), truncation_side)
    return content + [self.eos_id] if add_eos else content

  def encode(
    self, text: str, *, max_length: int | None = None, truncation_side: str = "left", add_eos: bool = True
  ) -> list[int]:
    """Ids of `text`, with `</s>` last (kept by truncation) when `add_eos`."""
    return self._finish(self._content(text), max_length, truncation_side, add_eos)

  def encode_batch(
    self,
    texts: Sequence[str],
    *,
    max_length: int,
    truncation_side: str = "left",
    add_eos: bool = True,
    return_lengths: bool = False,
  ) -> tuple[np.ndarray, ...]:
    """(ids, mask), int32 [len(texts), max_length], right-padded with the pad id; with
    `return_lengths` also the lengths before truncation ([len(texts)], `</s>` included)."""
    _check_batch(texts)
    contents = [self._content(t) for t in texts]
    rows = [self._finish(c, max_length, truncation_side, add_eos) for c in contents]
    return _batch(rows, [len(c) + int(add_eos) for c in contents], max_length, self.pad_id, return_lengths)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids` as HF decodes it; pad and eos are always dropped, nothing stops at eos.

    With `skip_special_tokens`, `<unk>` and the sentinels are dropped too (HF treats them as special);
    otherwise they appear as `<unk>` / `<extra_id_N>`. Like HF's Metaspace decoder, "▁" becomes a
    space and only the first remaining token loses its leading space. Ids outside the vocabulary
    are dropped (`decode_counting` counts them).
    """
    return self.decode_counting(ids, skip_special_tokens)[0]

  def decode_counting(self, ids: Iterable[int], skip_special_tokens: bool = True) -> tuple[str, int]:
    """(`decode`'s text, the number of ids outside the vocabulary it dropped): any id sequence a model
    generates decodes, and the caller can report what was lost."""
    tokens, dropped = [], 0
    for token_id in map(int, ids):
      if not 0 <= token_id < self.vocab_size:
        dropped += 1
        continue
      if token_id in (self.pad_id, self.eos_id):
        continue
      is_sentinel = token_id >= self._sp_size
      if skip_special_tokens and (is_sentinel or token_id == self.unk_id):
        continue
      tokens.append(f"<extra_id_{self.vocab_size - 1 - token_id}>" if is_sentinel else self._sp.id_to_piece(token_id))
    text = "".join(tokens).replace(SPACE_PIECE, " ")
    return (text[1:] if text.startswith(" ") else text), dropped


class BertTokenizer:
  """The Q-Former's `bert-base-uncased` WordPiece plus LAVIS's `[DEC]` bos token (id = vocab size)."""

  def __init__(self, vocab_file: str | os.PathLike):
    path = epath.Path(vocab_file)  # local or a bucket
    try:
      with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    except FileNotFoundError:
      raise MissingFile(f"BERT WordPiece vocab not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
      raise OSError(f"cannot read BERT WordPiece vocab {path}: {e}") from e
    vocab: dict[str, int] = {}
    for index, line in enumerate(lines):  # one token a line, like HF's load_vocab
      token = line.rstrip("\n")
      if token in vocab:
        # HF would then give [DEC] an id that is already taken.
        raise UserError(f"{path}: duplicate token {token!r} on lines {vocab[token] + 1} and {index + 1}")
      vocab[token] = index
    missing = [t for t in BERT_SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise UserError(f"{path}: BERT vocab lacks the special tokens {missing}")

    self._tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    self._tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self._tokenizer.decoder = decoders.WordPiece(prefix="##")
    # As in HF, the special tokens are matched in the raw text; [DEC] is new, so it gets id len(vocab).
    self._tokenizer.add_special_tokens([*BERT_SPECIAL_TOKENS, BERT_DEC_TOKEN])
    self._tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
    )

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._tokenizer.token_to_id("[PAD]")

  @property
  def cls_id(self) -> int:
    return self._tokenizer.token_to_id("[CLS]")

  @property
  def sep_id(self) -> int:
    return self._tokenizer.token_to_id("[SEP]")

  @property
  def dec_id(self) -> int:
    return self._tokenizer.token_to_id(BERT_DEC_TOKEN)

  def encode(self, text: str, *, max_length: int | None = None, truncation_side: str = "left") -> list[int]:
    """`[CLS] content [SEP]`; truncation keeps both and cuts the content from `truncation_side`."""
    return self._finish(self._content(text), max_length, truncation_side)

  def _content(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def _finish(self, content: list[int], max_length: int | None, truncation_side: str) -> list[int]:
    return [self.cls_id, *_truncate(content, max_length, 2, truncation_side), self.sep_id]

  def encode_batch(
    self, texts: Sequence[str], *, max_length: int, truncation_side: str = "left", return_lengths: bool = False
  ) -> tuple[np.ndarray, ...]:
    """(ids, mask), int32 [len(texts), max_length], right-padded with `[PAD]`; with `return_lengths`
    also the lengths before truncation ([len(texts)], `[CLS]` and `[SEP]` included)."""
    _check_batch(texts)
    contents = [self._content(t) for t in texts]
    rows = [self._finish(c, max_length, truncation_side) for c in contents]
    return _batch(rows, [len(c) + 2 for c in contents], max_length, self.pad_id, return_lengths)


def train_t5_sentencepiece(
  sentences: Iterable[str],
  path_prefix: str | os.PathLike,
  vocab_size: int,
  user_defined_symbols: Sequence[str] = (),
  model_type: str = "unigram",
) -> Path:
  """Trains a tiny T5-layout SentencePiece model (pad 0, eos 1, unk 2, no bos) offline; returns the
  .model path. T5's own is unigram; on a small deduplicated corpus BPE finds whole words where
  unigram keeps fragments ("le", "f", "t" for "left").

  `hard_vocab_limit=False` lets a small corpus yield fewer pieces than asked instead of failing;
  `user_defined_symbols` are pieces of their own wherever they occur (counted in `vocab_size`).
  """
  prefix = Path(path_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences),
    model_prefix=str(prefix),
    vocab_size=vocab_size,
    model_type=model_type,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    hard_vocab_limit=False,
    num_threads=2,
    minloglevel=2,
    user_defined_symbols=list(user_defined_symbols) or None,
  )
  return prefix.parent / f"{prefix.name}.model"


def write_bert_vocab(words: Iterable[str], path: str | os.PathLike) -> Path:
  """Writes a small uncased WordPiece vocab: the specials, every single character and its `##`
  continuation (so any ASCII word tokenizes without [UNK]), then `words` lower-cased, each once."""
  singles = list(string.ascii_lowercase + string.digits + string.punctuation)
  tokens = dict.fromkeys([*BERT_SPECIAL_TOKENS, *singles, *(f"##{c}" for c in singles)])
  for word in words:
    if not word or any(c.isspace() for c in word):
      raise ValueError(f"a vocab word must be non-empty without whitespace, got {word!r}")
    tokens.setdefault(word.lower())
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
  return path
