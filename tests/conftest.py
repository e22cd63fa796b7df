"""Test defaults: CPU with 8 fake devices (for sharding tests), absl flags marked parsed (Grain workers).

Reference packages (torch, transformers, pycocoevalcap, ...) are part of the `test` extra. Outside CI a
test whose reference is missing is skipped with the reason; in CI (`CI=true`) it fails instead.
"""

import os

# LLVM optimisation level 0: the tiny test programs compile ~20% faster on 2 cores, and every test
# compares numbers within tolerances (or bitwise between runs that share these flags).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One compilation cache for the whole test session, shared with the subprocesses tests start: the
# same tiny programs are compiled by many tests (2 CPU cores make each compile cost seconds).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lion-jax-test-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import importlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def require(module_name: str):
  """Imports a reference package; skips locally, fails in CI when it is missing."""
  try:
    return importlib.import_module(module_name)
  except ImportError as e:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
      pytest.fail(f"reference package {module_name!r} is required in CI: {e}")
    pytest.skip(f"reference package {module_name!r} not installed: {e}")
