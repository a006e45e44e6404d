"""Reading image sets from folders or .npy/.npz files (for the command line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def read_images(path, image_size=None, max_images=None, seed=0):
    """Images from a folder (searched recursively), a ``.npy`` array or a ``.npz`` archive.

    Folders: a seeded random subset of ``max_images`` files is read and resized to
    ``image_size`` (height, width) as RGB uint8, so memory stays bounded. ``.npz``:
    the array under ``images`` or ``x``, else the first one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.is_dir():
        import keras

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        if max_images is not None and len(files) > max_images:
            chosen = np.random.default_rng(seed).choice(len(files), max_images, replace=False)
            files = [files[i] for i in sorted(chosen)]
        size = None if image_size is None else tuple(image_size)
        return np.stack(
            [keras.utils.img_to_array(keras.utils.load_img(f, target_size=size, color_mode="rgb"), dtype="uint8")
             for f in files]
        )
    if path.suffix == ".npy":
        images = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("images", "x") if k in archive), archive.files[0])
            images = archive[key]
    else:
        raise ValueError(f"{path}: expected a folder of images, a .npy or a .npz file.")
    if images.ndim == 3:
        images = images[..., None]
    if max_images is not None and len(images) > max_images:
        chosen = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        images = images[np.sort(chosen)]
    return images
