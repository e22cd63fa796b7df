"""Nothing a checkpoint or record file holds is silently dropped or trusted (issue 14, section 2)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from lion_jax.convert import CheckpointMismatchError, load_hf_instructblip, load_lion_release
from lion_jax.convert.sources import TorchSource
from lion_jax.data import inspect, synthetic, templates
from lion_jax.data.records import BadRecord, Record, load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, bucketed_length
from lion_jax.errors import UserError
from lion_jax.evaluation import runner
from lion_jax.inference import Predictor
from lion_jax.inference import batch as inference_batch
from lion_jax.models import presets
from tests.conftest import require
from tests.reference import randomize_, save_safetensors_sharded, state_dict_numpy

# ------------------------------------------------------------------------- T5 embedding copies ---


@pytest.fixture(scope="module")
def untied_instructblip():
  """An InstructBLIP-T5 whose config is untied: transformers 5 then builds `shared`, the encoder's and
  the decoder's embedding tables as three parameters, and they differ."""
  torch, transformers = require("torch"), require("transformers")
  from tests.test_parity_hf import hf_qformer_config, hf_t5_config, hf_vision_config

  config = transformers.InstructBlipConfig(
    vision_config=hf_vision_config(transformers).to_dict(),
    qformer_config=hf_qformer_config(transformers).to_dict(),
    text_config=hf_t5_config(transformers).to_dict(),
    num_query_tokens=4,
    image_token_id=119,
  )
  config.text_config.tie_word_embeddings = False
  torch.manual_seed(0)
  model = transformers.InstructBlipForConditionalGeneration(config).eval()
  randomize_(model)
  state = state_dict_numpy(model)
  shared = state["language_model.shared.weight"]
  assert np.abs(state["language_model.encoder.embed_tokens.weight"] - shared).max() > 0.1
  return model, state


def _largest_difference(state, copy, original):
  return f"{np.abs(state[copy].astype(np.float64) - state[original]).max():.6g}"


def test_instructblip_with_differing_embedding_copies_is_refused(untied_instructblip, tmp_path):
  model, state = untied_instructblip
  save_safetensors_sharded(state, tmp_path, num_shards=1)
  model.config.save_pretrained(tmp_path)
  copy, shared = "language_model.encoder.embed_tokens.weight", "language_model.shared.weight"
  with pytest.raises(CheckpointMismatchError) as error:
    load_hf_instructblip(tmp_path)
  message = str(error.value)
  assert f"{copy} differs from {shared}: largest difference {_largest_difference(state, copy, shared)}" in message
  assert "language_model.decoder.embed_tokens.weight differs" in message


def test_flant5_dir_with_differing_embedding_copies_is_refused(untied_instructblip, tmp_path):
  """The LION release reads the T5 body from the FlanT5 directory: its copies are checked as well."""
  model, state = untied_instructblip
  prefix = "language_model."
  t5_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
  t5_state["encoder.embed_tokens.weight"] = t5_state["shared.weight"]  # one copy equal, one not
  save_safetensors_sharded(t5_state, tmp_path, num_shards=1)
  (tmp_path / "config.json").write_text(json.dumps(model.config.text_config.to_dict()))
  with pytest.raises(CheckpointMismatchError) as error:  # fails on FlanT5, before the .pth files are read
    load_lion_release(
      lion_pth=tmp_path / "lion.pth", eva_vit_pth=tmp_path / "eva.pth", flant5_dir=tmp_path, towers=presets.tiny()
    )
  message = str(error.value)
  largest = _largest_difference(t5_state, "decoder.embed_tokens.weight", "shared.weight")
  assert (
    f"1 copies differ from the table the model reads:\n    decoder.embed_tokens.weight differs "
    f"from shared.weight: largest difference {largest}" in message
  )
  assert "encoder.embed_tokens" not in message


# --------------------------------------------------------------------------- legacy .pth files ---


class _RunsShellOnLoad:
  """Unpickles into `os.system(...)`: what a weights-only loader must refuse."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_torch_files_load_in_both_formats(tmp_path, zip_format):
  torch = require("torch")
  tensors = {"w": torch.randn(3, 4), "half": torch.randn(5).to(torch.bfloat16), "ids": torch.arange(6)}
  path = tmp_path / "weights.pth"
  torch.save({"model": tensors, "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
  source = TorchSource(path)
  assert sorted(source) == sorted(tensors)
  for key, tensor in tensors.items():
    np.testing.assert_array_equal(np.asarray(source[key], np.float64), tensor.double().numpy())
  assert source["half"].dtype.name == "bfloat16"


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_pickles_naming_code_are_refused_in_both_formats(tmp_path, zip_format):
  torch = require("torch")
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pth"
  torch.save(
    {"model": {"w": torch.zeros(2)}, "hook": _RunsShellOnLoad(marker)}, path, _use_new_zipfile_serialization=zip_format
  )
  with pytest.raises(
    UserError,
    match=rf"evil\.pth: cannot load as a weights-only PyTorch checkpoint: it names "
    rf"{os.system.__module__}\.system, and only tensors and plain data",
  ):
    TorchSource(path)
  assert not marker.exists()


# ------------------------------------------------------------------- official records, box text ---


def _write_official(tmp_path, entries):
  Image.new("RGB", (20, 10)).save(tmp_path / "img.png")
  path = tmp_path / "lion.json"
  path.write_text(json.dumps([{"image": "img.png", "category": "ref", **e} for e in entries]))
  return path


OFFICIAL = [
  {"question": "Where is the dog?", "answer": "Answer: [0.440,0.060,0.650,0.367]"},
  {"question": "Where is the cat?", "answer": "Answer: [0.500,0.200,1.700,0.900]"},  # outside the image
  {"question": "Where is the cow?", "answer": ["Answer: [0.600,0.200,0.300,0.900]"]},  # inverted
  {"question": "What is at [-0.1,0.2,0.3,0.4]?", "answer": "A dog."},  # box in the question
  {"question": "What is at [0.100,0.200;0.3,0.4]?", "answer": "Not a box, so no check."},
]


def test_official_records_with_bad_text_boxes_are_skipped_with_their_reason(tmp_path):
  path = _write_official(tmp_path, OFFICIAL)
  records, report = load_records(path)
  assert [r.question for r in records] == ["Where is the dog?", OFFICIAL[4]["question"]]
  assert dict(report.invalid) == {"box_outside_image": 2, "bad_box": 1}
  assert (
    "lion.json[1]: box_outside_image: in the answer text: box (0.5, 0.2, 1.7, 0.9) is outside" in report.first_errors[0]
  )
  assert "lion.json[3]: box_outside_image: in the question text" in report.first_errors[2]
  with pytest.raises(BadRecord, match=r"lion\.json\[1\]: in the answer text"):
    load_records(path, strict=True)


def test_inspect_strict_fails_on_bad_text_boxes(tmp_path, capsys):
  path = _write_official(tmp_path, OFFICIAL)
  assert inspect.main(["--records", str(path), "--image-root", str(tmp_path), "--json"]) == 0
  assert json.loads(capsys.readouterr().out) == {"valid": 2, "invalid": {"box_outside_image": 2, "bad_box": 1}}
  assert inspect.main(["--records", str(path), "--image-root", str(tmp_path), "--strict"]) == 1
  good = _write_official(tmp_path, OFFICIAL[:1])
  assert inspect.main(["--records", str(good), "--image-root", str(tmp_path), "--strict"]) == 0


def test_official_categories_match_case_insensitively(tmp_path):
  path = _write_official(
    tmp_path,
    [
      {"question": "Where?", "answer": "here", "category": c}
      for c in ("REF", "Grounding", "Region_Level", "norm", "NORM")
    ],
  )
  records, _ = load_records(path)
  assert [r.task_type for r in records] == ["region_level"] * 3 + ["image_level"] * 2


# ------------------------------------------------------------------ evaluation prompt, whole ---


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  synthetic.generate(root, num_images=4, seed=0, image_size=32)
  return root, T5Tokenizer(root / "spiece.model"), BertTokenizer(root / "bert_vocab.txt")


def test_evaluation_keeps_a_prompt_longer_than_the_training_limit(tokenizers, monkeypatch):
  root, t5, bert = tokenizers
  config = presets.tiny(t5_vocab_size=-(-t5.vocab_size // 8) * 8, qformer_vocab_size=bert.vocab_size)
  image = next((root / "images").iterdir()).relative_to(root)
  long_question = " ".join(["what color is the circle left of the square?"] * 12)
  records = [
    Record(task_type="image_level", task="instruction", image=str(image), question=q, answers=["red"])
    for q in (long_question, "what color is the circle?")
  ]
  batches = []

  def fake_generate(config, params, batch, **settings):
    batches.append(batch)
    return np.ones((batch["input_ids"].shape[0], 1), np.int32)  # EOS: the prompt, not the answer, is under test

  monkeypatch.setattr(inference_batch, "generate", fake_generate)
  max_input_len = 32
  for record in records:
    runner.predict_records(
      config, None, t5, bert, [record], root, batch_size=2, max_input_len=max_input_len, progress=False
    )
  t5_input = lambda question: templates.t5_input_text(question, [], soft_prompt=True)  # the tiny preset's soft prompt
  long_ids, short_ids = t5.encode(t5_input(long_question)), t5.encode(t5_input(records[1].question))
  assert len(long_ids) > max_input_len > len(short_ids)
  long_batch, short_batch = batches
  n = len(long_ids)
  assert long_batch["input_ids"].shape == (2, bucketed_length(n, max_input_len))
  assert long_batch["input_ids"][0, :n].tolist() == long_ids and long_batch["input_mask"][0].sum() == n
  # The same input as the Predictor, which never truncated the T5 prompt.
  predictor = Predictor(config, None, t5, bert)
  pixels = long_batch["image"][0]
  alone = predictor.inputs([pixels], [long_question], [[]], "image_level")
  np.testing.assert_array_equal(long_batch["input_ids"][:1], alone["input_ids"])
  np.testing.assert_array_equal(long_batch["input_mask"][:1], alone["input_mask"])
  # Prompts within the limit keep the one compiled shape of the training limit.
  assert short_batch["input_ids"].shape == (2, max_input_len)
