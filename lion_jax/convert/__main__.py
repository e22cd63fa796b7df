"""Command line: convert released checkpoints into a lion-jax checkpoint directory.

  python -m lion_jax.convert instructblip --hf_dir DIR --out OUT
  python -m lion_jax.convert lion --lion_pth LION-FlanT5-XL.pth --eva_vit_pth eva_vit_g.pth \
      --flant5_dir flan-t5-xl --bert_vocab bert-base-uncased/vocab.txt --out OUT [--frozen_dtype bfloat16]

Tokenizer files are copied into OUT/tokenizer when found (HF InstructBLIP directories carry
`spiece.model` and `qformer_tokenizer/vocab.txt`; FlanT5 directories carry `spiece.model`) or given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from lion_jax.convert.converted import save_converted
from lion_jax.convert.hf import load_hf_instructblip
from lion_jax.convert.lion_release import load_lion_release
from lion_jax.convert.mapping import CheckpointMismatchError

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _first_existing(*paths):
  return next((p for p in paths if p is not None and Path(p).is_file()), None)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m lion_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="source", required=True)
  ib = sub.add_parser("instructblip", help="HF InstructBLIP-T5 directory -> stage-1 LION layout")
  ib.add_argument("--hf_dir", required=True)
  lion = sub.add_parser("lion", help="LION release: LION .pth + eva_vit_g.pth + FlanT5 directory")
  lion.add_argument("--lion_pth", required=True)
  lion.add_argument("--eva_vit_pth", required=True)
  lion.add_argument("--flant5_dir", required=True)
  lion.add_argument("--frozen_dtype", choices=sorted(DTYPES), default="float32",
                    help="storage dtype of the frozen ViT and T5 body")
  for p in (ib, lion):
    p.add_argument("--out", required=True, help="output directory (must not hold a checkpoint yet)")
    p.add_argument("--t5_vocab", help="T5 SentencePiece model (default: found next to the weights)")
    p.add_argument("--bert_vocab", help="Q-Former WordPiece vocab.txt")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.source == "instructblip":
      config, params = load_hf_instructblip(args.hf_dir, progress=True)
      root = Path(args.hf_dir)
      t5_vocab = _first_existing(args.t5_vocab, root / "spiece.model")
      bert_vocab = _first_existing(args.bert_vocab, root / "qformer_tokenizer" / "vocab.txt")
      sources = {"hf_dir": str(root)}
    else:
      config, params = load_lion_release(lion_pth=args.lion_pth, eva_vit_pth=args.eva_vit_pth,
                                         flant5_dir=args.flant5_dir, frozen_dtype=DTYPES[args.frozen_dtype],
                                         progress=True)
      t5_vocab = _first_existing(args.t5_vocab, Path(args.flant5_dir) / "spiece.model")
      bert_vocab = _first_existing(args.bert_vocab)
      sources = {k: str(getattr(args, k)) for k in ("lion_pth", "eva_vit_pth", "flant5_dir")}
    out = save_converted(args.out, config, params, t5_vocab=t5_vocab, bert_vocab=bert_vocab, sources=sources)
  except (FileNotFoundError, FileExistsError, ValueError, CheckpointMismatchError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out} (visual_input={config.visual_input}, tokenizer files: "
        f"{'t5 ' if t5_vocab else ''}{'bert' if bert_vocab else ''})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
