"""Comparing paths the way the filesystem does (for refusing outputs that are inputs)."""
from __future__ import annotations

import os


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file or directory: `os.path.samefile` when both exist (a
    symbolic or hard link to the other counts), else the same resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:  # unreadable: fall back to the names
        pass
    return os.path.realpath(a) == os.path.realpath(b)
