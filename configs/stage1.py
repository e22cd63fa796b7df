"""LION stage 1. Run:

  python -m lion_jax.main --config=configs/stage1.py:size=xl --workdir=DIR \
      --config.pretrained=CONVERTED_DIR --config.data.t5_vocab=spiece.model --config.data.bert_vocab=vocab.txt \
      --config.data.sources.<name>.records=... --config.data.sources.<name>.image_root=...

Stages 2 and 3 start from the earlier stages' final checkpoints in the same --workdir (or
--config.stages.stage1.init_from.<stage>=OTHER_WORKDIR/<stage>).
"""

from lion_jax import run_config as common


def get_config(arg=None):
  args = common.parse_arg(arg, size="xl")
  config = common.base_config(args.size)
  config.run_stages = "stage1"
  return config
