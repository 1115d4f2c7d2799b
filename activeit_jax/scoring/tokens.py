"""Token-id helpers: SeqIO's cut, a decoder-only prompt's cut, generated ids."""
from __future__ import annotations

from typing import Sequence

from activeit_jax.scoring.config import EOS_ID, PAD_ID


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


def is_decoder_only(model) -> bool:
    """True for decoder-only wrappers (`DecoderOnlyModel`, kind "llama")."""
    return getattr(model, "kind", None) == "llama"


def cut_generated(ids: Sequence[int], eos_id: int, pad_id: int = PAD_ID) -> list[int]:
    """Decoder-only generated ids up to and including the first EOS; a padding id ends the
    row too (excluded), as `trainer.decode_tokens` reads predictions."""
    out = []
    for token in ids:
        token = int(token)
        if token == pad_id:
            break
        out.append(token)
        if token == eos_id:
            break
    return out
