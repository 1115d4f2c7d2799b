"""T5X-style fine-tuning on a device mesh: sharded train step, validation, best checkpoint.

`train_and_evaluate(model, train_tasks, val_tasks, vocab, config, out_dir)` is the whole job
(its steps: `_encode_run_data`, then `_TrainRun`: restore or initialise, train each epoch,
validate / keep the best / checkpoint, result). Helpers live beside it: `train_config`
(`TrainConfig`, `train_job`, `TrainResult`), `train_step` (batch placement, the jitted step),
`evaluation` (decoding and Tk-Instruct scores), `train_io` (metrics, checkpoints, best/):

1. tokenise the training tasks (`train_data.encode_tasks`), batch them deterministically per
   epoch (`train_data.EpochBatcher`);
2. place the train state on a `("data", "fsdp", "model")` mesh: parameter shardings from the
   model's logical axes and the logical-axis rules, optimizer state following its parameters;
3. run a jitted train step with explicit in/out shardings; a global batch is split into
   microbatches accumulated with `lax.scan` (token-weighted: summed losses and gradients over
   all microbatches divided by the total number of target tokens, so accumulation equals the
   large batch);
4. after each epoch, greedy-decode the validation tasks and score ROUGE-L / exact match
   (`metrics.summarize`); the best epoch by `config.selection_metric` is written with
   `checkpoints.save_model` to `out_dir/best` and its parameters are returned at the end;
5. orbax `CheckpointManager` checkpoints (asynchronous, `max_to_keep`) at every epoch end and
   every `save_every_steps` steps hold the train state and the data position
   `(epoch, step_in_epoch)`; rerunning the same call after a kill resumes from the latest one
   and ends with the same parameters as an uninterrupted run.

Metrics (loss, learning rate, tokens/s, step time, evaluation scores) go to
`out_dir/metrics.jsonl` and TensorBoard event files in `out_dir/tensorboard`.

Multi-host (one process per host, `jax.distributed` started by the entry point): every process
runs this same function. The mesh spans all hosts with the data axis across them
(`partitioning.device_grid`), so only the gradient all-reduce crosses the slower links. Each
batch is a pure function of (seed, epoch, step), so every process derives the same global batch
and `put_batch` hands each device only its own rows (no host sends another's data). Orbax
writes the checkpoints (each process its shards, process 0 the metadata), `save_model` the
best parameters the same way; metrics.jsonl, TensorBoard, eval/, best.json and
train_summary.json are written by process 0 only. `out_dir` must be shared by the hosts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from activeit_jax import layout, partitioning
from activeit_jax.core import io_utils, records, run_lock
from activeit_jax.core.errors import UsageError
from activeit_jax.models import (
    BatchBuilder,
    TrainableModel,
    check_declared_kind,
    check_vocabulary,
    checkpoints,
)
from activeit_jax.training import inputs as train_data, metrics as metrics_lib, state as ts
from activeit_jax.training.config import TrainConfig, TrainResult, validation_config
from activeit_jax.training.evaluation import encode_eval_tasks, evaluate, make_decode_fn
from activeit_jax.training.position import TrainPosition
from activeit_jax.training.run_dir import (
    MetricsWriter,
    TrainRunMismatchError,
    check_run_args,
    checkpoint_manager,
    config_dict,
    recover_best_dir,
    restore_newest_intact,
    run_args,
    save_best,
    save_checkpoint,
    write_predictions,
)
from activeit_jax.training.step import (
    check_finite,
    make_train_step,
    put_batch,
    resolve_rules,
    validate_config,
)

PyTree = Any
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The job.


def _check_packing(model: TrainableModel, config: TrainConfig) -> None:
    if config.pack and not getattr(model, "supports_packing", False):
        raise NotImplementedError(
            f"pack=True needs a model that reads segment ids and positions "
            f"(encoder_segment_ids / decoder_segment_ids); {type(model).__name__} does not "
            f"(supports_packing is not set). Train with pack=False.")


def _initial_params(model: Any, init_checkpoint: str | None, init_params: PyTree | None,
                    rng: jax.Array, mesh: Mesh, params_shardings: PyTree,
                    rules: Sequence[tuple[str, Any]]) -> PyTree:
    if init_checkpoint is not None:
        return checkpoints.restore_params(init_checkpoint, model, params_shardings)
    if init_params is not None:
        return jax.device_put(init_params, params_shardings)
    with partitioning.mesh_context(mesh, rules):
        return jax.jit(model.init_params, out_shardings=params_shardings)(rng)


@dataclasses.dataclass(frozen=True)
class _TrainPrograms:
    """Optimizer, shardings and jitted functions of one (model, config, mesh, shapes)."""
    optimizer: optax.GradientTransformation
    params_shapes: PyTree
    state_sh: ts.TrainState
    batch_sh: dict[str, NamedSharding]
    create_state: Callable
    train_step: Callable


# Jitted programs are reused by later runs in the same process with the same model, optimizer
# settings, mesh and shapes (the active loop trains many times): no recompilation.
_PROGRAMS: dict[Any, Any] = {}
_MAX_PROGRAMS = 4


def _cached(key: Any, build: Callable[[], Any]) -> Any:
    if key in _PROGRAMS:
        _PROGRAMS[key] = _PROGRAMS.pop(key)  # most recently used last
    else:
        while len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def _train_programs(model: TrainableModel, config: TrainConfig, mesh: Mesh, rules: tuple,
                    total_steps: int, batch_shapes: tuple) -> _TrainPrograms:
    schedule_steps = None if config.schedule == "constant" else total_steps
    key = ("train", model, mesh, rules, schedule_steps, batch_shapes, config.optimizer,
           config.learning_rate, config.schedule, config.warmup_steps, config.weight_decay,
           config.adam_b1, config.adam_b2, config.adam_eps, config.max_grad_norm,
           config.num_microbatches, config.use_dropout, config.seed)

    def build() -> _TrainPrograms:
        optimizer, schedule = ts.optimizer_from_config(config, model, total_steps)
        params_shapes = jax.eval_shape(model.init_params, jax.random.PRNGKey(config.seed))
        param_specs = partitioning.logical_to_mesh_specs(model.params_logical_axes(), rules)
        state_sh = ts.train_state_shardings(mesh, optimizer, params_shapes, param_specs)
        batch_sh = {k: partitioning.data_sharding(mesh, len(shape), rules)
                    for k, shape in batch_shapes}
        with partitioning.mesh_context(mesh, rules):
            train_step = make_train_step(
                model, optimizer, schedule, mesh=mesh, state_shardings=state_sh,
                batch_sharding=batch_sh, num_microbatches=config.num_microbatches,
                use_dropout=config.use_dropout, rules=rules)
        create_state = jax.jit(lambda p: ts.create_train_state(p, optimizer),
                               out_shardings=state_sh)
        return _TrainPrograms(optimizer, params_shapes, state_sh, batch_sh, create_state,
                              train_step)

    return _cached(key, build)


def _decode_program(model: TrainableModel, mesh: Mesh, rules: tuple, max_decode_length: int,
                    batch_shapes: tuple) -> Callable:
    key = ("decode", model, mesh, rules, max_decode_length, batch_shapes)

    def build() -> Callable:
        params_sh = partitioning.params_shardings(model, mesh, rules)
        batch_sh = {k: partitioning.data_sharding(mesh, len(shape), rules)
                    for k, shape in batch_shapes}
        return make_decode_fn(model, mesh=mesh, params_shardings=params_sh,
                              batch_sharding=batch_sh, max_decode_length=max_decode_length)

    return _cached(key, build)


def train_and_evaluate(model: TrainableModel, train_tasks: Sequence[Any], val_tasks: Sequence[Any],
                       vocab: Any, config: TrainConfig, out_dir: str, *,
                       init_checkpoint: str | os.PathLike | None = None,
                       init_params: PyTree | None = None,
                       stop_after_steps: int | None = None,
                       devices: Sequence[Any] | None = None) -> TrainResult:
    """Fine-tunes `model` on `train_tasks`, validates each epoch, keeps the best epoch.

    Rerunning the same call with the same `out_dir` resumes from the latest checkpoint (train
    state + data position) and ends with the same parameters as an uninterrupted run; a run
    that already finished only reloads its best parameters.

    Args:
      model: an `EncoderDecoderModel` / `DecoderOnlyModel` (init_params, params_logical_axes,
        loss_fn, greedy_decode; its `batch_builder` builds every batch). It decides its kind:
        a `config.model_kind` (deprecated) that contradicts it is refused.
      train_tasks: `data.niv2.Task`s to train on.
      val_tasks: tasks to validate on after each epoch (may be empty: the last epoch is kept).
      vocab: the model's seqio vocabulary.
      config: the run settings.
      out_dir: the trainer's run directory (its files: `activeit_jax.layout`): orbax step
        checkpoints, the best epoch (`save_model` layout) and its info, metrics, TensorBoard,
        each epoch's validation predictions and metrics, and the summary, written last.
      init_checkpoint: the weights the run starts from: a checkpoint directory
        (`checkpoints.restore_params` with `model`'s shapes). Ignored when resuming.
      init_params: or the starting parameters themselves (a pytree of `model`'s shapes),
        e.g. from an earlier run in the same process. Neither: random initialisation from
        `config.seed`.
      stop_after_steps: stop (as if killed) once the global step reaches this; for tests.
      devices: devices of the mesh (default: all).

    Returns:
      A `TrainResult`; `params` holds the best parameters placed on the mesh.

    Raises:
      UsageError: a setting the mesh cannot run, a `model_kind` that contradicts the model,
        a vocabulary larger than the embedding, or both `init_checkpoint` and `init_params`
        (checked before anything is written).
      TrainRunMismatchError: `out_dir` holds another run (see `train_io.check_run_args`).
      RunLockedError: another process is training into `out_dir`.
      TrainingDivergedError: a non-finite loss or gradient norm (its step named).
    """
    if init_checkpoint is not None and init_params is not None:
        raise UsageError("train_and_evaluate: give init_checkpoint or init_params, not both")
    if init_checkpoint is not None:
        init_checkpoint = os.fspath(init_checkpoint)
    _check_packing(model, config)
    check_declared_kind(model, config.model_kind, "TrainConfig.model_kind")
    check_vocabulary(model, vocab)
    rules = resolve_rules(model, config.logical_axis_rules)
    try:
        mesh = partitioning.make_mesh(config.mesh_shape, devices=devices)
    except ValueError as err:
        raise UsageError(f"TrainConfig.mesh_shape: {err}") from None
    validate_config(config, mesh, rules)
    train_data.check_prompts_render(model.decoder_only, vocab, config.prompt_format)
    data = _encode_run_data(model, train_tasks, val_tasks, vocab, config)
    args = run_args(model, config, init_checkpoint, init_params is not None, data.fingerprint,
                    train_data.fingerprint(data.val_examples))
    with run_lock.hold(out_dir, "train", jax.process_index()):
        if jax.process_index() == 0:  # what a killed atomic write left behind
            for directory in (out_dir, os.path.join(out_dir, layout.TRAIN_EVAL_DIR)):
                io_utils.remove_stale_temp_files(directory)
        recover_best_dir(out_dir)
        checkpoints_dir = os.path.join(out_dir, layout.CHECKPOINTS_DIR)
        has_checkpoint = bool(os.path.isdir(checkpoints_dir) and
                              any(n.isdigit() for n in os.listdir(checkpoints_dir)))
        check_run_args(out_dir, args, has_checkpoint)
        if not has_checkpoint and os.path.exists(
                os.path.join(out_dir, layout.TRAIN_SUMMARY_FILE)):
            return _finished_result(model, out_dir, mesh, rules)
        programs = _train_programs(model, config, mesh, rules, data.total_steps,
                                   tuple((k, v.shape) for k, v in
                                         sorted(data.batcher.batch(0, 0).items())))
        run = _TrainRun(model, vocab, config, out_dir, mesh, rules, data, programs)
        try:
            # The train state is freed on return.
            stopped = run.train(init_checkpoint, init_params, stop_after_steps)
        finally:
            run.close()
        return run.result(stopped)


def _finished_result(model: TrainableModel, out_dir: str, mesh: Mesh, rules: tuple) -> TrainResult:
    """The result of a finished run whose checkpoints are gone (the active loop deletes
    them): read back from train_summary.json and best/, nothing trained or rewritten."""
    summary = records.read_json(os.path.join(out_dir, layout.TRAIN_SUMMARY_FILE),
                                "training summary")
    best_dir = os.path.join(out_dir, layout.BEST_DIR)
    logger.info("%s holds this finished run; reloading %s", out_dir, best_dir)
    return TrainResult(
        best_checkpoint_dir=best_dir, best_epoch=summary.get("best_epoch"),
        best_metrics=dict(summary.get("best_metrics") or {}),
        history=list(summary.get("history") or []), final_step=int(summary["final_step"]),
        params=checkpoints.restore_params(
            best_dir, model, partitioning.params_shardings(model, mesh, rules)))


@dataclasses.dataclass
class _RunData:
    """A run's tokenised examples, its deterministic batcher and step counts."""
    examples: list[train_data.EncodedExample]
    val_examples: list[train_data.EncodedExample]
    batcher: train_data.EpochBatcher
    steps_per_epoch: list[int]
    fingerprint: str
    builder: BatchBuilder

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_epoch)


def _encode_run_data(model: TrainableModel, train_tasks: Sequence[Any], val_tasks: Sequence[Any],
                     vocab: Any, config: TrainConfig) -> _RunData:
    """Tokenises the training and validation tasks and builds the epoch batcher."""
    builder = model.batch_builder(vocab)
    examples = train_data.encode_tasks(
        train_tasks, vocab, max_instances_per_task=config.max_instances_per_task,
        num_pos_examples=config.num_pos_examples, max_source_length=config.max_source_length,
        max_target_length=config.max_target_length, seed=config.seed,
        builder=builder, prompt_format=config.prompt_format)
    batcher = train_data.EpochBatcher(
        examples, config.batch_size, config.seed, source_length=config.max_source_length,
        target_length=config.max_target_length, builder=builder, pack=config.pack,
        length_buckets_per_octave=config.length_buckets_per_octave)
    data = _RunData(examples, encode_eval_tasks(val_tasks, vocab, validation_config(config),
                                                model), batcher,
                    [batcher.steps_per_epoch(e) for e in range(config.num_epochs)],
                    train_data.fingerprint(examples), builder)
    logger.info("training on %d examples from %d tasks: %d epochs x %s steps, batch %d",
                len(examples), len(train_tasks), config.num_epochs, data.steps_per_epoch[0],
                config.batch_size)
    return data


class _TrainRun:
    """One call of `train_and_evaluate`: restore or initialise, the epochs (steps, then
    validation and checkpoint), and the result. `position` is the checkpointed data position
    and best-epoch record (a `TrainPosition`, replaced as the run advances)."""

    def __init__(self, model: TrainableModel, vocab: Any, config: TrainConfig, out_dir: str,
                 mesh: Mesh,
                 rules: tuple, data: _RunData, programs: _TrainPrograms):
        self.model, self.vocab, self.config, self.out_dir = model, vocab, config, out_dir
        self.mesh, self.rules, self.data, self.programs = mesh, rules, data, programs
        self.base_rng = jax.random.PRNGKey(config.seed)
        self.manager = checkpoint_manager(os.path.join(out_dir, layout.CHECKPOINTS_DIR),
                                          config)
        self.writer = self.progress = self.decode_fn = None
        self.position = TrainPosition()

    def train(self, init_checkpoint: str | None, init_params: PyTree | None,
              stop_after_steps: int | None) -> bool:
        """Runs the remaining epochs; returns whether `stop_after_steps` stopped it early."""
        state, resumed = self._restore_or_init(init_checkpoint, init_params)
        self.writer = MetricsWriter(
            self.out_dir, tensorboard=self.config.tensorboard,
            keep_until_step=self.position.global_step if resumed else None)
        self.progress = _progress_bar(self.config, self.data.total_steps,
                                      self.position.global_step)
        while self.position.epoch < self.config.num_epochs:
            epoch = self.position.epoch
            state, stopped = self._train_epoch(state, epoch, stop_after_steps)
            if stopped:
                return True
            self._end_epoch(state, epoch)
        return False

    def _restore_or_init(self, init_checkpoint: str | None, init_params: PyTree | None
                         ) -> tuple[ts.TrainState, bool]:
        """The latest checkpoint of this run (refusing another run's), else fresh params."""
        programs = self.programs
        abstract = ts.abstract_train_state(programs.optimizer, programs.params_shapes,
                                           programs.state_sh)
        restored = restore_newest_intact(self.manager, abstract, self.out_dir)
        if restored is not None:
            state, self.position = restored
            latest = self.position.global_step
            if (self.position.data_fingerprint != self.data.fingerprint
                    or self.position.batch_size != self.config.batch_size):
                raise TrainRunMismatchError(
                    f"{self.out_dir} holds a checkpoint of a different run (training data or "
                    f"batch size differ); use a new output directory or delete "
                    f"{layout.CHECKPOINTS_DIR}/")
            logger.info("resuming from step %d (epoch %d, step %d in epoch)", latest,
                        self.position.epoch, self.position.step_in_epoch)
            return state, True
        params = _initial_params(self.model, init_checkpoint, init_params,
                                 jax.random.fold_in(self.base_rng, 1), self.mesh,
                                 programs.state_sh.params, self.rules)
        self.position = TrainPosition(data_fingerprint=self.data.fingerprint,
                                      batch_size=self.config.batch_size)
        return programs.create_state(params), False

    def _train_epoch(self, state: ts.TrainState, epoch: int, stop_after_steps: int | None
                     ) -> tuple[ts.TrainState, bool]:
        """The remaining steps of `epoch`; True when `stop_after_steps` stopped it."""
        config, steps = self.config, self.data.steps_per_epoch[epoch]
        step_rng = jax.random.fold_in(self.base_rng, 2)
        window = _Window()
        unchecked = None  # (step, metrics) checked once the next step is queued: no stall
        while self.position.step_in_epoch < steps:
            if stop_after_steps is not None and self.position.global_step >= stop_after_steps:
                return state, True
            batch = self.data.batcher.batch(epoch, self.position.step_in_epoch)
            window.add_tokens(*train_data.token_counts(batch))
            with partitioning.mesh_context(self.mesh, self.rules):
                state, step_metrics = self.programs.train_step(
                    state, put_batch(batch, self.programs.batch_sh), step_rng)
            if unchecked is not None:
                check_finite(*unchecked)
            self.position = position = self.position.after_step()
            gstep = position.global_step
            unchecked = (gstep, step_metrics)
            end_of_epoch = position.step_in_epoch == steps
            window.steps += 1
            if gstep % max(config.log_every_steps, 1) == 0 or end_of_epoch:
                scalars = window.flush(jax.device_get(step_metrics))
                check_finite(gstep, scalars)  # synced here anyway
                scalars["epoch"] = epoch + position.step_in_epoch / steps
                self.writer.write(gstep, "train", scalars)
                if self.progress is not None:
                    self.progress.set_postfix(loss=f"{scalars['loss']:.4f}",
                                              tok_s=f"{scalars['tokens_per_s']:.0f}")
            if self.progress is not None:
                self.progress.update(1)
            if config.save_every_steps and gstep % config.save_every_steps == 0 \
                    and not end_of_epoch:
                check_finite(*unchecked)  # a checkpoint never holds a diverged state
                save_checkpoint(self.manager, state, position)
        if unchecked is not None:
            check_finite(*unchecked)  # before validation, best/ and the epoch's checkpoint
        return state, False

    def _end_epoch(self, state: ts.TrainState, epoch: int) -> None:
        """Validates, keeps the best epoch, records the history and checkpoints."""
        position, gstep = self.position, self.position.global_step
        record: dict[str, Any] = {"epoch": epoch, "step": gstep}
        if self.data.val_examples:
            summary, flat = self._validate(state, epoch, gstep)
            record.update(flat)
            if self.config.selection_metric not in flat:
                raise ValueError(f"selection_metric {self.config.selection_metric!r} not "
                                 f"among the validation scores {sorted(flat)}")
            score = flat[self.config.selection_metric]
            if position.best_score is None or score > position.best_score:
                position = dataclasses.replace(
                    position, best_score=score, best_epoch=epoch,
                    best_metrics={k: v for k, v in summary.items() if k != "per_task"})
                save_best(self.out_dir, self.model, state.params,
                          {"epoch": epoch, "step": gstep, "metrics": flat}, self.vocab)
        elif epoch == self.config.num_epochs - 1:
            position = dataclasses.replace(position, best_epoch=epoch)
            save_best(self.out_dir, self.model, state.params, {"epoch": epoch, "step": gstep},
                      self.vocab)
        self.position = position.after_epoch(record)
        save_checkpoint(self.manager, state, self.position)

    def _validate(self, state: ts.TrainState, epoch: int, gstep: int
                  ) -> tuple[dict[str, Any], dict[str, float]]:
        """Greedy-decodes and scores the validation examples; writes eval/ and metrics."""
        config, data = self.config, self.data
        max_decode = config.max_decode_length or config.max_target_length
        if self.decode_fn is None:
            eval_sample = train_data.eval_batches(
                data.val_examples[:1], config.eval_batch_size, config.max_source_length,
                data.builder)[0][0]
            self.decode_fn = _decode_program(self.model, self.mesh, self.rules, max_decode,
                                             tuple((k, v.shape) for k, v in
                                                   sorted(eval_sample.items())))
        start = time.perf_counter()
        summary, predictions = evaluate(
            self.model, state.params, data.val_examples, self.vocab, mesh=self.mesh,
            rules=self.rules, params_shardings=self.programs.state_sh.params,
            batch_size=config.eval_batch_size, source_length=config.max_source_length,
            max_decode_length=max_decode, decode_fn=self.decode_fn,
            progress=self.progress is not None)
        flat = metrics_lib.flat_scores(summary)
        self.writer.write(gstep, "eval", {**flat, "epoch": epoch,
                                          "eval_seconds": time.perf_counter() - start})
        if jax.process_index() == 0:
            write_predictions(self.out_dir, epoch, predictions, summary)
        return summary, flat

    def close(self) -> None:
        """Closes the progress bar, waits for pending checkpoints, closes the writers."""
        if self.progress is not None:
            self.progress.close()
        self.manager.wait_until_finished()
        self.manager.close()
        if self.writer is not None:
            self.writer.close()

    def result(self, stopped: bool) -> TrainResult:
        """The `TrainResult`; a finished run reloads its best parameters and writes
        train_summary.json."""
        position = self.position
        best_dir = os.path.join(self.out_dir, layout.BEST_DIR)
        result = TrainResult(
            best_checkpoint_dir=best_dir if os.path.exists(best_dir) else None,
            best_epoch=position.best_epoch, best_metrics=dict(position.best_metrics),
            history=[dict(record) for record in position.history],
            final_step=position.global_step,
            completed=not stopped)
        if stopped:
            return result
        result.params = checkpoints.restore_params(best_dir, self.model,
                                                   self.programs.state_sh.params)
        if jax.process_index() == 0:
            summary_path = os.path.join(self.out_dir, layout.TRAIN_SUMMARY_FILE)
            io_utils.atomic_write_json(summary_path, {
                "best_checkpoint_dir": best_dir, "best_epoch": result.best_epoch,
                "best_metrics": result.best_metrics, "history": result.history,
                "final_step": result.final_step,
                "num_train_examples": len(self.data.examples),
                "num_val_examples": len(self.data.val_examples),
                "config": config_dict(self.config)})
        return result


class _Window:
    """Host-side timing between two metric writes."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.input_tokens = 0
        self.target_tokens = 0

    def add_tokens(self, inputs: int, targets: int) -> None:
        self.input_tokens += inputs
        self.target_tokens += targets

    def flush(self, step_metrics: Mapping[str, Any]) -> dict[str, float]:
        """Scalars of the last step + throughput since the previous flush (after a sync)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {k: float(np.asarray(v)) for k, v in step_metrics.items()}
        out["step_time_s"] = elapsed / max(self.steps, 1)
        out["tokens_per_s"] = (self.input_tokens + self.target_tokens) / elapsed
        out["target_tokens_per_s"] = self.target_tokens / elapsed
        self.reset()
        return out


def _progress_bar(config: TrainConfig, total: int, initial: int):
    if not config.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
