"""activeit-jax checkpoint directories: `config.json` (model kind + config) + orbax params.

Layout of a checkpoint directory::

    CKPT_DIR/
      config.json   {"format": "activeit-jax", "format_version": 1,
                     "model_kind": "t5" | "llama", "config": {...dataclass fields...}}
      params/       orbax StandardCheckpointer tree (sharded arrays, restorable onto any mesh)
      tokenizer_meta.json + tokenizer.json (or spiece.model)
                    the model's vocabulary, when saved with one (`data.vocab.save_vocabulary`;
                    read back with `data.vocab.vocabulary_from_checkpoint`)

The trainer's best checkpoint uses the same layout, so the scorer and the evaluator load
whatever the trainer wrote. Hugging Face directories are converted by
`activeit_jax.models.hf_convert` (see `import_hf_to_checkpoint`, `export_checkpoint_to_hf`).
"""
from __future__ import annotations

import os
import shutil
import sys
import traceback
from typing import Any

import jax
import orbax.checkpoint as ocp

from activeit_jax.core import distributed, io_utils
from activeit_jax.core.errors import ActiveITError, one_line
from activeit_jax.models import gguf_convert, hf_convert, layer_layout
from activeit_jax.models.wrappers import BaseModel, model_from_dict, model_to_dict

CONFIG_NAME = "config.json"
PARAMS_DIR = "params"
FORMAT = "activeit-jax"
FORMAT_VERSION = 1


class CheckpointError(ActiveITError, ValueError):
    """A checkpoint directory is missing, incomplete, damaged or of an unknown format."""


def save_model(directory: str | os.PathLike, model: BaseModel, params: Any,
               vocabulary: Any = None) -> None:
    """Saves a model wrapper's config and params (and its vocabulary) atomically.

    Everything is written to `<directory>.tmp` first and renamed onto `directory` only when
    complete; an existing checkpoint at `directory` is replaced. With several processes every
    process calls this (orbax writes each process's shards), process 0 does the renames.

    Args:
      directory: the checkpoint directory to create or replace.
      model: the model wrapper (kind + config are recorded).
      params: its params pytree (jax arrays, possibly sharded, or NumPy arrays).
      vocabulary: the model's vocabulary to store beside the weights (an
        `HFTokenizerVocabulary` or a SentencePiece vocabulary), or None.
    """
    directory = os.path.abspath(os.fspath(directory))
    tmp = directory + ".tmp"
    if distributed.is_primary():
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed save
        os.makedirs(tmp)
    distributed.barrier("activeit_save_model_start")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
        checkpointer.wait_until_finished()
    if distributed.is_primary():
        spec = {"format": FORMAT, "format_version": FORMAT_VERSION, **model_to_dict(model)}
        io_utils.atomic_write_json(os.path.join(tmp, CONFIG_NAME), spec)
        if vocabulary is not None:
            from activeit_jax.data import vocab as vocab_lib
            vocab_lib.save_vocabulary(vocabulary, tmp)
        old = directory + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(directory):
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier("activeit_save_model_done")


def read_model(directory: str | os.PathLike, logical_axis_rules: Any = None) -> BaseModel:
    """The model wrapper recorded in a checkpoint's `config.json` (no params loaded).

    Args:
      directory: a checkpoint directory written by `save_model`.
      logical_axis_rules: rules for the wrapper (default rules when None).

    Returns:
      The model wrapper.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not os.path.exists(path):
        raise CheckpointError(f"no {CONFIG_NAME} in {directory}: not an activeit-jax checkpoint")
    spec = _read_config(path)
    if spec.get("format") != FORMAT:
        hint = (" (this looks like a Hugging Face directory: convert it with "
                "`activeit-jax convert --from_hf=DIR --to=CKPT_DIR`)"
                if "model_type" in spec else "")
        raise CheckpointError(f"{path} is not an activeit-jax checkpoint config{hint}")
    if spec.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {spec['format_version']}, newer than "
                              f"this code ({FORMAT_VERSION})")
    try:
        return model_from_dict(spec, logical_axis_rules)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"bad model config in {path}: {err}") from err


def _read_config(path: str) -> dict[str, Any]:
    """The JSON object in a checkpoint's config.json; a damaged one names the file and line."""
    return io_utils.read_json_object(path, CheckpointError, "the checkpoint's config")


def restore_params(directory: str | os.PathLike, model: BaseModel,
                   shardings: Any = None) -> Any:
    """Restores the params of a checkpoint, placed with `shardings`.

    Args:
      directory: a checkpoint directory written by `save_model`.
      model: its model wrapper (gives the expected structure, shapes and dtypes).
      shardings: pytree of `jax.sharding.Sharding` with the params' structure (e.g.
        `partitioning.params_shardings(model, mesh)`); None = all on the first device.

    Returns:
      The params pytree of jax arrays.

    A checkpoint saved in the other layer layout (per layer vs stacked, the config's
    `scan_layers`) is converted while loading, exactly.

    Raises:
      CheckpointError: no params, params of other shapes, or a torn / truncated / missing
        file (the directory named; never a raw tensorstore error).
    """
    params_dir = os.path.join(os.path.abspath(os.fspath(directory)), PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"no {PARAMS_DIR}/ in {directory}: incomplete checkpoint")
    abstract = model.abstract_params()
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        have = _stored_shapes(checkpointer, params_dir)
        # A checkpoint of the other layer layout (stacked vs per layer, `scan_layers`) is
        # restored in its own layout, each leaf placed like the leaf it becomes, and
        # converted on the devices: exact, and no host copy of the whole model.
        other = _other_layout(model, abstract, have)
        if other is None:
            _check_stored_shapes(have, params_dir, abstract)
            stored, stored_shardings = abstract, shardings
        else:
            stored = other
            stored_shardings = layer_layout.other_layout_shardings(shardings, model.config)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              stored, stored_shardings)
        try:
            params = checkpointer.restore(params_dir, target)
        except Exception as err:  # noqa: BLE001 - tensorstore raises bare Exceptions
            quiet_abandoned_reads()
            detail = one_line(err).split(" See full TensorStore details")[0]
            raise CheckpointError(f"cannot read the params in {params_dir}: a file is "
                                  f"truncated, missing or damaged ({detail[:200]})") from None
    if other is None:
        return params
    return jax.jit(lambda p: layer_layout.convert_layout(p, model.config),
                   out_shardings=shardings)(params)


def _other_layout(model: BaseModel, abstract: Any, have: dict[str, tuple[int, ...]]
                  ) -> Any:
    """The abstract params of the layer layout `model` does not use when the stored names and
    shapes `have` are exactly those, else None."""
    config = model.config
    if not hasattr(config, "scan_layers"):
        return None
    other = layer_layout.other_layout_abstract(abstract, config)
    want = {_dotted(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(other)}
    return other if want == have else None


def _dotted(path: Any) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _stored_shapes(checkpointer: Any, params_dir: str) -> dict[str, tuple[int, ...]]:
    """Dotted parameter name -> stored shape, from the checkpoint's metadata (no array read).

    Raises:
      CheckpointError: unreadable, missing or empty metadata.
    """
    try:
        stored = checkpointer.metadata(params_dir)
        stored = getattr(stored, "item_metadata", stored)
        have = {_dotted(k): tuple(v.shape)
                for k, v in jax.tree_util.tree_leaves_with_path(stored)}
    except Exception as err:  # noqa: BLE001 - a torn _METADATA is a JSON or tensorstore error
        raise CheckpointError(f"cannot read the params in {params_dir}: its metadata is "
                              f"damaged ({one_line(err)[:200]})") from None
    if not have:  # orbax only warns when _METADATA is torn and returns nothing
        raise CheckpointError(f"cannot read the params in {params_dir}: its metadata is "
                              "missing or damaged")
    return have


def _check_stored_shapes(have: dict[str, tuple[int, ...]], params_dir: str,
                         abstract: Any) -> None:
    """Compares the stored parameter names and shapes with the model's before any array is
    read, so that a checkpoint of another model gets one precise line.

    Raises:
      CheckpointError: a parameter missing, extra or of another shape.
    """
    want = {_dotted(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    where = f"params in {params_dir} do not match the model config in {CONFIG_NAME}"
    for name in sorted(want):
        if name not in have:
            raise CheckpointError(f"{where}: {name} is missing")
        if have[name] != want[name]:
            raise CheckpointError(f"{where}: {name} is stored with shape {have[name]}, the "
                                  f"config implies {want[name]}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise CheckpointError(f"{where}: {len(extra)} parameter(s) the model does not have, "
                              f"e.g. {extra[0]}")


def quiet_abandoned_reads() -> None:
    """Silences the "Event loop is closed" reports of array reads a failed restore abandoned.

    When one read of an orbax restore fails, the others are still in flight; they finish after
    orbax closed its event loop and each posts its result to the closed loop, which Python
    reports through `sys.unraisablehook` -- about a hundred tracebacks after the one useful
    error line. Only those reports (and errors raised inside orbax by the same abandoned reads)
    are dropped; every other one still goes to the hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        frames = traceback.extract_tb(unraisable.exc_traceback)
        if frames and f"{os.sep}orbax{os.sep}" in frames[-1].filename:
            return  # the same abandoned reads, failing in orbax after the loop was gone
        previous(unraisable)
    hook._drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def load_model(directory: str | os.PathLike, shardings: Any = None,
               logical_axis_rules: Any = None) -> tuple[BaseModel, Any]:
    """Loads a checkpoint directory written by `save_model`.

    Args:
      directory: the checkpoint directory.
      shardings: pytree of shardings for the params, or None (first device). To compute
        them you need the model first: `model = read_model(dir)`, then
        `restore_params(dir, model, partitioning.params_shardings(model, mesh))`.
      logical_axis_rules: rules for the wrapper (default rules when None).

    Returns:
      (model wrapper, params).
    """
    model = read_model(directory, logical_axis_rules)
    return model, restore_params(directory, model, shardings)


def import_hf_to_checkpoint(hf_dir: str | os.PathLike, ckpt_dir: str | os.PathLike
                            ) -> BaseModel:
    """Converts a Hugging Face T5/LLaMA/Qwen2 directory (with its `tokenizer.json`, when it
    has one) into an activeit-jax checkpoint.

    Returns:
      The model wrapper that was saved.
    """
    imported = hf_convert.import_hf_model(hf_dir)
    save_model(ckpt_dir, imported.model, imported.params, imported.vocabulary)
    return imported.model


def import_gguf_to_checkpoint(gguf_path: str | os.PathLike, ckpt_dir: str | os.PathLike
                              ) -> BaseModel:
    """Converts a llama.cpp GGUF file (weights dequantized to float32, tokenizer from its
    metadata) into an activeit-jax checkpoint; nothing is written when the file is refused.

    Returns:
      The model wrapper that was saved.
    """
    imported = gguf_convert.import_gguf(gguf_path)
    save_model(ckpt_dir, imported.model, imported.params, imported.vocabulary)
    return imported.model


def export_checkpoint_to_hf(ckpt_dir: str | os.PathLike, hf_dir: str | os.PathLike,
                            max_shard_size: int | str = hf_convert.DEFAULT_MAX_SHARD_SIZE
                            ) -> list[str]:
    """Converts an activeit-jax checkpoint into a Hugging Face directory.

    Returns:
      The names of the files written into `hf_dir`.
    """
    model, params = load_model(ckpt_dir)
    return hf_convert.export_hf(model, jax.device_get(params), hf_dir, max_shard_size)
