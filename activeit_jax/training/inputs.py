"""Training and evaluation inputs built from a list of `Task`s: tokenised once, batched per epoch.

The training set is small (a few hundred instances per task), so it is tokenised once into
memory and each epoch is a seeded permutation of it: batch `(epoch, step)` is a pure function of
the examples, the seed, `epoch` and `step`. A checkpoint that records the data position
`(epoch, step_in_epoch)` therefore resumes on exactly the batch an uninterrupted run would see.

Prompts are rendered by the data layer (`seqio_tasks.build_examples`) in the prompt format of
each task (`prompts.resolve_prompt_format`; "auto" = Tk-Instruct for encoder-decoder models;
decoder-only models: Tk-Instruct for NIV2 tasks and Alpaca for Self-Instruct items, as the user
turn of the model's chat template when the vocabulary has one). Positive examples are added
only while the prompt still fits `max_source_length` tokens (`prompts.make_fits`). A chat
answer is the assistant turn: its target is the answer followed by the end-of-turn token
(`<|im_end|>`), which for SmolLM2 is the model's EOS; when the two differ, the end-of-turn
token comes first and the EOS after it. Features follow
SeqIO's feature converters (`EncDecFeatureConverter` names, `pack=False`): a final short batch is
filled with all-padding rows, whose loss weights are 0, so every batch has a static shape and
every example is seen once per epoch. Decoder-only models (LLaMA, Self-Instruct) use the models
layer's builders (`models.make_decoder_only_batch`: bos + prompt + response + eos, loss on the
response and eos only; `models.make_prompt_batch` for decoding). `pack=True` packs each epoch's
examples several per row (`best_fit_decreasing_bins`, rows in epoch order; t5x / seqio pack=True
features: segment ids and per-segment positions, decoder inputs shifted right per segment), for models
that read segment ids (`supports_packing`): the loss of a packed batch equals the unpacked
one's, with far fewer padded positions.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np

from activeit_jax.core import records as records_lib
from activeit_jax.core.errors import UsageError
from activeit_jax.data import chat as chat_lib, hashing, niv2
from activeit_jax.data.buckets import bucket_for, fine_buckets
from activeit_jax.data.errors import MissingTaskError, RecordError, TaskFormatError
from activeit_jax.models import make_decoder_only_batch

PAD_ID = 0
EOS_ID = 1  # T5; decoder-only models bring their own ids (`SpecialIds`).

ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Token ids the features need: T5 uses pad 0 / eos 1 (no bos); LLaMA pad 0, bos 1, eos 2.

    `bos` None: no BOS (SmolLM2). `end_of_turn`: the vocabulary's end-of-turn id (chat
    models, e.g. `<|im_end|>`), where decoding stops too; None without one.
    """
    pad: int = PAD_ID
    eos: int = EOS_ID
    bos: int | None = None
    end_of_turn: int | None = None

    @classmethod
    def of(cls, model: Any, vocab: Any = None) -> "SpecialIds":
        """The ids of a model wrapper (its config's pad_id / eos_id / bos_id) and of its
        vocabulary (`end_of_turn_id`, when it has one)."""
        config = getattr(model, "config", None)
        eot = getattr(vocab, "end_of_turn_id", None)
        return cls(pad=int(getattr(config, "pad_id", PAD_ID)),
                   eos=int(getattr(config, "eos_id", EOS_ID)),
                   bos=getattr(config, "bos_id", None),
                   end_of_turn=None if eot is None else int(eot))


def check_vocabulary(model: Any, vocab: Any, where: str = "the model") -> None:
    """Refuses a vocabulary with more ids than the model's embedding has rows.

    An id past the embedding gathers outside it, which JAX fills with NaN: the loss is NaN
    from the first step and every score NaN. Catch it when the two meet, before any work.

    Args:
      model: a model wrapper (its `config.vocab_size`, or its own `vocab_size`).
      vocab: a seqio vocabulary (`vocab_size`, sentinels included).
      where: what the model is, for the message (e.g. a checkpoint directory).

    Raises:
      UsageError: the vocabulary does not fit.
    """
    rows = getattr(getattr(model, "config", model), "vocab_size", None)
    size = getattr(vocab, "vocab_size", None)
    if rows is not None and size is not None and int(size) > int(rows):
        raise UsageError(f"the vocabulary has {size} ids but {where} embeds only {rows}: ids "
                         f">= {rows} would make the loss and every score NaN; use the model's "
                         "own vocabulary (--vocab / train_job.vocabulary)")


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One tokenised instance.

    Attributes:
      task_name: the task it comes from.
      label: the task's label ("cls" / "gen").
      instance_id: the instance id within the task.
      inputs: source token ids. Encoder-decoder: truncated, ending with EOS (seqio). Decoder-only:
        the prompt's ids without special tokens (the batch builder adds bos and truncates).
      targets: token ids of each reference output (encoder-decoder: truncated, ending with EOS;
        decoder-only: truncated, no EOS); training picks one per epoch, as Tk-Instruct picks a
        random reference per example.
      references: the reference strings (for evaluation).
    """
    task_name: str
    label: str
    instance_id: str
    inputs: tuple[int, ...]
    targets: tuple[tuple[int, ...], ...]
    references: tuple[str, ...]


def _encode(vocab: Any, text: str, max_length: int, eos_id: int | None = EOS_ID,
            keep_end: bool = False) -> tuple[int, ...]:
    """Token ids of `text`: with `eos_id`, the first `max_length - 1` ids then EOS (seqio);
    without, `max_length` ids (the last ones when `keep_end`, for decoder-only prompts)."""
    ids = [int(i) for i in vocab.encode(text)]
    if eos_id is None:
        return tuple(ids[-max_length:] if keep_end else ids[:max_length])
    return tuple(ids[: max_length - 1] + [eos_id])


def select_instances(task: Any, max_instances: int | None, seed: int | None) -> tuple[Any, ...]:
    """The instances of `task` used: a seeded sample of `max_instances` (training, as
    Tk-Instruct), or the first `max_instances` in file order when `seed` is None (evaluation:
    NIV2 puts its label-balanced test instances first). See `data.niv2.select_instances`."""
    return niv2.select_instances(task, max_instances, 0 if seed is None else seed,
                                 shuffle=seed is not None).instances


def encode_tasks(tasks: Sequence[Any], vocab: Any, *, max_instances_per_task: int | None,
                 num_pos_examples: int, max_source_length: int, max_target_length: int,
                 seed: int | None, model_kind: str = ENCODER_DECODER,
                 special_ids: SpecialIds | None = None,
                 prompt_format: str = "auto") -> list[EncodedExample]:
    """Renders (data layer: `seqio_tasks.build_examples`) and tokenises the instances of `tasks`.

    Args:
      tasks: `data.niv2.Task`s.
      vocab: a seqio vocabulary (`encode(str) -> ids`; chat formats use its chat template).
      max_instances_per_task: instances kept per task (None = all).
      num_pos_examples: positive examples in a Tk-Instruct prompt (2).
      max_source_length: source tokens, EOS included (1024); positive examples are added only
        while the prompt fits (`prompts.make_fits`), then the source is truncated.
      max_target_length: target tokens, EOS included (128).
      seed: instance-sampling seed (None = the first instances, for evaluation).
      model_kind: ENCODER_DECODER or DECODER_ONLY.
      special_ids: the model's ids (encoder-decoder sources and targets end with its EOS; a
        decoder-only chat answer ends with `end_of_turn` when that is not the EOS).
      prompt_format: "auto" (`prompts.default_prompt_format` per task) or one of
        `prompts.PROMPT_FORMATS`.

    Returns:
      The encoded examples, in task order then instance order.

    Raises:
      ValueError: an unknown prompt format, or a chat format without a chat template.
    """
    from activeit_jax.data import prompts, seqio_tasks
    decoder_only = model_kind == DECODER_ONLY
    ids = special_ids or SpecialIds()
    chat = chat_lib.from_vocabulary(vocab)
    fits = prompts.make_fits(vocab, max_source_length)
    eos = None if decoder_only else ids.eos
    examples = []
    for task in tasks:
        instances = select_instances(task, max_instances_per_task, seed)
        task = dataclasses.replace(task, instances=instances)
        task_format = prompts.resolve_prompt_format(
            prompt_format, getattr(task, "source", "niv2"), decoder_only, chat is not None)
        # The answer closes the assistant turn; the batch builder appends the EOS after it.
        closing = (ids.end_of_turn,) if (decoder_only and prompts.is_chat_format(task_format)
                                         and ids.end_of_turn not in (None, ids.eos)) else ()
        shots = prompts.examples_shown(task_format, num_pos_examples)
        for raw in seqio_tasks.build_examples([task], task_format, fits,
                                              num_pos_examples=shots, chat=chat):
            references = tuple(raw["references"]) or ("",)
            examples.append(EncodedExample(
                # The label the metrics group by (a label file's CLS_GEN where it has one).
                task_name=task.name, label=getattr(task, "metric_label", None)
                or getattr(task, "label", "gen"),
                instance_id=str(raw["instance_id"]),
                inputs=_encode(vocab, raw["inputs"], max_source_length, eos, keep_end=True),
                targets=tuple(_encode(vocab, ref, max_target_length - len(closing), eos)
                              + closing for ref in references),
                references=references))
    return examples


def fingerprint(examples: Sequence[EncodedExample]) -> str:
    """A hash of the token ids, so a resumed run can check that it reads the same data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(np.asarray(ex.inputs, np.int32).tobytes())
        for t in ex.targets:
            h.update(np.asarray(t, np.int32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Features.

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


def pack_encdec_with_seqio(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                           source_length: int, target_length: int) -> dict[str, np.ndarray]:
    """Packs examples (in order) with `seqio.EncDecFeatureConverter(pack=True)`.

    Returns:
      All packed rows: the unpacked features plus encoder/decoder `segment_ids` and
      `positions`, each [N, S] or [N, T].
    """
    import seqio
    import tensorflow as tf

    def gen():
        for src, tgt in zip(inputs, targets):
            yield {"inputs": np.asarray(src, np.int32), "targets": np.asarray(tgt, np.int32)}

    ds = tf.data.Dataset.from_generator(gen, output_signature={
        "inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})
    converter = seqio.EncDecFeatureConverter(pack=True)
    ds = converter(ds, {"inputs": source_length, "targets": target_length})
    rows = list(ds.as_numpy_iterator())
    if not rows:
        raise ValueError("no examples to pack")
    return {k: np.stack([np.asarray(r[k], np.int32) for r in rows]) for k in rows[0]}


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


def _used_length(*arrays: np.ndarray) -> int:
    """1 + the last column where any of the [B, L] arrays is non-zero (0 if none)."""
    used = np.zeros(arrays[0].shape[1], bool)
    for array in arrays:
        used |= (np.asarray(array) != 0).any(0)
    return int(np.flatnonzero(used)[-1]) + 1 if used.any() else 0


def trim_to_buckets(batch: Mapping[str, np.ndarray], per_octave: int
                    ) -> dict[str, np.ndarray]:
    """Cuts a batch's padding columns to the bucket of its longest row (`scoring.batching`'s
    `fine_buckets`, `per_octave` steps per power of two): the same loss, fewer padded
    positions, and only a few distinct shapes (each compiles the train step once).

    Encoder features (`encoder_*`) are cut to the source bucket, decoder features to the
    target (decoder-only: sequence) bucket; a batch without any token keeps one column.
    """
    out = dict(batch)
    for prefix, keys in (("encoder_", ("encoder_input_tokens",)),
                         ("decoder_", ("decoder_input_tokens", "decoder_target_tokens",
                                       "decoder_loss_weights"))):
        names = [k for k in batch if k.startswith(prefix)]
        if not names:
            continue
        full = batch[names[0]].shape[1]
        used = max(_used_length(*(batch[k] for k in keys if k in batch)), 1)
        length = bucket_for(used, fine_buckets(full, min(16, full), per_octave))
        for name in names:
            out[name] = batch[name][:, :length]
    return out


class EpochBatcher:
    """Deterministic batches of a fixed training set: batch(epoch, step) is a pure function.

    Each epoch is a permutation of the examples drawn from `(seed, epoch)`; each example's
    reference (when it has several) is drawn from `(seed, epoch, example)` too. Both use the
    data layer's SHA-256 orderings (`data.hashing`), the same on every machine and version.
    The last batch of an epoch is completed with all-padding rows (loss weight 0).
    Decoder-only sequences are `source_length + target_length` tokens long; with
    `length_buckets_per_octave` > 0 each batch is cut to the length bucket of its longest row.
    """

    def __init__(self, examples: Sequence[EncodedExample], batch_size: int, seed: int, *,
                 source_length: int, target_length: int, model_kind: str = ENCODER_DECODER,
                 pack: bool = False, special_ids: SpecialIds | None = None,
                 length_buckets_per_octave: int = 0):
        if not examples:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.source_length = source_length
        self.target_length = target_length
        self.model_kind = model_kind
        self.pack = pack
        self.special_ids = special_ids or SpecialIds()
        self.length_buckets_per_octave = length_buckets_per_octave
        self._packed_cache: dict[int, dict[str, np.ndarray]] = {}
        self._order_cache: tuple[int | None, np.ndarray] = (None, np.zeros(0, np.int64))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_cache[0] != epoch:
            keys = [str(i) for i in range(len(self.examples))]
            order = np.asarray([int(k) for k in hashing.stable_shuffle(
                keys, self.seed, f"train_epoch:{epoch}")], np.int64)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def _rows(self, epoch: int, indices: Sequence[int]):
        inputs, targets = [], []
        for i in indices:
            ex = self.examples[int(i)]
            inputs.append(ex.inputs)
            choice = 0 if len(ex.targets) == 1 else hashing.stable_choice_index(
                len(ex.targets), self.seed, f"reference:{epoch}:{i}")
            targets.append(ex.targets[choice])
        return inputs, targets

    def _packed(self, epoch: int) -> dict[str, np.ndarray]:
        """The epoch's examples packed into rows, rows in epoch order (cached per epoch)."""
        if epoch not in self._packed_cache:
            inputs, targets = self._rows(epoch, self._epoch_order(epoch))
            if self.model_kind == DECODER_ONLY:
                packed = pack_decoder_only(inputs, targets,
                                           self.source_length + self.target_length,
                                           self.special_ids)
            else:
                packed = pack_encdec(inputs, targets, self.source_length, self.target_length)
            self._packed_cache = {epoch: packed}
        return self._packed_cache[epoch]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Number of batches in `epoch` (the same for every epoch unless packing)."""
        rows = (len(next(iter(self._packed(epoch).values()))) if self.pack
                else len(self.examples))
        return -(-rows // self.batch_size)

    def batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """The features of batch `step` of `epoch` (numpy, leading dim `batch_size`); with
        `length_buckets_per_octave`, cut to the bucket of its longest row
        (`trim_to_buckets`)."""
        features = self._batch(epoch, step)
        if self.length_buckets_per_octave:
            return trim_to_buckets(features, self.length_buckets_per_octave)
        return features

    def _batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        if not 0 <= step < self.steps_per_epoch(epoch):
            raise IndexError(f"step {step} outside epoch {epoch} "
                             f"({self.steps_per_epoch(epoch)} steps)")
        lo, hi = step * self.batch_size, (step + 1) * self.batch_size
        if self.pack:
            packed = self._packed(epoch)
            return {k: pad_rows(v[lo:hi], self.batch_size) for k, v in packed.items()}
        inputs, targets = self._rows(epoch, self._epoch_order(epoch)[lo:hi])
        missing = self.batch_size - len(inputs)
        inputs += [()] * missing
        targets += [()] * missing
        if self.model_kind == DECODER_ONLY:
            return decoder_only_features(inputs, targets, self.source_length + self.target_length,
                                         self.special_ids)
        return encdec_features(inputs, targets, self.source_length, self.target_length)


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Appends zero rows to reach `rows` rows."""
    if len(array) >= rows:
        return array
    pad = np.zeros((rows - len(array),) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad])


def eval_batches(examples: Sequence[EncodedExample], batch_size: int, source_length: int,
                 target_length: int, model_kind: str = ENCODER_DECODER,
                 special_ids: SpecialIds | None = None
                 ) -> list[tuple[dict[str, np.ndarray], int]]:
    """Decoding batches in example order, each (features, number of real rows).

    Encoder-decoder: the `encdec_features` of the sources (and first references).
    Decoder-only: `models.make_prompt_batch` (bos + prompt, left-padded to `source_length`).
    """
    ids = special_ids or SpecialIds()
    batches = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        missing = batch_size - len(chunk)
        inputs = [ex.inputs for ex in chunk]
        if model_kind == DECODER_ONLY:
            from activeit_jax.models import make_prompt_batch
            feats = make_prompt_batch(inputs, source_length, bos_id=ids.bos, pad_id=ids.pad)
            feats = {k: pad_rows(v, batch_size) for k, v in feats.items()}
        else:
            targets = [ex.targets[0] for ex in chunk] + [()] * missing
            feats = encdec_features(inputs + [()] * missing, targets, source_length,
                                    target_length)
        batches.append((feats, len(chunk)))
    return batches


def token_counts(batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(non-padding input tokens, target tokens with loss weight) of a numpy batch."""
    targets = int(np.asarray(batch["decoder_loss_weights"]).sum())
    if "encoder_input_tokens" in batch:
        inputs = int((np.asarray(batch["encoder_input_tokens"]) != PAD_ID).sum())
    else:
        inputs = int((np.asarray(batch["decoder_input_tokens"]) != PAD_ID).sum()) - targets
    return inputs, targets



# ----------------------------------------------------------------------------------------------
# Task lists for the command line.

def read_tasks(path: str, niv2_dir: str | None = None) -> list[Any]:
    """Reads the tasks named by a file.

    Accepted forms: a `.jsonl` of prepared tasks (`Task.to_dict()` lines, as
    `activeit-jax prepare` writes them) or of records with "name" / "task"; a JSON list of
    names / records, or an object with a "tasks" list (e.g. `selected_tasks.json`); a text
    file with one task name per line (`#` starts a comment). Names are loaded from
    `niv2_dir/tasks/<name>.json`.

    Args:
      path: the file.
      niv2_dir: the NIV2 root, needed when the file holds names.

    Returns:
      `data.niv2.Task`s in file order.

    Raises:
      UsageError: names without `niv2_dir`; MissingTaskError: a named task has no file;
      TaskNameError: a name that is a path; RecordError / TaskFormatError: a malformed file.
    """
    import os

    tasks: list[Any] = []
    for where, record in records_lib.read_records(path, "task list"):
        if isinstance(record, Mapping) and "instances" in record:
            try:
                tasks.append(niv2.Task.from_dict(record))
            except (KeyError, TypeError, ValueError) as err:
                raise TaskFormatError(f"not a prepared task ({err!r})", path, where) from None
            continue
        name = record if isinstance(record, str) else (
            record.get("name", record.get("task")) if isinstance(record, Mapping) else None)
        if not isinstance(name, str) or not name:
            raise RecordError(f"cannot read a task name from {record!r:.80}", path, where)
        if not niv2_dir:
            raise UsageError(f"{path} names tasks; give the NIV2 directory (--niv2_dir)")
        niv2.check_task_name(name, path, where)
        task_path = niv2.task_file_path(niv2_dir, name)
        if not os.path.exists(task_path):
            raise MissingTaskError(f"task {name!r} ({where} of {path}) has no file", task_path)
        tasks.append(niv2.load_niv2_task(task_path))
    return tasks
