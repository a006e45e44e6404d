"""Image data, offline: folders and arrays of images (read in memory or streamed; the
rules are in :mod:`domadapt.folders`), the IDX format (Fashion-MNIST), and a
ready-made source/target pair (sunny vs rainy Fashion-MNIST) with a small CNN for it,
foggy 8x8 digits with a batch-normalised CNN, and synthetic segmentation scenes
(shapes by day and at night).

The pair and the CNN are what the demo and the benchmarks train on; they live here,
in one public place, so that editing the demo cannot change a benchmark.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from domadapt.folders import (
    BACKGROUND,
    IMAGE_SUFFIXES,
    RESIZE_POLICIES,
    ImageFolder,
    SkippedFile,
    decode_image,
    image_folder,
    read_images,
    read_labeled_folder,
)

__all__ = [
    "BACKGROUND",
    "DEBIAN_FASHION_MNIST",
    "IMAGE_SUFFIXES",
    "RESIZE_POLICIES",
    "ImageFolder",
    "SkippedFile",
    "batchnorm_digits_cnn",
    "decode_image",
    "foggy_digits",
    "image_folder",
    "load_fashion_mnist",
    "load_sunny_rainy",
    "read_idx",
    "read_images",
    "read_labeled_folder",
    "render_rain",
    "shape_scenes",
    "small_cnn",
]

# Where Debian's `dataset-fashion-mnist` package puts the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (plain or gzipped), the format of MNIST and Fashion-MNIST.

    Format: two zero bytes, a dtype code, the number of dimensions n, n big-endian
    uint32 sizes, then the data in row-major order.

    Example:

    ```python
    from domadapt.datasets import read_idx
    images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # (10000, 28, 28) uint8
    ```
    """
    path = Path(path)
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"  # by content, not by the file's suffix
    try:
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: corrupt compressed data
        raise ValueError(f"{path}: could not be read as a gzip-compressed IDX file ({error}); it may be truncated "
                         "or corrupt.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    if rank > 32:  # numpy's arrays hold at most 64 dimensions; no IDX file in use has more than a few
        raise ValueError(f"{path} is not a valid IDX file: its header declares {rank} dimensions.")
    offset = 4 + 4 * rank
    if len(data) < offset:
        raise ValueError(f"{path}: the IDX header is cut off ({len(data)} bytes, {offset} expected for rank {rank}).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    expected = math.prod(shape) * dtype.itemsize  # Python integers: np.prod wraps at 2**64 (a crafted header)
    if len(data) - offset != expected or any(size > 2**31 for size in shape):
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - offset} bytes follow.")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def load_fashion_mnist(directory=None):
    """Fashion-MNIST as ``((train_images, train_labels), (test_images, test_labels))``, uint8 images (N, 28, 28).

    Reads the four standard IDX files from ``directory``, else from
    ``$DOMADAPT_FASHION_MNIST``, else from Debian's package path
    (``apt-get install dataset-fashion-mnist``). Nothing is downloaded.
    """
    if directory is not None and not Path(directory).is_dir():
        raise FileNotFoundError(f"Argument `directory`: {directory} is not a folder (it should hold Fashion-MNIST's "
                                "four IDX files); no other copy is used in its place.")
    named = os.environ.get("DOMADAPT_FASHION_MNIST") or None
    if directory is None and named and not Path(named).is_dir():  # the user named it: no other copy in its place
        raise FileNotFoundError(f"$DOMADAPT_FASHION_MNIST={named} is not a folder (it should hold Fashion-MNIST's "
                                "four IDX files); no other copy is used in its place.")
    candidates = [directory, named, DEBIAN_FASHION_MNIST]
    for candidate in candidates:
        if candidate is None or not Path(candidate).is_dir():
            continue
        folder = Path(candidate)
        try:
            splits = tuple((read_idx(_find(folder, f"{split}-images-idx3-ubyte")),
                            read_idx(_find(folder, f"{split}-labels-idx1-ubyte"))) for split in ("train", "t10k"))
        except FileNotFoundError:
            if candidate is directory or (directory is None and candidate is named):
                raise
            continue
        for (images, labels), split in zip(splits, ("train", "t10k")):
            # Swapped or foreign files read as IDX too: check what the docstring promises.
            if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
                raise ValueError(f"{folder}: {split}-images-idx3-ubyte holds {images.dtype} of shape {images.shape}; "
                                 "Fashion-MNIST's are uint8 (N, 28, 28).")
            if labels.ndim != 1 or (labels.size and int(labels.max()) > 9):
                raise ValueError(f"{folder}: {split}-labels-idx1-ubyte holds shape {labels.shape} with values up to "
                                 f"{labels.max() if labels.size else None}; Fashion-MNIST's are (N,) classes 0-9.")
            if len(images) != len(labels):
                raise ValueError(f"{folder}: {len(images)} {split} images but {len(labels)} {split} labels.")
        return splits
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found. Pass directory=, set DOMADAPT_FASHION_MNIST, "
        "or install Debian's package: apt-get install dataset-fashion-mnist."
    )


def render_rain(images: np.ndarray, seed: int) -> np.ndarray:
    """Render uint8 RGB images in rain: grey streaks (albumentations' RandomRain) over a
    grey, low-contrast veil (0.55 x + 70), as a wet overcast day looks next to a sunny one.

    Example:

    ```python
    import numpy as np
    from domadapt.datasets import render_rain
    rainy = render_rain(np.full((2, 28, 28, 3), 200, "uint8"), seed=0)  # darker, lower contrast
    ```
    """
    import albumentations as A

    transform = A.RandomRain(
        slant_range=(-15, 15), drop_length=5, drop_width=1, drop_color=(180, 180, 180),
        blur_value=1, brightness_coefficient=0.9, p=1.0,
    )
    transform.set_random_seed(seed)
    veiled = (images.astype("float32") * 0.55 + 70).astype("uint8")
    streaked = np.stack([transform(image=image)["image"] for image in veiled]).astype("float32")
    # Faint streaks: on 28-pixel images full-strength drops would hide the object.
    return (0.65 * veiled + 0.35 * streaked).astype("uint8")


def load_sunny_rainy(directory=None, per_domain=4000, test_size=2000, seed=0, shift=None):
    """A labeled source domain and a shifted target domain built from Fashion-MNIST.

    Source: clean ("sunny") RGB images with labels; target: other training images
    passed through ``shift(images, seed) -> images`` (default :func:`render_rain`).
    Fashion-MNIST is read by :func:`load_fashion_mnist`; without it, scikit-learn's
    8x8 digits upscaled to 24x24 stand in (600 images per domain).

    Returns:
        ``(name, splits)``: the data set's name and a dict of uint8 image arrays
        ``source_x``, ``target_x``, ``target_test_x``, ``source_test_x`` with int64
        labels ``source_y``, ``target_y`` (for few-label experiments; hidden from
        unsupervised training), ``target_test_y``, ``source_test_y``.

    Example:

    ```python
    from domadapt.datasets import load_sunny_rainy
    name, data = load_sunny_rainy(per_domain=200, test_size=100)
    print(name, data["source_x"].shape, data["target_x"].dtype)
    ```
    """
    from domadapt.data import check_positive_int, check_seed

    per_domain, test_size = check_positive_int(per_domain, "per_domain"), check_positive_int(test_size, "test_size")
    if check_seed(seed) is None:
        raise ValueError("Argument `seed` must be a non-negative integer; received seed=None.")
    shift = render_rain if shift is None else shift
    if not callable(shift):
        raise TypeError(f"Argument `shift` must be a function shift(images, seed) -> images; received {shift!r}.")
    try:
        (train_x, train_y), (test_x, test_y) = load_fashion_mnist(directory)
        # Source and target are disjoint training images: past half of them the target would come up short.
        if 2 * per_domain > len(train_x) or test_size > len(test_x):
            raise ValueError(f"Arguments `per_domain`={per_domain} and `test_size`={test_size}: Fashion-MNIST holds "
                             f"{len(train_x)} training images (per_domain at most {len(train_x) // 2}: source and "
                             f"target are disjoint) and {len(test_x)} test images.")
        name = "Fashion-MNIST"
    except FileNotFoundError:
        if directory is not None:  # a folder the user named is missing: no stand-in for it
            raise
        import cv2
        from sklearn.datasets import load_digits

        digits = load_digits()
        upscaled = np.stack([cv2.resize(im, (24, 24), interpolation=cv2.INTER_LINEAR) for im in digits.images])
        images = (upscaled * (255 / 16)).clip(0, 255).astype("uint8")
        order = np.random.default_rng(seed).permutation(len(images))
        images, labels = images[order], digits.target[order]
        train_x, train_y, test_x, test_y = images[:1200], labels[:1200], images[1200:], labels[1200:]
        per_domain, test_size = 600, len(test_x)
        name = "scikit-learn digits (Fashion-MNIST not found)"
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_x))
    source_index, target_index = order[:per_domain], order[per_domain : 2 * per_domain]

    def rgb(images):
        return np.repeat(images[..., None], 3, axis=-1)

    return name, {
        "source_x": rgb(train_x[source_index]),
        "source_y": train_y[source_index].astype("int64"),
        "target_x": shift(rgb(train_x[target_index]), seed=seed + 1),
        "target_y": train_y[target_index].astype("int64"),
        "target_test_x": shift(rgb(test_x[:test_size]), seed=seed + 2),
        "target_test_y": test_y[:test_size].astype("int64"),
        "source_test_x": rgb(test_x[:test_size]),
        "source_test_y": test_y[:test_size].astype("int64"),
    }


def foggy_digits(seed=0):
    """scikit-learn's 1,797 handwritten 8x8 digits: half clean (source), the other half through a
    foggy, low-contrast, noisy camera (target): ``0.35 x + 0.55 + N(0, 0.06)``. Source pixels lie in
    [0, 1]; target pixels are not clipped (the noise takes 0.5% of them above 1).

    The batch-norm shift of issue #25: per-domain statistics recover most of it
    (``benchmarks/results/foggy_digits.md``). Returns ``((source_images, source_labels),
    (target_images, target_labels))``, images ``(N, 8, 8, 1)`` float32.

    Example:

    ```python
    from domadapt.datasets import foggy_digits
    (source_images, source_labels), (target_images, target_labels) = foggy_digits()
    print(source_images.shape, target_images.mean() > source_images.mean())  # (898, 8, 8, 1) True
    ```
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    images = (digits.images[order] / 16.0).astype("float32")[..., None]
    labels = digits.target[order].astype("int64")
    half = len(images) // 2
    target = 0.35 * images[half:] + 0.55 + rng.normal(0.0, 0.06, images[half:].shape)
    return (images[:half], labels[:half]), (target.astype("float32"), labels[half:])


def batchnorm_digits_cnn():
    """A headless CNN with BatchNormalization for 8x8 one-channel images (two 3x3 convolutions, 16 and
    32 filters, each followed by BatchNormalization and ReLU; the second with stride 2).

    Example:

    ```python
    from domadapt.datasets import batchnorm_digits_cnn
    print(batchnorm_digits_cnn().output_shape)  # (None, 4, 4, 32)
    ```
    """
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(name="bn_0"), keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, strides=2, padding="same"), keras.layers.BatchNormalization(name="bn_1"),
        keras.layers.ReLU(),
    ])


def small_cnn(input_shape):
    """The small headless CNN the demo and benchmarks train: three 3x3 convolutions
    (16, 32, 64 filters, ReLU) with 2x2 max pooling between them.

    Example:

    ```python
    from domadapt.datasets import small_cnn
    print(small_cnn((28, 28, 3)).output_shape)  # (None, 7, 7, 64)
    ```
    """
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        ],
        name="small_cnn",
    )


def shape_scenes(rng, n, size=32, night=False):
    """Synthetic segmentation scenes: squares and discs on a textured background.

    Masks hold 0 (background), 1 (square), 2 (disc) and 255 (ignored) on a one-pixel
    ring around each shape. ``night=True`` renders the same kind of scene dark,
    low-contrast and noisy, by its own code (not a MimicAugment preset), so it can
    serve as a target shift that the presets were not built from. Used by
    ``benchmarks/tasks.py`` and the segmentation tests.

    Args:
        rng: a ``numpy.random.Generator`` (or an int seed for a fresh one); draws
            continue from it, so successive calls give new scenes.
        n: number of scenes.
        size: height and width in pixels.
        night: render at night.

    Returns:
        ``(images, masks)``: float32 ``(n, size, size, 1)`` in [0, 1] and int32 ``(n, size, size)``.

    Example:

    ```python
    import numpy as np
    from domadapt.datasets import shape_scenes
    rng = np.random.default_rng(0)
    day, day_masks = shape_scenes(rng, 4)
    night, night_masks = shape_scenes(rng, 4, night=True)
    print(day.shape, sorted(np.unique(day_masks)))  # (4, 32, 32, 1) [0, 1, 2, 255] (classes vary)
    ```
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size, 1), "float32")
    masks = np.zeros((n, size, size), "int32")
    for i in range(n):
        mask = np.zeros((size, size), "int32")
        edge = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            radius = rng.integers(3, 7)
            cy, cx = rng.integers(radius, size - radius, 2)
            if rng.random() < 0.5:
                inside = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
                grown = (np.abs(yy - cy) <= radius + 1) & (np.abs(xx - cx) <= radius + 1)
                label = 1
            else:
                distance = np.hypot(yy - cy, xx - cx)
                inside, grown, label = distance <= radius, distance <= radius + 1, 2
            edge |= grown & ~inside
            mask[inside] = label
        edge &= mask == 0
        texture = 0.5 + 0.5 * np.sin(xx / rng.uniform(1.5, 4.0) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(1.5, 4.0))
        if night:  # low contrast, dark, noisy
            image = 0.05 + 0.10 * texture + 0.40 * (mask > 0) + rng.normal(0, 0.08, mask.shape)
        else:
            image = 0.15 + 0.25 * texture + 0.6 * (mask > 0) + rng.normal(0, 0.02, mask.shape)
        images[i, ..., 0] = np.clip(image, 0, 1)
        mask[edge] = 255
        masks[i] = mask
    return images, masks
