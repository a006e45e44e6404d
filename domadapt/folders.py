"""Image folders as people have them, read in memory or streamed through ``tf.data``.

One scanner and one decoder serve both paths:

- **What is read.** Files ending in ``.png .jpg .jpeg .webp .bmp .tif .tiff .gif``
  (any case). Hidden and system entries are ignored: names starting with ``.``
  (``.DS_Store``, ``._photo.jpg``, ``.ipynb_checkpoints``), ``__MACOSX``,
  ``Thumbs.db``, ``desktop.ini``. Symlinked folders are followed once (a loop is
  not followed twice). Other files (``notes.txt``) are ignored; photo formats that
  cannot be decoded here (``.heic``, ``.avif``, camera raw) are listed as skipped.
- **Labeled folders.** One sub-folder per class (searched recursively); labels
  follow the sorted class-folder names. Class names are composed Unicode (NFC):
  ``café`` written on macOS (decomposed, NFD) and elsewhere is one name, with one
  label. Images directly in the top folder are listed as skipped (they belong to
  no class).
- **Skipped, not fatal.** Empty, truncated, unreadable and non-image files are
  left out and listed as :class:`SkippedFile` ``(path, reason)``; ``strict=True``
  makes any of them an error. A folder (or class folder) left with no readable
  image is an error naming it.
- **One pixel format.** Every image becomes RGB ``uint8``: the EXIF orientation is
  applied; the first frame of an animation is used; grey, palette and CMYK images
  are converted; transparent pixels are composited on :data:`BACKGROUND` (white);
  16-bit images are scaled to 8 bits (65535 -> 255), not clipped.
- **One resize policy** (:data:`RESIZE_POLICIES`), bilinear: ``"stretch"`` (default,
  as ``keras.utils.image_dataset_from_directory``) resizes to the size, ignoring the
  aspect ratio; ``"crop"`` keeps the aspect ratio and cuts the centre; ``"pad"``
  keeps the whole image and pads the borders with black.
"""

from __future__ import annotations

import os
import threading
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from domadapt._checks import check_seed

__all__ = [
    "BACKGROUND",
    "IMAGE_SUFFIXES",
    "RESIZE_POLICIES",
    "ImageFolder",
    "SkippedFile",
    "decode_image",
    "image_folder",
    "read_images",
    "read_labeled_folder",
]

# Pillow decodes every one (Netpbm: the .pgm of face sets such as ORL; Targa and icons are rarer).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                            ".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".ico"})
RESIZE_POLICIES = ("stretch", "crop", "pad")
# Transparent pixels are composited on white, as image viewers and browsers show them.
BACKGROUND = (255, 255, 255)
_PAD_COLOR = (0, 0, 0)

# Compared in lower case; names starting with "." are ignored too.
_IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "$recycle.bin", "@eadir"})
# Photo formats people have that Pillow cannot decode without plug-ins: listed as skipped, never silently lost.
_UNSUPPORTED_SUFFIXES = {
    ".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL", ".dng": "camera raw", ".cr2": "camera raw",
    ".cr3": "camera raw", ".nef": "camera raw", ".arw": "camera raw", ".orf": "camera raw", ".rw2": "camera raw",
    ".raf": "camera raw", ".svg": "SVG (vector)",
}
_PNG_END = b"IEND\xaeB`\x82"
_MAX_LISTED = 10
_WORKERS = max(1, min(8, os.cpu_count() or 1))


class SkippedFile(NamedTuple):
    """A file left out of a folder, and why (``"empty file"``, ``"truncated image"``, ...).

    Example:

    ```python
    import tempfile, pathlib
    from PIL import Image
    from domadapt.folders import read_images
    root = pathlib.Path(tempfile.mkdtemp())
    Image.new("RGB", (8, 8)).save(root / "ok.png")
    (root / "empty.png").write_bytes(b"")
    images, skipped = read_images(root, (8, 8), return_skipped=True)
    print(len(images), skipped[0].reason)  # 1 empty file
    ```
    """

    path: str
    reason: str


class _Unreadable(Exception):
    """A file that cannot be used; its message is the reason shown to the user."""


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


# === Scanning ===


def _read_under_its_own_name(link: Path, top: Path) -> bool:
    """Whether the file ``link`` points to is an image the walk of ``top`` reads anyway (a duplicate if both count)."""
    try:
        target, base = link.resolve(strict=True), top.resolve(strict=True)
        parts = target.relative_to(base).parts
    except (OSError, RuntimeError, ValueError):  # broken, a loop, or outside the folder
        return False
    return target.suffix.lower() in IMAGE_SUFFIXES and not any(_is_ignored(part) for part in parts)


def _walk(folder: Path, visited: set, files: list, skipped: list, top: Path | None = None) -> None:
    """Append the image files under ``folder`` (sorted, recursive, symlinked folders once) to ``files``;
    a symbolic link to an image read under its own name in the same walk is listed as skipped, not read twice."""
    top = folder if top is None else top
    try:
        identity = os.stat(folder)
    except OSError as error:
        skipped.append(SkippedFile(str(folder), f"folder cannot be read ({error.strerror or error})"))
        return
    key = (identity.st_dev, identity.st_ino)
    if key in visited:  # a symlink loop, or a folder linked twice
        return
    visited.add(key)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        skipped.append(SkippedFile(str(folder), f"folder cannot be read ({error.strerror or error})"))
        return
    for entry in entries:
        if _is_ignored(entry.name):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows symlinks
            is_file = entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            _walk(path, visited, files, skipped, top)
            continue
        suffix = path.suffix.lower()
        if suffix in _UNSUPPORTED_SUFFIXES:
            skipped.append(SkippedFile(str(path), f"{_UNSUPPORTED_SUFFIXES[suffix]} files are not supported: convert to JPEG or PNG"))
        elif suffix in IMAGE_SUFFIXES:
            if is_file and entry.is_symlink() and _read_under_its_own_name(path, top):
                skipped.append(SkippedFile(str(path), f"a link to {path.resolve()}, which is read under its own name"))
            elif is_file:
                files.append(path)
            elif entry.is_symlink():
                skipped.append(SkippedFile(str(path), "broken symbolic link"))


def _scan(root: Path, labeled: bool, class_names):
    """``(groups, class_names, skipped)``: ``groups`` is one list of files per class (one list if unlabeled)."""
    skipped: list = []
    if not labeled:
        files: list = []
        _walk(root, set(), files, skipped)
        return [files], None, skipped
    root_key = (os.stat(root).st_dev, os.stat(root).st_ino)
    folders, loose = [], []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if _is_ignored(entry.name):
            continue
        if entry.is_dir():
            folders.append(entry.name)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES | set(_UNSUPPORTED_SUFFIXES):
            loose.append(SkippedFile(entry.path, "not inside a class sub-folder"))
    if not folders:
        raise ValueError(f"{root} has no class sub-folders: put the images of each class in its own sub-folder "
                         "(or read it as an unlabeled folder).")
    # Names compared in one Unicode form: macOS writes "é" decomposed (NFD), most text is composed (NFC).
    on_disk = {}
    for folder in folders:
        normal = unicodedata.normalize("NFC", folder)
        if normal in on_disk:  # one of the two would never be read
            raise ValueError(f"{root}: class folders {on_disk[normal]!r} and {folder!r} are the same name in two "
                             "Unicode forms (composed and decomposed): merge them into one folder.")
        on_disk[normal] = folder
    if class_names is not None:
        if not isinstance(class_names, (str, bytes)) and not hasattr(class_names, "__len__"):
            class_names = list(class_names)  # a generator: read once, not consumed by the check below
        if isinstance(class_names, (str, bytes)) or not all(isinstance(name, str) for name in class_names):
            raise TypeError(f"Argument `class_names` must be a list of folder names (str); received {class_names!r}.")
        class_names = list(class_names)
        expected = {unicodedata.normalize("NFC", name) for name in class_names}
        if len(expected) != len(class_names):  # "café" composed and decomposed are one folder name
            raise ValueError(f"Argument `class_names` names a class twice (names are compared as composed Unicode, "
                             f"NFC): {class_names}.")
        unknown = sorted(folder for normal, folder in on_disk.items() if normal not in expected)
        if unknown:
            raise ValueError(f"{root}: class folders {unknown} are not among the expected classes {class_names}.")
    else:
        # NFC names, sorted as NFC: a macOS folder "e\u0301t\u00e9" sorts before "f" and a composed one after, so
        # the same classes read from two machines got other names and other labels.
        class_names = sorted(on_disk)
    groups = []
    for name in class_names:
        files: list = []
        folder = on_disk.get(unicodedata.normalize("NFC", name))
        if folder is not None:
            # Each class walks its own tree (links within it once): one shared record gave the images of a
            # folder linked from an earlier class to that class alone.
            _walk(root / folder, {root_key}, files, skipped)
        groups.append(files)
    _refuse_images_in_two_classes(groups, class_names)
    return groups, class_names, loose + skipped


def _refuse_images_in_two_classes(groups, class_names):
    """A ValueError when one image file (symbolic links resolved) is reached from two class folders."""
    owner = {}
    for index, files in enumerate(groups):
        for path in files:
            real = os.path.realpath(path)
            first = owner.setdefault(real, (index, path))
            if first[0] != index:
                raise ValueError(f"{real} is reached from two class folders, as {first[1]} (class "
                                 f"{class_names[first[0]]!r}) and as {path} (class {class_names[index]!r}), "
                                 "through a symbolic link: its label is ambiguous. Remove one of the links.")


# === Decoding ===


def _open(path):
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            raise _Unreadable("empty file")
        image = Image.open(path)
    except _Unreadable:
        raise
    except Image.UnidentifiedImageError:
        raise _Unreadable("not an image (format not recognised)") from None
    except Exception as error:
        raise _Unreadable(_reason(error)) from None
    return image


def _reason(error: BaseException) -> str:
    text = str(error)
    if "truncated" in text or isinstance(error, EOFError):
        return "truncated image"
    if isinstance(error, PermissionError):
        return "permission denied"
    if type(error).__name__ == "DecompressionBombError":
        return f"too many pixels ({text.split('pixels')[0].strip()} pixels)"
    return f"unreadable ({type(error).__name__}: {text[:160]})"


def _to_rgb_array(image) -> np.ndarray:
    """RGB uint8 array of a loaded PIL image of any mode."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int) and not isinstance(transparent, bool):
            # A 16-bit grey PNG's tRNS value marks transparent pixels: on the background, as for 8-bit images.
            rgb[values == transparent] = np.asarray(BACKGROUND, dtype=np.uint8)
        return rgb
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        grey = values * 255.0 if values.size and values.max() <= 1.0 else values
        return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        background = np.asarray(BACKGROUND, dtype=np.float32)
        return np.round(rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _resized(array: np.ndarray, image_size, resize: str) -> np.ndarray:
    from PIL import Image, ImageOps

    height, width = image_size
    if array.shape[:2] == (height, width):
        return array
    image = Image.fromarray(array, "RGB")
    if resize == "stretch":
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    elif resize == "crop":
        image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
    else:
        image = ImageOps.pad(image, (width, height), Image.Resampling.BILINEAR, color=_PAD_COLOR)
    return np.asarray(image, dtype=np.uint8)


def _decode(path, image_size, resize) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of one file, or :class:`_Unreadable` with the reason."""
    from PIL import ImageOps

    image = _open(path)
    try:
        # No warnings.catch_warnings() here: it is not thread-safe, and files are decoded in threads.
        with image:
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if image_size is not None and image.format == "JPEG":
                side = max(image_size)  # decode big JPEGs at a reduced scale, never below the target size
                image.draft(image.mode, (side, side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            array = _to_rgb_array(image)
    except _Unreadable:
        raise
    except Exception as error:  # Pillow raises many types for corrupt data
        raise _Unreadable(_reason(error)) from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise _Unreadable(f"unreadable (decoded to shape {array.shape})")
    return array if image_size is None else _resized(array, image_size, resize)


def _check(path) -> None:
    """Cheap check before streaming: the header parses; PNG/JPEG files that do not end as
    they should (an interrupted copy) are decoded in full to decide."""
    image = _open(path)
    try:
        with image:
            kind = image.format
            image.size  # noqa: B018 - parsed header
    except Exception as error:
        raise _Unreadable(_reason(error)) from None
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 32))
        tail = handle.read()
    complete = (kind == "PNG" and _PNG_END in tail) or (kind == "JPEG" and b"\xff\xd9" in tail)
    if not complete:
        _decode(path, None, "stretch")


def decode_image(path, image_size=None, resize="stretch") -> np.ndarray:
    """One image file as an RGB ``uint8`` array, by the rules of this module.

    Use it to see exactly what the folder readers make of a file: EXIF orientation
    applied, first frame, transparency on :data:`BACKGROUND`, 16-bit scaled to 8 bits.

    Args:
        path: an image file.
        image_size: ``(height, width)`` to resize to, or ``None`` to keep its size.
        resize: ``"stretch"``, ``"crop"`` or ``"pad"`` (see :data:`RESIZE_POLICIES`).

    Returns:
        An array ``(height, width, 3)`` of dtype uint8.

    Raises:
        ValueError: the file cannot be used; the message names it and says why.

    Example:

    ```python
    import numpy as np, tempfile, os
    from PIL import Image
    from domadapt.folders import decode_image
    path = os.path.join(tempfile.mkdtemp(), "grey16.png")
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(path)
    print(decode_image(path, image_size=(2, 2))[0, 0])  # [255 255 255]
    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Argument `path` must be a path (str or pathlib.Path); received {type(path).__name__}.")
    image_size, resize = _check_size(image_size, allow_none=True), _check_resize(resize)
    try:
        return _decode(Path(path), image_size, resize)
    except _Unreadable as error:
        raise ValueError(f"{path}: {error}") from None


# === Argument checks ===


def _check_size(image_size, allow_none=False):
    if image_size is None and allow_none:
        return None
    try:
        height, width = (int(side) for side in image_size)
        valid = all(float(side) == int(side) for side in image_size) and height > 0 and width > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"Argument `image_size` must be (height, width) with positive integers; received image_size={image_size!r}.")
    return height, width


def _check_resize(resize):
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"Argument `resize` must be one of {RESIZE_POLICIES}; received resize={resize!r}.")
    return resize


def _check_max(max_images):
    if max_images is None:
        return None
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise ValueError(f"Argument `max_images` must be a positive integer or None; received max_images={max_images!r}.")
    return int(max_images)


def _folder(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Argument `path` must be a folder path (str or pathlib.Path); received {type(path).__name__}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder.")
    return path


def _listing(skipped) -> str:
    shown = "\n".join(f"  {item.path}: {item.reason}" for item in skipped[:_MAX_LISTED])
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    return shown + more


# === Gathering: scan, pick, check or decode ===


def _gather(root: Path, *, labeled, class_names, image_size, resize, max_images, seed, strict, decode):
    """``(files, labels, class_names, skipped, images)``.

    ``images`` (when ``decode``) is one uint8 array filled as files are decoded (no
    second copy), or a list of arrays when ``image_size`` is ``None``.
    """
    groups, class_names, skipped = _scan(root, labeled, class_names)
    present = _present(root) if labeled else {}
    rng = np.random.default_rng(check_seed(seed))
    files, labels, images = [], [], []
    capacity = sum(len(c) if max_images is None else min(len(c), max_images) for c in groups)
    buffer = np.empty((capacity, *image_size, 3), np.uint8) if decode and image_size is not None else None
    filled = 0
    work = (lambda p: _decode(p, image_size, resize)) if decode else _check
    with ThreadPoolExecutor(_WORKERS) as pool:
        for label, candidates in enumerate(groups):
            if labeled and not candidates and unicodedata.normalize("NFC", class_names[label]) not in present:
                continue  # an expected class the folder does not have (e.g. a labeled target subset)
            order = list(range(len(candidates)))
            if max_images is not None and len(candidates) > max_images:
                order = [int(i) for i in rng.permutation(len(candidates))]
            wanted = len(candidates) if max_images is None else max_images
            chosen = []  # (index in candidates, decoded image or its row in buffer)
            position = 0
            while len(chosen) < wanted and position < len(order):
                # Bounded batches: decoded images wait in at most 256 futures.
                batch = order[position : position + min(256, max(wanted - len(chosen), 4 * _WORKERS))]
                position += len(batch)

                def attempt(index):
                    try:
                        return index, work(candidates[index]), None
                    except _Unreadable as error:
                        return index, None, str(error)

                for index, result, reason in pool.map(attempt, batch):
                    if reason is not None:
                        skipped.append(SkippedFile(str(candidates[index]), reason))
                    elif len(chosen) < wanted:
                        if buffer is not None:
                            buffer[filled] = result
                            result, filled = filled, filled + 1
                        chosen.append((index, result))
            if not chosen:
                where = root
                if labeled:  # the folder as it is on disk (a class named in the other Unicode form)
                    where = root / present.get(unicodedata.normalize("NFC", class_names[label]), class_names[label])
                found = f"{len(candidates)} image files, none readable" if candidates else "no image files"
                raise ValueError(
                    f"{where} holds no readable image ({found}; read: {', '.join(sorted(IMAGE_SUFFIXES))})."
                    + (f"\nSkipped:\n{_listing([s for s in skipped if s.path.startswith(str(where))])}" if candidates else "")
                )
            ranks = np.argsort([index for index, _ in chosen], kind="stable")
            files += [candidates[chosen[r][0]] for r in ranks]
            labels += [label] * len(chosen)
            if buffer is not None and not np.array_equal(ranks, np.arange(len(ranks))):
                rows = slice(filled - len(chosen), filled)
                buffer[rows] = buffer[rows][ranks]  # file order within the class (a subset was drawn at random)
            elif decode and buffer is None:
                images += [chosen[r][1] for r in ranks]
    if strict and skipped:
        raise ValueError(f"{root}: {len(skipped)} files cannot be used (strict=True):\n{_listing(skipped)}")
    if buffer is not None:
        images = buffer[:filled]  # rows of skipped files stay unused at the end
    return files, np.asarray(labels, np.int32), class_names, skipped, images


def _present(root: Path):
    """The sub-folders of ``root``, ``{NFC name: name on disk}``: an expected class is present in either form."""
    return {unicodedata.normalize("NFC", entry.name): entry.name for entry in os.scandir(root) if entry.is_dir()}


# === Streaming ===


class ImageFolder:
    """A checked image folder, streamed through ``tf.data``; made by :func:`image_folder`.

    Attributes:
        dataset: an unbatched ``tf.data.Dataset`` of RGB uint8 images ``(h, w, 3)``, or
            of ``(image, label)`` (int32) for a labeled folder. Decoded on the fly in
            parallel, shuffled anew every pass (seeded), prefetched. A file that fails
            only while streaming does not stop training: it is added to ``skipped``
            and replaced by the next readable file of its class, so a pass keeps
            ``count`` elements. Every pass decodes again; a folder that fits in
            memory can be decoded once with ``folder.dataset.cache()``.
        files: the image files used (``pathlib.Path``), sorted per class.
        labels: int32 array, the label of each file (``None`` when unlabeled).
        class_names: class-folder names in label order (``None`` when unlabeled).
        skipped: ``[SkippedFile(path, reason), ...]``, the files left out.
        count: the number of images used, ``len(files)``.
        image_size, resize: the size and resize policy of the images.

    Example:

    ```python
    import tempfile, pathlib
    from PIL import Image
    import domadapt as da
    root = pathlib.Path(tempfile.mkdtemp())
    for index in range(3):
        Image.new("RGB", (20, 10), (80 * index, 0, 0)).save(root / f"{index}.jpg")
    folder = da.datasets.image_folder(root, labeled=False, image_size=(16, 16))
    print(folder)  # ImageFolder('...', 3 images, unlabeled, image_size=(16, 16), resize='stretch', 0 skipped)
    batch = next(iter(folder.dataset.batch(3)))  # uint8 (3, 16, 16, 3)
    ```
    """

    def __init__(self, path, files, labels, class_names, skipped, image_size, resize, seed):
        self.path = Path(path)
        self.files = list(files)
        self.labels = labels if class_names is not None else None
        self.class_names = class_names
        self.skipped = list(skipped)
        self.image_size = tuple(image_size)
        self.resize = resize
        self.seed = seed
        self._failed: dict = {}
        self._lock = threading.Lock()
        self._dataset = None
        group = np.zeros(len(self.files), np.int64) if self.labels is None else self.labels.astype(np.int64)
        self._class_members = {int(g): np.flatnonzero(group == g) for g in np.unique(group)}
        self._group = group

    @property
    def count(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        kind = f"{len(self.class_names)} classes" if self.class_names is not None else "unlabeled"
        return (f"ImageFolder({str(self.path)!r}, {self.count} images, {kind}, image_size={self.image_size}, "
                f"resize={self.resize!r}, {len(self.skipped)} skipped)")

    def _load(self, index) -> np.ndarray:
        """Decode file ``index``; on failure record it and use the next readable file of its class."""
        index = int(index)
        members = self._class_members[int(self._group[index])]
        start = int(np.searchsorted(members, index))
        for offset in range(len(members)):
            candidate = int(members[(start + offset) % len(members)])
            if candidate in self._failed:
                continue
            try:
                return _decode(self.files[candidate], self.image_size, self.resize)
            except _Unreadable as error:
                with self._lock:
                    if candidate not in self._failed:
                        self._failed[candidate] = str(error)
                        self.skipped.append(SkippedFile(str(self.files[candidate]), f"{error} (found while streaming)"))
        raise ValueError(f"{self.path}: no file of {self._describe_group(index)} can be read any more.")

    def _describe_group(self, index):
        return "the folder" if self.class_names is None else f"class {self.class_names[int(self._group[index])]!r}"

    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = self._build()
        return self._dataset

    def _build(self):
        import tensorflow as tf

        height, width = self.image_size

        def load(index):
            image = tf.numpy_function(self._load, [index], tf.uint8, stateful=False)
            image.set_shape((height, width, 3))
            return image

        indices = tf.data.Dataset.range(self.count).shuffle(self.count, seed=self.seed, reshuffle_each_iteration=True)
        if self.labels is None:
            dataset = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            labels = tf.constant(self.labels, tf.int32)
            dataset = indices.map(lambda i: (load(i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)


def image_folder(path, *, labeled=True, image_size=(224, 224), resize="stretch", strict=False, max_images=None,
                 seed=0, class_names=None) -> ImageFolder:
    """A folder of images to stream from disk: checked up front, decoded while training.

    Use it when a folder does not fit in memory (50k photos at 224 px are 7.5 GB as
    uint8): pass ``folder.dataset`` to ``DomainAdapter.fit`` (``source=`` or
    ``target=``) or to ``da.gap.features``. Files are checked before training: PNG and
    JPEG files by their header and their last bytes (those that do not end as they
    should, e.g. interrupted copies, are decoded in full), other formats by a full
    decode; so ``skipped`` is known before training. Scanning, skipping and pixel rules: see :mod:`domadapt.folders`.

    Args:
        path: the folder. Labeled: one sub-folder per class. Unlabeled: searched recursively.
        labeled: whether the sub-folders are classes (``(image, label)`` elements).
        image_size: ``(height, width)`` every image is resized to.
        resize: ``"stretch"``, ``"crop"`` or ``"pad"`` (see :data:`RESIZE_POLICIES`).
        strict: raise a ``ValueError`` listing the skipped files instead of skipping them.
        max_images: use at most this many images (per class when labeled), a random subset drawn with ``seed``.
        seed: seed of the subset and of the order of each pass.
        class_names: the label order to use (e.g. the source's, for a labeled target
            folder); a class folder not in it is an error, a missing one is allowed.

    Returns:
        An :class:`ImageFolder`.

    Example:

    ```python
    import numpy as np, tempfile, pathlib
    from PIL import Image
    import domadapt as da
    root = pathlib.Path(tempfile.mkdtemp())
    for name in ("cat", "dog"):
        (root / name).mkdir()
        Image.new("RGB", (40, 30), "red").save(root / name / "0.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    folder = da.datasets.image_folder(root, image_size=(32, 32))
    print(folder.count, folder.class_names, folder.skipped[0].reason)  # 2 ['cat', 'dog'] not an image ...
    images, labels = next(iter(folder.dataset.batch(2)))  # uint8 (2, 32, 32, 3), int32 (2,)
    ```
    """
    root = _folder(path)
    image_size, resize, max_images = _check_size(image_size), _check_resize(resize), _check_max(max_images)
    files, labels, names, skipped, _ = _gather(root, labeled=bool(labeled), class_names=class_names,
                                               image_size=image_size, resize=resize, max_images=max_images,
                                               seed=seed, strict=strict, decode=False)
    return ImageFolder(root, files, labels, names, skipped, image_size, resize, seed)


# === In memory ===


def _stack(images, files, root):
    if isinstance(images, np.ndarray):
        return images
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = images[0].shape
        other = next(i for i, image in enumerate(images) if image.shape != first)
        raise ValueError(
            f"{root}: images have different sizes ({files[0]} is {first[:2]}, {files[other]} is "
            f"{images[other].shape[:2]}); pass image_size=(height, width) to resize them."
        )
    return np.stack(images)


def _warn(skipped, root):
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} files that cannot be used:\n{_listing(skipped)}", stacklevel=3)


def read_images(path, image_size=None, max_images=None, seed=0, *, resize="stretch", strict=False,
                return_skipped=False):
    """Images from a folder (searched recursively), a ``.npy`` array or a ``.npz`` archive, in memory.

    Folders follow the rules of :mod:`domadapt.folders` (hidden entries ignored, bad
    files skipped, every format to RGB uint8). Skipped files are reported by a warning,
    or returned with ``return_skipped=True``. ``.npz``: the array under ``images`` or
    ``x``, else the first one.

    Args:
        path: a folder, a ``.npy`` or a ``.npz`` file.
        image_size: ``(height, width)`` folder images are resized to; ``None`` keeps
            them (they must then all have one size).
        max_images: read at most this many (a random subset drawn with ``seed``).
        seed: seed of the subset.
        resize: ``"stretch"``, ``"crop"`` or ``"pad"`` (folders; see :data:`RESIZE_POLICIES`).
        strict: raise a ``ValueError`` listing skipped files instead of skipping them.
        return_skipped: also return the list of :class:`SkippedFile` (empty for arrays).

    Returns:
        An array ``(N, H, W, C)`` (a ``(N, H, W)`` array gains a channel axis); with
        ``return_skipped``, ``(images, skipped)``.

    Example:

    ```python
    import numpy as np, tempfile, os
    from domadapt.datasets import read_images
    path = os.path.join(tempfile.mkdtemp(), "images.npy")
    np.save(path, np.zeros((5, 8, 8), "uint8"))
    print(read_images(path, max_images=3).shape)  # (3, 8, 8, 1)
    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Argument `path` must be a path (str or pathlib.Path); received {type(path).__name__}.")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    max_images = _check_max(max_images)
    if path.is_dir():
        image_size, resize = _check_size(image_size, allow_none=True), _check_resize(resize)
        files, _, _, skipped, images = _gather(path, labeled=False, class_names=None, image_size=image_size,
                                               resize=resize, max_images=max_images, seed=seed, strict=strict,
                                               decode=True)
        images = _stack(images, files, path)
        if return_skipped:
            return images, skipped
        _warn(skipped, path)
        return images
    seed = check_seed(seed)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a folder of images, a .npy or a .npz file.")
    images = _load_array(path, suffix)
    if images.dtype.kind not in "biuf" or images.ndim not in (3, 4):
        raise ValueError(f"{path}: expected numeric images of shape (N, H, W) or (N, H, W, C); received an array of "
                         f"shape {images.shape} and dtype {images.dtype}.")
    if images.size == 0:
        # As a folder without an image: an empty array was returned without a word, to fail (or measure nothing) later.
        what = "no images" if len(images) == 0 else "images without pixels"
        raise ValueError(f"{path} holds {what}: expected an array of shape (N, H, W) or (N, H, W, C) with N, H, W "
                         f"(and C) at least 1; received an array of shape {images.shape}.")
    if images.ndim == 3:
        images = images[..., None]
    if max_images is not None and len(images) > max_images:
        chosen = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        images = images[np.sort(chosen)]
    return (images, []) if return_skipped else images


def _load_array(path, suffix):
    """The image array of a .npy file or of an .npz archive (its 'images' or 'x', or its only array)."""
    import zipfile

    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError(f"{path}: an .npz archive with no arrays.")
            key = next((k for k in ("images", "x") if k in archive), None)
            if key is None and len(archive.files) != 1:  # x_train or x_test? labels? never guess
                raise ValueError(f"{path}: an .npz archive with several arrays ({', '.join(archive.files)}) and none "
                                 "named 'images' or 'x'; save the images under one of those names.")
            return archive[key or archive.files[0]]
    except (EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot be read as a {suffix} array of images ({error}).") from None


def read_labeled_folder(path, image_size=None, max_images=None, seed=0, class_names=None, *, resize="stretch",
                        strict=False, return_skipped=False):
    """``(images, labels, class_names)`` from a folder with one sub-folder of images per class, in memory.

    Labels follow the sorted sub-folder names. ``class_names`` fixes the label order
    (e.g. the source's, for a labeled target folder); a sub-folder not in it is an
    error, a class folder without a readable image too. Other arguments as in
    :func:`read_images` (``max_images`` counts per class). Scanning, skipping and
    pixel rules: see :mod:`domadapt.folders`.

    Returns:
        ``(images, labels, class_names)``: uint8 ``(N, H, W, 3)``, int64 ``(N,)``, a
        list of str; with ``return_skipped``, the list of :class:`SkippedFile` as a fourth item.

    Example:

    ```python
    import numpy as np, tempfile, pathlib, keras
    from domadapt.datasets import read_labeled_folder
    root = pathlib.Path(tempfile.mkdtemp())
    for name in ("cat", "dog"):
        (root / name).mkdir()
        keras.utils.save_img(root / name / "0.png", np.zeros((8, 8, 3), "uint8"), scale=False)
    images, labels, names = read_labeled_folder(root)
    print(images.shape, labels.tolist(), names)  # (2, 8, 8, 3) [0, 1] ['cat', 'dog']
    ```
    """
    root = _folder(path)
    image_size, resize, max_images = _check_size(image_size, allow_none=True), _check_resize(resize), _check_max(max_images)
    files, labels, names, skipped, images = _gather(root, labeled=True, class_names=class_names, image_size=image_size,
                                                    resize=resize, max_images=max_images, seed=seed, strict=strict,
                                                    decode=True)
    result = (_stack(images, files, root), labels.astype(np.int64), names)
    if return_skipped:
        return result + (skipped,)
    _warn(skipped, root)
    return result
