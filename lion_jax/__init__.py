"""lion-jax: LION (dual-level visual knowledge multimodal LLM) in JAX/Flax."""

import os
import re

__version__ = "0.1.0"

# Several host-platform (CPU) devices, as tests, the planner and local multi-process runs use: XLA's
# CPU scheduler that optimises for concurrency lets the devices of one program issue independent
# collectives in different orders, which deadlocks a scanned layer stack on a (2, 2, 2) mesh (the
# rendezvous aborts after 40 s; tests/test_train.py's mesh tests). Only the CPU backend reads the
# flag, and only if it is set before that backend starts.
_CPU_DEVICES = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
if _CPU_DEVICES and int(_CPU_DEVICES.group(1)) > 1 and "concurrency_optimized_scheduler" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
