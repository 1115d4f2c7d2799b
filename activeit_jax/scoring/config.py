"""What the scorer computes (fingerprinted) and how it runs; length buckets."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from activeit_jax.core.errors import UsageError
from activeit_jax.data import prompts
from activeit_jax.data.buckets import fine_buckets
from activeit_jax.scoring import perturbation as perturbation_lib, taskmap


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """What to compute (fingerprinted) and how to run it (not fingerprinted).

    Attributes:
      num_instances: n, instances scored per task.
      num_perturbations: K, perturbed prompts per task.
      seed: seeds instance choice and perturbations (per task, via a stable hash).
      perturbation: registry name in `activeit_jax.scoring.perturbation`.
      perturbation_options: options of that perturbation, as sorted (key, value) pairs.
      prompt_format: "auto" (`prompts.default_prompt_format` per task: Tk-Instruct for T5;
        decoder-only models: Tk-Instruct for NIV2 tasks, Alpaca for Self-Instruct items, each
        as the user turn of the model's chat template when its vocabulary has one) or one of
        `prompts.PROMPT_FORMATS` for every task. Fingerprinted as the formats it resolves to
        (`planning.prompt_formats`), see `pool.fingerprint_args`.
      num_pos_examples: positive examples in the Tk-Instruct prompt.
      max_source_length / max_target_length: SeqIO lengths (cut with EOS kept).
      max_decode_length: greedy decoding length of the originals.
      fit_examples: add examples only while the tokenised source fits (Tk-Instruct); when
        False, all `num_pos_examples` are added and the source is cut.
      compute_entropy: also compute the mean token entropy baseline.
      save_prompts: also write prompts.jsonl.
      batch_size / decode_batch_size: the most rows per jitted call (rounded up to a
        multiple of the data-parallel size); decode_batch_size None = batch_size.
      batch_tokens: token budget of a call: rows x padded length (source; decoder-only: the
        whole sequence) is about this, so short rows run in big batches and long rows in
        small ones (`scoring.batching`); None = always `batch_size` rows.
      buckets_per_octave: default spacing of the scoring source buckets (decoder-only: the
        sequence buckets) (`data.buckets.fine_buckets`): steps between two powers of two (1 =
        powers of two).
      target_buckets_per_octave: the same for T5 scoring targets.
      decode_buckets_per_octave: the same for the source buckets of decoding.
        The defaults (5, 1, 8) hold padding under 10% of source positions in scoring and
        decoding on the shared NIV2 pool with 84 scoring + 58 decoding shapes; 8, 8, 8 padded
        a little less (5.7% instead of 8.2% of scoring sources) with 305 scoring shapes, each a
        compilation (`python benchmarks/padding_plan.py`). Targets are short next to sources:
        their coarse buckets cost little and cut the shape count by three.
      tasks_per_chunk: consecutive pool tasks processed together.
      source_buckets / target_buckets: padded lengths (default: the spacings above);
        explicit source buckets serve decoding too.
      sequence_buckets: decoder-only scoring: padded lengths of prompt + response (default:
        the same spacing up to max_source_length + max_target_length).
      plan_costs: how the scorer weighs padding against calls and compilations
        (`RowScorer`): "model" (the model's FLOPs per position and estimated compile time,
        `scoring.costs`; any row count that is a multiple of the data-parallel size) or
        "slots" (model-free: padded slots and power-of-two row counts).
      thresholds: Task Map thresholds.
    """
    num_instances: int = 10
    num_perturbations: int = 20
    seed: int = 0
    perturbation: str = "drop"
    perturbation_options: tuple[tuple[str, Any], ...] = (("rate", 0.2),)
    prompt_format: str = "auto"
    num_pos_examples: int = 2
    max_source_length: int = 1024
    max_target_length: int = 128
    max_decode_length: int = 128
    fit_examples: bool = True
    compute_entropy: bool = False
    save_prompts: bool = False
    batch_size: int = 64
    decode_batch_size: int | None = None
    batch_tokens: int | None = 32768
    buckets_per_octave: int = 5
    target_buckets_per_octave: int = 1
    decode_buckets_per_octave: int = 8
    tasks_per_chunk: int = 16
    source_buckets: tuple[int, ...] | None = None
    target_buckets: tuple[int, ...] | None = None
    sequence_buckets: tuple[int, ...] | None = None
    plan_costs: str = "model"
    thresholds: taskmap.TaskMapThresholds = taskmap.TaskMapThresholds()

    # Fields that change the results; the rest only change speed / float rounding.
    FINGERPRINTED = ("num_instances", "num_perturbations", "seed", "perturbation",
                     "perturbation_options", "num_pos_examples", "max_source_length",
                     "max_target_length", "max_decode_length", "fit_examples",
                     "compute_entropy", "save_prompts")

    def __post_init__(self):
        # Everything is checked here, before a run directory is touched: a value refused
        # later would leave a run_args.json that refuses the corrected command.
        minimum = {"num_instances": 1, "num_perturbations": 1, "seed": 0,
                   "num_pos_examples": 0, "max_source_length": 2, "max_target_length": 2,
                   "max_decode_length": 1, "batch_size": 1, "tasks_per_chunk": 1}
        for name, low in minimum.items():
            _check_int(name, getattr(self, name), low)
        if self.decode_batch_size is not None:
            _check_int("decode_batch_size", self.decode_batch_size, 1)
        for name in ("source_buckets", "target_buckets", "sequence_buckets"):
            for bucket in getattr(self, name) or ():
                _check_int(name, bucket, 1)
        try:
            prompts.check_prompt_format(self.prompt_format, allow_auto=True)
        except ValueError as err:
            raise UsageError(str(err)) from None
        try:  # builds it once: an unknown name, a rate outside [0, 1], a missing file
            perturbation_lib.get_perturbation(self.perturbation,
                                              **dict(self.perturbation_options))
        except (ValueError, KeyError, OSError) as err:
            raise UsageError(f"perturbation: {err}") from None
        if self.batch_tokens is not None:
            _check_int("batch_tokens", self.batch_tokens, 1)
        for name in ("buckets_per_octave", "target_buckets_per_octave",
                     "decode_buckets_per_octave"):
            _check_int(name, getattr(self, name), 1)
        if self.plan_costs not in ("model", "slots"):
            raise UsageError(f"ScoreConfig.plan_costs (--plan_costs) must be 'model' or "
                             f"'slots', got {self.plan_costs!r}")

    def _buckets(self, explicit, top: int, smallest: int, per_octave: int) -> tuple[int, ...]:
        buckets = explicit or fine_buckets(top, smallest, per_octave)
        return tuple(sorted(set(min(b, top) for b in buckets) | {top}))

    @property
    def src_buckets(self) -> tuple[int, ...]:
        return self._buckets(self.source_buckets, self.max_source_length, 16,
                             self.buckets_per_octave)

    @property
    def decode_src_buckets(self) -> tuple[int, ...]:
        """Source buckets of decoding (explicit `source_buckets` serve both)."""
        return self._buckets(self.source_buckets, self.max_source_length, 16,
                             self.decode_buckets_per_octave)

    @property
    def tgt_buckets(self) -> tuple[int, ...]:
        return self._buckets(self.target_buckets, self.max_target_length, 8,
                             self.target_buckets_per_octave)

    @property
    def seq_buckets(self) -> tuple[int, ...]:
        """Decoder-only: buckets of the input positions of prompt + response (at most
        (max_source_length - 1) + max_target_length; the last bucket is their sum)."""
        return self._buckets(self.sequence_buckets,
                             self.max_source_length + self.max_target_length, 16,
                             self.buckets_per_octave)

    def fingerprint_args(self) -> dict[str, Any]:
        out = {}
        for name in self.FINGERPRINTED:
            value = getattr(self, name)
            out[name] = [list(v) for v in value] if name == "perturbation_options" else value
        return out


def _check_int(name: str, value: Any, low: int) -> None:
    """An integer >= `low` (num_perturbations 0 would make every task's PU 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"ScoreConfig.{name} (--{name}) must be an integer >= {low}, "
                         f"got {value!r}")


def fingerprint(args: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `args`."""
    text = json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
