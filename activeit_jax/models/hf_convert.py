"""Hugging Face <-> activeit-jax conversion for T5 and LLaMA-family (LLaMA, Qwen2) checkpoints.

A Hugging Face directory holds `config.json` and either `model.safetensors` or a sharded
`model.safetensors.index.json` + `model-0000k-of-0000n.safetensors`. Tensors are read with
safetensors' NumPy API (bfloat16 tensors, which NumPy cannot name, are read from the
documented file layout via `ml_dtypes`). A directory without safetensors may hold Flax weights
(`flax_model.msgpack`, read without unpickling: `flax_msgpack`); pickled `pytorch_model.bin`
files are never loaded. (`hub.resolve_hf_dir` turns a Hub id into such a directory.)

Weight layout: a PyTorch `nn.Linear` stores `[out, in]`; our kernels are `[in, out]`, and the
attention projections keep heads as a separate axis (`[embed, heads, kv]`, `[heads, kv, embed]`)
so that they can be sharded by head. Every mapping is a transpose + reshape, hence exact: an
export followed by an import reproduces the parameters bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping

import flax.traverse_util
import numpy as np

from activeit_jax.data.errors import VocabularyError
from activeit_jax.models.hf_configs import (  # noqa: F401 (re-exported: one import site)
    CONFIG_NAME,
    ConversionError,
    hf_config_from_model,
    llama_config_from_hf,
    model_family,
    model_from_hf_config,
    read_hf_config,
    t5_config_from_hf,
)
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.safetensors_io import (
    read_json as _read_json,
    read_safetensors_header as _safetensors_header,
)
from activeit_jax.models.t5 import T5Config
from activeit_jax.models.wrappers import BaseModel, DecoderOnlyModel, EncoderDecoderModel

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # bytes, Hugging Face's historical default (5GB)


@dataclasses.dataclass(frozen=True)
class ImportedModel:
    """A converted model: the wrapper, float32 NumPy params, and the tokenizer the checkpoint
    carried (an `HFTokenizerVocabulary`, or None)."""
    model: BaseModel
    params: dict[str, Any]
    vocabulary: Any = None


# -- reading safetensors --------------------------------------------------------------------

class SafetensorsReader:
    """Lazy, read-one-tensor-at-a-time access to a Hugging Face safetensors directory.

    Args:
      hf_dir: directory with `model.safetensors` or `model.safetensors.index.json`.
    """

    def __init__(self, hf_dir: str | os.PathLike) -> None:
        self.hf_dir = os.fspath(hf_dir)
        self._file_of: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        index_path = os.path.join(self.hf_dir, SAFE_INDEX_NAME)
        single_path = os.path.join(self.hf_dir, SAFE_WEIGHTS_NAME)
        if os.path.exists(index_path):
            index = _read_json(index_path, "the shard index")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path} has no weight_map")
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single_path):
            weight_map, files = None, [SAFE_WEIGHTS_NAME]
        else:
            pickled = [name for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")
                       if os.path.exists(os.path.join(self.hf_dir, name))]
            hint = (f" (found {pickled[0]}: pickled PyTorch weights are not loaded; re-save the "
                    "model with save_pretrained(..., safe_serialization=True))" if pickled else "")
            raise ConversionError(f"no {SAFE_WEIGHTS_NAME}, {SAFE_INDEX_NAME} or "
                                  f"flax_model.msgpack in {self.hf_dir}{hint}")
        for name in files:
            path = os.path.join(self.hf_dir, name)
            if not os.path.exists(path):
                raise ConversionError(f"safetensors shard {name} listed in {SAFE_INDEX_NAME} is "
                                      f"missing from {self.hf_dir}")
            header, data_start = _safetensors_header(path)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                self._file_of[key] = path
                self._meta[key] = {**info, "data_start": data_start}
        if weight_map is not None:
            missing = sorted(k for k in weight_map if k not in self._file_of)
            if missing:
                raise ConversionError(f"tensors listed in {SAFE_INDEX_NAME} but absent from the "
                                      f"shards: {missing[:5]}")

    def keys(self) -> list[str]:
        return list(self._file_of)

    def __contains__(self, key: str) -> bool:
        return key in self._file_of

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._meta[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a NumPy array in its stored dtype (bf16 via ml_dtypes)."""
        meta = self._meta[key]
        path = self._file_of[key]
        if meta["dtype"] == "BF16":
            # safetensors' NumPy API has no bfloat16; read the raw little-endian bytes.
            import ml_dtypes
            begin, end = meta["data_offsets"]
            with open(path, "rb") as handle:
                handle.seek(meta["data_start"] + begin)
                raw = handle.read(end - begin)
            return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(meta["shape"])
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, framework="np") as handle:
                return handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise ConversionError(f"{path}: cannot read tensor {key!r} ({err})") from None


def open_hf_weights(hf_dir: str | os.PathLike) -> Any:
    """The weights of a Hugging Face directory: a `SafetensorsReader`, or, when the directory
    has no safetensors but Flax weights, a `flax_msgpack.FlaxMsgpackReader` (same interface).

    Raises:
      ConversionError: no weights in a supported format, or unreadable ones.
    """
    from activeit_jax.models import flax_msgpack

    hf_dir = os.fspath(hf_dir)
    has_safetensors = any(os.path.exists(os.path.join(hf_dir, name))
                          for name in (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME))
    if not has_safetensors and flax_msgpack.has_flax_weights(hf_dir):
        return flax_msgpack.FlaxMsgpackReader(hf_dir)
    return SafetensorsReader(hf_dir)


# -- name/layout tables ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tensor: Hugging Face name, our param path, and how the layouts relate.

    kind: "copy" (same layout), "linear" (`[out, in]` <-> `[in, out]`), "in_heads"
    (`[H*D, E]` <-> `[E, H, D]`), "out_heads" (`[E, H*D]` <-> `[H, D, E]`), "heads_bias"
    (`[H*D]` <-> `[H, D]`).
    """
    hf_name: str
    path: tuple[str, ...]
    kind: str


def _to_ours(array: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind in ("copy", "heads_bias"):
        return array.reshape(shape)
    return np.ascontiguousarray(array.T).reshape(shape)


def _to_hf(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "copy":
        return np.ascontiguousarray(array)
    if kind == "linear":
        return np.ascontiguousarray(array.T)
    if kind == "in_heads":  # [E, H, D] -> [H*D, E]
        return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)
    if kind == "out_heads":  # [H, D, E] -> [E, H*D]
        return np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)
    if kind == "heads_bias":  # [H, D] -> [H*D]
        return np.ascontiguousarray(array.reshape(-1))
    raise ValueError(kind)


def _hf_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "copy":
        return shape
    if kind == "linear":
        return tuple(reversed(shape))
    if kind == "in_heads":
        return (int(np.prod(shape[1:])), shape[0])
    if kind == "out_heads":
        return (shape[-1], int(np.prod(shape[:-1])))
    if kind == "heads_bias":
        return (int(np.prod(shape)),)
    raise ValueError(kind)


def _attention_entries(hf_prefix: str, path: tuple[str, ...], names: Mapping[str, str]
                       ) -> list[_Entry]:
    return [_Entry(f"{hf_prefix}.{names['q']}.weight", (*path, "query", "kernel"), "in_heads"),
            _Entry(f"{hf_prefix}.{names['k']}.weight", (*path, "key", "kernel"), "in_heads"),
            _Entry(f"{hf_prefix}.{names['v']}.weight", (*path, "value", "kernel"), "in_heads"),
            _Entry(f"{hf_prefix}.{names['o']}.weight", (*path, "out", "kernel"), "out_heads")]


def _t5_mlp_entries(hf_prefix: str, path: tuple[str, ...], gated: bool) -> list[_Entry]:
    inner = ["wi_0", "wi_1"] if gated else ["wi"]
    entries = [_Entry(f"{hf_prefix}.DenseReluDense.{n}.weight", (*path, "mlp", n, "kernel"),
                      "linear") for n in inner]
    entries.append(_Entry(f"{hf_prefix}.DenseReluDense.wo.weight", (*path, "mlp", "wo", "kernel"),
                          "linear"))
    return entries


def t5_entries(cfg: T5Config) -> list[_Entry]:
    """Tensor table of a T5ForConditionalGeneration with config `cfg` (HF module order)."""
    t5_attn = {"q": "q", "k": "k", "v": "v", "o": "o"}
    entries = [_Entry("shared.weight", ("token_embedder", "embedding"), "copy")]
    for stack, num_layers in (("encoder", cfg.num_encoder_layers),
                              ("decoder", cfg.num_decoder_layers)):
        for i in range(num_layers):
            block, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
            entries += _attention_entries(f"{block}.0.SelfAttention",
                                          (*ours, "attention" if stack == "encoder"
                                           else "self_attention"), t5_attn)
            if i == 0:
                entries.append(_Entry(
                    f"{block}.0.SelfAttention.relative_attention_bias.weight",
                    (stack, "relpos_bias", "rel_embedding"), "copy"))
            if stack == "encoder":
                entries.append(_Entry(f"{block}.0.layer_norm.weight",
                                      (*ours, "pre_attention_layer_norm", "scale"), "copy"))
                entries += _t5_mlp_entries(f"{block}.1", ours, cfg.is_gated)
                entries.append(_Entry(f"{block}.1.layer_norm.weight",
                                      (*ours, "pre_mlp_layer_norm", "scale"), "copy"))
            else:
                entries.append(_Entry(f"{block}.0.layer_norm.weight",
                                      (*ours, "pre_self_attention_layer_norm", "scale"), "copy"))
                entries += _attention_entries(f"{block}.1.EncDecAttention",
                                              (*ours, "encoder_decoder_attention"), t5_attn)
                entries.append(_Entry(f"{block}.1.layer_norm.weight",
                                      (*ours, "pre_cross_attention_layer_norm", "scale"), "copy"))
                entries += _t5_mlp_entries(f"{block}.2", ours, cfg.is_gated)
                entries.append(_Entry(f"{block}.2.layer_norm.weight",
                                      (*ours, "pre_mlp_layer_norm", "scale"), "copy"))
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        entries.append(_Entry(f"{stack}.final_layer_norm.weight", (stack, norm, "scale"), "copy"))
    if not cfg.tie_word_embeddings:
        entries.append(_Entry("lm_head.weight", ("decoder", "logits_dense", "kernel"), "linear"))
    return entries


def llama_entries(cfg: LlamaConfig) -> list[_Entry]:
    """Tensor table of a LlamaForCausalLM with config `cfg` (HF module order)."""
    attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    entries = [_Entry("model.embed_tokens.weight", ("token_embedder", "embedding"), "copy")]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}", (f"layers_{i}",)
        entries += _attention_entries(f"{hf}.self_attn", (*ours, "attention"), attn)
        if cfg.attention_bias:  # Qwen2: q/k/v biases, none on o_proj
            entries += [_Entry(f"{hf}.self_attn.{attn[p]}.bias", (*ours, "attention", ours_p,
                                                                 "bias"), "heads_bias")
                        for p, ours_p in (("q", "query"), ("k", "key"), ("v", "value"))]
        entries += [
            _Entry(f"{hf}.mlp.gate_proj.weight", (*ours, "mlp", "wi_0", "kernel"), "linear"),
            _Entry(f"{hf}.mlp.up_proj.weight", (*ours, "mlp", "wi_1", "kernel"), "linear"),
            _Entry(f"{hf}.mlp.down_proj.weight", (*ours, "mlp", "wo", "kernel"), "linear"),
            _Entry(f"{hf}.input_layernorm.weight", (*ours, "input_norm", "scale"), "copy"),
            _Entry(f"{hf}.post_attention_layernorm.weight", (*ours, "post_attention_norm", "scale"),
                   "copy"),
        ]
    entries.append(_Entry("model.norm.weight", ("final_norm", "scale"), "copy"))
    if not cfg.tie_word_embeddings:
        entries.append(_Entry("lm_head.weight", ("logits_dense", "kernel"), "linear"))
    return entries


def _entries(model: BaseModel) -> list[_Entry]:
    if isinstance(model, EncoderDecoderModel):
        return t5_entries(model.config)
    if isinstance(model, DecoderOnlyModel):
        return llama_entries(model.config)
    raise ConversionError(f"no Hugging Face mapping for {type(model).__name__}")


# Tensors that Hugging Face checkpoints may carry but that hold nothing of their own.
_T5_DUPLICATES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED_PATTERNS = (
    re.compile(r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"),
    re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
)


# -- import / export ------------------------------------------------------------------------

def params_from_hf(model: BaseModel, reader: Any,
                   source: str = "checkpoint") -> dict[str, Any]:
    """Builds our float32 params from Hugging Face tensors.

    Args:
      model: the wrapper whose params to build (its config fixes every expected shape).
      reader: a `SafetensorsReader` (or the same interface: `FlaxMsgpackReader`,
        `gguf_convert.GGUFTensors`) or a dict name -> array.
      source: name used in error messages.

    Returns:
      Nested dict of float32 NumPy arrays with the structure of `model.init_params`.

    Raises:
      ConversionError: a tensor is missing, has the wrong shape, or is unexpected.
    """
    if isinstance(reader, Mapping):
        get: Callable[[str], np.ndarray] = lambda name: np.asarray(reader[name])
        names = set(reader)
        shape_of: Callable[[str], tuple[int, ...]] = lambda name: tuple(np.shape(reader[name]))
    else:
        get, names, shape_of = reader.get, set(reader.keys()), reader.shape
    expected = flax.traverse_util.flatten_dict(model.abstract_params())
    entries = _entries(model)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for entry in entries:
        our_shape = tuple(expected[entry.path].shape)
        hf_shape = _hf_shape(our_shape, entry.kind)
        if entry.hf_name not in names:
            raise ConversionError(f"tensor {entry.hf_name} is missing from {source} "
                                  f"(expected shape {hf_shape})")
        if shape_of(entry.hf_name) != hf_shape:
            raise ConversionError(f"tensor {entry.hf_name} has shape {shape_of(entry.hf_name)} "
                                  f"but the config implies {hf_shape}")
        flat[entry.path] = _to_ours(get(entry.hf_name).astype(np.float32), entry.kind,
                                    our_shape)
    assert set(flat) == set(expected), "mapping table does not cover every parameter"

    used = {entry.hf_name for entry in entries}
    shared_name = entries[0].hf_name
    leftovers = sorted(names - used)
    unexpected = []
    for name in leftovers:
        if any(p.fullmatch(name) for p in _IGNORED_PATTERNS):
            continue
        duplicates_shared = (name in _T5_DUPLICATES or name == "lm_head.weight")
        if duplicates_shared and shape_of(name) == shape_of(shared_name):
            if not np.array_equal(get(name), get(shared_name)):
                raise ConversionError(f"tensor {name} differs from {shared_name}; separate "
                                      "input embeddings are not supported")
            continue
        unexpected.append(name)
    if unexpected:
        raise ConversionError(f"unexpected tensors in {source} (unsupported architecture "
                              f"variant?): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    return flax.traverse_util.unflatten_dict(flat)


def load_hf_tokenizer(hf_dir: str | os.PathLike) -> Any:
    """The `tokenizer.json` (+ `tokenizer_config.json`) of a Hugging Face directory as an
    `HFTokenizerVocabulary`, or None when the directory has no `tokenizer.json`.

    Raises:
      ConversionError: the tokenizer files are malformed (the file is named).
    """
    path = os.path.join(os.fspath(hf_dir), TOKENIZER_JSON)
    if not os.path.exists(path):
        return None
    from activeit_jax.data import hf_tokenizer
    try:
        return hf_tokenizer.from_hf_tokenizer_files(path)
    except VocabularyError as err:
        raise ConversionError(str(err)) from None


def check_vocabulary_fits(vocabulary: Any, model: BaseModel, source: str) -> None:
    """Raises a ConversionError when the tokenizer has more ids than the model's embedding."""
    from activeit_jax.data import hf_tokenizer
    try:
        hf_tokenizer.check_fits_embedding(vocabulary, model.config.vocab_size, source)
    except VocabularyError as err:
        raise ConversionError(str(err)) from None


def import_hf_model(hf_dir: str | os.PathLike, logical_axis_rules: Any = None) -> ImportedModel:
    """Reads a Hugging Face T5 / LLaMA / Qwen2 directory, with its tokenizer when it has one.

    Args:
      hf_dir: directory with `config.json` and safetensors weights (single or sharded; else
        Flax `flax_model.msgpack` weights), and optionally `tokenizer.json` +
        `tokenizer_config.json` (a decoder's special ids then come from the tokenizer:
        `hf_configs.model_ids_from_vocabulary`).
      logical_axis_rules: rules for the returned wrapper (default rules when None).

    Returns:
      The `ImportedModel` (float32 NumPy params; shard them with `partitioning.shard_params`).

    Raises:
      ConversionError: unsupported model, missing/mismatched tensors, a malformed tokenizer,
        or a tokenizer with more ids than the embedding has rows.
    """
    source = os.fspath(hf_dir)
    hf_config = read_hf_config(hf_dir)
    family = model_family(hf_config)  # fail on an unsupported model before touching weights
    vocabulary = load_hf_tokenizer(hf_dir)
    reader = open_hf_weights(hf_dir)
    model = model_from_hf_config(hf_config, set(reader.keys()), logical_axis_rules,
                                 vocabulary if family == "llama" else None,
                                 source=os.path.join(source, CONFIG_NAME))
    if vocabulary is not None:
        check_vocabulary_fits(vocabulary, model, os.path.join(source, TOKENIZER_JSON))
    return ImportedModel(model, params_from_hf(model, reader, source=source), vocabulary)


def import_hf(hf_dir: str | os.PathLike,
              logical_axis_rules: Any = None) -> tuple[BaseModel, dict[str, Any]]:
    """`import_hf_model` without the tokenizer: (model wrapper, float32 NumPy params)."""
    imported = import_hf_model(hf_dir, logical_axis_rules)
    return imported.model, imported.params


def params_to_hf(model: BaseModel, params: Any) -> dict[str, np.ndarray]:
    """Our params -> Hugging Face tensors (float32, HF names, module order).

    Args:
      model: the wrapper.
      params: its params (jax or NumPy arrays; gathered to host).

    Returns:
      Ordered dict name -> contiguous float32 array, as `save_pretrained` would write.
    """
    flat = flax.traverse_util.flatten_dict(params)
    out: dict[str, np.ndarray] = {}
    for entry in _entries(model):
        if entry.path not in flat:
            raise ConversionError(f"parameter {'/'.join(entry.path)} missing from params")
        array = np.asarray(flat[entry.path]).astype(np.float32)
        out[entry.hf_name] = _to_hf(array, entry.kind)
    return out


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB", "500MB", "2GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", size.upper())
    if not match:
        raise ValueError(f"cannot parse size {size!r} (e.g. 5GB, 500MB)")
    number, prefix, unit = match.groups()
    base = 1024 if unit == "IB" else 1000
    return int(float(number) * base ** " KMGT".index(prefix or " "))


def _shard(tensors: Mapping[str, np.ndarray], max_shard_size: int) -> list[list[str]]:
    """Greedy split of the tensor names (in order) into shards of at most max_shard_size."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += array.nbytes
    return shards


def export_hf(model: BaseModel, params: Any, out_dir: str | os.PathLike,
              max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Writes a Hugging Face directory (`config.json` + float32 safetensors).

    Files go to a temporary directory inside `out_dir` first and are then renamed into place
    (weights, then the index, then `config.json`), so a crash never leaves a config that points
    at missing weights. Older `model*.safetensors*` files in `out_dir` are removed; other
    files (e.g. a tokenizer) are kept.

    Args:
      model: the wrapper.
      params: its params.
      out_dir: destination directory (created if needed).
      max_shard_size: bytes (or "5GB"); larger models are split into shards plus
        `model.safetensors.index.json`.

    Returns:
      The names of the files written.
    """
    from safetensors.numpy import save_file

    tensors = params_to_hf(model, params)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    shards = _shard(tensors, parse_size(max_shard_size))
    tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        written: list[str] = []
        if len(shards) == 1:
            save_file(tensors, os.path.join(tmp, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
            written.append(SAFE_WEIGHTS_NAME)
        else:
            weight_map = {}
            for k, names in enumerate(shards, start=1):
                file_name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                save_file({n: tensors[n] for n in names}, os.path.join(tmp, file_name),
                          metadata={"format": "pt"})
                weight_map.update({n: file_name for n in names})
                written.append(file_name)
            index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
                     "weight_map": weight_map}
            with open(os.path.join(tmp, SAFE_INDEX_NAME), "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=2)
            written.append(SAFE_INDEX_NAME)
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(hf_config_from_model(model), handle, indent=2)
        written.append(CONFIG_NAME)
        for stale in _stale_weight_files(out_dir, set(written)):
            os.remove(os.path.join(out_dir, stale))
        for name in written:  # config.json last
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def _stale_weight_files(out_dir: str, keep: set[str]) -> Iterator[str]:
    for name in os.listdir(out_dir):
        if _WEIGHT_FILE.fullmatch(name) and name not in keep:
            yield name


def check_export_target(out_dir: str | os.PathLike, replace: bool = False) -> None:
    """Raises unless `export_hf` may write into `out_dir` without overwriting a model there.

    Allowed: a path that does not exist, a directory holding no `config.json` and no
    `model*.safetensors*` (e.g. only a tokenizer), or -- with `replace` (`convert
    --overwrite`) -- a model directory whose config and weight files are then replaced (its
    other files are kept). Reads only; call it before loading the checkpoint.

    Raises:
      ConversionError: one line naming the directory and what is in the way.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ConversionError(f"{out_dir} exists and is not a directory: refusing to export "
                              "there (nothing was changed)")
    held = sorted(n for n in os.listdir(out_dir) if n == CONFIG_NAME or _WEIGHT_FILE.fullmatch(n))
    if held and not replace:
        raise ConversionError(f"{out_dir} already holds a model ({', '.join(held[:4])}): refusing "
                              "to overwrite it (nothing was changed); pass --overwrite to replace "
                              "its config.json and weight files (other files are kept)")
