"""File helpers shared by the modules that write files atomically."""

from __future__ import annotations

import os


def apply_umask(path):
    """Give ``path`` (made by ``tempfile.mkstemp``, mode 0600) the mode a plain ``open()`` would: 0666 minus the umask."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
