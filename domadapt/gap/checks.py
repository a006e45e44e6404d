"""Input checks shared by the gap metrics."""

from __future__ import annotations

import numpy as np

from domadapt._checks import check_seed  # noqa: F401 (one rule for every seed, re-exported)


def as_features(source_features, target_features, *, minimum=2):
    """Return both inputs as 2-D float arrays, or raise a clear error.

    Accepts numpy arrays, tensors and anything ``np.asarray`` reads. Features of
    rank > 2 (feature maps) are rejected: pool them first (``da.gap.features`` does).
    """
    arrays = []
    for name, value in (("source_features", source_features), ("target_features", target_features)):
        if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            value = value.numpy()
        try:
            array = np.asarray(value)
        except Exception as error:
            raise TypeError(f"Argument `{name}`: could not be read as an array ({error}).") from None
        if array.dtype == object or np.issubdtype(array.dtype, np.complexfloating) or not np.issubdtype(
            array.dtype, np.number
        ):
            raise TypeError(f"Argument `{name}`: expected a numeric array; received dtype {array.dtype}.")
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(
                f"Argument `{name}`: expected features of shape (num_samples, num_features); received shape "
                f"{array.shape}. Pool feature maps first, e.g. with da.gap.features(backbone, ...)."
            )
        if array.shape[0] < minimum:
            raise ValueError(
                f"Argument `{name}`: needs at least {minimum} samples; received {array.shape[0]}."
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"Argument `{name}`: contains NaN or inf values.")
        arrays.append(array)
    if arrays[0].shape[1] < 1:
        raise ValueError(f"Argument `source_features`: needs at least one feature per sample; received shape "
                         f"{arrays[0].shape}.")
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise ValueError(
            f"`source_features` and `target_features` must have the same width; received "
            f"{arrays[0].shape[1]} and {arrays[1].shape[1]}."
        )
    return arrays[0], arrays[1]


def subsample(features, max_samples, rng):
    if max_samples is None or len(features) <= max_samples:
        return features
    return features[np.sort(rng.choice(len(features), max_samples, replace=False))]


def check_positive(value, name, integer=True):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"Argument `{name}` must be {kind}; received {name}={value!r}.")
    return value
