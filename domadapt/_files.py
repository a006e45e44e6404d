"""File helpers shared by the modules that write files (no TensorFlow: the command line uses them early)."""

from __future__ import annotations

import os
from pathlib import Path


def apply_umask(path):
    """Give ``path`` (made by ``tempfile.mkstemp``, mode 0600) the mode a plain ``open()`` would: 0666 minus the umask."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def png_path(path):
    """``path`` as the PNG file a plot is written to: ``.png`` added when it has no suffix, a ValueError for
    another one (matplotlib would pick the format from it: an SVG for ``.svg``, an error for others)."""
    path = Path(path)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix.lower() != ".png":
        raise ValueError(f"Argument `path`: the plot is a PNG; give a path ending in .png (or none); received {path}.")
    return path
