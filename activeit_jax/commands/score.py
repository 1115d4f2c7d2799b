"""`activeit-jax score`: not implemented yet (a later issue fills it in)."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    del argv
    print("activeit-jax score: not implemented yet", file=sys.stderr)
    sys.exit(2)
