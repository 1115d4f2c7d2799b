"""The trainer's settings and result: `TrainConfig` (gin: `TrainConfig.*`), `TrainJob` /
`train_job` (what gin files bind for the entry points), `TrainResult`.

Kept apart from `trainer` (the job itself) so that configs, gin files and callers can read
them without the training machinery; `trainer` re-exports every name, and the gin selectors
keep the `activeit_jax.training.trainer` module they always had.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gin

from activeit_jax.training.step import check_settings

PyTree = Any


@gin.register(module="activeit_jax.training")
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a fine-tuning run (the reference setting is the default).

    Attributes:
      num_epochs: passes over the training set.
      batch_size: global batch (examples per optimizer step).
      num_microbatches: the global batch is split into this many microbatches whose gradients
        are accumulated (1 = no accumulation). `batch_size` must be divisible by
        `num_microbatches * (data * fsdp mesh size)`.
      learning_rate: peak learning rate.
      schedule: "constant", "linear" or "cosine" (decay to 0), after a linear warm-up.
      warmup_steps: warm-up steps from 0.
      optimizer: "adamw" or "adafactor".
      weight_decay: decoupled weight decay on matrices.
      adam_b1, adam_b2, adam_eps: AdamW hyper-parameters.
      max_grad_norm: global-norm gradient clipping (None or 0 = off).
      use_dropout: pass a dropout rng to `loss_fn` (the model's dropout rate applies).
      seed: one seed for instance sampling, epoch order, reference choice, dropout, init.
      max_source_length: source tokens (EOS included).
      max_target_length: target tokens (EOS included).
      max_instances_per_task: training instances per task (seeded shuffle, then the first).
      num_pos_examples: positive examples in each prompt.
      max_eval_instances_per_task: evaluation instances per task (the first in file order).
      max_val_instances_per_task: instances per task of the per-epoch validation that picks
        the best epoch; None = `max_eval_instances_per_task`. (Active-IT validates on 50 per
        task and tests on 100: `TLAL_base_script_v4.sh`.)
      eval_batch_size: rows per decoding batch.
      max_decode_length: decoding steps (defaults to `max_target_length`).
      selection_metric: validation score that picks the best epoch ("rougeL", "exact_match",
        or their `_cls` / `_gen` variants; Active-IT's is ROUGE-L over the classification
        validation tasks, "rougeL_cls").
      mesh_shape: mesh axis sizes {"data", "fsdp", "model"}; one may be -1 (fill).
      logical_axis_rules: (logical name, mesh axis or None) pairs; None = the model's own
        `logical_axis_rules`, else `partitioning.DEFAULT_LOGICAL_AXIS_RULES`.
      save_every_steps: also checkpoint every this many steps (0 = epoch ends only).
      max_to_keep: checkpoints kept by the manager.
      async_checkpointing: write checkpoints in the background.
      log_every_steps: train metrics written every this many steps (and at epoch ends).
      pack: pack several examples per row (`train_data.EpochBatcher`, t5x-style segment ids
        and positions); the model must read segment ids (`model.supports_packing`; T5 and
        LLaMA do). Each epoch then has its own number of steps.
      length_buckets_per_octave: > 0 cuts each training batch to the length bucket of its
        longest row (that many buckets per power of two; each bucket compiles the step once)
        instead of the maximum lengths: the same loss, far fewer padded positions when
        examples are shorter than the maximum. 0 = fixed maximum lengths.
      model_kind: deprecated, leave unset: the model decides its kind (`model.decoder_only`;
        decoder-only: loss on the response tokens only, sequences of max_source_length +
        max_target_length tokens). Still accepted for one release: "encoder_decoder" or
        "decoder_only" that agrees with the model prints a deprecation line, one that
        contradicts it is refused (`models.check_declared_kind`). Fingerprinted as unset
        (`run_dir.run_args`), so runs started with or without it resume alike.
      prompt_format: "auto" (`prompts.default_prompt_format` per task: Tk-Instruct for T5;
        decoder-only: Tk-Instruct for NIV2 and Alpaca for Self-Instruct, inside the model's
        chat template when its vocabulary has one) or one of `prompts.PROMPT_FORMATS`; used
        for training and evaluation alike.
      tensorboard: write TensorBoard event files.
      progress_bar: show a tqdm bar with tokens/s and ETA.
    """
    num_epochs: int = 8
    batch_size: int = 128
    num_microbatches: int = 1
    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    use_dropout: bool = True
    seed: int = 42
    max_source_length: int = 1024
    max_target_length: int = 128
    max_instances_per_task: int | None = 200
    num_pos_examples: int = 2
    max_eval_instances_per_task: int | None = 100
    max_val_instances_per_task: int | None = None
    eval_batch_size: int = 64
    max_decode_length: int | None = None
    selection_metric: str = "rougeL"
    mesh_shape: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "model": 1})
    logical_axis_rules: Sequence[tuple[str, Any]] | None = None
    save_every_steps: int = 0
    max_to_keep: int = 2
    async_checkpointing: bool = True
    log_every_steps: int = 10
    pack: bool = False
    length_buckets_per_octave: int = 0
    model_kind: str | None = None  # deprecated: the model decides
    prompt_format: str = "auto"
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self):
        # Checked when the config is built (gin included), before a run directory is touched.
        check_settings(self)

    def with_partitioning(self, partitioning: Any) -> "TrainConfig":
        """This config on the mesh and rules of a `partitioning.PartitioningConfig`.

        The one place where a `PartitioningConfig` (`train_job.partitioning`,
        `experiment.partitioning`) overrides `mesh_shape` and `logical_axis_rules`.

        Args:
          partitioning: a `PartitioningConfig`, or None (this config unchanged).
        """
        if partitioning is None:
            return self
        return dataclasses.replace(self, mesh_shape=dict(partitioning.axis_sizes),
                                   logical_axis_rules=tuple(partitioning.logical_axis_rules))


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """The pieces of a training run that gin files bind (`train_job.*`).

    Attributes:
      model: a model wrapper (`%MODEL` of `configs/models/*.gin`); None = the checkpoint's.
      config: the run settings (`@TrainConfig()`).
      vocabulary: the seqio vocabulary (`%VOCABULARY` of `configs/pools/*.gin`).
      niv2_dir: NIV2 root for task names.
      init_checkpoint: initial weights (a `checkpoints.save_model` directory).
      partitioning: a `partitioning.PartitioningConfig`; its mesh sizes and rules replace the
        TrainConfig's.
      allow_random_init: train from random weights when there is no checkpoint (tiny configs).
    """
    model: Any = None
    config: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    vocabulary: Any = None
    niv2_dir: str | None = None
    init_checkpoint: str | None = None
    partitioning: Any = None
    allow_random_init: bool = False

    def resolved_config(self) -> TrainConfig:
        """`config` with the mesh sizes and rules of `partitioning` when given."""
        return self.config.with_partitioning(self.partitioning)


@gin.configurable(module="activeit_jax.training")
def train_job(model: Any = None, config: TrainConfig | None = None, vocabulary: Any = None,
              niv2_dir: str | None = None, init_checkpoint: str | None = None,
              partitioning: Any = None, allow_random_init: bool = False) -> TrainJob:
    """gin face of `TrainJob`, called only by the entry points (train, evaluate, run)."""
    return TrainJob(model=model, config=config or TrainConfig(), vocabulary=vocabulary,
                    niv2_dir=niv2_dir, init_checkpoint=init_checkpoint,
                    partitioning=partitioning, allow_random_init=allow_random_init)


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` returns.

    Attributes:
      best_checkpoint_dir: `out_dir/best` (a `checkpoints.save_model` directory).
      best_epoch: 0-based epoch of the best validation score (the last epoch when there is no
        validation set).
      best_metrics: the validation summary of that epoch (`metrics.summarize` flat keys +
        groups); empty without validation.
      history: one record per finished epoch: {"epoch", "step", **flat scores}.
      final_step: optimizer steps taken.
      params: the best parameters, placed on the mesh (None when stopped early).
      completed: False when `stop_after_steps` stopped the run early.
    """
    best_checkpoint_dir: str | None
    best_epoch: int | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    final_step: int
    params: PyTree | None = None
    completed: bool = True


def validation_config(config: TrainConfig) -> TrainConfig:
    """`config` with the per-epoch validation's instance count as the evaluation count.

    Args:
      config: the training config.

    Returns:
      `config` itself when `max_val_instances_per_task` is None, else a copy whose
      `max_eval_instances_per_task` is it.
    """
    if config.max_val_instances_per_task is None:
        return config
    return dataclasses.replace(config,
                               max_eval_instances_per_task=config.max_val_instances_per_task)
