"""The embedded demo: a tiny LION trained end to end on generated synthetic data, on the CPU.

  python -m lion_jax.main --config=configs/demo.py --workdir=/tmp/lion-demo

Generates the synthetic dataset into WORKDIR/data (once), then runs four stages in WORKDIR/<stage>:
  pretrain  ViT, Q-Former, aggregator and T5 trained together from scratch in the `all` layout, without
            adapters, soft prompt or tags: the stand-in for the EVA-CLIP / FlanT5 / InstructBLIP towers
            real LION starts from. It trains on both task levels, because the towers LION starts from
            already see objects and where they are, and the frozen T5 must already be able to read the
            aggregator's patch tokens and write box coordinates;
  stage1-3  LION's recipe from that export (`config.pretrained`), ViT and T5 body frozen, tags behind
            the soft prompt.
Every stage evaluates caption CIDEr, VQA and REC accuracy, each beside its blind twin (the same records
with the images deranged: evaluation.blind), and the validation loss and image gain per task level on
the validation split, every 300 steps and at its end; the final export is evaluated again from disk
(WORKDIR/results.json), and WORKDIR/curves.png shows the training curves of the whole run.
Arguments: configs/demo.py:steps=100,images=2000,eval=64,size=demo (`steps` scales every stage's
length, eval=0 skips all evaluation, size=tiny swaps in the test preset's 28 px towers: seconds a
stage, for smoke runs and tests, but they learn little).

Why these choices (measured on the 2-core CI machine, docs/training.md "The demo"):
- 48 px images in 8 px patches (a 6 x 6 grid, 37 tokens per image), at most 3 shapes of 0.2-0.45 of
  the side: a shape spans 1-3 patches; at 64 px (65 tokens) pretraining ran 4.3 instead of 5.5
  steps/s and its REC was 0% too;
- widths 64, 8 Q-Former queries and a 4-layer T5, twice the test preset in width and depth;
- sine-cosine ViT positions and no dropout: from-scratch towers see positions from the first step,
  and XLA CPU compiles a stage in 7 s instead of 18 s without the dropout hash;
- every box coordinate is one T5 piece (lion_jax.data.synthetic), so a box is 12 target pieces;
  region-level training uses REC and REG (grounded captions need ~60 target pieces);
- stage 3 at lr 3e-4: it starts from two trained branches, and lr 1e-3 cost 14 VQA points of stage 1;
- a model that reads its image (docs/training.md "The demo", issue 27): the tags are as imperfect as a
  tagger's (TAG_NOISE), pretraining leaves them out, crops are off (a crop can cut away the shape the
  text names), box corners lie on a 4 px lattice, the Q-Former cross-attends in every layer, and the
  towers start at init std 0.1 and the T5 tables at d_model**-0.5 instead of the 0.02 and 1.0 that
  suit converted widths (at 0.02 the Q-Former's output hardly depends on the image).
"""

from lion_jax import run_config as common
from lion_jax.data import synthetic
from lion_jax.errors import UserError

STAGE_LENGTHS = {"pretrain": 9, "stage1": 2, "stage2": 4, "stage3": 3}  # x `steps`
GRID = 4  # box corners on a 4 px lattice: 13 values per coordinate
TAG_NOISE = 0.3  # tags as imperfect as a real tagger's (synthetic.tags_of)
# The towers' N(0, std) init at width 64 (EVA/BERT's 0.02 suits width ~1000: at 64 every block starts
# as the identity, and the Q-Former's output hardly depends on the image).
TOWER_INIT_STD = 0.1


def get_config(arg=None):
  args = common.parse_arg(arg, steps=100, images=2000, eval=64, size="demo")
  if args.size not in ("demo", "tiny"):
    raise UserError(f"size={args.size!r}; expected demo or tiny")
  config = common.base_config("tiny")
  config.model.dtype = "float32"
  config.frozen_dtype = "float32"
  image_size = 48 if args.size == "demo" else config.model.vit.image_size
  if args.size == "demo":
    m = config.model
    width, heads = 64, 4
    m.vit.update(
      image_size=image_size,
      patch_size=8,
      width=width,
      mlp_dim=2 * width,
      num_heads=heads,
      pos_embed_init="sincos2d",
      init_std=TOWER_INIT_STD,
    )
    m.qformer.update(
      width=width,
      mlp_dim=2 * width,
      num_heads=heads,
      num_queries=8,
      max_positions=96,
      cross_attention_freq=1,
      init_std=TOWER_INIT_STD,
    )
    m.aggregator.update(num_heads=heads, mlp_dim=2 * width, proj_dim=2 * width, init_std=TOWER_INIT_STD)
    m.t5.update(
      d_model=width,
      d_kv=width // heads,
      num_heads=heads,
      d_ff=2 * width,
      num_layers=4,
      num_decoder_layers=4,
      adapter_bottleneck=32,
      embedding_init_std=width**-0.5,
    )
  # No dropout: minutes of training on thousands of images do not overfit, and XLA CPU compiles the
  # dropout hash slowly (a stage compiles in 7 s instead of 18 s).
  for tower in (config.model.t5, config.model.qformer, config.model.aggregator):
    tower.dropout_rate = 0.0
  config.synthetic.update(
    enabled=True,
    num_images=args.images,
    image_size=max(image_size, 32),
    eval_limit=args.eval,
    max_shapes=3,
    size_range=[0.2, 0.45],
    grid=GRID if args.size == "demo" else 1,
    tag_noise=TAG_NOISE,
  )
  config.data.sources = {
    "synthetic_image": dict(common.source(fmt="jsonl"), task_types=["image_level"]),
    "synthetic_region": dict(common.source(fmt="jsonl"), tasks=["rec", "reg"]),
  }
  # No crops: a crop can cut away the shape a caption or answer names.
  config.data.update(image_size=image_size, augment=False, **synthetic.TEXT_LENGTHS)
  config.global_batch_size = 16
  config.optimizer.update(lr=1e-3, schedule="warmup_cosine", warmup_steps=20, min_lr=1e-4)
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  lengths = {name: n * args.steps for name, n in STAGE_LENGTHS.items()}
  image, region = {"synthetic_image": 1.0}, {"synthetic_region": 1.0}
  config.stages = {
    # No tags in pretraining: noisy tags in the prompt are the easier signal, and the T5 learns to read
    # them instead of the pixels; LION's stages add them behind the soft prompt.
    "pretrain": common.pretrain_stage({**image, **region}, lengths["pretrain"], visual_input="all", tags=False),
    "stage1": common.stage("qformer", image, lengths["stage1"]),
    "stage2": common.stage("aggregator", region, lengths["stage2"], init_from=("stage1",)),
    # Starts from two trained branches: a full-size step would undo stage 1.
    "stage3": common.stage(
      "all", {**image, **region}, lengths["stage3"], init_from=("stage1", "stage2"), export=True, lr=3e-4
    ),
  }
  config.run_stages = "pretrain,stage1,stage2,stage3"
  if args.eval:
    # Every score beside its blind twin (images deranged): a score the blind model also reaches is the
    # prompt's, not the image's.
    blind = dict(every_steps=3 * args.steps, blind=True)  # and at the end of every stage
    config.evals = {
      "synthetic_caption": common.evaluator("caption", tasks=["caption"], limit=args.eval, **blind),
      "synthetic_vqa": common.evaluator("exact_match", tasks=["vqa"], limit=args.eval, **blind),
      "synthetic_rec": common.evaluator("rec", tasks=["rec"], limit=args.eval, **blind),
      "validation": common.evaluator("loss", tasks=["caption", "vqa", "rec", "reg"], limit=2 * args.eval, **blind),
    }
  return config
