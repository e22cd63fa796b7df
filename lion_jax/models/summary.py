"""Parameter counts of a model config, by module and frozen/trainable (nothing is allocated).

  python -m lion_jax.models.summary --preset flant5xl [--visual_input all]
"""

from __future__ import annotations

import argparse
import collections

import ml_collections
import numpy as np

from lion_jax.convert.mapping import flat_shapes
from lion_jax.models.lion import abstract_params, is_frozen
from lion_jax.models.presets import PRESETS, get


def module_of(path: str) -> str:
  if path.startswith("t5/"):
    return "t5 adapters+gates" if "/moa/" in path else "t5 body"
  return path.split("/")[0]


def count_params(config: ml_collections.ConfigDict) -> dict[str, int]:
  """{'trainable': n, 'frozen': n, 'total': n, '<module>': n, ...}."""
  counts = collections.Counter()
  for path, shape in flat_shapes(abstract_params(config)).items():
    n = int(np.prod(shape))
    counts["frozen" if is_frozen(path) else "trainable"] += n
    counts[module_of(path)] += n
  counts["total"] = counts["frozen"] + counts["trainable"]
  return dict(counts)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="flant5xl")
  parser.add_argument("--visual_input", default="all", choices=["qformer", "aggregator", "all"])
  args = parser.parse_args(argv)
  counts = count_params(get(args.preset, args.visual_input))
  for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"{name:>20s} {n:>16,d}  ({n / 1e6:,.2f}M)")


if __name__ == "__main__":
  main()
