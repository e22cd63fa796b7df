"""Parity of lion_jax.data.tokenizers with HF transformers, on tiny vocabularies trained here (offline).

HF builds its reference tokenizers from the very same files, so any difference in splitting, special
token handling, truncation or decoding shows up as an id mismatch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, train_t5_sentencepiece, write_bert_vocab
from tests.conftest import require

CORPUS = [
  "a photo of the cat riding a horse.",
  "Two dogs are playing with a red ball in the park.",
  "What is the man holding in his left hand?",
  "The woman in the blue dress is reading a book.",
  "How many people are standing near the bus stop?",
  "A plate of pasta with tomatoes and basil on a wooden table.",
  "Is there a clock on the wall? Yes, there is.",
  "The sky is cloudy and it looks like it will rain soon.",
  "Three children are building a sandcastle at the beach.",
  "What color is the car parked next to the fire hydrant?",
  "A man rides a bicycle down a busy city street.",
  "The kitchen has white cabinets, a sink and a microwave.",
  "Where is the cat sleeping? On the sofa.",
  "An airplane is taking off from the airport runway.",
  "Two giraffes eat leaves from the top of a tall tree.",
  "The baseball player swings his bat at the ball.",
  "A group of friends sit around a campfire at night.",
  "Is the traffic light red or green?",
  "The beagle is sniffing the grass near the fence.",
  "Please describe the image in detail.",
  "A bowl of fruit: apples, bananas, and oranges.",
  "The train is arriving at the station on time.",
  "Someone left an umbrella by the door.",
  "Which animal is bigger, the elephant or the zebra?",
  "The snowboarder jumps over a ramp on the mountain.",
  "A laptop, a phone and a cup of coffee are on the desk.",
  "Why is the boy wearing a helmet? He is skating.",
  "The chef cuts vegetables with a sharp knife.",
  "Four horses graze in a green field under the sun.",
  "The old bridge crosses a wide, slow river.",
  "Answer the question using a single word or phrase.",
  "There are 2 surfers waiting for a wave.",
  "The street sign says Main St. and 5th Ave.",
  "A teddy bear sits on a bed with striped sheets.",
  "Give the bounding box of the region this sentence describes.",
  "It's a sunny day; the kids can't wait to swim!",
  "The tennis player returns a fast serve.",
  "A vase of yellow flowers stands by the window.",
  "Is this photo taken indoors or outdoors?",
  "The motorcycle is parked beside a brick building.",
  "Several sheep are walking along a dirt road.",
  "The pizza has mushrooms, olives and cheese on it.",
  "A skier is going down the slope very quickly.",
  "Who is sitting on the bench in the park?",
  "The boat floats quietly on the calm lake.",
  "A little girl flies a kite on a windy hill.",
  "The man's shirt is striped and his tie is red.",
  "Short answer: yes or no?",
  "Traffic was heavy on the highway this morning.",
  "Zoom in on the black and white photograph of 1984.",
  "The tags of this image are [dog, park, ball].",
]
TAG_PROMPT = "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. "
LION_PROMPT = TAG_PROMPT.format("airport, beagle, dog") + "What is the dog doing near the runway?"
EXTRA_T5_TEXTS = [
  LION_PROMPT,
  TAG_PROMPT.format("cat, sofa") + "Describe the image.",
  "Unseen words: quixotic zephyr jukebox, and café naïve Ærøskøbing ½ 東京 🙂 §§ ¶.",
  "  leading and trailing spaces   ",
  "tabs\tand\nnewlines and\u00a0no-break\u3000spaces",
  "sentinels <extra_id_0>glued<extra_id_1> <extra_id_2>  spaced <extra_id_99>end",
  "not sentinels: <extra_id_100> <extra_id_05> <extra_id_ 1>",
  "literal specials </s> and <pad> and <unk> in text",
  "<image> What is in the picture?",
  "",
  "   ",
]
EXTRA_BERT_TEXTS = [
  "What Is The DOG doing, near the RUNWAY?!",
  "Café naïve résumé — “quoted” (parens) [brackets] {braces}.",
  "Unknown scripts: 東京 🙂 ok",
  "a" * 120 + " long word",
  "literal specials [DEC] [CLS] [SEP] [unk] in text",
  "numbers 3.14 and 1,000 and 42nd",
  "",
]
MAX_LENGTHS = [1, 2, 3, 5, 8, 13, 21, 34, 200]


@pytest.fixture(scope="module")
def t5_model_file(tmp_path_factory) -> Path:
  return train_t5_sentencepiece(CORPUS, tmp_path_factory.mktemp("t5") / "tiny_t5", vocab_size=200)


@pytest.fixture(scope="module")
def t5(t5_model_file) -> T5Tokenizer:
  return T5Tokenizer(t5_model_file)


@pytest.fixture(scope="module", params=["T5Tokenizer", "T5TokenizerFast"])
def hf_t5(request, t5_model_file, tmp_path_factory):
  """HF's reference built from the same spiece.model (in transformers 5 both names are one class)."""
  transformers = require("transformers")
  model_dir = tmp_path_factory.mktemp("hf_t5")
  shutil.copy(t5_model_file, model_dir / "spiece.model")
  return getattr(transformers, request.param).from_pretrained(str(model_dir), extra_ids=100)


def hf_t5_ids(hf, text: str, *, max_length: int | None = None, side: str = "left", add_eos: bool = True) -> list[int]:
  hf.truncation_side = side
  return hf(text, max_length=max_length, truncation=max_length is not None, add_special_tokens=add_eos)["input_ids"]


@pytest.fixture(scope="module")
def bert_vocab_file(tmp_path_factory) -> Path:
  # Only part of the corpus words, so other words fall back to single-character word pieces.
  words = sorted({w.strip(".,?!:;'").lower() for s in CORPUS[:30] for w in s.split()} - {""})
  return write_bert_vocab(words + ["##ing", "##s", "DOG"], tmp_path_factory.mktemp("bert") / "vocab.txt")


@pytest.fixture(scope="module")
def bert(bert_vocab_file) -> BertTokenizer:
  return BertTokenizer(bert_vocab_file)


@pytest.fixture(scope="module")
def hf_bert(bert_vocab_file):
  """HF's reference exactly as LION builds it: uncased, [DEC] added as bos, left truncation."""
  transformers = require("transformers")
  hf = transformers.BertTokenizerFast(str(bert_vocab_file), do_lower_case=True, truncation_side="left")
  hf.add_special_tokens({"bos_token": "[DEC]"})
  return hf


# --- T5 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS + EXTRA_T5_TEXTS)
def test_t5_encode_and_decode_match_hf(t5, hf_t5, text):
  ids = t5.encode(text)
  assert ids == hf_t5_ids(hf_t5, text)
  assert t5.decode(ids) == hf_t5.decode(ids, skip_special_tokens=True)
  # Without skipping, only pad/eos are left out; unk and sentinels render as HF renders them.
  hf_text = hf_t5.decode(ids, skip_special_tokens=False).replace("</s>", "").replace("<pad>", "")
  assert t5.decode(ids, skip_special_tokens=False) == hf_text


def test_t5_lion_prompt_has_one_sentinel_and_ignores_whitespace_around_it(t5):
  ids = t5.encode(LION_PROMPT)
  assert ids.count(t5.sentinel_id(0)) == 1
  assert ids[-1] == t5.eos_id
  # HF (and so LION) tokenises the text on each side of a sentinel on its own, dropping the outer
  # whitespace and prefixing "▁": the spaces around the sentinel make no difference.
  glued, spaced = t5.encode("tags<extra_id_0>dog"), t5.encode("tags <extra_id_0> dog")
  assert glued == spaced == t5.encode("tags", add_eos=False) + [t5.sentinel_id(0)] + t5.encode("dog")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_t5_truncation_matches_hf(t5, hf_t5, side, max_length):
  for text in (LION_PROMPT, CORPUS[5]):
    ids = t5.encode(text, max_length=max_length, truncation_side=side)
    assert ids == hf_t5_ids(hf_t5, text, max_length=max_length, side=side)
    assert len(ids) <= max_length and ids[-1] == t5.eos_id
    no_eos = t5.encode(text, max_length=max_length, truncation_side=side, add_eos=False)
    assert no_eos == hf_t5_ids(hf_t5, text, max_length=max_length, side=side, add_eos=False)


def test_t5_left_truncation_can_cut_the_sentinel_off(t5):
  full = t5.encode(LION_PROMPT)
  sentinel_pos = full.index(t5.sentinel_id(0))
  keeps_it = len(full) - sentinel_pos  # content from the sentinel on, plus </s>
  assert t5.sentinel_id(0) in t5.encode(LION_PROMPT, max_length=keeps_it)
  assert t5.sentinel_id(0) not in t5.encode(LION_PROMPT, max_length=keeps_it - 1)
  assert t5.sentinel_id(0) in t5.encode(LION_PROMPT, max_length=sentinel_pos + 2, truncation_side="right")


@pytest.mark.parametrize("side", ["left", "right"])
def test_t5_encode_batch_matches_hf_padding(t5, hf_t5, side):
  texts = [LION_PROMPT, CORPUS[0], "", "Is it?"]
  ids, mask = t5.encode_batch(texts, max_length=16, truncation_side=side)
  assert ids.shape == mask.shape == (4, 16) and ids.dtype == mask.dtype == np.int32
  hf_t5.truncation_side = side
  ref = hf_t5(texts, max_length=16, truncation=True, padding="max_length", return_tensors="np")
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  assert t5.encode_batch([], max_length=16)[0].shape == (0, 16)
  with pytest.raises(TypeError, match="sequence of strings"):
    t5.encode_batch("one string", max_length=16)


def test_t5_decode_round_trip(t5):
  for text in CORPUS:
    assert t5.decode(t5.encode(text)) == text
  padded, _ = t5.encode_batch(CORPUS[:3], max_length=64)
  assert [t5.decode(row) for row in padded] == CORPUS[:3]  # numpy rows, pad and eos dropped
  assert t5.decode([t5.sentinel_id(0)] + t5.encode("a cat")) == "a cat"
  with_sentinel = [t5.sentinel_id(3)] + t5.encode("a cat")
  assert t5.decode(with_sentinel, skip_special_tokens=False) == "<extra_id_3> a cat"


def test_t5_decode_drops_and_counts_ids_outside_the_vocabulary(t5):
  """A model whose table has padding rows (FlanT5: 32128 rows, 32100 pieces) can generate ids no
  tokenizer writes: decoding never fails on them."""
  cat = t5.encode("a cat")
  outside = [t5.vocab_size, t5.vocab_size + 27, -100]
  mixed = [outside[0], *cat[:1], outside[1], *cat[1:], outside[2]]
  assert t5.decode_counting(mixed) == ("a cat", 3)
  assert t5.decode(mixed) == "a cat"
  assert t5.decode_counting(mixed, skip_special_tokens=False) == ("a cat", 3)
  assert t5.decode_counting(outside) == ("", 3)
  assert t5.decode_counting(cat) == ("a cat", 0)


def test_t5_sentinel_id_arithmetic(t5, t5_model_file):
  sp_size = t5.vocab_size - 100
  assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
  assert t5.sentinel_id() == t5.sentinel_id(0) == sp_size + 99 == t5.vocab_size - 1
  assert t5.sentinel_id(99) == sp_size
  with pytest.raises(ValueError, match="extra_id_100"):
    t5.sentinel_id(100)
  few = T5Tokenizer.from_proto(Path(t5_model_file).read_bytes(), num_extra_ids=10)
  assert few.vocab_size == sp_size + 10 and few.sentinel_id(0) == sp_size + 9
  assert few.encode("a <extra_id_9> b <extra_id_10>") == (
    few.encode("a", add_eos=False) + [sp_size] + few.encode("b <extra_id_10>")
  )


def test_t5_sentinel_ids_match_hf(t5, hf_t5):
  assert t5.vocab_size == len(hf_t5)
  for n in (0, 1, 50, 99):
    assert t5.sentinel_id(n) == hf_t5.convert_tokens_to_ids(f"<extra_id_{n}>")


def test_t5_bad_model_files(tmp_path):
  missing = tmp_path / "nope.model"
  with pytest.raises(FileNotFoundError, match="T5 SentencePiece model not found: .*nope.model"):
    T5Tokenizer(missing)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a valid SentencePiece model: .*garbage.model"):
    T5Tokenizer(garbage)
  with pytest.raises(ValueError, match="not a valid SentencePiece model"):
    T5Tokenizer.from_proto(b"")
  with pytest.raises(OSError, match="cannot read T5 SentencePiece model"):
    T5Tokenizer(tmp_path)  # a directory
  # A model with SentencePiece's default ids (unk 0, bos 1, eos 2).
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(CORPUS),
    model_prefix=str(tmp_path / "default"),
    vocab_size=60,
    hard_vocab_limit=False,
    num_threads=2,
    minloglevel=2,
  )
  with pytest.raises(ValueError, match=r"T5 needs \(0, 1, 2\)"):
    T5Tokenizer(tmp_path / "default.model")


# --- BERT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS + EXTRA_BERT_TEXTS)
def test_bert_encode_matches_hf(bert, hf_bert, text):
  assert bert.encode(text) == hf_bert(text)["input_ids"]


def test_bert_lowercases_splits_punctuation_and_maps_unknowns(bert, bert_vocab_file):
  vocab = Path(bert_vocab_file).read_text().split("\n")
  ids = bert.encode("The DOG, 東!")
  assert ids == [
    bert.cls_id,
    vocab.index("the"),
    vocab.index("dog"),
    vocab.index(","),
    vocab.index("[UNK]"),
    vocab.index("!"),
    bert.sep_id,
  ]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("max_length", [2, 3, 5, 8, 13, 200])
def test_bert_truncation_matches_hf(bert, hf_bert, side, max_length):
  text = CORPUS[35] + " " + CORPUS[40]
  ids = bert.encode(text, max_length=max_length, truncation_side=side)
  hf_bert.truncation_side = side
  assert ids == hf_bert(text, max_length=max_length, truncation=True)["input_ids"]
  hf_bert.truncation_side = "left"
  assert len(ids) <= max_length and ids[0] == bert.cls_id and ids[-1] == bert.sep_id
  with pytest.raises(ValueError, match="no room"):
    bert.encode(text, max_length=1)


def test_bert_encode_batch_matches_hf_padding(bert, hf_bert):
  texts = [CORPUS[1], EXTRA_BERT_TEXTS[0], "", CORPUS[35] + " " + CORPUS[40]]
  ids, mask = bert.encode_batch(texts, max_length=12)
  assert ids.shape == mask.shape == (4, 12) and ids.dtype == mask.dtype == np.int32
  ref = hf_bert(texts, max_length=12, truncation=True, padding="max_length", return_tensors="np")
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])


def test_bert_dec_id_is_the_original_vocab_size(bert, hf_bert, bert_vocab_file):
  num_lines = len(Path(bert_vocab_file).read_text().splitlines())
  assert bert.dec_id == num_lines == hf_bert.bos_token_id
  assert bert.vocab_size == num_lines + 1 == len(hf_bert)
  assert (bert.pad_id, bert.cls_id, bert.sep_id) == (hf_bert.pad_token_id, hf_bert.cls_token_id, hf_bert.sep_token_id)


def test_write_bert_vocab_lowercases_and_deduplicates(tmp_path):
  lines = write_bert_vocab(["Dog", "dog", "##ing", "a", "cat"], tmp_path / "v.txt").read_text().splitlines()
  assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert len(lines) == len(set(lines)) and lines[-3:] == ["dog", "##ing", "cat"]
  assert {"a", "z", "0", "?", "##a", "##9", "##ing"} <= set(lines)
  with pytest.raises(ValueError, match="whitespace"):
    write_bert_vocab(["two words"], tmp_path / "bad.txt")


def test_bert_bad_vocab_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="BERT WordPiece vocab not found: .*missing.txt"):
    BertTokenizer(tmp_path / "missing.txt")
  (tmp_path / "dup.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\na\n")
  with pytest.raises(ValueError, match="duplicate token 'a'"):
    BertTokenizer(tmp_path / "dup.txt")
  (tmp_path / "nospecial.txt").write_text("a\nb\n")
  with pytest.raises(ValueError, match="lacks the special tokens"):
    BertTokenizer(tmp_path / "nospecial.txt")
