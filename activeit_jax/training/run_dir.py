"""A training run directory (names and layout: `activeit_jax.layout`): its fingerprint,
metrics + TensorBoard, orbax checkpoints, the best epoch, the validation predictions."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from activeit_jax import layout
from activeit_jax.core import distributed, io_utils, records
from activeit_jax.core.errors import ActiveITError
from activeit_jax.models import KIND_NAMES, BaseModel, TrainableModel, checkpoints
from activeit_jax.training import state as ts
from activeit_jax.training.position import TrainPosition

logger = logging.getLogger(__name__)

PyTree = Any

# TrainConfig fields that change how fast a run goes or what it shows, not its result.
NOT_FINGERPRINTED = ("mesh_shape", "logical_axis_rules", "eval_batch_size", "save_every_steps",
                     "max_to_keep", "async_checkpointing", "log_every_steps", "tensorboard",
                     "progress_bar")


class TrainRunMismatchError(ActiveITError):
    """The run directory holds another training run (or one of unknown arguments)."""


def run_args(model: TrainableModel, config: Any, init_checkpoint: str | None,
             has_init_params: bool, data_fingerprint: str, val_fingerprint: str
             ) -> dict[str, Any]:
    """What identifies a training run: the model, the result-changing settings, the initial
    weights (under the key "init", as run_args.json always had it: the checkpoint's absolute
    path, "given parameters" or "random") and the tokenised training / validation data.

    The deprecated `config.model_kind` is recorded as unset: the model (its repr, in "model")
    decides its kind, so the setting changes nothing and a run started with it resumes
    without it (`check_run_args` also accepts the fingerprints that recorded it).
    """
    settings = {k: v for k, v in config_dict(config).items() if k not in NOT_FINGERPRINTED}
    settings["model_kind"] = None
    if init_checkpoint is not None:
        start = os.path.abspath(os.fspath(init_checkpoint))
    elif has_init_params:
        start = "given parameters"
    else:
        start = "random"
    return {"model": repr(model), "config": settings, "init": start,
            "train_data": data_fingerprint, "val_data": val_fingerprint}


def _fingerprint(args: Mapping[str, Any]) -> str:
    text = json.dumps(args, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _accepted_fingerprints(args: Mapping[str, Any]) -> set[str]:
    """The fingerprint of `args`, and those an older version wrote for the same run with the
    (now deprecated) `TrainConfig.model_kind` set: it recorded the name as given."""
    accepted = {_fingerprint(args)}
    config = args.get("config")
    if isinstance(config, Mapping) and config.get("model_kind") is None:
        for name in KIND_NAMES.values():
            accepted.add(_fingerprint({**args, "config": {**config, "model_kind": name}}))
    return accepted


def check_run_args(out_dir: str, args: Mapping[str, Any], has_checkpoint: bool) -> None:
    """Checks `out_dir/run_args.json` against `args`, writing it for a new run.

    A directory that holds training outputs but no run_args.json is refused, unless it has a
    checkpoint (a run of an older version; its checkpoint's own data check still applies).

    Raises:
      TrainRunMismatchError: another run's directory (the differing arguments named).
    """
    path = os.path.join(out_dir, layout.RUN_ARGS_FILE)
    if os.path.exists(path):
        previous = records.read_json(path, "run fingerprint")
        if (not isinstance(previous, dict)
                or previous.get("fingerprint") not in _accepted_fingerprints(args)):
            old = previous.get("args", {}) if isinstance(previous, dict) else {}
            diff = sorted(_differing(old, dict(args)))
            raise TrainRunMismatchError(
                f"{out_dir} holds another training run (differing: {', '.join(diff) or '?'}); "
                f"its {layout.BEST_DIR}/, {layout.TRAIN_METRICS_FILE} and "
                f"{layout.TRAIN_EVAL_DIR}/ are kept: use another --out, or the same arguments "
                "to resume it")
        return
    outputs = [name for name in (layout.TRAIN_METRICS_FILE, layout.BEST_DIR,
                                 layout.BEST_INFO_FILE, layout.TRAIN_SUMMARY_FILE,
                                 layout.TRAIN_EVAL_DIR)
               if os.path.exists(os.path.join(out_dir, name))]
    if outputs and not has_checkpoint:
        raise TrainRunMismatchError(
            f"{out_dir} holds training outputs ({', '.join(outputs)}) but no "
            f"{layout.RUN_ARGS_FILE}: refusing to write a run of unknown arguments over them; "
            "use another --out")
    if jax.process_index() == 0:
        io_utils.atomic_write_json(path, {"fingerprint": _fingerprint(args), "args": args})


def _differing(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ (one level into nested mappings)."""
    out = []
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and not prefix:
            out += _differing(a, b, f"{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True,
                                                                        default=str):
            out.append(prefix + key)
    return out


class MetricsWriter:
    """metrics.jsonl (one record per write, fsynced) + TensorBoard scalars (our own event
    writer, `training.tensorboard`: no TensorFlow); process 0 only."""

    def __init__(self, out_dir: str, *, tensorboard: bool = True,
                 keep_until_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(out_dir, layout.TRAIN_METRICS_FILE)
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        io_utils.truncate_partial_tail(self.path)
        if os.path.exists(self.path):
            # A resumed run repeats the steps after its checkpoint: drop their old records.
            records = io_utils.read_jsonl(self.path)
            limit = -1 if keep_until_step is None else keep_until_step
            kept = [r for r in records if r.get("step", 0) <= limit]
            if len(kept) != len(records):
                io_utils.atomic_write_text(
                    self.path, "".join(json_line(r) for r in kept))
        if tensorboard:
            from activeit_jax.training.tensorboard import EventFileWriter
            self._tb = EventFileWriter(os.path.join(out_dir, layout.TENSORBOARD_DIR))

    def write(self, step: int, kind: str, scalars: Mapping[str, Any]) -> None:
        """Appends `{"step", "kind", **scalars}`; numbers also go to TensorBoard `kind/name`."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: to_python(v) for k, v in scalars.items()})
        io_utils.append_jsonl_line(self.path, record)
        if self._tb is not None:
            self._tb.scalars(step, {f"{kind}/{key}": value for key, value in record.items()
                                    if key not in ("step", "kind")
                                    and isinstance(value, (int, float))
                                    and not isinstance(value, bool)})
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def to_python(value: Any) -> Any:
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def json_line(record: Mapping[str, Any]) -> str:
    import json
    return json.dumps(record, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------
# Checkpoints.

def checkpoint_manager(directory: str, config: Any):
    import orbax.checkpoint as ocp
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.max_to_keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=config.async_checkpointing)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_names=("state", "data"))


def save_checkpoint(manager: Any, state: ts.TrainState, position: TrainPosition) -> None:
    """Saves checkpoint `position.global_step`: the train state and the position (JSON)."""
    import orbax.checkpoint as ocp
    manager.save(position.global_step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(position.to_json())),
        force=True)


def restore_checkpoint(manager: Any, step: int, abstract_state: ts.TrainState
                        ) -> tuple[ts.TrainState, TrainPosition]:
    """The train state and position of checkpoint `step` (ValueError: a damaged position)."""
    import orbax.checkpoint as ocp
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], TrainPosition.from_json(restored["data"])


def restore_newest_intact(manager: Any, abstract_state: ts.TrainState, out_dir: str
                          ) -> tuple[ts.TrainState, TrainPosition] | None:
    """Restores the newest checkpoint that reads back whole; None when there is none.

    A checkpoint that fails to restore (a truncated or missing file, torn metadata: a disk
    that filled up or a copy cut short) is moved to `out_dir/checkpoints_damaged/<step>` with
    a warning naming it, so that the run continues from the one before and can save that step
    again.

    Raises:
      CheckpointError: every checkpoint is damaged (all moved aside, all named).
    """
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, position = restore_checkpoint(manager, step, abstract_state)
        except Exception as err:  # noqa: BLE001 - orbax / tensorstore / JSON errors alike
            checkpoints.quiet_abandoned_reads()
            where = os.path.join(out_dir, layout.CHECKPOINTS_DIR, str(step))
            logger.warning("checkpoint %s is damaged (%s); falling back to an older one",
                           where, str(err).splitlines()[0][:200] if str(err) else
                           type(err).__name__)
            damaged.append(_move_aside(manager, out_dir, step))
            continue
        if damaged:
            logger.warning("resuming from step %d; damaged checkpoint(s) moved to %s", step,
                           ", ".join(damaged))
        return state, position
    if damaged:
        raise checkpoints.CheckpointError(
            f"every checkpoint of {out_dir} is damaged (moved to {', '.join(damaged)}); "
            "delete them to start the run over")
    return None


def _move_aside(manager: Any, out_dir: str, step: int) -> str:
    """Moves checkpoint `step` out of the manager's directory; returns its new path."""
    source = os.path.join(out_dir, layout.CHECKPOINTS_DIR, str(step))
    target = os.path.join(out_dir, layout.DAMAGED_CHECKPOINTS_DIR, str(step))
    if jax.process_index() == 0 and os.path.exists(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(source, target)
    distributed.barrier(f"activeit_move_damaged_{step}")
    manager.reload()
    return target


def save_best(out_dir: str, model: BaseModel, params: PyTree, info: Mapping[str, Any],
              vocab: Any = None) -> str:
    """Writes `out_dir/best` with `checkpoints.save_model` (itself atomic: temp dir + rename;
    the vocabulary stored with it, so later commands need no --vocab) and `out_dir/best.json`
    (epoch, step, scores)."""
    best = os.path.join(out_dir, layout.BEST_DIR)
    # The trainer replaces the best/ it wrote itself (run_args.json ties the directory to this
    # run); a best/ holding anything else is refused by save_model.
    checkpoints.save_model(best, model, params, vocab, replace=True)
    if jax.process_index() == 0:
        io_utils.atomic_write_json(os.path.join(out_dir, layout.BEST_INFO_FILE), dict(info))
    return best


def recover_best_dir(out_dir: str) -> None:
    """A kill between the two renames of `save_model` leaves the previous best only in
    `best.activeit-old` (`best.old` before 0.2): put it back."""
    if jax.process_index() == 0:
        checkpoints.recover_interrupted_save(os.path.join(out_dir, layout.BEST_DIR))


def config_dict(config: Any) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["mesh_shape"] = dict(config.mesh_shape)
    out["logical_axis_rules"] = (None if config.logical_axis_rules is None
                                 else [list(r) for r in config.logical_axis_rules])
    return out


def write_predictions(out_dir: str, epoch: int, predictions: Sequence[Mapping[str, Any]],
                       summary: Mapping[str, Any]) -> None:
    eval_dir = os.path.join(out_dir, layout.TRAIN_EVAL_DIR)
    io_utils.atomic_write_text(layout.epoch_predictions_file(eval_dir, epoch),
                               "".join(json_line(r) for r in predictions))
    io_utils.atomic_write_json(layout.epoch_metrics_file(eval_dir, epoch), dict(summary))
