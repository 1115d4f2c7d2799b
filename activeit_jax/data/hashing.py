"""Seeded, machine-independent orderings.

Python's `hash()` is salted per process and numpy's shuffling algorithms may change between
releases, so every seeded choice in the data layer ranks items by a SHA-256 digest of
(seed, salt, item) instead. The same seed gives the same order on every machine and version.
"""
from __future__ import annotations

import hashlib
from typing import Iterable


def stable_key(seed: int, salt: str, item: str) -> bytes:
    """The sort key of `item` for a given seed and purpose.

    Args:
      seed: the experiment seed.
      salt: names the purpose ("validation", "initial", an instance-sampling task name...), so
        that two draws with the same seed are independent of each other.
      item: the string being ordered (a task name, an instance id).

    Returns:
      32 bytes; compare them to order items.
    """
    return hashlib.sha256(f"{int(seed)}\x00{salt}\x00{item}".encode("utf-8")).digest()


def stable_shuffle(items: Iterable[str], seed: int, salt: str = "") -> list[str]:
    """Returns `items` in a seeded pseudo-random order that depends only on their values.

    Args:
      items: strings; duplicates are kept.
      seed: the experiment seed.
      salt: see `stable_key`.

    Returns:
      A new list: the input order does not matter, only the values, the seed and the salt.
    """
    return sorted(items, key=lambda item: (stable_key(seed, salt, item), item))


def stable_choice_index(n: int, seed: int, salt: str) -> int:
    """A seeded index in [0, n), e.g. to pick one of several reference outputs.

    Args:
      n: number of options (>= 1).
      seed: the experiment seed.
      salt: names what is chosen (e.g. the instance id).

    Returns:
      An int in [0, n).
    """
    if n < 1:
        raise ValueError(f"need at least one option, got {n}")
    return int.from_bytes(stable_key(seed, salt, "choice")[:8], "big") % n
