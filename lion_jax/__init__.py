"""lion-jax: LION (dual-level visual knowledge multimodal LLM) in JAX/Flax."""

import os
import re

__version__ = "0.1.0"


def _cpu_backend_defaults(xla_flags: str, platforms: str) -> str:
  """XLA_FLAGS plus the project's defaults for XLA's CPU backend, where the process runs on the CPU
  only (`JAX_PLATFORMS=cpu`, or several host-platform devices as tests, the planner and local
  multi-process runs use). Elsewhere nothing is added: XLA aborts on a flag its version does not
  know, and only the CPU backend reads these. A flag the user sets is kept as set.
  - No fusion emitters: XLA CPU's MLIR fusion emitters compile the project's programs ~40% slower
    (tiny stage-1 step: 6.3-7.5 s vs 3.8-4.6 s, 3 runs each) for no faster step (demo pretraining:
    5.9 vs 6.2 steps/s, the same losses; benchmarks/RESULTS.md), 2-core CI machine kind, 2026-12-02.
  - With several host-platform devices, no concurrency-optimised scheduler: it lets the devices of
    one program issue independent collectives in different orders, which deadlocks a scanned layer
    stack on a (2, 2, 2) mesh (the rendezvous aborts after 40 s; tests/test_train.py's mesh tests)."""
  devices = re.search(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
  several = devices is not None and int(devices.group(1)) > 1
  if platforms.strip().lower() != "cpu" and not several:
    return xla_flags
  defaults = ["--xla_cpu_use_fusion_emitters=false"]
  if several:
    defaults.append("--xla_cpu_enable_concurrency_optimized_scheduler=false")
  for flag in defaults:
    if flag.split("=")[0] not in xla_flags:
      xla_flags = f"{xla_flags} {flag}".strip()
  return xla_flags


def apply_cpu_backend_defaults() -> None:
  """Sets XLA_FLAGS to `_cpu_backend_defaults` of this process's environment (runs on import)."""
  os.environ["XLA_FLAGS"] = _cpu_backend_defaults(os.environ.get("XLA_FLAGS", ""), os.environ.get("JAX_PLATFORMS", ""))


def simulate_cpu_devices(count: int) -> None:
  """Makes this process run on `count` fake CPU devices (replacing any device count in XLA_FLAGS),
  with the CPU defaults for them: for entry points that choose their devices after this package's
  import and before jax starts (the planner, its benchmarks)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", "")).split()
  os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  apply_cpu_backend_defaults()


apply_cpu_backend_defaults()
