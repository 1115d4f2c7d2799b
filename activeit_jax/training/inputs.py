"""Training and evaluation inputs built from a list of `Task`s: tokenised once, batched per epoch.

The training set is small (a few hundred instances per task), so it is tokenised once into
memory and each epoch is a seeded permutation of it: batch `(epoch, step)` is a pure function of
the examples, the seed, `epoch` and `step`. A checkpoint that records the data position
`(epoch, step_in_epoch)` therefore resumes on exactly the batch an uninterrupted run would see.

Prompts are rendered by the data layer (`examples.build_examples`) in the prompt format of
each task (`prompts.resolve_prompt_format`; "auto" = Tk-Instruct for encoder-decoder models;
decoder-only models: Tk-Instruct for NIV2 tasks and Alpaca for Self-Instruct items, as the user
turn of the model's chat template when the vocabulary has one). Positive examples are added
only while the prompt still fits `max_source_length` tokens (`prompts.make_fits`). A chat
answer is the assistant turn: its target is the answer followed by the end-of-turn token
(`<|im_end|>`), which for SmolLM2 is the model's EOS; when the two differ, the end-of-turn
token comes first and the EOS after it.

Batches are built by the model's batch builder (`model.batch_builder(vocab)`, a
`models.features.BatchBuilder`), so nothing here depends on the model's kind beyond its
`decoder_only` flag for prompt formats and token cuts. Features follow SeqIO's feature
converters (`EncDecFeatureConverter` names, `pack=False`): a final short batch is filled with
all-padding rows, whose loss weights are 0, so every batch has a static shape and every example
is seen once per epoch. Decoder-only models (LLaMA, Self-Instruct) train on bos + prompt +
response + eos, with the loss on the response and eos only. `pack=True` packs each epoch's
examples several per row (`models.batches.best_fit_decreasing_bins`, rows in epoch order; t5x /
seqio pack=True features: segment ids and per-segment positions, decoder inputs shifted right
per segment), for models that read segment ids (`supports_packing`): the loss of a packed
batch equals the unpacked one's, with far fewer padded positions.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np

from activeit_jax.core import records as records_lib
from activeit_jax.core.errors import UsageError
from activeit_jax.data import chat as chat_lib, hashing, niv2
from activeit_jax.data.buckets import bucket_for, fine_buckets
from activeit_jax.data.errors import MissingTaskError, RecordError, TaskFormatError
from activeit_jax.data.vocab import PAD_ID
from activeit_jax.models.features import BatchBuilder, EncoderDecoderBatches


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


def _encode(vocab: Any, text: str, max_length: int, eos_id: int | None,
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
                 seed: int | None, builder: BatchBuilder | None = None,
                 prompt_format: str = "auto") -> list[EncodedExample]:
    """Renders (data layer: `examples.build_examples`) and tokenises the instances of `tasks`.

    Args:
      tasks: `data.niv2.Task`s.
      vocab: a seqio vocabulary (`encode(str) -> ids`; chat formats use its chat template).
      max_instances_per_task: instances kept per task (None = all).
      num_pos_examples: positive examples in a Tk-Instruct prompt (2).
      max_source_length: source tokens, EOS included (1024); positive examples are added only
        while the prompt fits (`prompts.make_fits`), then the source is truncated.
      max_target_length: target tokens, EOS included (128).
      seed: instance-sampling seed (None = the first instances, for evaluation).
      builder: the model's batch builder (`model.batch_builder(vocab)`; default T5's): its
        `decoder_only` picks the prompt format and the cuts, its ids the EOS
        (encoder-decoder sources and targets end with it) and the end of a decoder-only
        chat answer (`end_of_turn`, when that is not the EOS).
      prompt_format: "auto" (`prompts.default_prompt_format` per task) or one of
        `prompts.PROMPT_FORMATS`.

    Returns:
      The encoded examples, in task order then instance order.

    Raises:
      ValueError: an unknown prompt format, or a chat format without a chat template.
    """
    from activeit_jax.data import examples as examples_lib, prompts
    builder = builder or EncoderDecoderBatches()
    decoder_only, ids = builder.decoder_only, builder.ids
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
        for raw in examples_lib.build_examples([task], task_format, fits,
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


def check_prompts_render(decoder_only: bool, vocab: Any, prompt_format: str = "auto") -> None:
    """Renders every prompt format of a run once (`prompts.check_formats_render`), before
    anything is encoded or written: a broken chat template is one line naming its file.

    Raises:
      UsageError: an unknown prompt format, or a chat format without a chat template.
      VocabularyError: the chat template fails to render.
    """
    from activeit_jax.data import prompts
    prompts.check_formats_render(prompt_format, decoder_only, chat_lib.from_vocabulary(vocab))


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
# Batches (built by the model's `BatchBuilder`).

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
    The last batch of an epoch is completed with all-padding rows (loss weight 0). Rows are
    the model's (`builder`: `model.batch_builder(vocab)`, default T5's); decoder-only
    sequences are `source_length + target_length` tokens long; with
    `length_buckets_per_octave` > 0 each batch is cut to the length bucket of its longest row.
    """

    def __init__(self, examples: Sequence[EncodedExample], batch_size: int, seed: int, *,
                 source_length: int, target_length: int, builder: BatchBuilder | None = None,
                 pack: bool = False, length_buckets_per_octave: int = 0):
        if not examples:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.source_length = source_length
        self.target_length = target_length
        self.builder = builder or EncoderDecoderBatches()
        self.pack = pack
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
            packed = self.builder.packed_train_batch(inputs, targets, self.source_length,
                                                     self.target_length)
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
        (`trim_to_buckets`). A decoder-only batch also lists where its loss is taken
        (`decoder_loss_positions`, `builder.add_loss_positions`), so the output head runs
        there only: see `loss_position_widths`."""
        features = self._batch(epoch, step)
        if self.length_buckets_per_octave:
            features = trim_to_buckets(features, self.length_buckets_per_octave)
        return self.builder.add_loss_positions(features, self.loss_position_widths(epoch))

    def loss_position_widths(self, epoch: int) -> tuple[int, ...]:
        """The widths a batch's loss positions may be padded to (decoder-only models; each
        is a shape of the train step). Unpacked, a row's loss is on its response and EOS,
        at most `target_length + 1` positions: that one width. Packed rows hold several
        responses: with `length_buckets_per_octave`, the widths are bucketed like the
        lengths (that many steps per power of two from 8); without, one width per epoch, the
        power of two that holds the epoch's fullest row (at most the row length)."""
        row = self.source_length + self.target_length
        if not self.pack:
            return (min(self.target_length + 1, row),)
        if self.length_buckets_per_octave:
            return fine_buckets(row, min(8, row), self.length_buckets_per_octave)
        weights = self._packed(epoch)["decoder_loss_weights"]
        most = int((weights != 0).sum(1).max(initial=1))
        return (min(1 << max(most - 1, 0).bit_length(), row),)

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
        return self.builder.train_batch(inputs, targets, self.source_length,
                                        self.target_length)


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Appends zero rows to reach `rows` rows."""
    if len(array) >= rows:
        return array
    pad = np.zeros((rows - len(array),) + array.shape[1:], array.dtype)
    return np.concatenate([array, pad])


def eval_batches(examples: Sequence[EncodedExample], batch_size: int, source_length: int,
                 builder: BatchBuilder | None = None
                 ) -> list[tuple[dict[str, np.ndarray], int]]:
    """Decoding batches in example order, each (features, number of real rows).

    Each is the model's decoding batch of the sources (`builder.decode_batch`: T5's encoder
    inputs, a decoder-only model's bos + prompt left-padded to `source_length`; default T5's
    builder), completed with all-padding rows to `batch_size`.
    """
    builder = builder or EncoderDecoderBatches()
    batches = []
    for lo in range(0, len(examples), batch_size):
        chunk = examples[lo:lo + batch_size]
        feats = builder.decode_batch([ex.inputs for ex in chunk], source_length)
        batches.append(({k: pad_rows(v, batch_size) for k, v in feats.items()}, len(chunk)))
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
