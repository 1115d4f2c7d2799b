"""Host-side numpy batches in the models' feature layout (seqio / t5x feature names).

Pure functions of token-id lists; the per-kind `features.BatchBuilder`s call them, so
callers reach them through the model (`model.batch_builder(vocab)`), not by kind.

Encoder-decoder (seqio `EncDecFeatureConverter`): `encdec_features` (unpacked rows),
`pack_encdec` (pack=True: several examples per row, segment ids and per-segment positions).
Decoder-only: `make_decoder_only_batch` (scoring / training on `bos + prompt + response +
eos`, loss on the response and eos), `decoder_only_features` (the same with all-padding
rows for empty examples), `pack_decoder_only`, `make_prompt_batch` (greedy decoding),
`loss_positions` (where the output head runs).
Packing: `best_fit_decreasing_bins` chooses the rows.
"""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Sequence

import numpy as np

from activeit_jax.data.vocab import PAD_ID

if TYPE_CHECKING:
    from activeit_jax.models.features import SpecialIds


def shift_right(targets: np.ndarray, segment_ids: np.ndarray | None = None) -> np.ndarray:
    """Decoder inputs: targets shifted right with 0 (BOS) first, per segment when packed."""
    shifted = np.zeros_like(targets)
    shifted[..., 1:] = targets[..., :-1]
    if segment_ids is not None:
        starts = np.zeros_like(segment_ids, dtype=bool)
        starts[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
        starts[..., 0] = True
        shifted = np.where(starts, 0, shifted)
    return shifted


def encdec_features(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                    source_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Unpacked `EncDecFeatureConverter` features of a batch (rows padded with 0).

    Returns:
      encoder_input_tokens [B, S], decoder_input_tokens [B, T], decoder_target_tokens [B, T],
      decoder_loss_weights [B, T] (int32; 1 on target tokens, 0 on padding).
    """
    batch = len(inputs)
    enc = np.zeros((batch, source_length), np.int32)
    dec = np.zeros((batch, target_length), np.int32)
    for row, (src, tgt) in enumerate(zip(inputs, targets)):
        src, tgt = list(src)[:source_length], list(tgt)[:target_length]
        enc[row, :len(src)] = src
        dec[row, :len(tgt)] = tgt
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": shift_right(dec),
        "decoder_target_tokens": dec,
        "decoder_loss_weights": (dec != PAD_ID).astype(np.int32),
    }


def make_decoder_only_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                            length: int, bos_id: int | None = 1, eos_id: int = 2,
                            pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-padded scoring/training batch over `bos + prompt + response + eos`.

    The loss (and `token_log_probs`) covers the response tokens and the final EOS. A sequence
    longer than `length + 1` loses the start of its prompt first (the end of the prompt is
    what conditions the response), then the end of its response. Without a BOS
    (`bos_id=None`) the sequence starts with the prompt; if the prompt is then empty, the
    first response token has nothing to condition on and is not scored.

    Args:
      prompts: token ids per example (no bos).
      responses: token ids per example (no eos).
      length: T, the number of input/target positions.
      bos_id, eos_id, pad_id: special ids (LLaMA: 1, 2, 0); bos None = no BOS.

    Returns:
      int32 `decoder_input_tokens`, `decoder_target_tokens` and float32
      `decoder_loss_weights`, each `[B, T]`.
    """
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    batch = len(prompts)
    inputs = np.full((batch, length), pad_id, np.int32)
    targets = np.full((batch, length), pad_id, np.int32)
    weights = np.zeros((batch, length), np.float32)
    head = [] if bos_id is None else [bos_id]
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        response = list(response) + [eos_id]
        room_for_prompt = max(length + 1 - len(head) - len(response), 0)  # slots left over
        prompt = list(prompt)[max(len(prompt) - room_for_prompt, 0):] if room_for_prompt else []
        sequence = (head + prompt + response)[:length + 1]
        n = len(sequence) - 1
        inputs[i, :n] = sequence[:-1]
        targets[i, :n] = sequence[1:]
        # Target j is sequence[j + 1]: the first response token is target len(head + prompt) - 1.
        weights[i, max(len(head) + len(prompt) - 1, 0):n] = 1.0
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": weights}


def loss_positions(weights: np.ndarray, width: int) -> np.ndarray:
    """The positions of each row's non-zero loss weights, in order, padded with -1.

    Args:
      weights: `[B, T]` loss weights.
      width: K, the positions kept per row (at least the most non-zero weights of a row).

    Returns:
      int32 `[B, K]` (`decoder_loss_positions`: the decoder-only output head runs only there).

    Raises:
      ValueError: a row has more than `width` weighted positions.
    """
    weights = np.asarray(weights)
    out = np.full((weights.shape[0], width), -1, np.int32)
    for row, where in enumerate(weights != 0):
        index = np.flatnonzero(where)
        if len(index) > width:
            raise ValueError(f"row {row} has {len(index)} scored positions, more than {width}")
        out[row, :len(index)] = index
    return out


def make_prompt_batch(prompts: Sequence[Sequence[int]], length: int, bos_id: int | None = 1,
                      pad_id: int = 0, left_pad: bool = True) -> dict[str, np.ndarray]:
    """Greedy-decoding batch: `decoder_input_tokens [B, length]` = bos + prompt, padded.

    Prompts longer than `length - 1` (`length` without a BOS) keep their last tokens.

    Raises:
      ValueError: a model without BOS (`bos_id=None`) gets an empty prompt (nothing to
        continue).
    """
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    head = [] if bos_id is None else [bos_id]
    for i, prompt in enumerate(prompts):
        row = head + list(prompt)[max(len(prompt) - (length - len(head)), 0):]
        if not row:
            raise ValueError(f"prompt {i} is empty and the model takes no BOS: nothing to "
                             "continue")
        if left_pad:
            tokens[i, length - len(row):] = row
        else:
            tokens[i, :len(row)] = row
    return {"decoder_input_tokens": tokens}


def decoder_only_features(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                          length: int, ids: SpecialIds) -> dict[str, np.ndarray]:
    """Decoder-only training features (`models.make_decoder_only_batch`): bos + prompt +
    response + eos, loss on the response and eos only; empty rows are all padding."""
    feats = make_decoder_only_batch(prompts, responses, length, bos_id=ids.bos, eos_id=ids.eos,
                                    pad_id=ids.pad)
    empty = np.asarray([not p and not r for p, r in zip(prompts, responses)])
    for key, value in feats.items():
        value[empty] = 0
    return feats


def best_fit_decreasing_bins(lengths: Sequence[Sequence[int]], capacity: Sequence[int],
                             max_scan: int = 64) -> list[list[int]]:
    """Packs items into bins, best fit decreasing on the first dimension.

    Items are taken longest first (first dimension; ties by index) and each goes to the
    open bin with the least room left that still holds it in every dimension (of the
    `max_scan` tightest bins that hold its first dimension), else to a new bin. Taking the
    long items first is what keeps waste low: in-order first fit left 25.7% of 1024-token
    rows empty on real NIV2 prompts (16 tasks, 64 examples), this leaves each row nearly full.
    Bins are returned ordered by their earliest item, so an epoch's shuffled order still
    decides which rows come first and no length curriculum appears.

    Args:
      lengths: per item, its length in each dimension (clipped to the capacity).
      capacity: per dimension, the room of a bin.
      max_scan: bins tried per item beyond the tightest (bounds the work to
        O(items x (log bins + max_scan)) when later dimensions are tight).

    Returns:
      Bins as lists of item indices (ascending within a bin), ordered by their first item.
    """
    sizes = [[min(int(x), c) for x, c in zip(size, capacity)] for size in lengths]
    order = sorted(range(len(sizes)),
                   key=lambda i: (-max(x / c for x, c in zip(sizes[i], capacity)), i))
    bins: list[list[int]] = []
    rest: list[list[int]] = []  # per bin: room left in the dimensions after the first
    by_room: list[tuple[int, int]] = []  # (room left in the first dimension, bin), sorted
    for item in order:
        size = sizes[item]
        start = bisect.bisect_left(by_room, (size[0], -1))
        slot = next((j for j in range(start, min(len(by_room), start + max_scan))
                     if all(x <= r for x, r in zip(size[1:], rest[by_room[j][1]]))), None)
        if slot is None:
            target, room = len(bins), capacity[0]
            bins.append([])
            rest.append(list(capacity[1:]))
        else:
            room, target = by_room.pop(slot)
        bins[target].append(item)
        rest[target] = [r - x for r, x in zip(rest[target], size[1:])]
        bisect.insort(by_room, (room - size[0], target))
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


def _packed_field(pieces: Sequence[Sequence[np.ndarray]], length: int, dtype=np.int32
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of concatenated pieces padded to `length`: (values, segment ids 1.., positions).

    Args:
      pieces: per row, its items' 1-D arrays.
      length: the row length.
      dtype: of the values (segment ids and positions are int32).
    """
    values = np.zeros((len(pieces), length), dtype)
    segments = np.zeros((len(pieces), length), np.int32)
    positions = np.zeros_like(segments)
    for row, items in enumerate(pieces):
        offset = 0
        for segment, item in enumerate(items, start=1):
            n = min(len(item), length - offset)
            values[row, offset:offset + n] = item[:n]
            segments[row, offset:offset + n] = segment
            positions[row, offset:offset + n] = np.arange(n)
            offset += n
    return values, segments, positions


def pack_encdec(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                source_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Packs encoder-decoder examples (`best_fit_decreasing_bins`), t5x / seqio pack=True
    features.

    Returns:
      `encoder_input_tokens`, `encoder_segment_ids`, `encoder_positions` [N, S];
      `decoder_target_tokens`, `decoder_input_tokens` (shifted right per segment),
      `decoder_segment_ids`, `decoder_positions`, `decoder_loss_weights` [N, T].
    """
    srcs = [np.asarray(list(x)[:source_length], np.int32) for x in inputs]
    tgts = [np.asarray(list(y)[:target_length], np.int32) for y in targets]
    bins = best_fit_decreasing_bins([(len(x), len(y)) for x, y in zip(srcs, tgts)],
                          (source_length, target_length))
    enc, enc_seg, enc_pos = _packed_field([[srcs[i] for i in b] for b in bins], source_length)
    dec, dec_seg, dec_pos = _packed_field([[tgts[i] for i in b] for b in bins], target_length)
    return {"encoder_input_tokens": enc, "encoder_segment_ids": enc_seg,
            "encoder_positions": enc_pos, "decoder_target_tokens": dec,
            "decoder_input_tokens": shift_right(dec, dec_seg), "decoder_segment_ids": dec_seg,
            "decoder_positions": dec_pos,
            "decoder_loss_weights": (dec != PAD_ID).astype(np.int32)}


def pack_decoder_only(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                      length: int, ids: SpecialIds) -> dict[str, np.ndarray]:
    """Packs decoder-only examples: each is its `decoder_only_features` row cut to its real
    positions (bos + prompt + response + eos), several per row (`best_fit_decreasing_bins`).

    Returns:
      `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
      `decoder_segment_ids`, `decoder_positions` [N, length] (positions restart at 0 in each
      segment, as in an unpacked row).
    """
    feats = decoder_only_features(prompts, responses, length, ids)
    sizes = (feats["decoder_input_tokens"] != ids.pad).sum(1)
    bins = best_fit_decreasing_bins([(int(n),) for n in sizes], (length,))

    def field(name):
        return _packed_field([[feats[name][i, :sizes[i]] for i in b] for b in bins], length,
                             feats[name].dtype)

    inputs, segments, positions = field("decoder_input_tokens")
    return {"decoder_input_tokens": inputs,
            "decoder_target_tokens": field("decoder_target_tokens")[0],
            "decoder_loss_weights": field("decoder_loss_weights")[0],
            "decoder_segment_ids": segments, "decoder_positions": positions}


def cut_generated(ids: Sequence[int], eos_id: int, pad_id: int = PAD_ID) -> list[int]:
    """Decoder-only generated ids up to and including the first EOS; a padding id ends the
    row too (excluded), as the evaluator's `decode_tokens` reads predictions."""
    out = []
    for token in ids:
        token = int(token)
        if token == pad_id:
            break
        out.append(token)
        if token == eos_id:
            break
    return out
