"""LION stage 2: region-level instruction tuning. Run:

  python -m lion_jax.main --config=configs/stage2.py:size=xl --workdir=DIR \
      --config.pretrained=CONVERTED_DIR --config.data.t5_vocab=spiece.model --config.data.bert_vocab=vocab.txt \
      --config.data.sources.<name>.records=... --config.data.sources.<name>.image_root=...

Starts from stage 1's final checkpoint in the same --workdir (or
--config.stages.stage2.init_from.stage1=OTHER_WORKDIR/stage1). Arguments: size=xl|xxl, steps=60000.
The shared parts come from lion_jax/run_config.py; this file holds the stage's own knobs.
"""

from lion_jax import run_config


def get_config(arg=None):
  args = run_config.parse_arg(arg, size="xl", steps=60_000)
  config = run_config.base_config(args.size)
  config.stages = {
    "stage2": run_config.stage(
      visual_input="aggregator",  # the vision aggregator; one adapter per FFN (region-level)
      mixture=run_config.region_level_mixture(),  # RefCOCO, RefCOCO+, RefCOCOg, Visual Genome regions
      num_steps=args.steps,
      init_from=("stage1",),
    )
  }  # what stage 1 trained and this model has
  config.run_stages = "stage2"
  return config
