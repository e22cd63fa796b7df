"""Checkpoint converters: HF InstructBLIP-T5, HF FlanT5, LAVIS EVA ViT and LION `.pth` -> lion-jax.

`python -m lion_jax.convert --help` writes a converted-checkpoint directory (see converted.py).
"""

from lion_jax.convert.converted import load_converted, save_converted
from lion_jax.convert.hf import load_hf_instructblip, load_hf_t5
from lion_jax.convert.lion_release import load_lion_release
from lion_jax.convert.mapping import CheckpointMismatchError

__all__ = [
  "load_hf_instructblip",
  "load_hf_t5",
  "load_lion_release",
  "load_converted",
  "save_converted",
  "CheckpointMismatchError",
]
