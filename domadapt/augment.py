"""Looking at augmentations: a preview grid of originals beside augmented images.

``PRESETS`` names every ``da.MimicAugment`` preset; ``TF_PRESETS`` their in-graph
versions (``engine="tf"``; every preset has one, as every ``from_target`` method).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domadapt.strategies.mimic_augment import PRESETS, TF_PRESETS, MimicAugment

__all__ = ["PRESETS", "TF_PRESETS", "preview"]


def preview(source_images, transform="rain", path="preview.png", *, num_images=6, severity=0.5, seed=0,
            overwrite=False):
    """Save a PNG grid: originals in the first row, each transform's output in the rows below.

    Args:
        source_images: a batch of images (N, H, W, C), uint8 or float in [0, 1].
        transform: a preset name, a ``da.MimicAugment``, or a list of them (one row each).
        path: where to write the PNG; an existing file is kept unless ``overwrite=True``.

    Returns:
        The path written.

    Example:

    ```python
    import numpy as np, domadapt as da
    images = (np.random.rand(6, 64, 64, 3) * 255).astype("uint8")
    da.augment.preview(images, ["rain", "fog"], path="/tmp/preview.png", overwrite=True)
    ```
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("preview needs matplotlib: pip install 'domadapt[plot]'") from None
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    images = np.asarray(source_images)[:num_images]
    if images.ndim != 4:
        raise ValueError(f"Argument `source_images`: expected (N, H, W, C); received shape {images.shape}.")
    transforms = transform if isinstance(transform, (list, tuple)) else [transform]
    rows = [("original", images)]
    for item in transforms:
        strategy = item if isinstance(item, MimicAugment) else MimicAugment(item, severity=severity, seed=seed)
        if isinstance(item, str):
            label = item
        else:
            label = strategy.reference_method or (
                strategy.transform if isinstance(strategy.transform, str) else type(strategy.transform).__name__)
            if strategy.engine != "auto":
                label = f"{label} ({strategy.engine})"
        rows.append((str(label), strategy.augment(images, seed=seed)))
    figure, axes = plt.subplots(len(rows), len(images), figsize=(1.6 * len(images), 1.6 * len(rows)), squeeze=False,
                                layout="constrained")
    for row, (label, batch) in enumerate(rows):
        for column, image in enumerate(batch):
            shown = image.astype("float32") / (255.0 if image.dtype == np.uint8 else 1.0)
            axes[row, column].imshow(np.clip(shown.squeeze(), 0, 1), cmap="gray" if shown.shape[-1] == 1 else None)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
