"""Shared pieces of the run configs in configs/: model preset, data sources, optimizer, mesh, stages.

LION's released settings (lion_reference.md 4.3): AdamW (0.9, 0.999), lr 1e-5, weight decay 0.05
on >= 2-D parameters, global batch 64, bf16, constant lr in the first epoch then a per-epoch cosine
over 10 epochs of 6000 steps. The paper does not give per-stage steps or mixture weights; the
defaults here (equal weights within a level, 1:1 image/region in stage 3, 60k steps per stage) are
documented choices, overridable with --config.<field>=value.
"""

from __future__ import annotations

import ml_collections

from lion_jax import sharding, stages
from lion_jax.data import pipeline, synthetic
from lion_jax.errors import MissingFile, UserError
from lion_jax.models import param_paths, presets

IMAGE_LEVEL_SOURCES = ("coco_caption", "vqav2", "okvqa", "aokvqa", "textcaps")
REGION_LEVEL_SOURCES = ("refcoco", "refcoco_plus", "refcocog", "vg_regions")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`configs/stage3.py:size=xxl,steps=100` -> ConfigDict(size='xxl', steps=100) over `defaults`."""
  parsed = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r}; expected one of {sorted(defaults)}")
    parsed[key] = type(defaults[key])(value) if defaults[key] is not None else value
  return ml_collections.ConfigDict(parsed)


def data_sources() -> ml_collections.ConfigDict:
  """One entry per LION dataset; set `records` (JSONL from lion_jax.data.adapters) and `image_root`."""
  return ml_collections.ConfigDict({name: source() for name in IMAGE_LEVEL_SOURCES + REGION_LEVEL_SOURCES})


def source(records: str = "", image_root: str = "", fmt: str = "auto") -> dict:
  """One data source: a record file (`format` auto / jsonl / lion_json) or, with `format='tfds'`, a
  TFDS dataset prepared as array_record: `tfds.name` (e.g. 'coco_captions:1.0.0'), `tfds.data_dir`,
  `tfds.split`, `tfds.fields` ('image=jpeg,answers=captions': record field = feature) and the task."""
  return dict(
    records=records,
    image_root=image_root,
    format=fmt,
    tfds=dict(name="", data_dir="", split="train", fields="", task_type="", task=""),
  )


def stage(
  visual_input: str,
  mixture: dict[str, float],
  num_steps: int,
  init_from=(),
  export: bool = False,
  frozen=param_paths.LION_FROZEN,
  adapters: str = "moa",
  soft_prompt: bool = True,
  tags: bool = True,
  pretrained: str = "",
  lr: float = 0.0,
) -> ml_collections.ConfigDict:
  """One stage (fields explained in lion_jax/stages.py). `init_from`: earlier stages whose final
  trainables start this one ('' = same --workdir); `frozen`: whole-path regular expressions."""
  return ml_collections.ConfigDict(
    dict(
      visual_input=visual_input,
      mixture=mixture,
      num_steps=num_steps,
      init_from={name: "" for name in init_from},
      export=export,
      frozen=list(frozen),
      adapters=adapters,
      soft_prompt=soft_prompt,
      tags=tags,
      pretrained=pretrained,
      lr=lr,
    )
  )


def pretrain_stage(
  mixture: dict[str, float], num_steps: int, visual_input: str = "qformer", tags: bool = True
) -> ml_collections.ConfigDict:
  """Tower pretraining: ViT, Q-Former and T5 trained together from a fresh init, as a plain
  InstructBLIP (no adapters, no soft prompt); its export is a converted checkpoint that LION's stages
  load with `config.pretrained`, as they load a converted InstructBLIP. A stand-in for the
  EVA-CLIP / FlanT5 / InstructBLIP pretraining that real LION starts from, for small models. Tags
  stay in the prompt by default (behind a plain `<extra_id_0>`): a pretrained LLM can read what its
  prompt lists, and a T5 trained from scratch learns it only where it sees it; `tags=False` leaves
  them out, so that the towers learn from the pixels what imperfect tags would otherwise hand them.
  `visual_input='all'` also trains the aggregator, so the T5 learns to read per-patch tokens before
  the stages freeze it."""
  return stage(
    visual_input,
    mixture,
    num_steps,
    export=True,
    frozen=(),
    adapters="none",
    soft_prompt=False,
    tags=tags,
    pretrained=stages.RANDOM,
  )


def evaluator(
  kind: str,
  records: str = "",
  image_root: str = "",
  *,
  tasks=(),
  task_types=(),
  limit: int = 0,
  every_steps: int = 0,
  num_beams: int = 1,
  max_new_tokens: int = 0,
  batch_size: int = 16,
  blind: bool = False,
) -> ml_collections.ConfigDict:
  """One entry of `config.evals` (lion_jax/evaluation/evaluators.py): `kind` is a benchmark metric kind
  or 'loss'; `every_steps` 0 = only at the end of each stage; `max_new_tokens` 0 = data.max_target_len.
  Greedy by default: cheap enough to run often (the benchmarks' beam settings are in configs/eval).
  `blind` also scores the records with the images deranged (evaluation.blind): `<metric>_blind`, and
  for 'loss' the image gain per task level."""
  return ml_collections.ConfigDict(
    dict(
      kind=kind,
      records=records,
      image_root=image_root,
      format="auto",
      tasks=list(tasks),
      task_types=list(task_types),
      limit=limit,
      every_steps=every_steps,
      num_beams=num_beams,
      max_new_tokens=max_new_tokens,
      repetition_penalty=1.0,
      length_penalty=1.0,
      batch_size=batch_size,
      blind=blind,
    )
  )


def image_level_mixture() -> dict[str, float]:
  """Stage 1's data: the image-level sources, equal weights."""
  return {name: 1.0 for name in IMAGE_LEVEL_SOURCES}


def region_level_mixture() -> dict[str, float]:
  """Stage 2's data: the region-level sources, equal weights."""
  return {name: 1.0 for name in REGION_LEVEL_SOURCES}


def both_levels_mixture() -> dict[str, float]:
  """Stage 3's data: image-level and region-level 1:1, equal weights within a level."""
  return {
    **{k: 1.0 / len(IMAGE_LEVEL_SOURCES) for k in IMAGE_LEVEL_SOURCES},
    **{k: 1.0 / len(REGION_LEVEL_SOURCES) for k in REGION_LEVEL_SOURCES},
  }


def optimizer(**overrides) -> ml_collections.ConfigDict:
  """LION's released optimizer settings (module docstring), with `overrides` (e.g. schedule="constant")."""
  settings = dict(
    lr=1e-5,
    min_lr=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.05,
    schedule="lion_epoch_cosine",
    steps_per_epoch=6000,
    warmup_steps=0,
    clip_grad_norm=0.0,
  )
  return ml_collections.ConfigDict({**settings, **overrides})


def base_config(size: str = "xl") -> ml_collections.ConfigDict:
  presets_by_size = {"xl": "flant5xl", "xxl": "flant5xxl", "tiny": "tiny"}
  if size not in presets_by_size:
    raise UserError(f"size={size!r}; expected one of {sorted(presets_by_size)}")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = presets.get(presets_by_size[size])
  config.model.dtype = "bfloat16"
  config.frozen_dtype = "bfloat16"
  config.pretrained = ""  # converted checkpoint dir (python -m lion_jax.convert); "random" = random init
  # A LION-size model from random towers is almost always a forgotten --config.pretrained: refuse
  # unless the user says --config.pretrained=random.
  config.require_pretrained = size in ("xl", "xxl")
  # True: config.model, data.image_size and unset vocab files come from config.pretrained (fine-tuning).
  config.model_from_pretrained = False
  config.data = pipeline.default_config()
  config.data.sources = data_sources()
  config.global_batch_size = 64
  config.grad_accum_steps = 1
  config.optimizer = optimizer()
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = [list(rule) for rule in sharding.DEFAULT_RULES]
  config.num_steps = -1  # > 0: overrides every stage's num_steps (smoke runs)
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.export_dir_name = "export"  # the last stage writes a converted checkpoint here
  config.peak_flops_per_device = 0.0  # e.g. 197e12 for TPU v5e bf16; 0 = report FLOP/s, not MFU
  config.distributed = False  # call jax.distributed.initialize() (multi-host)
  # The demo's embedded data: generated into WORKDIR/data; eval_limit > 0 evaluates the final export
  # with the demo's evaluators at the end.
  config.synthetic = ml_collections.ConfigDict(
    dict(
      enabled=False,
      num_images=0,
      image_size=0,
      eval_limit=0,
      max_shapes=synthetic.MAX_SHAPES,
      size_range=list(synthetic.SIZE_RANGE),
      grid=1,
      tag_noise=0.0,
    )
  )
  config.evals = ml_collections.ConfigDict()  # name -> evaluator(...): evaluation during training
  # name -> stage(...): set by each config file (configs/stage{1,2,3}.py, demo.py, finetune.py).
  config.stages = ml_collections.ConfigDict()
  config.run_stages = ""
  return config


def adopt_pretrained_model(config: ml_collections.ConfigDict) -> None:
  """With `model_from_pretrained`: the model of `config.pretrained` (its config.json, keeping this
  run's compute dtype), its image size and its tokenizer files where the data config names none."""
  if not config.model_from_pretrained:
    return
  if not config.pretrained or config.pretrained == stages.RANDOM:
    raise UserError("model_from_pretrained needs --config.pretrained=<converted checkpoint directory>")
  from lion_jax.convert.converted import load_config, tokenizer_files

  dtype = config.model.dtype
  config.model = load_config(config.pretrained)
  config.model.dtype = dtype
  config.data.image_size = config.model.vit.image_size
  files = tokenizer_files(config.pretrained)
  for key, name in (("t5_vocab", "t5"), ("bert_vocab", "bert")):
    if not config.data[key]:
      if name not in files:
        raise MissingFile(f"{config.pretrained}/tokenizer has no {name} vocabulary: set --config.data.{key}")
      config.data[key] = str(files[name])
