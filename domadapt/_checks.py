"""Argument checks shared by modules that must not import TensorFlow (the folder readers run before it loads)."""

from __future__ import annotations

import numpy as np


def check_seed(seed):
    """None (fresh randomness) or a non-negative integer (numpy's generators take it), or a clear error."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Argument `seed` must be None or a non-negative integer; received seed={seed!r}.")
    return int(seed)
