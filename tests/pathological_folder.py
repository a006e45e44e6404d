"""Write an image folder with every pathology a real photo folder has (see ``write_pathological_folder``)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# What each readable file decodes to at 16x16 (stretch): RGB of the pixel at [8, 8].
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@dataclass
class PathologicalFolder:
    """The folder written, and what a correct reader makes of it (paths relative to ``root``)."""

    root: Path
    class_names: list
    used: dict = field(default_factory=dict)  # relative path -> class name
    skipped: dict = field(default_factory=dict)  # relative path -> words expected in the reason
    ignored: list = field(default_factory=list)  # hidden/system entries: neither used nor listed

    def used_paths(self, class_name=None):
        return sorted(p for p, c in self.used.items() if class_name in (None, c))


def _png(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 20x10 (w x h) JPEG, black with a red 4x4 top-left corner, EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:4, :4] = RED
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def write_pathological_folder(base) -> PathologicalFolder:
    """Under ``base``: ``photos/`` (two classes, ``cat`` and ``dog``) and ``elsewhere/`` (linked from ``dog``).

    cat/ holds one file per pixel format, a non-ASCII name with spaces, and broken files;
    dog/ holds a symlink loop and a folder linked twice; hidden/system entries everywhere.
    """
    base = Path(base)
    root = base / "photos"
    cat, dog, elsewhere = root / "cat", root / "dog", base / "elsewhere"
    for folder in (cat, dog, elsewhere, root / "__MACOSX" / "cat", root / ".ipynb_checkpoints", cat / ".ipynb_checkpoints"):
        folder.mkdir(parents=True, exist_ok=True)
    spec = PathologicalFolder(root, ["cat", "dog"])
    red = Image.new("RGB", (16, 16), RED)

    def use(relative, data, class_name):
        (root / relative).write_bytes(data)
        spec.used[relative] = class_name

    def skip(relative, data, reason):
        (root / relative).write_bytes(data)
        spec.skipped[relative] = reason

    def ignore(relative, data=b"junk"):
        (root / relative).write_bytes(data)
        spec.ignored.append(relative)

    # --- cat: every pixel format ---
    use("cat/red.png", _png(red), "cat")
    use("cat/grey L.png", _png(Image.new("L", (16, 16), 100)), "cat")
    use("cat/grey alpha LA.png", _png(Image.new("LA", (16, 16), (100, 0))), "cat")  # fully transparent -> white
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))  # left half blue (index 1), right half transparent (index 0)
    use("cat/palette transparent.png", _png(palette, transparency=0), "cat")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 255, 255)  # left: opaque blue
    rgba[:, 8:] = (255, 0, 0, 0)  # right: transparent red -> white
    rgba[0, 15] = (255, 0, 0, 128)  # half-transparent red on white -> (255, 127, 127)
    use("cat/rgba.png", _png(Image.fromarray(rgba, "RGBA")), "cat")
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(buffer, "JPEG", quality=95)  # cyan
    use("cat/cmyk.jpg", buffer.getvalue(), "cat")
    grey16 = np.full((16, 16), 65535, np.uint16)
    grey16[0, 1], grey16[0, 2] = 32768, 1000  # -> 128 and 4 when scaled; 255 and 255 if clipped
    use("cat/grey16.png", _png(Image.fromarray(grey16)), "cat")
    use("cat/exif rotated.jpg", exif_rotated_jpeg(), "cat")
    buffer = io.BytesIO()
    red.save(buffer, "JPEG", quality=95)
    use("cat/UPPER.JPG", buffer.getvalue(), "cat")
    for suffix, kind in ((".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF")):
        buffer = io.BytesIO()
        red.save(buffer, kind, **({"lossless": True} if kind == "WEBP" else {}))
        use(f"cat/red{suffix}", buffer.getvalue(), "cat")
    buffer = io.BytesIO()
    red.save(buffer, "GIF", save_all=True, append_images=[Image.new("RGB", (16, 16), BLUE)], duration=100, loop=0)
    use("cat/animated.gif", buffer.getvalue(), "cat")  # first frame red
    use("cat/café au lait ü 猫.png", _png(red), "cat")
    # --- cat: files that cannot be used ---
    whole = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    skip("cat/truncated.png", whole[: len(whole) // 2], "truncated")
    skip("cat/empty.png", b"", "empty")
    skip("cat/not a jpeg.jpg", b"<html>this is a web page saved as .jpg</html>", "not an image")
    skip("cat/iphone.heic", b"\x00\x00\x00\x18ftypheic", "HEIC")
    # --- hidden and system entries: never read, never listed ---
    ignore(".DS_Store")
    ignore("Thumbs.db")
    ignore("cat/Thumbs.db")
    ignore("cat/desktop.ini")
    ignore("cat/.DS_Store")
    ignore("cat/._red.png", b"\x00\x05\x16\x07 AppleDouble")
    ignore("cat/.ipynb_checkpoints/red-checkpoint.png", _png(red))
    ignore(".ipynb_checkpoints/stray.png", _png(red))
    ignore("__MACOSX/cat/._red.png", b"\x00\x05\x16\x07 AppleDouble")
    ignore("cat/notes.txt", b"not an image, not an image suffix")
    # --- dog: a symlink loop, a folder linked twice (read once) ---
    use("dog/blue.png", _png(Image.new("RGB", (16, 16), BLUE)), "dog")
    (elsewhere / "far.png").write_bytes(_png(Image.new("RGB", (16, 16), BLUE)))
    os.symlink("..", dog / "loop to itself")
    os.symlink(elsewhere, dog / "linked")
    os.symlink(elsewhere, dog / "linked again")
    spec.used["dog/linked/far.png"] = "dog"  # "linked again/far.png" is the same folder: not read twice
    return spec
