"""Flax T5 (encoder-decoder) and LLaMA-style (decoder-only) models with t5x-style wrappers.

The model owns its kind: `model.decoder_only`, its special ids (`SpecialIds.of(model, vocab)`)
and its batches (`model.batch_builder(vocab)`); no code outside `models/` asks for its `kind`.

Public API:
  T5Config, LlamaConfig                      gin-registered config dataclasses
  EncoderDecoderModel, DecoderOnlyModel      wrappers: init_params, params_logical_axes,
                                             logits, loss_fn, token_log_probs, greedy_decode,
                                             decoder_only, batch_builder
  TrainableModel                             what the trainer needs of a model (a Protocol)
  SpecialIds, check_vocabulary               the model's ids; a vocabulary that fits it
  BatchBuilder (EncoderDecoderBatches, DecoderOnlyBatches)
                                             host-side batches of each kind (`features`)
  model_to_dict / model_from_dict            JSON round trip of a wrapper (kind + config)
  check_declared_kind, KIND_NAMES            the deprecated `TrainConfig.model_kind`
  make_decoder_only_batch, make_prompt_batch numpy batches of the LLaMA interface (`batches`)
"""
from activeit_jax.models.batches import make_decoder_only_batch, make_prompt_batch
from activeit_jax.models.features import (
                                          BatchBuilder,
                                          DecoderOnlyBatches,
                                          EncoderDecoderBatches,
                                          SpecialIds,
                                          check_vocabulary,
)
from activeit_jax.models.llama import LlamaConfig
from activeit_jax.models.t5 import T5Config
from activeit_jax.models.wrappers import (
                                          KIND_NAMES,
                                          MODEL_CLASSES,
                                          BaseModel,
                                          DecoderOnlyModel,
                                          EncoderDecoderModel,
                                          TrainableModel,
                                          check_declared_kind,
                                          model_from_dict,
                                          model_to_dict,
)

__all__ = [
    "KIND_NAMES",
    "MODEL_CLASSES",
    "BaseModel",
    "BatchBuilder",
    "DecoderOnlyBatches",
    "DecoderOnlyModel",
    "EncoderDecoderBatches",
    "EncoderDecoderModel",
    "LlamaConfig",
    "SpecialIds",
    "T5Config",
    "TrainableModel",
    "check_declared_kind",
    "check_vocabulary",
    "make_decoder_only_batch",
    "make_prompt_batch",
    "model_from_dict",
    "model_to_dict",
]
