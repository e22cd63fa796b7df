r"""Command line: convert released checkpoints into a lion-jax checkpoint directory.

  python -m lion_jax.convert instructblip --hf_dir DIR --out OUT [--scan_layers false]
  python -m lion_jax.convert lion --lion_pth LION-FlanT5-XL.pth --eva_vit_pth eva_vit_g.pth \
      --flant5_dir flan-t5-xl --bert_vocab bert-base-uncased/vocab.txt --out OUT [--frozen_dtype bfloat16]
  python -m lion_jax.convert ram --ram_pth ram_swin_large_14m.pth --tag_list ram_tag_list.txt \
      --thresholds ram_tag_list_threshold.txt --out OUT

Tokenizer files are copied into OUT/tokenizer when found (HF InstructBLIP directories carry
`spiece.model` and `qformer_tokenizer/vocab.txt`; FlanT5 directories carry `spiece.model`) or given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

from lion_jax import errors, paths
from lion_jax.convert.converted import save_converted
from lion_jax.convert.hf import load_hf_instructblip
from lion_jax.convert.lion_release import load_lion_release
from lion_jax.convert.ram import TAG_LIST_NAME, THRESHOLDS_NAME, load_ram_release
from lion_jax.models import presets

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# The inputs each source reads, checked before the (long) loading starts.
INPUT_FILES = {"instructblip": (), "lion": ("lion_pth", "eva_vit_pth"), "ram": ("ram_pth", "tag_list", "thresholds")}
INPUT_DIRS = {"instructblip": ("hf_dir",), "lion": ("flant5_dir",), "ram": ()}


def _first_existing(*paths):
  return next((p for p in paths if p is not None and Path(p).is_file()), None)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  sub = parser.add_subparsers(dest="source", required=True)
  ib = sub.add_parser("instructblip", help="HF InstructBLIP-T5 directory -> stage-1 LION layout")
  ib.add_argument(
    "--hf_dir", required=True, metavar="DIR", help="HF InstructBLIP-FlanT5 directory (config.json, *.safetensors)"
  )
  lion = sub.add_parser("lion", help="LION release: LION .pth + eva_vit_g.pth + FlanT5 directory")
  lion.add_argument("--lion_pth", required=True, metavar="FILE", help="the released LION-FlanT5-*.pth")
  lion.add_argument("--eva_vit_pth", required=True, metavar="FILE", help="EVA-CLIP ViT-g weights (eva_vit_g.pth)")
  lion.add_argument("--flant5_dir", required=True, metavar="DIR", help="HF FlanT5 directory (flan-t5-xl or -xxl)")
  lion.add_argument(
    "--frozen_dtype",
    choices=sorted(DTYPES),
    default="float32",
    help="storage dtype of the frozen ViT and T5 body (default: %(default)s)",
  )
  for p, t5_default, bert_default in (
    (ib, "HF_DIR/spiece.model", "HF_DIR/qformer_tokenizer/vocab.txt"),
    (lion, "FLANT5_DIR/spiece.model", "none"),
  ):
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not hold a checkpoint yet)")
    p.add_argument(
      "--scan_layers",
      choices=("true", "false"),
      default="true",
      help="write the layers stacked for scanning, as the presets run them (default: %(default)s; either "
      "layout loads into either: docs/model.md)",
    )
    p.add_argument("--t5_vocab", metavar="FILE", help=f"T5 SentencePiece model (default: {t5_default}, if there)")
    p.add_argument("--bert_vocab", metavar="FILE", help=f"Q-Former WordPiece vocab.txt (default: {bert_default})")
  ram = sub.add_parser("ram", help="the RAM tagger LION uses: ram_swin_large_14m.pth + its tag list and thresholds")
  ram.add_argument("--ram_pth", required=True, metavar="FILE", help="the released ram_swin_large_14m.pth")
  ram.add_argument("--tag_list", required=True, metavar="FILE", help="ram_tag_list.txt (one English tag per line)")
  ram.add_argument("--thresholds", required=True, metavar="FILE", help="ram_tag_list_threshold.txt (one per tag)")
  ram.add_argument("--out", required=True, metavar="DIR", help="output directory (must not hold a checkpoint yet)")
  ram.add_argument(
    "--preset",
    choices=sorted(presets.RAM_PRESETS),
    default="ram_swin_large",
    help="the tagger's dims (default: %(default)s, the release; tiny: tests)",
  )
  return parser.parse_args(argv)


def check_paths(args: argparse.Namespace) -> None:
  """Fails on a missing input or an --out that already holds a checkpoint before minutes of loading, not after."""
  for flag in INPUT_FILES[args.source] + ("t5_vocab", "bert_vocab"):
    value = getattr(args, flag, None)
    if value is not None and not Path(value).is_file():
      raise errors.MissingFile(f"--{flag}: no such file: {value}")
  for flag in INPUT_DIRS[args.source]:
    if not Path(getattr(args, flag)).is_dir():
      raise errors.MissingFile(f"--{flag}: no such folder: {getattr(args, flag)}")
  if (paths.as_path(args.out) / "params").exists():
    raise errors.UserError(f"--out: {args.out}/params already exists; choose a new output directory")


def convert(args: argparse.Namespace) -> None:
  """Loads the released weights the flags name and writes the converted directory."""
  check_paths(args)
  if args.source == "ram":
    convert_ram(args)
    return
  if args.source == "instructblip":
    config, params = load_hf_instructblip(args.hf_dir, scan_layers=args.scan_layers == "true", progress=True)
    root = Path(args.hf_dir)
    t5_vocab = _first_existing(args.t5_vocab, root / "spiece.model")
    bert_vocab = _first_existing(args.bert_vocab, root / "qformer_tokenizer" / "vocab.txt")
    sources = {"hf_dir": str(root)}
  else:
    config, params = load_lion_release(
      lion_pth=args.lion_pth,
      eva_vit_pth=args.eva_vit_pth,
      flant5_dir=args.flant5_dir,
      frozen_dtype=DTYPES[args.frozen_dtype],
      scan_layers=args.scan_layers == "true",
      progress=True,
    )
    t5_vocab = _first_existing(args.t5_vocab, Path(args.flant5_dir) / "spiece.model")
    bert_vocab = _first_existing(args.bert_vocab)
    sources = {k: str(getattr(args, k)) for k in ("lion_pth", "eva_vit_pth", "flant5_dir")}
  out = save_converted(args.out, config, params, t5_vocab=t5_vocab, bert_vocab=bert_vocab, sources=sources)
  print(
    f"wrote {out} (visual_input={config.visual_input}, tokenizer files: "
    f"{'t5 ' if t5_vocab else ''}{'bert' if bert_vocab else ''})"
  )


def convert_ram(args: argparse.Namespace) -> None:
  config, params, unused = load_ram_release(args.ram_pth, args.tag_list, args.thresholds, args.preset)
  out = save_converted(
    args.out,
    config,
    params,
    files={TAG_LIST_NAME: args.tag_list, THRESHOLDS_NAME: args.thresholds},
    sources={k: str(getattr(args, k)) for k in INPUT_FILES["ram"]},
  )
  ignored = ", ".join(f"{n} under {prefix}." for prefix, n in sorted(unused.items())) or "none"
  print(f"wrote {out} ({config.num_classes} tag classes); tensors tagging does not read: {ignored}")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  return errors.exit_code(lambda: convert(args))


if __name__ == "__main__":
  sys.exit(main())
