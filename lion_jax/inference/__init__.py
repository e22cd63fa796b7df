"""Inference: generation with HF semantics, candidate scoring, and the Predictor."""

from lion_jax.inference.generate import generate, score_candidates
from lion_jax.inference.predictor import Prediction, Predictor

__all__ = ["generate", "score_candidates", "Prediction", "Predictor"]
