"""LION stage 3: both levels, with the mixture of adapters and its per-task gates. Run:

  python -m lion_jax.main --config=configs/stage3.py:size=xl --workdir=DIR \
      --config.pretrained=CONVERTED_DIR --config.data.t5_vocab=spiece.model --config.data.bert_vocab=vocab.txt \
      --config.data.sources.<name>.records=... --config.data.sources.<name>.image_root=...

Starts from stages 1 and 2's final checkpoints in the same --workdir (or
--config.stages.stage3.init_from.<stage>=OTHER_WORKDIR/<stage>) and writes the export (a converted
checkpoint for lion_jax.predict and lion_jax.evaluate). Arguments: size=xl|xxl, steps=60000. The
shared parts come from lion_jax/run_config.py; this file holds the stage's own knobs.
"""

from lion_jax import run_config


def get_config(arg=None):
  args = run_config.parse_arg(arg, size="xl", steps=60_000)
  config = run_config.base_config(args.size)
  config.stages = {
    "stage3": run_config.stage(
      visual_input="all",  # Q-Former and aggregator; two adapters + gates per FFN
      mixture=run_config.both_levels_mixture(),  # image-level : region-level = 1 : 1
      num_steps=args.steps,
      init_from=("stage1", "stage2"),  # adapter 1 from stage 1, adapter 0 from stage 2
      export=True,
    )
  }
  config.run_stages = "stage3"
  return config
