"""Measure the domain gap between two image folders with a chosen backbone; no training.

    python -m domadapt.recipes.measure_only sunny/ rainy/ --backbone mobilenetv3small --json gap.json --plot gap.png

The same as `domadapt gap`. In Python, :func:`measure` below, with public functions only.
"""

import domadapt as da
from domadapt.backbones import load_backbone
from domadapt.datasets import read_images


def measure(source_dir, target_dir, backbone="mobilenetv3small", image_size=96, max_images=1000):
    source = read_images(source_dir, (image_size, image_size), max_images)
    target = read_images(target_dir, (image_size, image_size), max_images, seed=1)
    model = load_backbone(backbone, weights="auto", input_shape=source.shape[1:])
    return da.gap.measure(model, source, target, layers="auto")


def recipe():
    return []  # nothing to train: `domadapt run measure_only` is source-only training


if __name__ == "__main__":
    import sys

    from domadapt.cli import main

    sys.exit(main(["gap", *sys.argv[1:]]))
