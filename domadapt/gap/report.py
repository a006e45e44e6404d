"""Per-layer gap profile: where in a network two domains drift apart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from domadapt._files import png_path
from domadapt.gap.checks import check_positive, check_seed, subsample
from domadapt.gap.classifier import domain_classifier_auc, proxy_a_distance
from domadapt.gap.features import _POOL, as_images, check_same_scale, pooled_model
from domadapt.gap.kernels import kid, mmd
from domadapt.gap.statistics import coral, frechet

METRICS = {
    "mmd": lambda s, t: mmd(s, t),
    "coral": coral,
    "frechet": frechet,
    "kid": lambda s, t: kid(s, t, subsets=20),
    "proxy_a_distance": proxy_a_distance,
    "domain_classifier_auc": domain_classifier_auc,
}
DEFAULT_METRICS = ("mmd", "frechet", "coral", "proxy_a_distance")


def _check_writable(path, overwrite):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Argument `path`: {path} is a folder; expected a file path.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class GapReport:
    """The gap between two image sets at several depths of a network.

    Attributes:
        rows: one dict per layer: ``{"layer", "width", <metric>: value, ...}``,
            from the input ("pixels") to the last layer.
        metrics: the metric names measured.
        embedding: 2-D PCA coordinates of the last layer's features,
            ``{"source": (n, 2), "target": (m, 2)}``.
        num_source, num_target: images measured per domain.
    """

    rows: list
    metrics: tuple
    embedding: dict = field(default_factory=dict)
    num_source: int = 0
    num_target: int = 0

    def __str__(self):
        header = f"{'layer':<28}{'width':>7}" + "".join(f"{m:>23}" for m in self.metrics)
        lines = [f"Domain gap per layer ({self.num_source} source vs {self.num_target} target images; "
                 "lower is closer for every metric)",
                 header, "-" * len(header)]
        for row in self.rows:
            lines.append(f"{row['layer'][:27]:<28}{row['width']:>7}" + "".join(f"{row[m]:>23.4g}" for m in self.metrics))
        return "\n".join(lines)

    def to_dict(self):
        return {
            "metrics": list(self.metrics),
            "rows": self.rows,
            "num_source": self.num_source,
            "num_target": self.num_target,
        }

    def to_json(self, path, overwrite=False):
        """Write the table as JSON; refuses to replace an existing file unless ``overwrite=True``."""
        path = _check_writable(path, overwrite)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def plot(self, path, overwrite=False):
        """Save a PNG: the per-layer profile (each metric scaled to its maximum) and a PCA view of the last layer.

        ``path`` gains ``.png`` when it has no suffix (the path returned is the file written); an existing
        file is replaced only with ``overwrite=True``. matplotlib's global backend is left as it was.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("GapReport.plot needs matplotlib: pip install 'domadapt[plot]'") from None
        path = _check_writable(png_path(path), overwrite)
        # A Figure of its own (Agg canvas), not pyplot: matplotlib.use("Agg") switched a notebook's backend.
        figure = Figure(figsize=(12, 4.5), layout="constrained")
        profile, scatter = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
        positions = np.arange(len(self.rows))
        for metric in self.metrics:
            values = np.array([row[metric] for row in self.rows], dtype=float)
            scale = np.max(np.abs(values)) or 1.0
            profile.plot(positions, values / scale, marker="o", label=metric)
        profile.set_xticks(positions, [row["layer"] for row in self.rows], rotation=35, ha="right", fontsize=8)
        profile.set_ylabel("gap (scaled to each metric's maximum)")
        profile.set_title("Where the domain gap lives")
        profile.legend(fontsize=8)
        if self.embedding:
            scatter.scatter(*self.embedding["source"].T, s=6, alpha=0.5, label="source")
            scatter.scatter(*self.embedding["target"].T, s=6, alpha=0.5, label="target")
            scatter.legend()
        scatter.set_title(f"PCA of {self.rows[-1]['layer']} features")
        scatter.set_xticks([])
        scatter.set_yticks([])
        figure.savefig(path, dpi=110, format="png")
        return path


def _auto_layers(model, count=6):
    """Evenly spaced layers with 2-D or 4-D outputs, always ending with the last one."""
    candidates = [
        layer for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(getattr(layer, "output", None).shape) in (2, 4)
    ]
    if not candidates:
        return []
    if len(candidates) <= count:
        return candidates
    picks = np.unique(np.linspace(0, len(candidates) - 1, count).round().astype(int))
    return [candidates[i] for i in picks]


def _pca(source, target, components=2):
    pooled = np.concatenate([source, target]).astype(np.float64)
    mean = pooled.mean(axis=0)
    _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
    basis = vt[:components].T
    if basis.shape[1] < components:
        basis = np.pad(basis, ((0, 0), (0, components - basis.shape[1])))
    return (source - mean) @ basis, (target - mean) @ basis


def pixel_features(images, side=8):
    """Images average-pooled to at most side x side, flattened: the input-level row (other inputs: flattened)."""
    tensor = tf.convert_to_tensor(images, tf.float32)
    if tensor.shape.rank != 4:  # feature vectors, sequences, volumes: no 2-D pooling to do
        return tensor.numpy().reshape(len(images), -1)
    height, width = tensor.shape[1], tensor.shape[2]
    tensor = tf.image.resize(tensor, (min(side, height), min(side, width)), method="area")
    return tensor.numpy().reshape(len(images), -1)


def measure(backbone, source_images, target_images, *, layers="auto", metrics=DEFAULT_METRICS,
            max_samples=1000, batch_size=128, seed=0, verbose="auto"):
    """Measure the gap between two image sets at the input and at several layers of a backbone.

    Args:
        backbone: a functional/Sequential Keras model (or a ``da.DomainAdapter``).
        source_images, target_images: image arrays (N, H, W, C), scaled alike (one in
            [0, 1] and the other in [0, 255] is a ``ValueError``).
        layers: ``"auto"`` (up to 6 evenly spaced layers, ending at the output),
            a list of layer names, or ``"output"``.
        metrics: names from ``mmd``, ``frechet``, ``coral``, ``kid``,
            ``proxy_a_distance``, ``domain_classifier_auc``.
        max_samples: images per domain (a random subsample, seeded).

    Returns:
        :class:`GapReport`.

    Example:

    ```python
    import numpy as np, keras, domadapt as da
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 3)])
    rng = np.random.default_rng(0)
    report = da.gap.measure(backbone, rng.random((50, 8, 8, 3)), rng.random((50, 8, 8, 3)) + 0.5, verbose=0)
    print(report)
    ```
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"Argument `metrics`: unknown {unknown}; choose from {sorted(METRICS)}.")
    check_positive(max_samples, "max_samples")
    if max_samples < 4:  # proxy-A-distance and the domain classifier hold out half of each domain
        raise ValueError(f"Argument `max_samples` must be at least 4 (images per domain); received "
                         f"max_samples={max_samples!r}.")
    check_positive(batch_size, "batch_size")
    model = getattr(backbone, "feature_extractor", backbone)
    pooled = pooled_model(model)  # validates the backbone
    image_shape = tuple(pooled.input_shape[1:])
    rng = np.random.default_rng(check_seed(seed))
    checked = {}
    for name, value in (("source_images", source_images), ("target_images", target_images)):
        if isinstance(value, tf.data.Dataset):
            raise TypeError(f"Argument `{name}`: measure takes image arrays (it subsamples them); received a "
                            "tf.data.Dataset. Take a sample first, e.g. np.concatenate(list(dataset.take(8)"
                            ".as_numpy_iterator())), or use da.gap.features for datasets.")
        checked[name] = as_images(value, name, image_shape)
        if len(checked[name]) < 4:  # proxy-A-distance and the domain classifier hold out half of each domain
            raise ValueError(f"Argument `{name}`: needs at least 4 images; received {len(checked[name])}.")
    check_same_scale(checked)
    source = subsample(checked["source_images"], max_samples, rng).astype("float32")
    target = subsample(checked["target_images"], max_samples, rng).astype("float32")

    if layers == "output":
        chosen = []
    elif layers == "auto":
        chosen = _auto_layers(model)
    else:
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not all(
                isinstance(name, str) for name in layers):
            raise TypeError(f"Argument `layers` must be 'auto', 'output' or a list of layer names; received {layers!r}.")
        names = [layer.name for layer in model.layers]
        missing = [name for name in layers if name not in names]
        if missing:
            raise ValueError(f"Argument `layers`: no layers named {missing} in the backbone; it has {names}.")
        chosen = [model.get_layer(name) for name in layers]
    outputs = []
    for layer in chosen:
        output = layer.output
        rank = len(getattr(output, "shape", ()))
        if rank != 2 and rank not in _POOL:
            raise ValueError(f"Argument `layers`: layer {layer.name!r} outputs shape {getattr(output, 'shape', None)}, "
                             "which cannot be pooled to one vector per image (ranks 2 to 5 can).")
        # Pooled as pooled_model pools a backbone's output: a Conv1D's (N, L, C) too, not only 2-D maps.
        outputs.append(_POOL[rank]()(output) if rank != 2 else output)
    last = pooled(model.inputs[0]) if not chosen or chosen[-1] is not model.layers[-1] else None
    names = [layer.name for layer in chosen]
    if last is not None:
        outputs.append(last)
        names.append("output")
    probe = keras.Model(model.inputs, outputs)

    per_layer = [("pixels", pixel_features(source), pixel_features(target))]
    source_outputs = probe.predict(source, batch_size=batch_size, verbose=verbose)
    target_outputs = probe.predict(target, batch_size=batch_size, verbose=verbose)
    if not isinstance(source_outputs, list):
        source_outputs, target_outputs = [source_outputs], [target_outputs]
    per_layer += list(zip(names, source_outputs, target_outputs))
    rows = []
    for name, source_features, target_features in per_layer:
        row = {"layer": name, "width": int(source_features.shape[1])}
        for metric in metrics:
            row[metric] = float(METRICS[metric](source_features, target_features))
        rows.append(row)
    source_2d, target_2d = _pca(per_layer[-1][1], per_layer[-1][2])
    return GapReport(rows, metrics, {"source": source_2d, "target": target_2d}, len(source), len(target))
