"""What a model reads besides its weights: its special ids, its vocabulary's size, its batches.

The model owns its kind (t5x's idea: a model class names its feature converter). Each wrapper
declares `decoder_only` and a `BatchBuilder` class; `model.batch_builder(vocab)` returns the
builder with the model's `SpecialIds`, and the trainer, the evaluator and the scorer build
every host-side batch through it, so none of them branches on the kind:

  builder = model.batch_builder(vocab)
  builder.train_batch(sources, targets, S, T)          training rows (unpacked)
  builder.packed_train_batch(sources, targets, S, T)   training rows, several examples each
  builder.decode_batch(sources, length)                greedy decoding (`model.greedy_decode`)
  builder.score_batch(rows, shape)                     teacher-forced scoring rows
  builder.add_loss_positions(batch, widths)            where the output head must run
  builder.generated_ids(row)                           a decoded row cut after its EOS

Encoder-decoder (T5): sources and targets are separate sequences (`EncDecFeatureConverter`
features); decoder-only (LLaMA, SmolLM2): one sequence `bos + prompt + response + eos` with
the loss on the response. The feature layouts are in `models.wrappers`' docstring; the numpy
functions behind the builders are in `models.batches`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import numpy as np

from activeit_jax.core.errors import UsageError
from activeit_jax.data.vocab import EOS_ID, PAD_ID
from activeit_jax.models import batches

Batch = dict[str, np.ndarray]
Row = tuple[Sequence[int], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The token ids a model's batches need: T5 uses pad 0 / eos 1 (no bos, `data.vocab`'s
    SentencePiece ids); LLaMA pad 0, bos 1, eos 2; SmolLM2 pad 0, no bos, eos 2.

    `bos` None: no BOS (SmolLM2). `end_of_turn`: the vocabulary's end-of-turn id (chat
    models, e.g. `<|im_end|>`), where decoding stops too; None without one.
    """
    pad: int = PAD_ID
    eos: int = EOS_ID
    bos: int | None = None
    end_of_turn: int | None = None

    @classmethod
    def of(cls, model: Any, vocab: Any = None) -> SpecialIds:
        """The ids of a model wrapper and its vocabulary -- the one way to get them.

        Args:
          model: a model wrapper: its config's `pad_id`, `eos_id` and `bos_id` (a config
            without one, e.g. T5's without `bos_id`, or a test fake without a config, keeps
            the T5 default).
          vocab: the model's vocabulary (its `end_of_turn_id`, when it has one), or None.

        Returns:
          The ids, all plain ints (or None).
        """
        config = getattr(model, "config", None)
        bos = getattr(config, "bos_id", None)
        eot = getattr(vocab, "end_of_turn_id", None)
        return cls(pad=int(getattr(config, "pad_id", PAD_ID)),
                   eos=int(getattr(config, "eos_id", EOS_ID)),
                   bos=None if bos is None else int(bos),
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
class BatchBuilder:
    """Host-side numpy batches of one model kind, with the model's special ids.

    Attributes:
      ids: the model's `SpecialIds`.
      decoder_only: the kind (class attribute).
      score_dims: the length dimensions a scoring row is planned over, each with its own
        buckets: ("source", "target") or ("sequence", "target") (class attribute).
      score_features / decode_feature: the features of a scoring / decoding batch.
    """
    ids: SpecialIds = SpecialIds()

    decoder_only: ClassVar[bool]
    score_dims: ClassVar[tuple[str, ...]]
    score_features: ClassVar[tuple[str, ...]]
    decode_feature: ClassVar[str]

    def train_batch(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                    source_length: int, target_length: int) -> Batch:
        """Unpacked training rows, one per example; an example with no tokens at all is an
        all-padding row (loss weight 0), which fills a short final batch.

        Args:
          sources / targets: token ids per example (`training.inputs.EncodedExample`).
          source_length / target_length: the maximum lengths (decoder-only: the row holds
            `source_length + target_length` positions).
        """
        raise NotImplementedError

    def packed_train_batch(self, sources: Sequence[Sequence[int]],
                           targets: Sequence[Sequence[int]], source_length: int,
                           target_length: int) -> Batch:
        """The examples packed several per row (`batches.best_fit_decreasing_bins`, t5x / seqio
        pack=True features: segment ids and per-segment positions), every row of them."""
        raise NotImplementedError

    def decode_batch(self, sources: Sequence[Sequence[int]], length: int) -> Batch:
        """The greedy-decoding batch of `model.greedy_decode`: one row per source, `length`
        positions."""
        raise NotImplementedError

    def score_lengths(self, row: Row) -> tuple[int, ...]:
        """A scoring row's lengths along `score_dims` (what its batch is planned on)."""
        raise NotImplementedError

    def score_batch(self, rows: Sequence[Row], shape: Sequence[int]) -> Batch:
        """Teacher-forced scoring features of (source, target) rows, padded to `shape` (one
        length per `score_dims`); `decoder_loss_weights` mark the scored target tokens."""
        raise NotImplementedError

    def decode_length(self, source: Sequence[int]) -> int:
        """Positions a source takes in a decoding batch (what decoding is planned on)."""
        raise NotImplementedError

    def add_loss_positions(self, batch: Batch, widths: Sequence[int]) -> Batch:
        """A training batch with the positions where its loss is taken, when the model can
        run its output head on those alone (decoder-only: `decoder_loss_positions`, the
        width the smallest of `widths` that holds every row's weighted positions, at most
        the row length); otherwise the batch itself (T5's decoder positions are its
        targets already)."""
        return batch

    def generated_ids(self, row: Sequence[int]) -> list[int]:
        """A `greedy_decode` output row cut after its first EOS (EOS kept when generated)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EncoderDecoderBatches(BatchBuilder):
    """T5: encoder sources and decoder targets, each ending with EOS (seqio's cut), padded
    with 0 on the right (`EncDecFeatureConverter` names)."""
    decoder_only: ClassVar[bool] = False
    score_dims: ClassVar[tuple[str, ...]] = ("source", "target")
    score_features: ClassVar[tuple[str, ...]] = (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "decoder_loss_weights")
    decode_feature: ClassVar[str] = "encoder_input_tokens"

    def train_batch(self, sources, targets, source_length, target_length):
        return batches.encdec_features(sources, targets, source_length, target_length)

    def packed_train_batch(self, sources, targets, source_length, target_length):
        return batches.pack_encdec(sources, targets, source_length, target_length)

    def decode_batch(self, sources, length):
        tokens = np.zeros((len(sources), length), np.int32)
        for row, source in enumerate(sources):
            source = list(source)[:length]
            tokens[row, :len(source)] = source
        return {"encoder_input_tokens": tokens}

    def score_lengths(self, row):
        return len(row[0]), len(row[1])

    def score_batch(self, rows, shape):
        source_length, target_length = shape
        return batches.encdec_features([s for s, _ in rows], [t for _, t in rows],
                                       source_length, target_length)

    def decode_length(self, source):
        return len(source)

    def generated_ids(self, row):
        ids = [int(t) for t in row]
        if self.ids.eos in ids:
            return ids[:ids.index(self.ids.eos) + 1]
        return [t for t in ids if t != self.ids.pad]


@dataclasses.dataclass(frozen=True)
class DecoderOnlyBatches(BatchBuilder):
    """LLaMA / SmolLM2: one sequence `bos + prompt + response + eos`, the loss on the
    response and its EOS; decoding continues `bos + prompt`, padded on the left.

    Scoring rows are planned on the sequence and on the response: a batch's
    `decoder_loss_positions` has one slot per response token of its longest response (its
    "target" bucket), so the vocabulary-wide output head runs there only."""
    decoder_only: ClassVar[bool] = True
    score_dims: ClassVar[tuple[str, ...]] = ("sequence", "target")
    score_features: ClassVar[tuple[str, ...]] = (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
        "decoder_loss_positions")
    decode_feature: ClassVar[str] = "decoder_input_tokens"

    def train_batch(self, sources, targets, source_length, target_length):
        return batches.decoder_only_features(sources, targets, source_length + target_length,
                                             self.ids)

    def packed_train_batch(self, sources, targets, source_length, target_length):
        return batches.pack_decoder_only(sources, targets, source_length + target_length,
                                         self.ids)

    def decode_batch(self, sources, length):
        return batches.make_prompt_batch(sources, length, bos_id=self.ids.bos,
                                         pad_id=self.ids.pad)

    def score_lengths(self, row):
        """(`len(prompt) + len(response)`, the input positions of the row; `len(response)`,
        its scored positions).

        Raises:
          ValueError: the response does not end with the model's EOS.
        """
        prompt, response = row
        if not response or response[-1] != self.ids.eos:
            raise ValueError("a decoder-only response must end with the model's EOS")
        return len(prompt) + len(response), len(response)

    def score_batch(self, rows, shape):
        # The response's EOS is added back by the builder (after the response ids).
        length, scored = shape
        batch = batches.make_decoder_only_batch(
            [p for p, _ in rows], [list(r)[:-1] for _, r in rows], length,
            bos_id=self.ids.bos, eos_id=self.ids.eos, pad_id=self.ids.pad)
        batch["decoder_loss_positions"] = batches.loss_positions(
            batch["decoder_loss_weights"], scored)
        return batch

    def add_loss_positions(self, batch, widths):
        weights = batch["decoder_loss_weights"]
        most = int((np.asarray(weights) != 0).sum(1).max(initial=0))
        width = min(next((w for w in sorted(widths) if w >= most), most),
                    weights.shape[1])
        return {**batch, "decoder_loss_positions": batches.loss_positions(weights,
                                                                          max(width, 1))}

    def decode_length(self, source):
        return len(source) + 1  # bos + prompt (counted without a BOS too: the same plans)

    def generated_ids(self, row):
        """`batches.cut_generated`: up to and including the first EOS, or to the first
        padding id."""
        return batches.cut_generated(row, self.ids.eos, self.ids.pad)

