"""Token-id helpers: SeqIO's cut, a decoder-only prompt's cut, generated ids."""
from __future__ import annotations

from typing import Sequence

from activeit_jax.data.vocab import EOS_ID
from activeit_jax.models.batches import cut_generated

__all__ = ["cut_generated", "keep_last_ids", "truncate_ids"]


def truncate_ids(ids: Sequence[int], max_length: int, eos_id: int = EOS_ID) -> list[int]:
    """SeqIO's cut with EOS kept: `ids[:max_length - 1] + [eos_id]` (ids without EOS)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    return list(ids[:max_length - 1]) + [eos_id]


def keep_last_ids(ids: Sequence[int], max_length: int) -> list[int]:
    """The last `max_length` ids (a decoder-only prompt keeps its end, which conditions the
    response)."""
    if max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    ids = list(ids)
    return ids[max(len(ids) - max_length, 0):]
