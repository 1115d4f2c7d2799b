"""Flax T5 (encoder-decoder) and LLaMA-style (decoder-only) models with t5x-style wrappers.

Public API:
  T5Config, LlamaConfig                      gin-registered config dataclasses
  EncoderDecoderModel, DecoderOnlyModel      wrappers: init_params, params_logical_axes,
                                             logits, loss_fn, token_log_probs, greedy_decode
  model_to_dict / model_from_dict            JSON round trip of a wrapper (kind + config)
  make_decoder_only_batch, make_prompt_batch host-side batch builders for the LLaMA interface
"""
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.t5 import T5Config
from activeit_jax.models.wrappers import (
                                          MODEL_CLASSES,
                                          BaseModel,
                                          DecoderOnlyModel,
                                          EncoderDecoderModel,
                                          make_decoder_only_batch,
                                          make_prompt_batch,
                                          model_from_dict,
                                          model_to_dict,
)

__all__ = [
    "MODEL_CLASSES",
    "BaseModel",
    "DecoderOnlyModel",
    "EncoderDecoderModel",
    "LlamaConfig",
    "T5Config",
    "make_decoder_only_batch",
    "make_prompt_batch",
    "model_from_dict",
    "model_to_dict",
]
