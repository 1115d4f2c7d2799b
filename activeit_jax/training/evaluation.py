"""Greedy decoding and Tk-Instruct scoring of validation / test examples on the mesh."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from activeit_jax import layout, partitioning
from activeit_jax.core import io_utils
from activeit_jax.models import (
    BaseModel,
    SpecialIds,
    TrainableModel,
    check_declared_kind,
    check_vocabulary,
    checkpoints,
)
from activeit_jax.training import inputs as train_data, metrics as metrics_lib, state as ts
from activeit_jax.training.run_dir import json_line
from activeit_jax.training.step import put_batch, resolve_rules, validate_config

PyTree = Any


def make_decode_fn(model: TrainableModel, *, mesh: Mesh, params_shardings: PyTree,
                   batch_sharding: Mapping[str, NamedSharding], max_decode_length: int
                   ) -> Callable:
    """Jitted `decode(params, batch) -> int32 [B, max_decode_length]` (greedy, replicated)."""
    def decode(params, batch):
        return model.greedy_decode(params, batch, max_decode_length)
    return jax.jit(decode, in_shardings=(params_shardings, dict(batch_sharding)),
                   out_shardings=ts.replicated(mesh))


def decode_tokens(vocab: Any, ids: Sequence[int], special_ids: SpecialIds | None = None) -> str:
    """Text of generated ids up to the first EOS, end-of-turn token or padding (the model's
    `SpecialIds`; default T5's)."""
    special = special_ids or SpecialIds()
    stops = {special.eos, special.pad, special.end_of_turn}
    out = []
    for i in ids:
        i = int(i)
        if i in stops:
            break
        out.append(i)
    return vocab.decode(out)


def evaluate(model: TrainableModel, params: PyTree,
             examples: Sequence[train_data.EncodedExample], vocab: Any, *, mesh: Mesh,
             rules: Sequence[tuple[str, Any]], params_shardings: PyTree, batch_size: int,
             source_length: int, max_decode_length: int,
             decode_fn: Callable | None = None, progress: bool = False
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy-decodes `examples` and scores them (Tk-Instruct ROUGE-L / exact match).

    The decoding batches are the model's (`model.batch_builder(vocab)`), `batch_size` rows
    of sources of at most `source_length` positions. With `progress`, process 0 shows a
    tqdm bar over the examples (as training and scoring do).

    Returns:
      (summary from `metrics.summarize`, one prediction record per example:
      {"task", "id", "prediction", "references"}).
    """
    if not examples:
        return {}, []
    builder = model.batch_builder(vocab)
    batches = train_data.eval_batches(examples, batch_size, source_length, builder)
    shardings = partitioning.batch_shardings(mesh, batches[0][0], rules)
    if decode_fn is None:
        decode_fn = make_decode_fn(model, mesh=mesh, params_shardings=params_shardings,
                                   batch_sharding=shardings,
                                   max_decode_length=max_decode_length)
    predictions: list[str] = []
    bar = _progress_bar(len(examples)) if progress else None
    with partitioning.mesh_context(mesh, rules):
        for feats, real in batches:
            out = np.asarray(jax.device_get(decode_fn(params, put_batch(feats, shardings))))
            predictions += [decode_tokens(vocab, row, builder.ids) for row in out[:real]]
            if bar is not None:
                bar.update(real)
    if bar is not None:
        bar.close()
    summary = metrics_lib.summarize(
        predictions, [ex.references for ex in examples], [ex.task_name for ex in examples],
        [ex.label for ex in examples])
    records = [{"task": ex.task_name, "id": ex.instance_id, "prediction": pred,
                "references": list(ex.references)}
               for ex, pred in zip(examples, predictions)]
    return summary, records


def _progress_bar(total: int):
    """A tqdm bar over the decoded examples (process 0 only; None elsewhere). It disappears
    when done (`leave=False`), so inside training it does not pile up under the train bar."""
    if jax.process_index() != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="decode", unit="ex", leave=False, dynamic_ncols=True)


def encode_eval_tasks(tasks: Sequence[Any], vocab: Any, config: Any, model: TrainableModel
                      ) -> list[train_data.EncodedExample]:
    """Validation / test examples: the first `max_eval_instances_per_task` of each task."""
    return train_data.encode_tasks(
        tasks, vocab, max_instances_per_task=config.max_eval_instances_per_task,
        num_pos_examples=config.num_pos_examples, max_source_length=config.max_source_length,
        max_target_length=config.max_target_length, seed=None,
        builder=model.batch_builder(vocab), prompt_format=config.prompt_format)


def evaluate_checkpoint(checkpoint_dir: str, tasks: Sequence[Any], vocab: Any,
                        config: Any, out_dir: str | None = None, *,
                        model: BaseModel | None = None,
                        devices: Sequence[Any] | None = None
                        ) -> dict[str, Any]:
    """Loads a `save_model` checkpoint and evaluates it on `tasks` (Tk-Instruct metrics).

    Args:
      checkpoint_dir: a checkpoint directory (e.g. a training run's `best/`).
      tasks: the evaluation tasks; each contributes its first `max_eval_instances_per_task`.
      vocab: the model's seqio vocabulary.
      config: lengths, `eval_batch_size`, `max_eval_instances_per_task`, mesh and rules.
      out_dir: when given, writes the evaluator directory of `activeit_jax.layout` (metrics
        overall / cls / gen / per_task, per-task metrics, predictions), atomically.
      model: the wrapper to use (default: the checkpoint's config); it decides its kind
        (a `config.model_kind` that contradicts it is refused).
      devices: devices of the mesh (default: all).

    Returns:
      The `metrics.summarize` dict.
    """
    mesh = partitioning.make_mesh(config.mesh_shape, devices=devices)
    validate_config(dataclasses.replace(config, num_microbatches=1,
                                         batch_size=config.eval_batch_size), mesh,
                    config.logical_axis_rules)
    if model is None:
        model = checkpoints.read_model(checkpoint_dir, config.logical_axis_rules)
    check_declared_kind(model, config.model_kind, "TrainConfig.model_kind")
    check_vocabulary(model, vocab, checkpoint_dir)
    train_data.check_prompts_render(model.decoder_only, vocab, config.prompt_format)
    rules = resolve_rules(model, config.logical_axis_rules)
    params_sh = partitioning.params_shardings(model, mesh, rules)
    params = checkpoints.restore_params(checkpoint_dir, model, params_sh)
    examples = encode_eval_tasks(tasks, vocab, config, model)
    summary, records = evaluate(
        model, params, examples, vocab, mesh=mesh, rules=rules, params_shardings=params_sh,
        batch_size=config.eval_batch_size, source_length=config.max_source_length,
        max_decode_length=config.max_decode_length or config.max_target_length,
        progress=getattr(config, "progress_bar", False))
    if out_dir is not None and jax.process_index() == 0:
        labels = {ex.task_name: ex.label for ex in examples}
        io_utils.atomic_write_json(os.path.join(out_dir, layout.EVAL_METRICS_FILE), dict(summary))
        io_utils.atomic_write_text(os.path.join(out_dir, layout.PER_TASK_FILE), "".join(
            json_line({"task": task, "label": labels[task], **scores})
            for task, scores in summary.get("per_task", {}).items()))
        io_utils.atomic_write_text(os.path.join(out_dir, layout.PREDICTIONS_FILE),
                                   "".join(json_line(r) for r in records))
    return summary
