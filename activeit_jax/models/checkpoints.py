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

A save never deletes what activeit-jax did not write (`check_save_target`): an existing path
that is not a checkpoint (`is_checkpoint`) is refused, an existing checkpoint is replaced only
when the caller says so (`replace=True`: `convert --overwrite`, the trainer's own `best/`), and
then only its own entries (`OWN_ENTRIES`) are removed. The temporary directories of a save carry
names of their own (`<dir>.activeit-tmp`, `<dir>.activeit-old`) and are removed only when they
are ours (the `PARTIAL_MARKER` file a save writes first, or a checkpoint).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import traceback
from typing import Any

import jax
import orbax.checkpoint as ocp

from activeit_jax.core import distributed, io_utils
from activeit_jax.core.errors import ActiveITError, one_line
from activeit_jax.models import gguf_convert, hf_convert
from activeit_jax.models.wrappers import MODEL_CLASSES, BaseModel, model_from_dict, model_to_dict

CONFIG_NAME = "config.json"
PARAMS_DIR = "params"
FORMAT = "activeit-jax"
FORMAT_VERSION = 1
# What a checkpoint directory may hold that a save wrote: its config, the orbax params and the
# stored vocabulary (`data.vocab.save_vocabulary`); anything else in it is the user's.
OWN_ENTRIES = (CONFIG_NAME, PARAMS_DIR, "tokenizer.json", "tokenizer_meta.json", "spiece.model")
# orbax writes one of these into every params directory it completes.
ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")
# The first file a save writes into its temporary directory: proof that the directory is ours.
PARTIAL_MARKER = ".activeit-partial"
TMP_SUFFIX = ".activeit-tmp"
OLD_SUFFIX = ".activeit-old"
_MAX_CONFIG_BYTES = 1 << 20
# The temp files of a killed atomic write of an own entry (`io_utils.atomic_open`, vocab copy).
_OWN_TEMP = re.compile(r"^\.(%s)\..*tmp$" % "|".join(re.escape(n) for n in OWN_ENTRIES))


class CheckpointError(ActiveITError, ValueError):
    """A checkpoint directory is missing, incomplete, damaged or of an unknown format."""


def save_model(directory: str | os.PathLike, model: BaseModel, params: Any,
               vocabulary: Any = None, *, replace: bool = False) -> None:
    """Saves a model wrapper's config and params (and its vocabulary) atomically.

    Everything is written to `<directory>.activeit-tmp` first and renamed onto `directory`
    only when complete. Nothing the program did not write is deleted: `directory` must not
    exist, be an empty directory, or (with `replace`) hold a checkpoint with nothing but its
    own entries, which are then removed (`check_save_target`). With several processes every
    process calls this (orbax writes each process's shards), process 0 does the renames.

    Args:
      directory: the checkpoint directory to create or replace.
      model: the model wrapper (kind + config are recorded).
      params: its params pytree (jax arrays, possibly sharded, or NumPy arrays).
      vocabulary: the model's vocabulary to store beside the weights (an
        `HFTokenizerVocabulary` or a SentencePiece vocabulary), or None.
      replace: an existing checkpoint at `directory` may be replaced (`convert --overwrite`;
        the trainer replacing the `best/` it wrote).

    Raises:
      CheckpointError: `directory` exists and may not be replaced (nothing is written).
    """
    directory = os.path.abspath(os.fspath(directory))
    # Every process refuses alike; only process 0 touches (and so checks) the temporaries.
    check_save_target(directory, replace, temporaries=distributed.is_primary())
    tmp = directory + TMP_SUFFIX
    if distributed.is_primary():
        _remove_leftover(tmp)  # of a killed save
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        os.mkdir(tmp)
        io_utils.atomic_write_text(os.path.join(tmp, PARTIAL_MARKER),
                                   f"being written by activeit-jax (pid {os.getpid()})\n")
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
        os.remove(os.path.join(tmp, PARTIAL_MARKER))  # complete: a checkpoint from now on
        _swap_into_place(tmp, directory)
    distributed.barrier("activeit_save_model_done")


def _swap_into_place(tmp: str, directory: str) -> None:
    """Renames the complete checkpoint `tmp` onto `directory` (moving a checkpoint there to
    `<directory>.activeit-old` first, whose own entries are removed afterwards)."""
    old = directory + OLD_SUFFIX
    _remove_leftover(old)
    if os.path.isdir(directory) and not os.path.islink(directory) and not os.listdir(directory):
        os.rmdir(directory)  # an empty directory holds nothing to keep
    if os.path.lexists(directory):
        os.replace(directory, old)
    os.replace(tmp, directory)
    _remove_own_entries(old)


# -- where a save may write -----------------------------------------------------------------

def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is an activeit-jax checkpoint directory (as written since 0.1).

    A checkpoint is a real directory (not a link) holding `config.json` whose JSON object has
    `"format": "activeit-jax"`, and a `params/` directory that orbax completed (it holds
    `_CHECKPOINT_METADATA` or `_METADATA`).
    """
    path = os.fspath(path)
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    params = os.path.join(path, PARAMS_DIR)
    if not any(os.path.isfile(os.path.join(params, name)) for name in ORBAX_MARKERS):
        return False
    config = os.path.join(path, CONFIG_NAME)
    try:
        if os.path.getsize(config) > _MAX_CONFIG_BYTES:
            return False
        with open(config, encoding="utf-8") as handle:
            spec = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(spec, dict) and spec.get("format") == FORMAT


def foreign_entries(directory: str | os.PathLike) -> list[str]:
    """The names in a checkpoint directory that a save did not write (sorted)."""
    return sorted(name for name in os.listdir(directory)
                  if name not in OWN_ENTRIES and not _OWN_TEMP.match(name))


def _is_ours(path: str) -> bool:
    """A save's temporary or old directory: it holds our marker, or is a checkpoint."""
    return (os.path.isdir(path) and not os.path.islink(path)
            and (os.path.isfile(os.path.join(path, PARTIAL_MARKER)) or is_checkpoint(path)))


def check_save_target(directory: str | os.PathLike, replace: bool = False,
                      temporaries: bool = True) -> None:
    """Raises unless a checkpoint may be written at `directory` without deleting anything
    activeit-jax did not write. Reads only; call it before reading any input.

    Allowed: a path that does not exist, an empty directory, or -- with `replace` -- a
    checkpoint (`is_checkpoint`) holding nothing but its own entries. The temporary names a
    save uses beside it (`<directory>.activeit-tmp`, `.activeit-old`) must be absent or ours.

    Args:
      directory: where the checkpoint is to be written.
      replace: whether an existing checkpoint may be replaced.
      temporaries: also check the temporary names beside it.

    Raises:
      CheckpointError: one line naming the path and what is in the way.
    """
    directory = os.path.abspath(os.fspath(directory))
    refuse = "refusing to write a checkpoint there (nothing was changed)"
    if os.path.islink(directory):
        raise CheckpointError(f"{directory} is a symbolic link: {refuse}; give a new directory")
    if os.path.lexists(directory):
        if not os.path.isdir(directory):
            raise CheckpointError(f"{directory} exists and is not a directory: {refuse}; give "
                                  "a new directory")
        if os.listdir(directory) and not is_checkpoint(directory):
            raise CheckpointError(f"{directory} exists and is not an activeit-jax checkpoint "
                                  f"(no config.json of ours with a complete params/): {refuse}; "
                                  "give a new directory")
        if os.listdir(directory) and not replace:
            raise CheckpointError(f"{directory} already holds a checkpoint: {refuse}; pass "
                                  "--overwrite to replace it, or give a new directory")
        foreign = foreign_entries(directory)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise CheckpointError(f"{directory} holds files that are not part of its checkpoint "
                                  f"({shown}): refusing to replace it (nothing was changed); "
                                  "move them out first")
    for leftover in (directory + TMP_SUFFIX, directory + OLD_SUFFIX) if temporaries else ():
        if os.path.lexists(leftover) and not _is_ours(leftover):
            raise CheckpointError(f"{leftover} exists and was not written by activeit-jax: "
                                  f"{refuse}; move it away first")


def _remove_leftover(path: str) -> None:
    """Removes a save's temporary (marked) or old (checkpoint) directory; anything else stays."""
    if not os.path.lexists(path):
        return
    if not _is_ours(path):
        raise CheckpointError(f"{path} exists and was not written by activeit-jax; move it "
                              "away first")
    if os.path.isfile(os.path.join(path, PARTIAL_MARKER)):
        shutil.rmtree(path)  # a directory this program created under its own name
    else:
        _remove_own_entries(path)


def _remove_own_entries(path: str) -> None:
    """Removes a checkpoint's own entries, then the directory if that left it empty."""
    if not os.path.isdir(path) or os.path.islink(path):
        return
    for name in os.listdir(path):
        if name in OWN_ENTRIES or _OWN_TEMP.match(name):
            target = os.path.join(path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
    try:
        os.rmdir(path)
    except OSError:
        logging.warning("kept %s: it holds files activeit-jax did not write (%s)", path,
                        ", ".join(sorted(os.listdir(path))[:5]))


def recover_interrupted_save(directory: str | os.PathLike) -> None:
    """A kill between the two renames of `save_model` leaves the previous checkpoint only in
    `<directory>.activeit-old` (`<directory>.old` before 0.2): put it back. Call it on the
    primary process before reading `directory`."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory):
        return
    for old in (directory + OLD_SUFFIX, directory + ".old"):
        if is_checkpoint(old):
            os.replace(old, directory)
            return


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
    _check_config_values(spec, path)
    try:
        return model_from_dict(spec, logical_axis_rules)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"bad model config in {path}: {err}") from err


def is_decoder_only_checkpoint(directory: str | os.PathLike | None) -> bool:
    """Whether a checkpoint's config.json names a decoder-only model, without building it.

    For choosing the vocabulary options of a tokenizer given by path (`data.vocab.
    resolve_vocabulary(decoder_only=...)`) before the model is read; anything unreadable
    (no directory, no or a damaged config.json, an unknown kind) counts as encoder-decoder,
    and `read_model` reports it later.
    """
    if not directory:
        return False
    try:
        spec = _read_config(os.path.join(os.fspath(directory), CONFIG_NAME))
    except (OSError, ValueError, CheckpointError):
        return False
    kind = spec.get("model_kind")
    model_cls = MODEL_CLASSES.get(kind) if isinstance(kind, str) else None
    return bool(model_cls is not None and model_cls.decoder_only)


def _check_config_values(spec: dict[str, Any], path: str) -> None:
    """The model config's values (`config_checks`: types, ranges, heads, ids), before its
    dataclass is built: a hand-edited `num_layers: 4e9` or `num_heads: 0` is one line."""
    from activeit_jax.models import config_checks
    from activeit_jax.models.wrappers import MODEL_CLASSES

    kind = spec.get("model_kind")
    cls = MODEL_CLASSES.get(kind) if isinstance(kind, str) else None
    config = spec.get("config")
    if cls is None or config is None:
        return  # model_from_dict names an unknown kind
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: field 'config': expected an object, got "
                              f"{type(config).__name__}")
    try:
        config_checks.check_config_values(cls.config_cls, config, path,
                                          {name: f"config.{name}" for name in config})
    except config_checks.ModelConfigError as err:
        raise CheckpointError(str(err)) from None


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
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    with ocp.StandardCheckpointer() as checkpointer:
        _check_stored_shapes(checkpointer, params_dir, abstract)
        try:
            return checkpointer.restore(params_dir, target)
        except Exception as err:  # noqa: BLE001 - tensorstore raises bare Exceptions
            quiet_abandoned_reads()
            detail = one_line(err).split(" See full TensorStore details")[0]
            raise CheckpointError(f"cannot read the params in {params_dir}: a file is "
                                  f"truncated, missing or damaged ({detail[:200]})") from None


def _dotted(path: Any) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _check_stored_shapes(checkpointer: Any, params_dir: str, abstract: Any) -> None:
    """Compares the stored parameter names and shapes with the model's before any array is
    read, so that a checkpoint of another model gets one precise line.

    Raises:
      CheckpointError: unreadable metadata, or a parameter missing, extra or of another shape.
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


def import_hf_to_checkpoint(hf_dir: str | os.PathLike, ckpt_dir: str | os.PathLike,
                            replace: bool = False) -> BaseModel:
    """Converts a Hugging Face T5/LLaMA/Qwen2 directory (with its `tokenizer.json`, when it
    has one) into an activeit-jax checkpoint; `ckpt_dir` is checked before anything is read
    (`check_save_target`; `replace`: an existing checkpoint there may be replaced).

    Returns:
      The model wrapper that was saved.
    """
    check_save_target(ckpt_dir, replace)
    imported = hf_convert.import_hf_model(hf_dir)
    save_model(ckpt_dir, imported.model, imported.params, imported.vocabulary, replace=replace)
    return imported.model


def import_gguf_to_checkpoint(gguf_path: str | os.PathLike, ckpt_dir: str | os.PathLike,
                              replace: bool = False) -> BaseModel:
    """Converts a llama.cpp GGUF file (weights dequantized to float32, tokenizer from its
    metadata) into an activeit-jax checkpoint; nothing is written when the file is refused,
    and `ckpt_dir` is checked before the file is read (`check_save_target`).

    Returns:
      The model wrapper that was saved.
    """
    check_save_target(ckpt_dir, replace)
    imported = gguf_convert.import_gguf(gguf_path)
    save_model(ckpt_dir, imported.model, imported.params, imported.vocabulary, replace=replace)
    return imported.model


def export_checkpoint_to_hf(ckpt_dir: str | os.PathLike, hf_dir: str | os.PathLike,
                            max_shard_size: int | str = hf_convert.DEFAULT_MAX_SHARD_SIZE,
                            replace: bool = False) -> list[str]:
    """Converts an activeit-jax checkpoint into a Hugging Face directory; a model already in
    `hf_dir` is replaced only with `replace` (`hf_convert.check_export_target`, checked before
    the checkpoint is read).

    Returns:
      The names of the files written into `hf_dir`.
    """
    hf_convert.check_export_target(hf_dir, replace)
    model, params = load_model(ckpt_dir)
    return hf_convert.export_hf(model, jax.device_get(params), hf_dir, max_shard_size)
