"""Training curves of a run: every stage's metrics.jsonl laid end to end on one global-step axis.

  python -m lion_jax.plot WORKDIR [--out PATH]   # writes WORKDIR/curves.png by default

One panel for the training losses (the eval losses as markers), one per evaluation metric
`eval/<name>/<metric>`, with its blind twin `<metric>_blind` (dashed) where the run logged one.
Local workdirs only: copy a bucket workdir down first.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import sys
from collections.abc import Iterable

from lion_jax import errors
from lion_jax.evaluation import blind

TRAIN_LOSSES = ("loss", "loss_image_level", "loss_region_level")
# Eval losses join the training-loss panel; eval timings are not curves worth a panel.
_NOT_EVAL_PANELS = ("loss", "seconds")


def read_metrics(stage_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """`stage_dir/metrics.jsonl` as key -> (step, value) by step; a step a resumed run repeats keeps its last row."""
  by_key: dict[str, dict[int, float]] = {}
  with open(pathlib.Path(stage_dir) / "metrics.jsonl", encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a killed job (the resumed run appends after it)
        continue
      step = int(row.pop("step"))
      for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          by_key.setdefault(key, {})[step] = float(value)
  return {key: sorted(values.items()) for key, values in by_key.items()}


def stage_order(workdir: str | os.PathLike) -> list[str]:
  """The run's stages in order: config.json's run_stages, else the subdirectories with metrics.jsonl by name."""
  workdir = pathlib.Path(workdir)
  config = workdir / "config.json"
  if config.exists():
    names = [s.strip() for s in json.loads(config.read_text()).get("run_stages", "").split(",") if s.strip()]
    if names:
      return names
  return sorted(p.parent.name for p in workdir.glob("*/metrics.jsonl"))


def stage_offsets(stage_lengths: Iterable[int]) -> list[int]:
  """Where each stage starts on the global axis: the steps of all the stages before it."""
  return list(itertools.accumulate(stage_lengths, initial=0))[:-1]


def _eval_name_metric(key: str) -> tuple[str, str] | None:
  parts = key.split("/", 2)
  return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "eval" else None


def panels(keys: Iterable[str]) -> list[tuple[str, list[str]]]:
  """(title, keys) of each panel with data: the losses first, then one per eval metric key, by key; a
  blind score (`<metric>_blind`, evaluation.blind) shares its true twin's panel."""
  keys = set(keys)
  evals = {k: name_metric for k in sorted(keys) if (name_metric := _eval_name_metric(k))}
  losses = [k for k in TRAIN_LOSSES if k in keys] + [k for k, (_, m) in evals.items() if m == "loss"]
  layout = [("training loss", losses)] if losses else []
  twin = lambda k: k.removesuffix(blind.SUFFIX)
  for k, (name, metric) in evals.items():
    if metric in _NOT_EVAL_PANELS or (twin(k) != k and twin(k) in evals):
      continue  # a timing, or a blind score drawn with its twin
    layout.append((f"{name} {metric}", [k] + [k + blind.SUFFIX] * (k + blind.SUFFIX in evals)))
  return layout


def plot_run(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> pathlib.Path:
  """Draws the run's curves (see the module doc) to `out`, by default WORKDIR/curves.png."""
  # Imported here so that read_metrics' users need no matplotlib; a bare Figure on the Agg canvas
  # needs no display and, unlike pyplot, leaves the caller's (e.g. a notebook's) backend alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  workdir = pathlib.Path(workdir)
  stages = {
    name: read_metrics(workdir / name) for name in stage_order(workdir) if (workdir / name / "metrics.jsonl").exists()
  }
  stages = {name: metrics for name, metrics in stages.items() if metrics}
  if not stages:
    raise errors.UserError(f"no stage directory of {workdir} has a metrics.jsonl with rows")
  layout = panels(itertools.chain.from_iterable(stages.values()))
  if not layout:
    raise errors.UserError(f"{workdir} logged no loss or eval/<name>/<metric> metrics to plot")
  # A stage's length is its last logged step: train.py always logs the final one, so a finished stage's num_steps.
  lengths = [max(step for pairs in metrics.values() for step, _ in pairs) for metrics in stages.values()]
  offsets = dict(zip(stages, stage_offsets(lengths)))

  def series(key: str) -> tuple[list[float], list[float]]:
    """The key over all stages in global steps, a NaN between stages so that no line crosses a boundary."""
    xs, ys = [], []
    for name, metrics in stages.items():
      if key in metrics:
        if xs:
          xs.append(math.nan)
          ys.append(math.nan)
        xs += [offsets[name] + step for step, _ in metrics[key]]
        ys += [value for _, value in metrics[key]]
    return xs, ys

  fig = Figure(figsize=(10, 2.6 * len(layout)), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(layout), 1, sharex=True, squeeze=False)[:, 0]
  for ax, (title, keys) in zip(axes, layout):
    for key in keys:
      eval_key = _eval_name_metric(key)
      if eval_key is None:
        ax.plot(*series(key), "-", lw=1, label=key)
      elif eval_key[1] == "loss":
        ax.plot(*series(key), "o", ms=4, label=f"eval {eval_key[0]}")
      else:
        ax.plot(*series(key), "o--" if key.endswith(blind.SUFFIX) else "o-", ms=4, lw=1, label=eval_key[1])
    for name, offset in offsets.items():
      if offset:
        ax.axvline(offset, color="gray", ls="--", lw=0.8)
      ax.text(offset, 0.97, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="gray")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=8, loc="upper right")
  axes[-1].set_xlim(left=0)
  axes[-1].set_xlabel("global step")
  out = pathlib.Path(out) if out is not None else workdir / "curves.png"
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.plot", description="Draws a training run's curves, all stages on one global-step axis."
  )
  parser.add_argument("workdir", help="the run's workdir: config.json and one directory per stage with metrics.jsonl")
  parser.add_argument("--out", metavar="PATH", help="PNG to write (default: WORKDIR/curves.png)")
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: plot_and_report(args.workdir, args.out))


def plot_and_report(workdir: str, out: str | None) -> None:
  """The command line's body: plots and prints where to."""
  if not pathlib.Path(workdir).is_dir():
    raise errors.MissingFile(f"WORKDIR: no such folder: {workdir}")
  print(f"wrote {plot_run(workdir, out)}")


if __name__ == "__main__":
  sys.exit(main())
