"""lion-jax: LION (dual-level visual knowledge multimodal LLM) in JAX/Flax."""

__version__ = "0.1.0"
