"""Inference: generation with HF semantics, candidate scoring, and the Predictor."""

from lion_jax.inference.generate import generate, score_candidates

__all__ = ["generate", "score_candidates"]
