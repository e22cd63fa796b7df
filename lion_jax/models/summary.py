"""Parameter counts of a model config, by module and frozen/trainable (nothing is allocated).

  python -m lion_jax.models.summary --preset flant5xl [--visual_input all] [--frozen 'vit/.*' ...]

Frozen means matched by a freezing rule (models.param_paths; LION's by default), as a stage's
`frozen` patterns decide in training.
"""

from __future__ import annotations

import argparse
import collections

import ml_collections
import numpy as np

from lion_jax.convert.mapping import flat_shapes
from lion_jax.models import param_paths
from lion_jax.models.lion import abstract_params
from lion_jax.models.presets import PRESETS, get


def count_params(config: ml_collections.ConfigDict, rule: param_paths.FreezeRule = param_paths.LION) -> dict[str, int]:
  """{'trainable': n, 'frozen': n, 'total': n, '<module>': n, ...}."""
  counts = collections.Counter()
  for path, shape in flat_shapes(abstract_params(config)).items():
    n = int(np.prod(shape))
    counts["frozen" if rule.is_frozen(path) else "trainable"] += n
    counts[param_paths.module_of(path)] += n
  counts["total"] = counts["frozen"] + counts["trainable"]
  return dict(counts)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="flant5xl")
  parser.add_argument("--visual_input", default="all", choices=["qformer", "aggregator", "all"])
  parser.add_argument("--frozen", nargs="*", default=list(param_paths.LION_FROZEN),
                      help="whole-path regular expressions of the frozen parameters (default: LION's rule)")
  args = parser.parse_args(argv)
  try:
    rule = param_paths.FreezeRule(args.frozen, "--frozen")
    config = get(args.preset, args.visual_input)
    rule.check(list(flat_shapes(abstract_params(config))))
  except ValueError as e:
    parser.error(str(e))
  counts = count_params(config, rule)
  for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"{name:>20s} {n:>16,d}  ({n / 1e6:,.2f}M)")


if __name__ == "__main__":
  main()
