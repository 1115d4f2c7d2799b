"""llama.cpp GGUF files -> our Flax LLaMA / Qwen2 (float32 params + the file's tokenizer).

`import_gguf(path)` reads a GGUF with the `gguf` package (`GGUFReader`, memory-mapped),
dequantizes each tensor to float32 with `gguf.quants.dequantize` when it is needed, and maps
it onto our parameter tree through the Hugging Face names (`hf_convert.params_from_hf`, which
checks every shape). What llama.cpp's converter changed is undone on the way:

- names: `blk.{i}.attn_q.weight` -> `model.layers.{i}.self_attn.q_proj.weight` ...
- rotary layout ("llama" files only): llama.cpp rotates interleaved pairs (x0, x1), (x2, x3)
  ... for this architecture, Hugging Face (and our `apply_rotary`) the two halves of each
  head, so the converter reordered the rows of every query/key head from [first half; second
  half] to interleaved pairs. `unpermute_rotary_rows` puts them back, so our RoPE gives the
  same logits. "qwen2" files use llama.cpp's half-split ("NEOX") rotation, stored unpermuted;
- tied embeddings: a file without `output.weight` reuses `token_embd.weight` as the head.

The architecture comes from the metadata (`{arch}.block_count`, `{arch}.embedding_length`,
`{arch}.feed_forward_length`, `{arch}.attention.head_count[_kv]`, `{arch}.rope.freq_base`,
`{arch}.attention.layer_norm_rms_epsilon`, `{arch}.context_length`), the tokenizer from the
`tokenizer.*` keys (`data.gguf_tokenizer`: byte-level BPE or SentencePiece). The architectures
read are "llama" (LLaMA 1/2/3, Mistral, TinyLlama, SmolLM2) and "qwen2" (a LLaMA with
query/key/value biases, `blk.N.attn_{q,k,v}.bias`), with the tensor types in
`SUPPORTED_TYPES`; anything else is refused with one line naming the file.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from activeit_jax.data.errors import VocabularyError
from activeit_jax.models import config_checks, gguf_header, hf_configs, hf_convert
from activeit_jax.models.hf_configs import ConversionError
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.wrappers import DecoderOnlyModel

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Architectures whose query/key rows llama.cpp's converter interleaved (rotary "NORM" type).
_INTERLEAVED_ROTARY = ("llama",)
# Tensor types we read: float types and the block quantizations in common use, each checked
# against transformers' own (torch) dequantization in tests/test_gguf_convert.py.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K",
                   "Q5_K", "Q6_K")

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight",
                "attn_q.weight": "self_attn.q_proj.weight",
                "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight",
                "attn_q.bias": "self_attn.q_proj.bias",
                "attn_k.bias": "self_attn.k_proj.bias",
                "attn_v.bias": "self_attn.v_proj.bias",
                "attn_output.weight": "self_attn.o_proj.weight",
                "ffn_norm.weight": "post_attention_layernorm.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight",
                "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight"}


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's query/key row order (interleaved rotary pairs -> head halves).

    Within each head of D rows, llama.cpp stores row 2i + h where Hugging Face has row
    h * D/2 + i (h in {0, 1}, i < D/2).

    Args:
      weight: `[num_heads * D, ...]` rows in llama.cpp's order (a weight or a bias).
      num_heads: heads of this projection (the key/value heads for keys).

    Returns:
      The same rows in Hugging Face order, same shape.
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ConversionError(f"{rows} rows cannot hold {num_heads} heads of even width")
    half = rows // num_heads // 2
    split = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return np.swapaxes(split, 1, 2).reshape(weight.shape)


def open_gguf(path: str | os.PathLike) -> Any:
    """A `gguf.GGUFReader` over `path`, with one-line errors naming the file.

    Raises:
      ConversionError: missing file, not a GGUF file, or a truncated / corrupt one (its
        header is checked first, in bounded time: `gguf_header.check_header`).
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: GGUF file not found")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ConversionError(f"{path}: not a GGUF file (it starts with {magic!r}, not "
                              f"{GGUF_MAGIC!r})")
    try:
        gguf_header.check_header(path)  # GGUFReader trusts every count and length
    except gguf_header.GGUFHeaderError as err:
        raise ConversionError(str(err)) from None
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError, EOFError) as err:
        raise ConversionError(f"{path}: truncated or corrupt GGUF file ({err})") from None
    size = os.path.getsize(path)
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ConversionError(f"{path}: truncated GGUF file (tensor {tensor.name} ends at "
                                  f"byte {tensor.data_offset + tensor.n_bytes}, the file has "
                                  f"{size})")
    return reader


def read_metadata(reader: Any) -> dict[str, Any]:
    """{key: value} of a GGUF file's metadata (strings, numbers, bools; arrays as lists)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header fields (version, counts), not metadata
        value = field.contents()
        out[key] = value
    return out


def _hf_name(gguf_name: str, num_layers: int, source: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and \
            int(parts[1]) < num_layers and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    hint = (" (RoPE frequency factors, e.g. Llama-3.1 scaling, are not supported)"
            if gguf_name == "rope_freqs.weight" else "")
    raise ConversionError(f"{source}: unexpected tensor {gguf_name}{hint}")


class GGUFTensors:
    """The tensors of a GGUF file under Hugging Face names, dequantized on access.

    Duck-types `hf_convert.SafetensorsReader` (`keys`, `shape`, `get`) for
    `hf_convert.params_from_hf`; query/key rows come back in Hugging Face order.
    """

    def __init__(self, reader: Any, config: LlamaConfig, source: str,
                 interleaved_rotary: bool = True) -> None:
        import gguf

        self._source = source
        self._config = config
        self._interleaved = interleaved_rotary
        self._tensors: dict[str, Any] = {}
        for tensor in reader.tensors:
            type_name = gguf.GGMLQuantizationType(tensor.tensor_type).name
            if type_name not in SUPPORTED_TYPES:
                raise ConversionError(f"{source}: tensor {tensor.name} has type {type_name}, "
                                      f"which is not supported (supported: "
                                      f"{', '.join(SUPPORTED_TYPES)})")
            self._tensors[_hf_name(tensor.name, config.num_layers, source)] = tensor
        self._done = 0
        self._started = time.monotonic()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions innermost first; NumPy / PyTorch order is the reverse.
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def get(self, name: str) -> np.ndarray:
        """The float32 tensor `name` (`[out, in]` for weights), dequantized now."""
        import gguf

        tensor = self._tensors[name]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(self.shape(name))
        if self._interleaved and name.endswith(("self_attn.q_proj.weight",
                                                "self_attn.q_proj.bias")):
            array = unpermute_rotary_rows(array, self._config.num_heads)
        elif self._interleaved and name.endswith(("self_attn.k_proj.weight",
                                                  "self_attn.k_proj.bias")):
            array = unpermute_rotary_rows(array, self._config.num_kv_heads)
        self._done += 1
        if self._done % 50 == 0 or self._done == len(self._tensors):
            logger.info("dequantized %d/%d tensors (%.1f s)", self._done, len(self._tensors),
                        time.monotonic() - self._started)
        return array


def _required(metadata: dict[str, Any], key: str, source: str) -> Any:
    if key not in metadata:
        raise ConversionError(f"{source}: metadata {key} is missing")
    return metadata[key]


def llama_config_from_gguf(metadata: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]],
                           vocabulary: Any, source: str, arch: str = "llama") -> LlamaConfig:
    """Our `LlamaConfig` from a GGUF file's "{arch}.*" metadata.

    Args:
      metadata: `read_metadata` of the file.
      tensor_shapes: {GGUF tensor name: NumPy-order shape}.
      vocabulary: the file's tokenizer (gives the special ids: `model_ids_from_vocabulary`).
      source: the file, for messages.
      arch: "llama", or "qwen2" (query/key/value biases).

    Raises:
      ConversionError: a missing key, an unsupported RoPE scaling, or inconsistent shapes.
    """
    embed = "token_embd.weight"
    if embed not in tensor_shapes:
        raise ConversionError(f"{source}: tensor {embed} is missing")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ConversionError(f"{source}: RoPE scaling {scaling!r} is not supported")
    num_heads = int(_required(metadata, f"{arch}.attention.head_count", source))
    hidden = int(_required(metadata, f"{arch}.embedding_length", source))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", hidden // num_heads))
    rope_dims = metadata.get(f"{arch}.rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise ConversionError(f"{source}: partial rotary embeddings ({rope_dims} of "
                              f"{head_dim} dims) are not supported")
    try:
        return LlamaConfig(
            vocab_size=int(tensor_shapes[embed][0]),
            hidden_size=hidden,
            intermediate_size=int(_required(metadata, f"{arch}.feed_forward_length", source)),
            num_layers=int(_required(metadata, f"{arch}.block_count", source)),
            num_heads=num_heads,
            num_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv", num_heads)),
            head_dim=head_dim if head_dim != hidden // num_heads else None,
            rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
            attention_bias=arch == "qwen2",
            rms_norm_eps=float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            tie_word_embeddings="output.weight" not in tensor_shapes,
            max_position_embeddings=int(metadata.get(f"{arch}.context_length", 2048)),
            **hf_configs.model_ids_from_vocabulary(vocabulary))
    except ValueError as err:
        raise ConversionError(f"{source}: unsupported {arch} config: {err}") from None


def import_gguf(path: str | os.PathLike, logical_axis_rules: Any = None) -> Any:
    """Reads a llama.cpp GGUF file (weights and tokenizer).

    Args:
      path: the `.gguf` file.
      logical_axis_rules: rules for the returned wrapper (default rules when None).

    Returns:
      `hf_convert.ImportedModel(model, float32 NumPy params, HFTokenizerVocabulary)`.

    Raises:
      ConversionError: one line naming the file: not a GGUF file, truncated, another
        architecture, an unsupported tensor type or tokenizer, missing or mis-shaped tensors,
        or a tokenizer with more ids than the embedding has rows.
    """
    from activeit_jax.data import gguf_tokenizer

    source = os.fspath(path)
    started = time.monotonic()
    reader = open_gguf(source)
    metadata = read_metadata(reader)
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(f"{source}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    try:  # types, ranges and the layer count before anything is built from them
        config_checks.check_gguf_metadata(metadata, source)
        config_checks.check_gguf_layers(metadata, [t.name for t in reader.tensors], source)
    except config_checks.ModelConfigError as err:
        raise ConversionError(str(err)) from None
    try:
        vocabulary = gguf_tokenizer.vocabulary_from_gguf_metadata(metadata, source)
    except VocabularyError as err:
        raise ConversionError(str(err)) from None
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    config = llama_config_from_gguf(metadata, shapes, vocabulary, source, arch)
    try:
        config_checks.check_model_config(config, source, config_checks.gguf_names(arch))
    except config_checks.ModelConfigError as err:
        raise ConversionError(str(err)) from None
    model = DecoderOnlyModel(config, logical_axis_rules)
    hf_convert.check_vocabulary_fits(vocabulary, model, source)
    tensors = GGUFTensors(reader, config, source, arch in _INTERLEAVED_ROTARY)
    logger.info("%s: %s, %d layers, %d tensors; dequantizing to float32", source,
                metadata.get("general.name", arch), config.num_layers, len(tensors.keys()))
    params = hf_convert.params_from_hf(model, tensors, source=source)
    logger.info("%s: converted in %.1f s", source, time.monotonic() - started)
    return hf_convert.ImportedModel(model, params, vocabulary)
