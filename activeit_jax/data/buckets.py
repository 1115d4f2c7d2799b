"""Sequence-length buckets: the padded lengths batches are rounded up to.

Training (`training.inputs`) and scoring (`scoring.batching`, `scoring.config`) share them, so a
length bucket means the same thing to both (and one compiled shape can serve both).
"""
from __future__ import annotations

from typing import Sequence


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_length` (always included as the last one)."""
    out, length = [], smallest
    while length < max_length:
        out.append(length)
        length *= 2
    out.append(max_length)
    return tuple(out)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def fine_buckets(max_length: int, smallest: int = 16, per_octave: int = 4) -> tuple[int, ...]:
    """Padded lengths from `smallest` to `max_length` with `per_octave` steps per doubling.

    Args:
      max_length: the largest length (always the last bucket).
      smallest: the first bucket (a power of two is best; lengths below it use it).
      per_octave: steps between 2**k and 2**(k+1) (1 = powers of two).

    Returns:
      Increasing bucket lengths, e.g. (16, 20, 24, 28, 32, 40, ...) for per_octave=4,
      (..., 512, 616, 720, 824, 928, 1024) for per_octave=5.
    """
    if per_octave < 1 or smallest < 1:
        raise ValueError("per_octave and smallest must be >= 1")
    out, low = [], smallest
    while low < max_length:
        # Steps of low / per_octave; from 64 up, rounded up to a multiple of 8 (accelerators
        # tile by 8 or more; 5 per octave would otherwise give 614, 716, ... and 1022).
        align = 8 if low >= 64 else 1
        for k in range(per_octave):
            bucket = -(-(low + k * low // per_octave) // align) * align
            if bucket < min(2 * low, max_length):
                out.append(bucket)
        low *= 2
    out.append(max_length)
    return tuple(sorted(set(out)))
