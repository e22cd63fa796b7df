"""Fine-tune a released (converted) LION checkpoint: the official stage-4 recipe.

  python -m lion_jax.main --config=configs/finetune.py --workdir=DIR --config.pretrained=CONVERTED_LION_DIR \
      --config.data.sources.image_level.records=IMAGE.jsonl --config.data.sources.image_level.image_root=IMAGES \
      --config.data.sources.region_level.records=REGION.jsonl --config.data.sources.region_level.image_root=IMAGES

The model (dims, layout `all`, soft prompt), the image size and the tokenizer files come from the
checkpoint's own config.json and tokenizer/ directory; no earlier stage runs. The recipe
(lion_reference.md 4.3): AdamW (0.9, 0.999), lr 1e-5, weight decay 0.05, global batch 64, constant lr
in the first epoch then a per-epoch cosine over 10 epochs of 6000 steps, task-homogeneous batches
drawn 1:1 from the image-level and region-level source (each keeps only its own task level).
"""

from lion_jax import run_config


def get_config(arg=None):
  run_config.parse_arg(arg)  # takes no arguments: the size comes from the checkpoint
  config = run_config.base_config("xl")
  config.model_from_pretrained = True
  config.data.sources = {
    level: dict(run_config.source(), task_types=[level]) for level in ("image_level", "region_level")
  }
  config.data.homogeneous_batches = True
  config.stages = {
    "finetune": run_config.stage("all", {"image_level": 1.0, "region_level": 1.0}, num_steps=60_000, export=True)
  }
  config.run_stages = "finetune"
  return config
