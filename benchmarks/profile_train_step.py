"""Where the JAX train step of benchmarks/train_step_vs_hf.py spends its time on this machine.

  python -m benchmarks.profile_train_step [--steps 3] [--depth 6] [--top 25]

Traces --steps warmed-up steps with `jax.profiler`, reads the XLA CPU executor's op events back
(`jax.profiler.ProfileData`), maps every executed op to the model code that produced it (the
`op_name` metadata of the compiled HLO) and prints milliseconds per step: by kind of work (matmuls,
dropout, softmax, GELU, norms, layout copies, optimizer) and by model path (`--depth` path
components, layers folded together, forward and backward apart). Times are summed over the
executor's threads, so they add up to more than the wall-clock step on a multi-core machine.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path

from benchmarks.common import convert_to_jax, hf_instructblip
from benchmarks.train_step_vs_hf import benchmark_arrays, jax_train_step

# First match wins; patterns are searched in the op's model path.
CATEGORIES = (
  ("dropout", r"Dropout"),
  ("matmul", r"dot_general|conv_general"),
  ("attention softmax, masks, scaling", r"attn/|attention/"),
  ("gelu", r"erf|gelu"),
  ("norm", r"norm|rsqrt"),
  ("layout copies", r"transpose|reshape|copy"),
  ("optimizer and norms of the update", r"^fwd [^/]+$"),
)


def op_paths(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the model path it came from (its op_name metadata)."""
  return {m.group(1): m.group(2) for m in re.finditer(r"^\s*%([\w.\-]+) = .*?op_name=\"([^\"]+)\"", hlo_text, re.M)}


def readable(op_name: str) -> str:
  """An XLA op name as a short path, e.g.
  'jit(step_fn)/transpose(jvp(Lion))/Lion.encode/.../layers_3/ffn/dot_general' ->
  'bwd Lion/Lion.encode/.../L/ffn/dot_general'."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  path = re.sub(r"^jit\([^)]*\)/", "", op_name)
  unwrapped = None
  while unwrapped != path:  # nested transforms, innermost first, until nothing changes
    unwrapped, path = path, re.sub(r"(transpose|jvp)\(([^()]*)\)", r"\2", path)
  return f"{direction} " + re.sub(r"\b(blocks|layers|block|layer)_\d+\b", "L", path)


def shorten(path: str, depth: int) -> str:
  """The direction and the first `depth` components of a `readable` path."""
  direction, rest = path.split(" ", 1)
  return f"{direction} " + "/".join(rest.split("/")[:depth])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--depth", type=int, default=6)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()

  import jax

  config, params = convert_to_jax(hf_instructblip())
  compiled, _, state, frozen, batch = jax_train_step(config, params, benchmark_arrays())
  paths = op_paths(compiled.as_text())
  for _ in range(2):
    state, metrics = compiled(state, frozen, batch)
  jax.block_until_ready(metrics["loss"])
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(args.steps):
      state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready(metrics["loss"])
    jax.profiler.stop_trace()
    trace = jax.profiler.ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
    by_path, unknown = collections.Counter(), 0.0
    for plane in trace.planes:
      for line in plane.lines:
        if not line.name.startswith("tf_XLAEigen"):  # the executor's worker threads
          continue
        for event in line.events:
          if event.name in paths:
            by_path[readable(paths[event.name])] += event.duration_ns / 1e6 / args.steps
          elif not event.name.startswith(("ThunkExecutor", "Slinky")):
            unknown += event.duration_ns / 1e6 / args.steps
  by_category, by_short_path = collections.Counter(), collections.Counter()
  for path, ms in by_path.items():
    by_category[next((name for name, pattern in CATEGORIES if re.search(pattern, path)), "other")] += ms
    by_short_path[shorten(path, args.depth)] += ms
  print(
    f"op time per step, summed over threads: {sum(by_path.values()) + unknown:.0f} ms "
    f"({unknown:.0f} ms in ops without model metadata)"
  )
  for name, ms in by_category.most_common():
    print(f"  {ms:8.1f} ms  {name}")
  print(f"top {args.top} model paths:")
  for path, ms in by_short_path.most_common(args.top):
    print(f"  {ms:8.1f} ms  {path}")


if __name__ == "__main__":
  main()
