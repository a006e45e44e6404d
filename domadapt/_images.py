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


def read_labeled_folder(path, image_size=None, max_images=None, seed=0, class_names=None):
    """``(images, labels, class_names)`` from a folder with one sub-folder of images per class.

    ``class_names`` fixes the label order (e.g. the source's, for a labeled target
    folder); a sub-folder not in it, or a class folder without images, is an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (expected one sub-folder of images per class).")
    folders = sorted(p for p in path.iterdir() if p.is_dir())
    if not folders:
        raise ValueError(f"{path} has no class sub-folders: put the images of each class in its own sub-folder.")
    names = [folder.name for folder in folders]
    if class_names is not None:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise ValueError(f"{path}: classes {unknown} are not among the source classes {list(class_names)}.")
        names = list(class_names)
    images, labels = [], []
    for label, name in enumerate(names):
        folder = path / name
        if not folder.is_dir():
            continue
        files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ValueError(f"{path}: class folder '{name}' holds no images.")
        batch = read_images(folder, image_size, max_images, seed=seed + label)
        images.append(batch)
        labels.append(np.full(len(batch), label, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels), names
