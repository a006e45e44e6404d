import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(2)


def rotate(points, degrees):
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points @ rotation.T).astype("float32")


@pytest.fixture(scope="session")
def moons():
    """Two-moons source, and the same distribution rotated by 30 degrees as target."""
    from sklearn.datasets import make_moons

    source_x, source_y = make_moons(500, noise=0.1, random_state=0)
    target_x, target_y = make_moons(500, noise=0.1, random_state=1)
    return source_x.astype("float32"), source_y, rotate(target_x, 30), target_y


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 handwritten digits; target = low contrast, brighter (0.5 x + 0.4)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], data.target[order]
    return {
        "source_x": images[:900],
        "source_y": labels[:900],
        "source_test_x": images[900:1200],
        "source_test_y": labels[900:1200],
        "target_x": (images[900:] * 0.5 + 0.4).astype("float32"),
        "target_y": labels[900:],
    }


def mlp_backbone(input_dim=2, width=32):
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
        ]
    )


def conv_backbone():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
        ]
    )


def train_and_score(backbone, strategies, source_x, source_y, target_x, target_y, *, epochs, learning_rate=3e-3, num_classes=2, seed=0, **fit_kwargs):
    """Train an adapter with fixed seeds; return (target accuracy, history, adapter)."""
    import domadapt as da

    adapter = da.DomainAdapter(backbone, num_classes=num_classes, strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
    history = adapter.fit(
        source=(source_x, source_y), target=target_x, epochs=epochs, batch_size=64, verbose=0, seed=seed, **fit_kwargs
    )
    accuracy = adapter.evaluate(target_x, target_y, verbose=0)[1]
    return accuracy, history, adapter


@pytest.fixture(scope="session")
def photos():
    """Smooth synthetic 'scenes': colour gradients with a bright square, uint8, (8, 48, 48, 3)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:48] / 47.0
    images = []
    for _ in range(8):
        colour = rng.uniform(0.2, 1.0, 3)
        image = (0.5 * x[..., None] + 0.5 * y[..., None]) * colour
        top, left = rng.integers(4, 30, 2)
        image[top : top + 14, left : left + 14] = 0.95
        images.append(image)
    return (np.stack(images) * 255).astype("uint8")


@pytest.fixture
def pathological_folder(tmp_path):
    """A labeled photo folder with every pathology (broken files, odd formats, hidden entries, a symlink loop):
    a ``PathologicalFolder`` with ``root``, ``class_names``, ``used``/``skipped`` (paths relative to ``root``)."""
    from pathological_folder import write_pathological_folder

    return write_pathological_folder(tmp_path)
