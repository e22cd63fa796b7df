"""The RAM tagger: the Swin tower against HF `SwinModel`, the whole tagging path against a reference
made of HF parts, the `.pth` converter in the official key layout, the tag prompt, and tagging on a
mesh and over a dataset."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from lion_jax.convert import mapping
from lion_jax.convert.__main__ import main as convert_main
from lion_jax.data import images as image_ops
from lion_jax.data import templates
from lion_jax.models import presets
from lion_jax.models.ram import RamTaggingModel
from lion_jax.models.swin import SwinTransformer
from tests.reference import hf_swin_as_ram_keys, max_relative_error, randomize_, state_dict_numpy

TOL = 1e-4
TAGS = [
  "airport",
  "beagle",
  "cocktail table",
  "dog",
  "escalator",
  "luggage",
  "man",
  "pet",
  "rubik's cube",
  "terminal",
  "beer",
  "cafe",
  "conversation",
  "drink",
  "laugh",
  "outdoor",
  "round table",
  "sit",
  "smile",
  "woman",
]


def hf_swin(transformers, torch, config):
  """HF `SwinModel` with the tagger's Swin dims (eval: no drop path), randomised."""
  s = config.swin
  hf_config = transformers.SwinConfig(
    image_size=s.image_size,
    patch_size=s.patch_size,
    num_channels=3,
    embed_dim=s.embed_dim,
    depths=list(s.depths),
    num_heads=list(s.num_heads),
    window_size=s.window,
    mlp_ratio=s.mlp_ratio,
    qkv_bias=True,
    hidden_act="gelu",
    use_absolute_embeddings=False,
    layer_norm_eps=s.ln_eps,
    drop_path_rate=0.0,
  )
  torch.manual_seed(0)
  model = transformers.SwinModel(hf_config).eval()
  randomize_(model)
  return model


def test_swin_tower_matches_hf_swin_model_at_every_stage(transformers, torch):
  config = presets.ram_tiny()
  hf = hf_swin(transformers, torch, config)
  state = hf_swin_as_ram_keys(state_dict_numpy(hf))
  swin_entries = [e for e in mapping.ram_tagger(config) if e.dst.startswith("swin/")]
  abstract = jax.eval_shape(
    lambda: nn.unbox(SwinTransformer(config.swin).init(jax.random.key(0), np.zeros((1, 64, 64, 3)))["params"])
  )
  flat = mapping.assemble(
    [mapping.Entry(e.dst[len("swin/") :], e.src, e.transform) for e in swin_entries],
    state,
    mapping.flat_shapes(abstract),
    source_name="hf swin",
    ignore=mapping.RAM_UNUSED,
  )
  image = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  ours, sown = SwinTransformer(config.swin).apply({"params": mapping.unflatten(flat)}, image, mutable=["intermediates"])
  with torch.no_grad():
    ref = hf(torch.from_numpy(image.transpose(0, 3, 1, 2)), output_hidden_states=True)
  for i in range(4):
    assert max_relative_error(sown["intermediates"][f"stage_{i}"][0], ref.hidden_states[i + 1].numpy()) <= TOL, i
  expected = np.concatenate([ref.pooler_output.numpy()[:, None], ref.last_hidden_state.numpy()], axis=1)
  assert ours.shape == (2, 1 + 16, 128) and max_relative_error(ours, expected) <= TOL


class TaggingReference:
  """RAM's tagging path (`generate_tag`) in torch from HF parts: SwinModel's pooled and normed
  tokens, `image_proj`, ReLU(`wordvec_proj`(label_embed)), per layer HF `BertAttention` as
  cross-attention (key/value read the 512-wide image embedding, as RAM's encoder_width) then
  `BertIntermediate`/`BertOutput`, and `fc` shared by all classes; sigmoid."""

  def __init__(self, transformers, torch, config):
    from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

    self.torch, self.config = torch, config
    h = config.head
    bert_config = transformers.BertConfig(
      hidden_size=h.width,
      num_attention_heads=h.num_heads,
      intermediate_size=h.mlp_dim,
      layer_norm_eps=h.ln_eps,
      hidden_act="gelu",
    )
    self.swin = hf_swin(transformers, torch, config)
    width = config.swin.embed_dim * 2 ** (len(config.swin.depths) - 1)
    torch.manual_seed(1)
    self.modules = torch.nn.ModuleDict(
      dict(
        image_proj=torch.nn.Linear(width, config.embed_dim),
        wordvec_proj=torch.nn.Linear(config.embed_dim, h.width),
        fc=torch.nn.Linear(h.width, 1),
      )
    )
    self.label_embed = torch.randn(config.num_classes, config.embed_dim, generator=torch.Generator().manual_seed(2))
    self.layers = []
    for _ in range(h.num_layers):
      cross = BertAttention(bert_config, is_cross_attention=True)
      cross.self.key = torch.nn.Linear(config.embed_dim, h.width)
      cross.self.value = torch.nn.Linear(config.embed_dim, h.width)
      layer = torch.nn.ModuleDict(
        dict(crossattention=cross, intermediate=BertIntermediate(bert_config), output=BertOutput(bert_config))
      ).eval()
      randomize_(layer, seed=3)
      self.layers.append(layer)
    randomize_(self.modules, seed=4)

  def probabilities(self, pixels: np.ndarray) -> np.ndarray:
    torch = self.torch
    with torch.no_grad():
      out = self.swin(torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
      memory = self.modules["image_proj"](torch.cat([out.pooler_output[:, None], out.last_hidden_state], 1))
      h = torch.relu(self.modules["wordvec_proj"](self.label_embed))[None].repeat(len(pixels), 1, 1)
      for layer in self.layers:
        a = layer["crossattention"](h, encoder_hidden_states=memory)[0]
        h = layer["output"](layer["intermediate"](a), a)
      return torch.sigmoid(self.modules["fc"](h)[..., 0]).numpy()

  def official_state_dict(self) -> dict:
    """The tensors under ram_swin_large_14m.pth's names, with keys tagging does not read."""
    torch = self.torch
    state = {k: torch.from_numpy(v) for k, v in hf_swin_as_ram_keys(state_dict_numpy(self.swin)).items()}
    state.update({k: v.detach().clone() for k, v in self.modules.state_dict().items()})
    state["label_embed"] = self.label_embed.clone()
    for i, layer in enumerate(self.layers):
      for k, v in layer.state_dict().items():
        state[f"tagging_head.encoder.layer.{i}.{k}"] = v.detach().clone()
        state[f"tag_encoder.encoder.layer.{i}.{k}"] = v.detach().clone()  # the official tied copy
    state["text_decoder.cls.predictions.bias"] = torch.zeros(8)
    state["visual_encoder.layers.0.blocks.1.attn.attn_mask"] = torch.zeros(64, 16, 16)  # buffers, recomputed
    state["visual_encoder.layers.0.blocks.1.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    return state


def write_release(tmp_path, torch, state, tags, thresholds):
  pth, tag_list, limits = tmp_path / "ram_swin_large_14m.pth", tmp_path / "tags.txt", tmp_path / "thr.txt"
  torch.save({"model": state, "epoch": 3}, pth)
  tag_list.write_text("\n".join(tags))  # no final newline, as ram_tag_list.txt
  limits.write_text("\n".join(f"{t:.6f}" for t in thresholds) + "\n")
  return pth, tag_list, limits


def convert_args(pth, tag_list, limits, out):
  return ["ram", f"--ram_pth={pth}", f"--tag_list={tag_list}", f"--thresholds={limits}", f"--out={out}"]


def photos(n=3):
  rng = np.random.default_rng(7)
  return [Image.fromarray(rng.integers(0, 255, (50 + 9 * i, 70, 3), np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def converted_tagger(transformers, torch, tmp_path_factory):
  """(directory, reference probabilities of `photos()`, reference tags): a random tiny RAM in the
  official layout, thresholds between the photos' probabilities, converted by the command line."""
  tmp_path = tmp_path_factory.mktemp("ram")
  config = presets.ram_tiny(len(TAGS))
  reference = TaggingReference(transformers, torch, config)
  pixels = np.stack([image_ops.to_ram_input(p, 64) for p in photos()])
  probs = reference.probabilities(pixels)
  thresholds = np.float32(np.sort(probs, axis=0)[1])  # per class, the middle photo's: one above, one below
  thresholds += np.float32(1e-3)
  assert np.abs(probs - thresholds).min() > 1e-4  # no tag within reach of rounding
  release = write_release(tmp_path, torch, reference.official_state_dict(), TAGS, thresholds)
  out = tmp_path / "converted"
  assert convert_main([*convert_args(*release, out), "--preset=tiny"]) == 0
  tags = [[TAGS[c] for c in range(len(TAGS)) if row[c] > thresholds[c]] for row in probs]
  return out, probs, tags


def test_tags_of_a_converted_pth_match_the_reference(converted_tagger, capsys):
  from lion_jax.inference.tagger import RamTagger

  directory, probs, tags = converted_tagger
  tagger = RamTagger.load(directory, batch_size=2)  # 3 photos: a full batch and a padded one
  pixels = [tagger.pixels(p) for p in photos()]
  assert max_relative_error(tagger.probabilities(3, pixels.__getitem__), probs) <= TOL
  assert tagger.tag_batch(photos()) == tags and tagger(photos()[1]) == tags[1]
  assert any(tags) and not all(len(t) == len(TAGS) for t in tags)
  assert json.loads((directory / "conversion.json").read_text())["sources"]["ram_pth"].endswith(".pth")


def test_bf16_compute_tracks_float32(converted_tagger):
  from lion_jax.inference.tagger import RamTagger

  directory, probs, _ = converted_tagger
  tagger = RamTagger.load(directory, batch_size=4, dtype="bfloat16")
  pixels = [tagger.pixels(p) for p in photos()]
  bf16 = tagger.probabilities(3, pixels.__getitem__)
  assert tagger.params["fc"]["kernel"].dtype == np.float32
  assert 1e-5 < np.abs(bf16 - probs).max() < 2e-2  # bf16 matmuls, not float32 ones


def test_tag_prompt_is_the_official_string():
  """lion_t5.py: `' | '.join(tags)` (generate_tag) -> `.replace(' |', ',')` (generate_tags) -> the
  tag prompt's `[{}]`."""
  tags = ["airport", "cocktail table", "rubik's cube", "dog"]
  official = "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. ".format(
    " | ".join(tags).replace(" |", ",")
  )
  assert templates.tag_prompt(tags) == official


def test_ram_preprocessing_is_bilinear_384_with_imagenet_statistics():
  image = photos(1)[0]
  pixels = image_ops.to_ram_input(image, 384)
  bilinear = np.asarray(image.resize((384, 384), Image.Resampling.BILINEAR), np.float32) / 255.0
  bicubic = np.asarray(image.resize((384, 384), Image.Resampling.BICUBIC), np.float32) / 255.0
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  assert pixels.shape == (384, 384, 3)
  np.testing.assert_allclose(pixels, (bilinear - mean) / std, atol=1e-6)
  assert np.abs(pixels - (bicubic - mean) / std).max() > 1e-2


def test_converter_names_every_bad_key_and_file(transformers, torch, tmp_path, capsys):
  config = presets.ram_tiny(len(TAGS))
  reference = TaggingReference(transformers, torch, config)
  state = reference.official_state_dict()
  del state["fc.bias"]
  state["wordvec_proj.weight"] = state["wordvec_proj.weight"][:, :5]
  state["tagging_head.extra.weight"] = torch.zeros(2)
  release = write_release(tmp_path, torch, state, TAGS, [0.5] * len(TAGS))
  assert convert_main([*convert_args(*release, tmp_path / "a"), "--preset=tiny"]) == 1
  err = capsys.readouterr().err
  for name in ("fc.bias", "wordvec_proj.weight", "tagging_head.extra.weight"):
    assert name in err, err
  assert "tag_encoder" not in err and "text_decoder" not in err  # known, reported as not read
  pth, tag_list, limits = release
  limits.write_text("0.5\n" * 3 + "high\n")
  assert convert_main([*convert_args(pth, tag_list, limits, tmp_path / "b"), "--preset=tiny"]) == 1
  assert f"{limits}:4: not a number" in capsys.readouterr().err
  limits.write_text("0.5\n" * 3)
  assert convert_main([*convert_args(pth, tag_list, limits, tmp_path / "c"), "--preset=tiny"]) == 1
  assert "3 lines, but the tagger has 20 tag classes" in capsys.readouterr().err


def test_tagging_on_a_2x2x2_mesh_equals_one_device(converted_tagger):
  from lion_jax import sharding
  from lion_jax.inference.tagger import RamTagger

  directory, probs, tags = converted_tagger
  mesh = sharding.make_mesh(2, 2, 2)
  tagger = RamTagger.load(directory, mesh=mesh, batch_size=3)  # rounded up to 4 rows, split over data x fsdp
  assert tagger.batch_size == 4
  pixels = [tagger.pixels(p) for p in photos()]
  assert max_relative_error(tagger.probabilities(3, pixels.__getitem__), probs) <= TOL
  assert tagger.tag_batch(photos()) == tags
  kernel = tagger.params["tagging_0"]["ffn"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_a_lion_directory_is_not_a_tagger(tmp_path):
  from lion_jax.errors import UserError
  from lion_jax.inference.tagger import RamTagger

  (tmp_path / "config.json").write_text(presets.tiny().to_json())
  with pytest.raises(UserError, match="is not a converted RAM tagger"):
    RamTagger.load(tmp_path)


def test_ram_model_parameters_carry_logical_axes():
  config = presets.ram_tiny()
  boxed = jax.eval_shape(lambda: RamTaggingModel(config).init(jax.random.key(0), np.zeros((1, 64, 64, 3)))["params"])
  unnamed = [
    jax.tree_util.keystr(path)
    for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: hasattr(x, "names"))[0]
    if not hasattr(leaf, "names")
  ]
  assert not unnamed


@pytest.fixture(scope="module")
def lion_checkpoint(tmp_path_factory):
  from tests.test_inference import random_tiny_checkpoint

  return random_tiny_checkpoint(tmp_path_factory.mktemp("lion"))


def test_predictor_and_the_predict_cli_use_the_tagger(converted_tagger, lion_checkpoint, tmp_path, capsys):
  from lion_jax.inference.predictor import Predictor
  from lion_jax.inference.tagger import RamTagger
  from lion_jax.predict import main as predict_main

  directory, _, tags = converted_tagger
  settings = dict(num_beams=1, max_new_tokens=4)
  predictor = Predictor.load(lion_checkpoint / "ckpt", tagger=RamTagger.load(directory, batch_size=2), **settings)
  questions = ["What is this?"] * 3
  tagged = predictor.predict_batch(photos(), questions)
  assert [r.tags for r in tagged] == tags
  given = Predictor.load(lion_checkpoint / "ckpt", **settings).predict_batch(photos(), questions, tags=tags)
  assert [r.text for r in tagged] == [r.text for r in given]
  assert predictor(photos()[0], "What is this?", tags="dog").tags == ["dog"]  # given tags win

  photo = tmp_path / "photo.png"
  photos()[0].save(photo)
  argv = [f"--checkpoint={lion_checkpoint / 'ckpt'}", f"--image={photo}", "--question=What is this?"]
  assert predict_main([*argv, f"--tagger={directory}", "--num_beams=1", "--max_new_tokens=4"]) == 0
  assert f"tags: {', '.join(tags[0])}\n" in capsys.readouterr().out
  assert predict_main([*argv, f"--tagger={tmp_path / 'none'}"]) == 1
  assert "--tagger: no such folder" in capsys.readouterr().err


def test_the_dataset_command_and_evaluation_tag_records_without_tags(converted_tagger, lion_checkpoint, tmp_path):
  """`python -m lion_jax.data.tags --tagger` on the 8-device mesh (resuming from its progress file)
  writes the tagger's tags; `evaluate --config.tagger` on those records without tags predicts what
  it predicts on the tagged file."""
  from lion_jax.data.records import load_records, write_jsonl
  from lion_jax.data.tags import main as tags_main
  from lion_jax.data.tags import progress_path
  from lion_jax.evaluation import benchmarks, runner
  from lion_jax.inference.tagger import RamTagger

  directory, _, _ = converted_tagger
  data = lion_checkpoint / "data"
  records = [r for r in load_records(data / "val.jsonl")[0] if r.task == "vqa"][:5]
  untagged = write_jsonl([r.__class__(**{**r.__dict__, "tags": []}) for r in records], tmp_path / "untagged.jsonl")
  expected = RamTagger.load(directory).tag_batch([Image.open(data / r.image) for r in records])

  out = tmp_path / "tagged.jsonl"
  first = records[0].image
  progress_path(out).write_text(json.dumps({"image": first, "tags": expected[0]}) + "\n")  # an interrupted run
  argv = [f"--tagger={directory}", f"--records={untagged}", f"--image_root={data}", f"--out={out}", "--batch_size=2"]
  assert tags_main(argv) == 0
  assert [r.tags for r in load_records(out)[0]] == expected and not progress_path(out).exists()
  progress_path(out).write_text(json.dumps({"image": "another.png", "tags": []}) + "\n")
  assert tags_main(argv) == 1  # a progress file of another run is named, not used
  progress_path(out).unlink()

  def predictions(records_file, name, **overrides):
    config = benchmarks.eval_config(
      "gqa", records=str(records_file), image_root=str(data), batch_size=4, num_beams=1, max_new_tokens=4, **overrides
    )
    runner.run_benchmark(config, lion_checkpoint / "ckpt", tmp_path / name)
    return (tmp_path / name / "gqa_predictions.jsonl").read_text().splitlines()

  assert predictions(untagged, "by_tagger", tagger=str(directory)) == predictions(out, "given")


def test_the_tagger_takes_images_in_any_mode():
  """Grayscale, alpha, palette and 16-bit images are tagged as their RGB conversion (they failed with a
  numpy broadcast error)."""
  import jax
  from PIL import Image

  from lion_jax.inference.tagger import RamTagger
  from lion_jax.models.ram import RamTaggingModel

  config = presets.ram_tiny(len(TAGS))
  example = np.zeros((1, 64, 64, 3), np.float32)
  params = jax.jit(RamTaggingModel(config).init)(jax.random.key(0), example)["params"]
  tagger = RamTagger(config, params, TAGS, np.full(len(TAGS), 0.5, np.float32), batch_size=2)
  rgb = photos()[0]
  modes = [rgb.convert(mode) for mode in ("L", "LA", "RGBA", "P")]
  modes.append(Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).convert("I;16"))
  for image in modes:
    np.testing.assert_array_equal(tagger.pixels(image), tagger.pixels(image.convert("RGB")), err_msg=image.mode)
  assert tagger.tag_batch(modes) == tagger.tag_batch([image.convert("RGB") for image in modes])
  assert tagger(modes[0]) == tagger(modes[0].convert("RGB"))
