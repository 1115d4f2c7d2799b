"""Hugging Face `config.json` <-> our model configs (T5, LLaMA family).

The LLaMA family covers `LlamaForCausalLM` (LLaMA 1/2/3, SmolLM2; default or Llama-3 RoPE
scaling, tied or untied embeddings) and `Qwen2ForCausalLM` (a LLaMA with query/key/value
biases). When the checkpoint carries its tokenizer, the model's special ids come from it
(`model_ids_from_vocabulary`): its EOS, its padding id (one that text never produces) and its
BOS only when the tokenizer adds one.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from activeit_jax.core import io_utils
from activeit_jax.core.errors import ActiveITError
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.t5 import T5Config
from activeit_jax.models.wrappers import BaseModel, DecoderOnlyModel, EncoderDecoderModel

CONFIG_NAME = "config.json"


class ConversionError(ActiveITError, ValueError):
    """A checkpoint cannot be converted (missing file, unsupported model, bad tensor)."""


def read_hf_config(hf_dir: str | os.PathLike) -> dict[str, Any]:
    """Loads `config.json` of a Hugging Face directory, with clear errors."""
    hf_dir = os.fspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"Hugging Face directory {hf_dir} does not exist")
    path = os.path.join(hf_dir, CONFIG_NAME)
    if not os.path.exists(path):
        raise ConversionError(f"no {CONFIG_NAME} in {hf_dir} (expected a Hugging Face model "
                              "directory saved with save_pretrained)")
    return io_utils.read_json_object(path, ConversionError, "the model config")


def _first_id(value: Any, default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else default
    return int(value)


def model_family(hf_config: Mapping[str, Any]) -> str:
    """"t5" or "llama" (LLaMA-family decoders, Qwen2 included), else a ConversionError."""
    model_type = hf_config.get("model_type")
    architectures = hf_config.get("architectures") or []
    if model_type in ("t5", "mt5") and (not architectures or
                                         "T5ForConditionalGeneration" in architectures or
                                         "MT5ForConditionalGeneration" in architectures):
        return "t5"
    if model_type == "llama" and (not architectures or "LlamaForCausalLM" in architectures):
        return "llama"
    if model_type == "qwen2" and (not architectures or "Qwen2ForCausalLM" in architectures):
        return "llama"
    raise ConversionError(
        f"unsupported architecture: model_type={model_type!r}, architectures={architectures}; "
        "supported: T5ForConditionalGeneration / MT5ForConditionalGeneration (model_type t5, "
        "mt5), LlamaForCausalLM (model_type llama) and Qwen2ForCausalLM (model_type qwen2)")


def t5_config_from_hf(hf_config: Mapping[str, Any], has_lm_head: bool) -> T5Config:
    """Our `T5Config` from a Hugging Face T5 config.

    Args:
      hf_config: parsed `config.json`.
      has_lm_head: whether the checkpoint stores its own `lm_head.weight` (an untied head).

    Returns:
      The config. The tied head and the d_model**-0.5 output scale are separate switches:
      transformers >= 5 writes `scale_decoder_outputs`; older files imply the scale by
      `tie_word_embeddings` (True for the original T5, False for v1.1).
    """
    pad_id = _first_id(hf_config.get("pad_token_id"), 0)
    num_layers = int(hf_config.get("num_layers", 6))
    scale = hf_config.get("scale_decoder_outputs")
    if scale is None:
        scale = bool(hf_config.get("tie_word_embeddings", True))
    try:
        return T5Config(
            vocab_size=int(hf_config["vocab_size"]),
            d_model=int(hf_config["d_model"]),
            d_kv=int(hf_config["d_kv"]),
            d_ff=int(hf_config["d_ff"]),
            num_heads=int(hf_config["num_heads"]),
            num_encoder_layers=num_layers,
            num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
            relative_attention_num_buckets=int(
                hf_config.get("relative_attention_num_buckets", 32)),
            relative_attention_max_distance=int(
                hf_config.get("relative_attention_max_distance", 128)),
            feed_forward_proj=str(hf_config.get("feed_forward_proj", "relu")),
            tie_word_embeddings=not has_lm_head,
            scale_decoder_outputs=bool(scale),
            layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
            dropout_rate=float(hf_config.get("dropout_rate", 0.0)),
            pad_id=pad_id,
            eos_id=_first_id(hf_config.get("eos_token_id"), 1),
            decoder_start_id=_first_id(hf_config.get("decoder_start_token_id"), pad_id),
        )
    except KeyError as err:
        raise ConversionError(f"T5 config.json lacks {err.args[0]!r}") from err
    except ValueError as err:
        raise ConversionError(f"unsupported T5 config: {err}") from err


def rope_fields(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our RoPE fields from `rope_parameters` (transformers >= 5) or `rope_scaling` +
    `rope_theta` (older files): default RoPE or Llama-3 scaling."""
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    fields: dict[str, Any] = {
        "rope_theta": float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)))}
    if rope_type == "default":
        return fields
    if rope_type != "llama3":
        raise ConversionError(f"unsupported rope_type {rope_type!r} (default and llama3 only)")
    try:
        return {**fields, "rope_type": "llama3", "rope_factor": float(rope["factor"]),
                "rope_low_freq_factor": float(rope["low_freq_factor"]),
                "rope_high_freq_factor": float(rope["high_freq_factor"]),
                "rope_original_max_position_embeddings":
                    int(rope["original_max_position_embeddings"])}
    except KeyError as err:
        raise ConversionError(f"llama3 rope parameters lack {err.args[0]!r}") from None


def model_ids_from_vocabulary(vocabulary: Any) -> dict[str, int | None]:
    """The model's pad/bos/eos ids from its tokenizer: BOS only when the tokenizer adds one,
    and a padding id that text never produces (`hf_tokenizer.choose_pad_id`)."""
    return {"pad_id": int(vocabulary.pad_id),
            "bos_id": int(vocabulary.bos_id) if vocabulary.add_bos else None,
            "eos_id": int(vocabulary.eos_id)}


def _ids_from_config(hf_config: Mapping[str, Any]) -> dict[str, int | None]:
    """pad/bos/eos from config.json alone (no tokenizer.json): a declared pad that doubles as
    BOS/EOS (SmolLM2 declares pad = eos) gives way to 0, LLaMA's <unk>."""
    bos = _first_id(hf_config.get("bos_token_id"), 1)
    eos = _first_id(hf_config.get("eos_token_id"), 2)
    pad = _first_id(hf_config.get("pad_token_id"), 0)
    if pad in (bos, eos):
        pad = 0
    if pad in (bos, eos):
        raise ConversionError(f"no padding id: pad_token_id doubles as BOS/EOS ({bos}/{eos}); "
                              "put the model's tokenizer.json beside config.json")
    return {"pad_id": pad, "bos_id": bos, "eos_id": eos}


def llama_config_from_hf(hf_config: Mapping[str, Any], has_lm_head: bool,
                         vocabulary: Any = None) -> LlamaConfig:
    """Our `LlamaConfig` from a Hugging Face LLaMA or Qwen2 config.

    Args:
      hf_config: parsed `config.json`.
      has_lm_head: whether the checkpoint stores `lm_head.weight` (an untied head).
      vocabulary: the checkpoint's tokenizer (`HFTokenizerVocabulary`), or None; when given,
        the special ids come from it (`model_ids_from_vocabulary`) instead of config.json.

    Returns:
      The config.

    Raises:
      ConversionError: an unsupported variant (activation, MLP or output-projection biases,
        sliding-window attention, RoPE type) or a missing field.
    """
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"unsupported hidden_act {hf_config['hidden_act']!r} (only silu)")
    qwen2 = hf_config.get("model_type") == "qwen2"
    if hf_config.get("mlp_bias"):
        raise ConversionError("unsupported LLaMA variant: mlp_bias=true")
    if hf_config.get("attention_bias") and not qwen2:
        raise ConversionError("unsupported LLaMA variant: attention_bias=true (a bias on the "
                              "output projection too; only Qwen2's query/key/value biases "
                              "are supported)")
    if qwen2 and hf_config.get("use_sliding_window"):
        raise ConversionError("unsupported Qwen2 variant: use_sliding_window=true")
    num_heads = int(hf_config["num_attention_heads"])
    tie = bool(hf_config.get("tie_word_embeddings", False))
    if not tie and not has_lm_head:
        raise ConversionError("tensor lm_head.weight is missing and tie_word_embeddings is false")
    ids = (model_ids_from_vocabulary(vocabulary) if vocabulary is not None
           else _ids_from_config(hf_config))
    try:
        return LlamaConfig(
            vocab_size=int(hf_config["vocab_size"]),
            hidden_size=int(hf_config["hidden_size"]),
            intermediate_size=int(hf_config["intermediate_size"]),
            num_layers=int(hf_config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf_config.get("num_key_value_heads") or num_heads),
            head_dim=(int(hf_config["head_dim"]) if hf_config.get("head_dim") else None),
            **rope_fields(hf_config),
            attention_bias=qwen2,
            rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=tie and not has_lm_head,
            max_position_embeddings=int(hf_config.get("max_position_embeddings", 2048)),
            **ids,
        )
    except KeyError as err:
        raise ConversionError(f"LLaMA config.json lacks {err.args[0]!r}") from err
    except ValueError as err:
        raise ConversionError(f"unsupported LLaMA config: {err}") from err


def _t5_hf_config(cfg: T5Config) -> dict[str, Any]:
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_encoder_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "feed_forward_proj": cfg.feed_forward_proj,
        # transformers < 5 reads the scale from tie_word_embeddings; >= 5 reads
        # scale_decoder_outputs and detects an untied head from lm_head.weight.
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "scale_decoder_outputs": cfg.scales_decoder_outputs,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "dropout_rate": cfg.dropout_rate,
        "is_encoder_decoder": True,
        "pad_token_id": cfg.pad_id,
        "eos_token_id": cfg.eos_id,
        "decoder_start_token_id": cfg.decoder_start_id,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def _llama_hf_config(cfg: LlamaConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "llama3":
        rope.update(factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_position_embeddings)
    # Query/key/value biases without an output bias are Qwen2's layout.
    arch, model_type = (("Qwen2ForCausalLM", "qwen2") if cfg.attention_bias
                        else ("LlamaForCausalLM", "llama"))
    return {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        **({"rope_scaling": rope} if cfg.rope_type != "default" else {}),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        **({} if cfg.attention_bias else {"attention_bias": False, "mlp_bias": False}),
        "pad_token_id": cfg.pad_id,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": cfg.eos_id,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def hf_config_from_model(model: BaseModel) -> dict[str, Any]:
    """The Hugging Face `config.json` dict for a model wrapper (float32 weights)."""
    if isinstance(model, EncoderDecoderModel):
        return _t5_hf_config(model.config)
    if isinstance(model, DecoderOnlyModel):
        return _llama_hf_config(model.config)
    raise ConversionError(f"no Hugging Face config for {type(model).__name__}")


def model_from_hf_config(hf_config: Mapping[str, Any], tensor_names: set[str],
                         logical_axis_rules: Any = None, vocabulary: Any = None,
                         source: str = CONFIG_NAME) -> BaseModel:
    """The model wrapper described by a Hugging Face config and its tensor names (and, for a
    decoder, the tokenizer that gives its special ids).

    Every value the converter reads is checked first (`config_checks`: types, ranges, heads,
    ids), and the layer counts must equal the layers the tensors hold.

    Raises:
      ConversionError: an unsupported or invalid config (one line naming `source` and the key).
    """
    from activeit_jax.models import config_checks

    family = model_family(hf_config)
    has_lm_head = "lm_head.weight" in tensor_names
    try:
        config_checks.check_hf_config(hf_config, family, source)
        config = (t5_config_from_hf(hf_config, has_lm_head) if family == "t5"
                  else llama_config_from_hf(hf_config, has_lm_head, vocabulary))
        config_checks.check_model_config(config, source, config_checks.hf_names(family))
        config_checks.check_layer_counts(config, tensor_names, family, source)
    except config_checks.ModelConfigError as err:
        raise ConversionError(str(err)) from None
    except ConversionError as err:
        raise ConversionError(f"{source}: {err}") from None
    if family == "t5":
        return EncoderDecoderModel(config, logical_axis_rules)
    return DecoderOnlyModel(config, logical_axis_rules)
