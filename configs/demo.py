"""The embedded demo: LION's three stages on generated synthetic data, tiny model, CPU, minutes.

  python -m lion_jax.main --config=configs/demo.py --workdir=/tmp/lion-demo

Generates the synthetic dataset into WORKDIR/data (once), trains stage 1 (Q-Former, image-level
tasks), stage 2 (aggregator, region-level tasks) and stage 3 (both, mixture of adapters) in
WORKDIR/stage1..3, exports the final model to WORKDIR/stage3/export, and evaluates it on the
synthetic validation split (caption CIDEr, VQA and REC accuracy: WORKDIR/results.json). The frozen
ViT and T5 are random (seeded): the demo shows the system working, not a useful model.
Arguments: configs/demo.py:steps=300,images=600,eval=64 (eval=0 skips the evaluation).
"""

from lion_jax import run_config as common


def get_config(arg=None):
  args = common.parse_arg(arg, steps=300, images=600, eval=64)
  config = common.base_config("tiny")
  config.model.dtype = "float32"
  config.frozen_dtype = "float32"
  config.synthetic.update(enabled=True, num_images=args.images, image_size=64, eval_limit=args.eval)
  config.data.sources = {
      "synthetic_image": dict(records="", image_root="", format="jsonl", task_types=["image_level"]),
      "synthetic_region": dict(records="", image_root="", format="jsonl", task_types=["region_level"]),
  }
  config.data.update(image_size=28, max_input_len=64, max_target_len=24, max_qformer_len=32)
  config.global_batch_size = 16
  config.optimizer.update(lr=1e-3, schedule="warmup_cosine", warmup_steps=10, min_lr=1e-4)
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  stages = common.lion_stages(args.steps)
  stages.stage1.mixture = {"synthetic_image": 1.0}
  stages.stage2.mixture = {"synthetic_region": 1.0}
  stages.stage3.mixture = {"synthetic_image": 1.0, "synthetic_region": 1.0}
  config.stages = stages
  config.run_stages = "stage1,stage2,stage3"
  return config
