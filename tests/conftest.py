"""Test defaults: CPU with 8 fake devices (for sharding tests), absl flags marked parsed (Grain workers).

Reference packages (torch, transformers, pycocoevalcap, ...) are part of the `test` extra, reference
programs (java) come from .ci/run. Outside CI a test whose reference is missing is skipped with the
reason; in CI (`CI=true`) it fails instead.
"""

import atexit
import os
import shutil
import tempfile

# LLVM optimisation level 0: the tiny test programs compile ~20% faster on 2 cores, and every test
# compares numbers within tolerances (or bitwise between runs that share these flags).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One compilation cache for the whole test session, shared with the subprocesses tests start: the
# same tiny programs are compiled by many tests (2 CPU cores make each compile cost seconds).
# The process that makes it (the pytest-xdist controller, or pytest alone) removes it at exit; the
# xdist workers inherit it, so they share compiled programs too.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lion-jax-test-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import importlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


# The longest files first, so that the two xdist workers (.ci/run) finish together: one starts on the
# trained run and the tests that read it, the other on the multi-process runs.
LONGEST_FIRST = ("test_train.py", "test_launch.py")


def pytest_collection_modifyitems(items):
  """The tests that read the trained `three_stages` run all live in tests/test_train.py: under
  pytest-xdist's `--dist loadfile` (.ci/run) a file goes to one worker, so the session fixture is
  trained once, not once per worker. (`--dist loadgroup` would group by mark, but xdist 3.8 cannot
  rename the node ids of pytest 9, so its groups are lost.) Files in LONGEST_FIRST are run first
  (with `--no-loadscope-reorder`, xdist keeps this order)."""
  elsewhere = [
    i.nodeid for i in items if "three_stages" in getattr(i, "fixturenames", ()) and i.path.name != "test_train.py"
  ]
  if elsewhere:
    raise pytest.UsageError(f"tests reading three_stages belong in tests/test_train.py: {elsewhere}")
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _unavailable(what: str):
  """Skips the test locally; in CI (`CI=true`) a missing reference fails it instead."""
  if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    pytest.fail(f"{what} is required in CI")
  pytest.skip(f"{what} is not available")


def require(module_name: str):
  """Imports a reference package; skips locally, fails in CI when it is missing."""
  try:
    return importlib.import_module(module_name)
  except ImportError as e:
    _unavailable(f"reference package {module_name!r} ({e})")


def require_program(name: str) -> str:
  """The path of a reference program on PATH (e.g. `java` for PTBTokenizer); skips locally, fails in CI."""
  path = shutil.which(name)
  if path is None:
    _unavailable(f"program {name!r} on PATH")
  return path


@pytest.fixture(scope="session")
def torch():
  """The torch reference package (tests comparing against PyTorch / HF code)."""
  return require("torch")


@pytest.fixture(scope="session")
def transformers():
  return require("transformers")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The synthetic dataset the trainer tests read (40 images)."""
  from lion_jax.data import synthetic

  root = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(root / "data", num_images=40, seed=0, image_size=64)
  return root / "data"


@pytest.fixture(scope="session")
def three_stages(data_dir, tmp_path_factory):
  """One demo-sized run of the demo's stages, pretrain -> 1 -> 2 -> 3, evaluating 8 records per
  evaluator at the end of each (checkpoints every 10 steps, all kept): (config, workdir, summaries by
  stage), trained once per session for every test module that reads it."""
  from lion_jax import train
  from tests.test_train import make_config

  workdir = tmp_path_factory.mktemp("three_stages")
  config = make_config(
    data_dir,
    workdir,
    stages_to_run="pretrain,stage1,stage2,stage3",
    eval_limit=8,
    checkpoint_every_steps=10,
    keep_checkpoints=10,
  )
  summaries = train.run(config, workdir)
  return config, workdir, {s["stage"]: s for s in summaries}
