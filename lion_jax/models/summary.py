"""Parameter counts of a model config, by module and frozen/trainable (nothing is allocated).

  python -m lion_jax.models.summary --preset flant5xl [--visual_input all] [--frozen 'vit/.*' ...] [--table]

`--table` also prints every parameter (path, shape, dtype, size) with clu's parameter overview.

Frozen means matched by a freezing rule (models.param_paths; LION's by default), as a stage's
`frozen` patterns decide in training.
"""

from __future__ import annotations

import argparse
import collections
import sys

import ml_collections
import numpy as np
from clu import parameter_overview

from lion_jax import errors
from lion_jax.convert.mapping import flat_shapes
from lion_jax.models import layer_stack, param_paths
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.models.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--preset", choices=sorted(PRESETS), default="flant5xl", help="model preset (default: %(default)s)"
  )
  parser.add_argument(
    "--visual_input",
    default="all",
    choices=["qformer", "aggregator", "all"],
    help="which visual branches the model has, as a stage's visual_input (default: %(default)s)",
  )
  parser.add_argument(
    "--frozen",
    nargs="*",
    default=list(param_paths.LION_FROZEN),
    metavar="REGEX",
    help="whole-path regular expressions of the frozen parameters (default: LION's rule, %(default)s)",
  )
  parser.add_argument(
    "--table",
    action="store_true",
    help="also print every parameter's path, shape, dtype and size (default: %(default)s)",
  )
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: print_counts(args.preset, args.visual_input, args.frozen, args.table))


def print_counts(preset: str, visual_input: str, frozen: list[str], table: bool = False) -> None:
  """One line per module and for trainable / frozen / total, largest first (after the per-parameter
  table when asked for)."""
  config = get(preset, visual_input)
  rule = param_paths.FreezeRule(frozen, "--frozen", layer_stack.scanned_stacks(config))
  params = abstract_params(config)
  rule.check(list(flat_shapes(params)))
  if table:
    print(parameter_overview.get_parameter_overview(params, include_stats=False))
  for name, n in sorted(count_params(config, rule).items(), key=lambda kv: -kv[1]):
    print(f"{name:>20s} {n:>16,d}  ({n / 1e6:,.2f}M)")


if __name__ == "__main__":
  sys.exit(main())
