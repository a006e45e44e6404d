"""Keras layers of domadapt."""

from domadapt.layers.gradient_reversal import GradientReversal

__all__ = ["GradientReversal"]
