"""Data locations shared by the benchmark scripts (imported from benchmarks/, their sys.path[0])."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_niv2_dir() -> str:
    """The shared NIV2 folder beside the checkout (or beside a git worktree's parent), else the
    bundled sample."""
    for up in ("..", os.path.join("..", "..")):
        path = os.path.normpath(os.path.join(REPO, up, "shared", "data", "niv2"))
        if os.path.isdir(path):
            return path
    return os.path.join(REPO, "data", "sample", "niv2")
