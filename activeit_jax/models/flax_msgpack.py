"""Hugging Face Flax weights (`flax_model.msgpack`) under the names the safetensors path uses.

Hub repositories of the Flax era (many T5 v1.1 / Flan-T5 / LLaMA ports) ship
`flax_model.msgpack` (or shards `flax_model-0000k-of-0000n.msgpack` with
`flax_model.msgpack.index.json`) and no safetensors. Such a file is the parameter tree of a
transformers Flax model serialized with `flax.serialization` (msgpack with an ndarray extension
type); it is read with `flax.serialization.msgpack_restore`, which never unpickles anything.

The Flax tree follows the PyTorch module tree; only leaf names and one layout differ
(transformers' own PyTorch <-> Flax rules):

- `kernel` of a Dense layer is the transposed `weight` (`[in, out]` vs `[out, in]`);
- `embedding` of an Embed layer is its `weight`; a LayerNorm `scale` is its `weight`
  (RMSNorms of T5 / LLaMA are already named `weight`);
- numbered blocks are dict keys ("0", "1" ...), so the joined path is the PyTorch name.

`FlaxMsgpackReader` exposes the result as `hf_convert.SafetensorsReader` does (`keys`, `shape`,
`get`), so `hf_convert.params_from_hf` maps and checks it exactly as it does safetensors.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from activeit_jax.models.hf_configs import ConversionError

FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_INDEX_NAME = "flax_model.msgpack.index.json"

_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight"}


def has_flax_weights(hf_dir: str | os.PathLike) -> bool:
    """Whether `hf_dir` holds Flax weights (single file or a shard index)."""
    return any(os.path.exists(os.path.join(os.fspath(hf_dir), name))
               for name in (FLAX_WEIGHTS_NAME, FLAX_INDEX_NAME))


def _restore(path: str) -> dict[str, Any]:
    """The nested dict of one msgpack file (no unpickling)."""
    import msgpack
    from flax import serialization

    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"version https://git-lfs"):
        raise ConversionError(f"{path} is a Git LFS pointer, not the weights (fetch the LFS "
                              "objects: git lfs pull)")
    try:
        tree = serialization.msgpack_restore(data)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException,
            msgpack.exceptions.ExtraData) as err:
        raise ConversionError(f"{path}: not a Flax msgpack file ({type(err).__name__}: "
                              f"{err})") from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: not a Flax parameter tree (a {type(tree).__name__})")
    if set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]  # a tree saved with its collection name
    return tree


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...], out: dict[tuple[str, ...], Any],
             path: str) -> None:
    for key, value in tree.items():
        name = (*prefix, str(key))
        if isinstance(value, dict):
            _flatten(value, name, out, path)
        elif isinstance(value, (np.ndarray, np.generic)):
            out[name] = np.asarray(value)
        else:
            raise ConversionError(f"{path}: {'/'.join(name)} is a {type(value).__name__}, not "
                                  "an array")


def _hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """(PyTorch name, whether the array is a transposed Dense kernel) of a Flax path."""
    leaf = path[-1]
    return ".".join((*path[:-1], _LEAF_NAMES.get(leaf, leaf))), leaf == "kernel"


def read_flax_params(hf_dir: str | os.PathLike) -> dict[tuple[str, ...], np.ndarray]:
    """{Flax path: array} of a directory's `flax_model.msgpack` or its shards.

    Raises:
      ConversionError: no Flax weights, a missing shard, or a file that is not a Flax
        msgpack tree (the file is named).
    """
    hf_dir = os.fspath(hf_dir)
    single = os.path.join(hf_dir, FLAX_WEIGHTS_NAME)
    index_path = os.path.join(hf_dir, FLAX_INDEX_NAME)
    if os.path.exists(single):
        files = [single]
    elif os.path.exists(index_path):
        from activeit_jax.core import io_utils

        index = io_utils.read_json_object(index_path, ConversionError, "the Flax shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index_path} has no weight_map")
        files = [os.path.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
        for path in files:
            if not os.path.exists(path):
                raise ConversionError(f"Flax shard {os.path.basename(path)} listed in "
                                      f"{FLAX_INDEX_NAME} is missing from {hf_dir}")
    else:
        raise ConversionError(f"no {FLAX_WEIGHTS_NAME} or {FLAX_INDEX_NAME} in {hf_dir}")
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for path in files:
        _flatten(_restore(path), (), flat, path)
    if os.path.exists(index_path) and not os.path.exists(single):
        missing = sorted(k for k in weight_map if tuple(k.split("/")) not in flat)
        if missing:
            raise ConversionError(f"tensors listed in {FLAX_INDEX_NAME} but absent from the "
                                  f"shards: {missing[:5]}")
    return flat


class FlaxMsgpackReader:
    """The tensors of a Hugging Face Flax checkpoint under PyTorch names and layouts.

    Duck-types `hf_convert.SafetensorsReader` (`keys`, `shape`, `get`, `in`) for
    `hf_convert.params_from_hf`. A LLaMA tree saved from the base model (no "model" level)
    gets the "model." prefix that the causal-LM names carry.

    Args:
      hf_dir: directory with `flax_model.msgpack` or `flax_model.msgpack.index.json`.
    """

    def __init__(self, hf_dir: str | os.PathLike) -> None:
        self.hf_dir = os.fspath(hf_dir)
        self._arrays: dict[str, np.ndarray] = {}
        self._transposed: dict[str, bool] = {}
        for path, array in read_flax_params(self.hf_dir).items():
            name, transposed = _hf_name(path)
            if transposed and array.ndim != 2:
                raise ConversionError(f"{self.hf_dir}: {'/'.join(path)} has {array.ndim} "
                                      "dimensions; only 2-D Dense kernels are supported")
            if name in self._arrays:
                raise ConversionError(f"{self.hf_dir}: two Flax parameters map to {name}")
            self._arrays[name] = array
            self._transposed[name] = transposed
        names = set(self._arrays)
        if "embed_tokens.weight" in names and not any(n.startswith("model.") for n in names):
            self._arrays = {(n if n == "lm_head.weight" else f"model.{n}"): a
                            for n, a in self._arrays.items()}
            self._transposed = {(n if n == "lm_head.weight" else f"model.{n}"): t
                                for n, t in self._transposed.items()}

    def keys(self) -> list[str]:
        return list(self._arrays)

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def shape(self, key: str) -> tuple[int, ...]:
        shape = tuple(self._arrays[key].shape)
        return shape[::-1] if self._transposed[key] else shape

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` in PyTorch layout, in its stored dtype."""
        array = self._arrays[key]
        return np.ascontiguousarray(array.T) if self._transposed[key] else array

