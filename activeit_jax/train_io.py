"""A training run directory: metrics.jsonl + TensorBoard, orbax checkpoints, best/, eval/."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from activeit_jax import io_utils
from activeit_jax import train_state as ts

PyTree = Any

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
BEST_INFO_FILE = "best.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"


class MetricsWriter:
    """metrics.jsonl (one record per write, fsynced) + TensorBoard scalars; process 0 only."""

    def __init__(self, out_dir: str, *, tensorboard: bool = True,
                 keep_until_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(out_dir, METRICS_FILE)
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
            import tensorflow as tf  # only the summary writer is used.
            self._tb = tf.summary.create_file_writer(os.path.join(out_dir, "tensorboard"))

    def write(self, step: int, kind: str, scalars: Mapping[str, Any]) -> None:
        """Appends `{"step", "kind", **scalars}`; numbers also go to TensorBoard `kind/name`."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind}
        record.update({k: to_python(v) for k, v in scalars.items()})
        io_utils.append_jsonl_line(self.path, record)
        if self._tb is not None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
            # `tf.summary.scalar` needs the tensorboard package; the scalar summary it would
            # write is a float32 tensor tagged for the "scalars" plugin, written directly here.
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._tb.as_default(step=int(step)):
                for key, value in record.items():
                    if key not in ("step", "kind") and isinstance(value, (int, float)) \
                            and not isinstance(value, bool):
                        tf.summary.write(f"{kind}/{key}", tf.constant(float(value), tf.float32),
                                         metadata=metadata)
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


def save_checkpoint(manager: Any, state: ts.TrainState, position: Mapping[str, Any]) -> None:
    import orbax.checkpoint as ocp
    manager.save(int(position["global_step"]), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(position))), force=True)


def restore_checkpoint(manager: Any, step: int, abstract_state: ts.TrainState
                        ) -> tuple[ts.TrainState, dict[str, Any]]:
    import orbax.checkpoint as ocp
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])


def save_best(out_dir: str, model: Any, params: PyTree, info: Mapping[str, Any],
              vocab: Any = None) -> str:
    """Writes `out_dir/best` with `checkpoints.save_model` (itself atomic: temp dir + rename;
    the vocabulary stored with it, so later commands need no --vocab) and `out_dir/best.json`
    (epoch, step, scores)."""
    from activeit_jax import checkpoints
    best = os.path.join(out_dir, BEST_SUBDIR)
    checkpoints.save_model(best, model, params, vocab)
    if jax.process_index() == 0:
        io_utils.atomic_write_json(os.path.join(out_dir, BEST_INFO_FILE), dict(info))
    return best


def recover_best_dir(out_dir: str) -> None:
    """A kill between the two renames of `save_model` leaves only `best.old`: put it back."""
    best = os.path.join(out_dir, BEST_SUBDIR)
    if (jax.process_index() == 0 and not os.path.exists(best)
            and os.path.exists(best + ".old")):
        os.replace(best + ".old", best)


def config_dict(config: Any) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["mesh_shape"] = dict(config.mesh_shape)
    out["logical_axis_rules"] = (None if config.logical_axis_rules is None
                                 else [list(r) for r in config.logical_axis_rules])
    return out


def write_predictions(out_dir: str, epoch: int, predictions: Sequence[Mapping[str, Any]],
                       summary: Mapping[str, Any]) -> None:
    eval_dir = os.path.join(out_dir, "eval")
    io_utils.atomic_write_text(os.path.join(eval_dir, f"epoch_{epoch}_predictions.jsonl"),
                               "".join(json_line(r) for r in predictions))
    io_utils.atomic_write_json(os.path.join(eval_dir, f"epoch_{epoch}_metrics.json"),
                               dict(summary))
