"""Offline image data: the IDX format (MNIST, Fashion-MNIST) from any path."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    offset = 4 + 4 * rank
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
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
    candidates = [directory, os.environ.get("DOMADAPT_FASHION_MNIST"), DEBIAN_FASHION_MNIST]
    for candidate in candidates:
        if candidate is None or not Path(candidate).is_dir():
            continue
        folder = Path(candidate)
        try:
            return (
                (read_idx(_find(folder, "train-images-idx3-ubyte")), read_idx(_find(folder, "train-labels-idx1-ubyte"))),
                (read_idx(_find(folder, "t10k-images-idx3-ubyte")), read_idx(_find(folder, "t10k-labels-idx1-ubyte"))),
            )
        except FileNotFoundError:
            if candidate is directory:
                raise
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found. Pass directory=, set DOMADAPT_FASHION_MNIST, "
        "or install Debian's package: apt-get install dataset-fashion-mnist."
    )
