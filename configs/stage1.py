"""LION stage 1. Run:

  python -m lion_jax.main --config=configs/stage1.py:size=xl --workdir=DIR \
      --config.pretrained=CONVERTED_DIR --config.data.t5_vocab=spiece.model --config.data.bert_vocab=vocab.txt \
      --config.data.sources.<name>.records=... --config.data.sources.<name>.image_root=...

Stages 2 and 3 start from the earlier stages' final checkpoints in the same --workdir (or
--config.stages.stage1.init_from.<stage>=OTHER_WORKDIR/<stage>).
"""

from lion_jax import run_config


def get_config(arg=None):
  return run_config.stage_config("stage1", arg)
