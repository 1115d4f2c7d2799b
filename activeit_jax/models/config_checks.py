"""The one validator of model configurations, run before anything is built from one.

A model config comes from a Hugging Face `config.json`, a GGUF file's metadata or a checkpoint's
`config.json`. Each value is checked against one table of rules (`FIELD_RULES`, by our field
names; fields without a rule get one from their dataclass annotation): its type -- an integer is
an `int`, never a bool or a float such as 4e9 or 2.7 --, its range (caps that no real model
reaches: `MAX_LAYERS` ...), finite floats; then across fields: the heads divide, the special
ids lie inside the vocabulary. At convert the layer counts must equal the layers the weights
hold, so an absurd count is refused before a parameter table is built for it. Every refusal is
one line naming the file and the field as the file spells it (`num_hidden_layers`,
`llama.block_count`).

Entry points: `check_hf_config` + `check_layer_counts` (Hugging Face import),
`check_gguf_metadata` + `check_gguf_layers` (GGUF import), `check_config_values` (a checkpoint's
`config.json`, before its dataclass is built) and `check_model_config` (a built config).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Iterable, Mapping

from activeit_jax.core.errors import ActiveITError

MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20
MAX_HEADS = 1 << 12
MAX_VOCAB = 1 << 24
MAX_POSITIONS = (1 << 31) - 1
MAX_BUCKETS = 1 << 16


class ModelConfigError(ActiveITError, ValueError):
    """A model configuration with a value of the wrong type, out of range or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one value must be.

    Attributes:
      kind: "int" (an integer, not a bool), "float" (a finite int or float, not a bool),
        "bool" or "str".
      low, high: inclusive bounds (None: unbounded).
      above: `low` is exclusive (value > low).
      below: `high` is exclusive (value < high).
      optional: None is allowed.
    """
    kind: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None when it passes."""
        if value is None:
            return None if self.optional else "is missing (null)"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if self.kind == "str":
            return None if isinstance(value, str) else \
                f"expected a string, got {type(value).__name__} {_short(value)}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"expected {_KIND_WORDS[self.kind]}, got {type(value).__name__} {_short(value)}"
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return f"expected an integer, got {value!r}"
        if self.kind == "float" and not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return f"must be {'>' if self.above else '>='} {_number(self.low)}, got {value!r}"
        if self.high is not None and (value >= self.high if self.below else value > self.high):
            return f"must be {'<' if self.below else '<='} {_number(self.high)}, got {value!r}"
        return None


_KIND_WORDS = {"int": "an integer", "float": "a number"}


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ID = Rule("int", 0, MAX_VOCAB - 1)
_WIDTH = Rule("int", 1, MAX_WIDTH)
_LAYERS = Rule("int", 1, MAX_LAYERS)
_HEADS = Rule("int", 1, MAX_HEADS)
_POSITIVE = Rule("float", 0, above=True)
_EPSILON = Rule("float", 0, 1, above=True)

# Our field names (T5Config, LlamaConfig) -> rule.
FIELD_RULES: dict[str, Rule] = {
    "vocab_size": Rule("int", 1, MAX_VOCAB),
    "hidden_size": _WIDTH, "intermediate_size": _WIDTH, "d_model": _WIDTH, "d_ff": _WIDTH,
    "d_kv": _WIDTH, "head_dim": Rule("int", 1, MAX_WIDTH, optional=True),
    "num_layers": _LAYERS, "num_encoder_layers": _LAYERS, "num_decoder_layers": _LAYERS,
    "num_heads": _HEADS, "num_kv_heads": _HEADS,
    "rope_theta": _POSITIVE, "rope_factor": _POSITIVE, "rope_low_freq_factor": _POSITIVE,
    "rope_high_freq_factor": _POSITIVE,
    "rope_original_max_position_embeddings": Rule("int", 1, MAX_POSITIONS),
    "max_position_embeddings": Rule("int", 1, MAX_POSITIONS),
    "rms_norm_eps": _EPSILON, "layer_norm_epsilon": _EPSILON,
    "dropout_rate": Rule("float", 0, 1, below=True),
    "relative_attention_num_buckets": Rule("int", 1, MAX_BUCKETS),
    "relative_attention_max_distance": Rule("int", 1, MAX_POSITIONS),
    "pad_id": _ID, "eos_id": _ID, "decoder_start_id": _ID,
    "bos_id": Rule("int", 0, MAX_VOCAB - 1, optional=True),
    "tie_word_embeddings": Rule("bool"), "attention_bias": Rule("bool"), "remat": Rule("bool"),
    "scale_decoder_outputs": Rule("bool", optional=True),
    "rope_type": Rule("str"), "feed_forward_proj": Rule("str"), "dtype": Rule("str"),
}
_ID_FIELDS = ("pad_id", "eos_id", "bos_id", "decoder_start_id")
_ANY_INT = Rule("int")


def _rule_from_annotation(annotation: Any) -> Rule | None:
    """A type-only rule from a dataclass annotation ("int", "bool | None" ...), for fields
    that have no entry in `FIELD_RULES`."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = {p.strip() for p in str(text).split("|")}
    optional = bool(parts & {"None", "Optional"})
    kinds = parts - {"None", "Optional"}
    if len(kinds) == 1 and next(iter(kinds)) in ("int", "float", "bool", "str"):
        return Rule(next(iter(kinds)), optional=optional)
    return None


def _error(source: str, field: str, what: str) -> ModelConfigError:
    return ModelConfigError(f"{source}: field '{field}': {what}")


def _rules_of(config_cls: type) -> dict[str, Rule]:
    rules = {}
    for field in dataclasses.fields(config_cls):
        rule = FIELD_RULES.get(field.name) or _rule_from_annotation(field.type)
        if rule is not None:
            rules[field.name] = rule
    return rules


def check_config_values(config_cls: type, values: Mapping[str, Any], source: str,
                        names: Mapping[str, str] | None = None) -> None:
    """Checks the field values of a model config before `config_cls(**values)` is built.

    Args:
      config_cls: `T5Config` or `LlamaConfig` (any config dataclass).
      values: {our field name: value}; fields left out take the dataclass default, names the
        dataclass does not have are left to its constructor.
      source: the file, for messages.
      names: {our field name: the name the file uses}, for messages.

    Raises:
      ModelConfigError: one line naming the file and the field.
    """
    names = names or {}
    rules = _rules_of(config_cls)
    for field, value in values.items():
        rule = rules.get(field)
        problem = rule.problem(value) if rule is not None else None
        if problem:
            raise _error(source, names.get(field, field), problem)
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)
                if f.default is not dataclasses.MISSING}
    _check_across({**defaults, **values}, source, names)


def _check_across(values: Mapping[str, Any], source: str, names: Mapping[str, str]) -> None:
    """The relations between fields (all values already of the right type and range)."""
    def name(field: str) -> str:
        return names.get(field, field)

    vocab = values.get("vocab_size")
    for field in _ID_FIELDS:
        value = values.get(field)
        if value is not None and vocab is not None and value >= vocab:
            raise _error(source, name(field), f"id {value} is outside the vocabulary "
                                              f"({name('vocab_size')} {vocab})")
    heads, kv_heads = values.get("num_heads"), values.get("num_kv_heads")
    if heads is None:
        return
    if kv_heads is not None and heads % kv_heads:
        raise _error(source, name("num_kv_heads"), f"{heads} query heads cannot be split into "
                                                   f"groups over {kv_heads} key/value heads")
    if values.get("hidden_size") is not None:
        hidden, head_dim = values["hidden_size"], values.get("head_dim")
        if head_dim is None and hidden % heads:
            raise _error(source, name("num_heads"), f"{name('hidden_size')} {hidden} is not a "
                                                    f"multiple of {heads} heads")
        width = head_dim or hidden // heads
        if width % 2:
            raise _error(source, name("head_dim"), "rotary embeddings need an even head width, "
                                                   f"got {width}")


def check_model_config(config: Any, source: str, names: Mapping[str, str] | None = None
                       ) -> None:
    """`check_config_values` on a built config dataclass (what a converter made of a file)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    check_config_values(type(config), values, source, names)


# -- Hugging Face config.json ---------------------------------------------------------------

# {family: {our field: config.json key}} for the keys the converters read.
HF_NAMES: dict[str, dict[str, str]] = {
    "llama": {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
              "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
              "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
              "head_dim": "head_dim", "rms_norm_eps": "rms_norm_eps",
              "rope_theta": "rope_theta",
              "max_position_embeddings": "max_position_embeddings",
              "tie_word_embeddings": "tie_word_embeddings", "pad_id": "pad_token_id",
              "bos_id": "bos_token_id", "eos_id": "eos_token_id"},
    "t5": {"vocab_size": "vocab_size", "d_model": "d_model", "d_kv": "d_kv", "d_ff": "d_ff",
           "num_heads": "num_heads", "num_encoder_layers": "num_layers",
           "num_decoder_layers": "num_decoder_layers",
           "relative_attention_num_buckets": "relative_attention_num_buckets",
           "relative_attention_max_distance": "relative_attention_max_distance",
           "feed_forward_proj": "feed_forward_proj", "layer_norm_epsilon": "layer_norm_epsilon",
           "dropout_rate": "dropout_rate", "tie_word_embeddings": "tie_word_embeddings",
           "scale_decoder_outputs": "scale_decoder_outputs", "pad_id": "pad_token_id",
           "eos_id": "eos_token_id", "decoder_start_id": "decoder_start_token_id"},
}
_HF_ROPE_KEYS = {"rope_theta": "rope_theta", "factor": "rope_factor",
                 "low_freq_factor": "rope_low_freq_factor",
                 "high_freq_factor": "rope_high_freq_factor",
                 "original_max_position_embeddings": "rope_original_max_position_embeddings"}


def check_hf_config(hf_config: Mapping[str, Any], family: str, source: str) -> None:
    """Checks the values of a Hugging Face `config.json` that the converter reads (null means
    "the default" there, and is checked once the config is built).

    Args:
      hf_config: the parsed file.
      family: "t5" or "llama" (`hf_configs.model_family`).
      source: the file, for messages.

    Raises:
      ModelConfigError: one line naming the file and the key.
    """
    for ours, key in HF_NAMES[family].items():
        value = hf_config.get(key)
        if value is None:
            continue
        if ours in _ID_FIELDS:
            # Only the type here: a decoder takes its ids from its tokenizer when it has one
            # (old LLaMA configs say pad_token_id -1); the built config's ids are checked.
            for index, item in enumerate(value if isinstance(value, list) else [value]):
                _check_one(_ANY_INT, item, source,
                           f"{key}[{index}]" if isinstance(value, list) else key)
            continue
        _check_one(FIELD_RULES[ours], value, source, key)
    present = {ours: hf_config[key] for ours, key in HF_NAMES[family].items()
               if hf_config.get(key) is not None and ours not in _ID_FIELDS}
    _check_across(present, source, HF_NAMES[family])
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf_config.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise _error(source, key, f"expected an object, got {type(rope).__name__}")
        for name, ours in _HF_ROPE_KEYS.items():
            if rope.get(name) is not None:
                _check_one(FIELD_RULES[ours], rope[name], source, f"{key}.{name}")


def _check_one(rule: Rule, value: Any, source: str, field: str) -> None:
    problem = rule.problem(value)
    if problem:
        raise _error(source, field, problem)


def hf_names(family: str) -> dict[str, str]:
    """{our field: config.json key} of a family, for `check_model_config` messages."""
    return dict(HF_NAMES[family])


# {family: ((our layer-count field, the tensor-name pattern of a layer), ...)}
_HF_LAYER_PATTERNS = {
    "llama": (("num_layers", re.compile(r"model\.layers\.(\d+)\.")),),
    "t5": (("num_encoder_layers", re.compile(r"encoder\.block\.(\d+)\.")),
           ("num_decoder_layers", re.compile(r"decoder\.block\.(\d+)\."))),
}


def check_layer_counts(config: Any, tensor_names: Iterable[str], family: str, source: str
                       ) -> None:
    """The config's layer counts must equal the layers whose weights the file holds.

    Raises:
      ModelConfigError: a count that differs (one line naming the file and the key).
    """
    names = list(tensor_names)
    for field, pattern in _HF_LAYER_PATTERNS[family]:
        _check_count(getattr(config, field), _indices(names, pattern), source,
                     HF_NAMES[family][field])


def _indices(tensor_names: Iterable[str], pattern: re.Pattern[str]) -> set[int]:
    found = set()
    for name in tensor_names:
        match = pattern.match(name)
        if match:
            found.add(int(match.group(1)))
    return found


def _check_count(declared: int, present: set[int], source: str, field: str) -> None:
    if present == set(range(declared)):
        return
    if not present:
        held = "no layer"
    elif present == set(range(len(present))):
        held = f"{len(present)} (0..{len(present) - 1})"
    else:
        shown = ", ".join(str(i) for i in sorted(present)[:8])
        held = f"{len(present)}, numbered {shown}{' ...' if len(present) > 8 else ''}"
    raise _error(source, field, f"{declared} layers declared, but the weights hold {held}")


# -- GGUF metadata --------------------------------------------------------------------------

# "<architecture>.<suffix>" keys -> our field.
GGUF_ARCH_KEYS = {
    "block_count": "num_layers", "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size", "attention.head_count": "num_heads",
    "attention.head_count_kv": "num_kv_heads", "attention.key_length": "head_dim",
    "attention.value_length": "head_dim", "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "context_length": "max_position_embeddings", "vocab_size": "vocab_size",
    "rope.scaling.type": "rope_type",
}
# Keys that map onto a field another key gives too (head_dim: key_length).
_GGUF_ALTERNATIVES = ("attention.value_length", "rope.dimension_count")
_GGUF_OTHER_KEYS = {
    "general.architecture": Rule("str"), "general.name": Rule("str"),
    "general.alignment": Rule("int", 1),
    "tokenizer.ggml.model": Rule("str"), "tokenizer.ggml.pre": Rule("str"),
    "tokenizer.chat_template": Rule("str"),
    **{f"tokenizer.ggml.{name}_token_id": _ID
       for name in ("bos", "eos", "unknown", "padding", "seperator", "separator", "cls",
                    "mask")},
    **{f"tokenizer.ggml.{name}": Rule("bool")
       for name in ("add_bos_token", "add_eos_token", "add_space_prefix")},
}
_GGUF_LIST_KEYS = {"tokenizer.ggml.tokens": Rule("str"), "tokenizer.ggml.merges": Rule("str"),
                   "tokenizer.ggml.token_type": Rule("int"),
                   "tokenizer.ggml.scores": Rule("float")}


def gguf_names(arch: str) -> dict[str, str]:
    """{our field: GGUF key} of an architecture, for `check_model_config` messages."""
    names: dict[str, str] = {}
    for suffix, ours in GGUF_ARCH_KEYS.items():
        names.setdefault(ours, f"{arch}.{suffix}")
    return names


def check_gguf_metadata(metadata: Mapping[str, Any], source: str) -> None:
    """Checks the types and ranges of the GGUF metadata the converter reads: the
    architecture's shape keys, the tokenizer's ids, flags, template and lists.

    Args:
      metadata: {key: value} (`gguf_convert.read_metadata`: arrays as lists).
      source: the file, for messages.

    Raises:
      ModelConfigError: one line naming the file and the key (e.g. a float EOS id 2.7, a
        list as `llama.block_count`, a NaN RoPE base, a non-string chat template).
    """
    arch = metadata.get("general.architecture")
    for key, value in metadata.items():
        if isinstance(arch, str) and key.startswith(f"{arch}."):
            ours = GGUF_ARCH_KEYS.get(key[len(arch) + 1:])
            rule = FIELD_RULES[ours] if ours else None
        else:
            rule = _GGUF_OTHER_KEYS.get(key)
        if rule is not None:
            _check_one(rule, value, source, key)
        elif key in _GGUF_LIST_KEYS:
            if not isinstance(value, list):
                raise _error(source, key, f"expected an array, got {type(value).__name__}")
            element = _GGUF_LIST_KEYS[key]
            for index, item in enumerate(value):
                problem = element.problem(item)
                if problem:
                    raise _error(source, f"{key}[{index}]", problem)
    if isinstance(arch, str):
        present = {ours: metadata[f"{arch}.{suffix}"] for suffix, ours in GGUF_ARCH_KEYS.items()
                   if f"{arch}.{suffix}" in metadata and suffix not in _GGUF_ALTERNATIVES}
        _check_across(present, source, gguf_names(arch))


_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.")


def check_gguf_layers(metadata: Mapping[str, Any], tensor_names: Iterable[str], source: str
                      ) -> None:
    """`<arch>.block_count` must equal the blocks (`blk.<i>.*` tensors) the file holds.

    Raises:
      ModelConfigError: one line naming the file and the key.
    """
    arch = metadata.get("general.architecture")
    key = f"{arch}.block_count"
    declared = metadata.get(key)
    if declared is None:
        return  # the converter reports the missing key
    _check_one(FIELD_RULES["num_layers"], declared, source, key)
    _check_count(declared, _indices(tensor_names, _GGUF_BLOCK), source, key)
