"""LION stage 1: image-level instruction tuning. Run:

  python -m lion_jax.main --config=configs/stage1.py:size=xl --workdir=DIR \
      --config.pretrained=CONVERTED_DIR --config.data.t5_vocab=spiece.model --config.data.bert_vocab=vocab.txt \
      --config.data.sources.<name>.records=... --config.data.sources.<name>.image_root=...

Arguments: size=xl|xxl (the FlanT5 tower), steps=60000. The shared parts (model preset, data
sources, optimizer, mesh, logging) come from lion_jax/run_config.py; this file holds the stage's own
knobs (fields explained in lion_jax/stages.py).
"""

from lion_jax import run_config


def get_config(arg=None):
  args = run_config.parse_arg(arg, size="xl", steps=60_000)
  config = run_config.base_config(args.size)
  config.stages = {
    "stage1": run_config.stage(
      visual_input="qformer",  # the Q-Former branch; one adapter per FFN (image-level)
      mixture=run_config.image_level_mixture(),  # COCO captions, VQAv2, OK-VQA, A-OKVQA, TextCaps
      num_steps=args.steps,
      init_from=(),
    )
  }  # the pretrained towers only
  config.run_stages = "stage1"
  return config
