"""The model owns its kind: `decoder_only`, its special ids (`SpecialIds.of`) and its batches
(`model.batch_builder`); nothing outside `activeit_jax/models/` asks for `kind`, and scoring
imports nothing from training."""
from __future__ import annotations

import ast
import json
import pathlib

import numpy as np
import pytest

from activeit_jax.core.errors import UsageError
from activeit_jax.models import (
    KIND_NAMES,
    MODEL_CLASSES,
    DecoderOnlyBatches,
    DecoderOnlyModel,
    EncoderDecoderBatches,
    EncoderDecoderModel,
    LlamaConfig,
    SpecialIds,
    T5Config,
    check_declared_kind,
    checkpoints,
    wrappers,
)

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "activeit_jax"

T5 = EncoderDecoderModel(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=8, num_heads=2,
                                  num_encoder_layers=1, num_decoder_layers=1))
# SmolLM2's ids (`hf_configs`: no BOS, eos = <|im_end|> = 2, pad 0), at toy size.
SMOLLM2_LIKE = DecoderOnlyModel(LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
                                            num_layers=1, num_heads=2, num_kv_heads=1,
                                            pad_id=0, bos_id=None, eos_id=2))
LLAMA = DecoderOnlyModel(LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
                                     num_layers=1, num_heads=2, num_kv_heads=1))


class ChatVocab:
    """What `SpecialIds.of` reads of a vocabulary: its end-of-turn id."""
    vocab_size = 64
    end_of_turn_id = np.int64(2)  # a numpy id (as a tokenizer may give) becomes an int


# ----------------------------------------------------------------------------- SpecialIds

def test_special_ids_of_t5_are_the_sentencepiece_ids():
    assert SpecialIds.of(T5) == SpecialIds(pad=0, eos=1, bos=None, end_of_turn=None)
    assert SpecialIds.of(T5) == SpecialIds()  # the defaults are T5's


def test_special_ids_of_a_smollm2_like_config_and_its_chat_vocabulary():
    ids = SpecialIds.of(SMOLLM2_LIKE, ChatVocab())
    assert ids == SpecialIds(pad=0, eos=2, bos=None, end_of_turn=2)
    assert type(ids.end_of_turn) is int
    assert SpecialIds.of(LLAMA) == SpecialIds(pad=0, eos=2, bos=1, end_of_turn=None)


def test_special_ids_of_a_model_without_config_keep_t5_defaults():
    class Fake:  # e.g. tests/trainer_testlib.BagModel
        pass
    assert SpecialIds.of(Fake()) == SpecialIds()


# ----------------------------------------------------------------------------- the kind

@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_model_class_declares_its_kind_and_builder(name):
    cls = MODEL_CLASSES[name]
    assert isinstance(cls.decoder_only, bool)
    assert cls.batch_builder_cls.decoder_only is cls.decoder_only


def test_batch_builder_carries_the_model_ids():
    builder = SMOLLM2_LIKE.batch_builder(ChatVocab())
    assert isinstance(builder, DecoderOnlyBatches) and builder.decoder_only
    assert builder.ids == SpecialIds.of(SMOLLM2_LIKE, ChatVocab())
    t5 = T5.batch_builder()
    assert isinstance(t5, EncoderDecoderBatches) and not t5.decoder_only
    assert T5.describe() == f"t5, {T5.num_params():,} parameters"


# ----------------------------------------------------------------------------- the builders

def test_encoder_decoder_score_and_decode_batches():
    builder = T5.batch_builder()
    rows = [([5, 6, 1], [7, 1]), ([8, 1], [9, 10, 1])]
    assert [builder.score_lengths(r) for r in rows] == [(3, 2), (2, 3)]
    batch = builder.score_batch(rows, (4, 3))
    assert list(batch) == list(builder.score_features)
    np.testing.assert_array_equal(batch["encoder_input_tokens"], [[5, 6, 1, 0], [8, 1, 0, 0]])
    np.testing.assert_array_equal(batch["decoder_input_tokens"], [[0, 7, 1], [0, 9, 10]])
    np.testing.assert_array_equal(batch["decoder_target_tokens"], [[7, 1, 0], [9, 10, 1]])
    np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 0], [1, 1, 1]])
    decode = builder.decode_batch([[5, 6, 7, 1], [8, 1]], 3)
    np.testing.assert_array_equal(decode[builder.decode_feature], [[5, 6, 7], [8, 1, 0]])
    assert builder.decode_length([8, 1]) == 2
    # Cut after the first EOS (kept); without one, padding is dropped wherever it is.
    assert builder.generated_ids([4, 1, 5, 0]) == [4, 1]
    assert builder.generated_ids([4, 0, 5, 0]) == [4, 5]


def test_decoder_only_score_and_decode_batches():
    builder = LLAMA.batch_builder()  # bos 1, eos 2, pad 0
    rows = [([5, 6], [7, 2]), ([8], [9, 10, 2])]
    # (input positions, scored positions): the output head runs on the second only.
    assert [builder.score_lengths(r) for r in rows] == [(4, 2), (4, 3)]
    batch = builder.score_batch(rows, (5, 4))
    assert list(batch) == list(builder.score_features)
    np.testing.assert_array_equal(batch["decoder_loss_positions"], [[2, 3, -1, -1],
                                                                    [1, 2, 3, -1]])
    np.testing.assert_array_equal(batch["decoder_input_tokens"], [[1, 5, 6, 7, 0],
                                                                  [1, 8, 9, 10, 0]])
    np.testing.assert_array_equal(batch["decoder_target_tokens"], [[5, 6, 7, 2, 0],
                                                                   [8, 9, 10, 2, 0]])
    np.testing.assert_array_equal(batch["decoder_loss_weights"], [[0, 0, 1, 1, 0],
                                                                  [0, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="must end with the model's EOS"):
        builder.score_lengths(([5], [7]))
    decode = builder.decode_batch([[5, 6], [8]], 4)  # bos + prompt, padded on the left
    np.testing.assert_array_equal(decode[builder.decode_feature], [[0, 1, 5, 6], [0, 0, 1, 8]])
    assert builder.decode_length([8]) == 2
    assert builder.generated_ids([4, 2, 5]) == [4, 2]
    assert builder.generated_ids([4, 0, 5]) == [4]  # padding ends the row


def test_train_batches_of_each_kind():
    sources, targets = [[5, 6, 1], []], [[7, 1], []]
    t5 = T5.batch_builder().train_batch(sources, targets, 4, 3)
    np.testing.assert_array_equal(t5["encoder_input_tokens"], [[5, 6, 1, 0], [0, 0, 0, 0]])
    llama = LLAMA.batch_builder().train_batch([[5, 6], []], [[7], []], 3, 2)
    assert llama["decoder_input_tokens"].shape == (2, 5)  # source + target positions
    np.testing.assert_array_equal(llama["decoder_loss_weights"][0], [0, 0, 1, 1, 0])
    assert not llama["decoder_input_tokens"][1].any()  # an empty example is all padding


# ----------------------------------------------------------------------------- model_kind

def test_declared_kind_unset_agreeing_or_contradicting(capsys, monkeypatch):
    monkeypatch.setattr(wrappers, "_DEPRECATION_SHOWN", set())
    check_declared_kind(T5, None, "TrainConfig.model_kind")
    assert capsys.readouterr().err == ""
    check_declared_kind(LLAMA, "decoder_only", "TrainConfig.model_kind")
    check_declared_kind(LLAMA, "decoder_only", "TrainConfig.model_kind")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated: TrainConfig.model_kind" in err
    with pytest.raises(UsageError, match="contradicts the model") as info:
        check_declared_kind(T5, KIND_NAMES[True], "TrainConfig.model_kind")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="must be one of"):
        check_declared_kind(T5, "llama", "TrainConfig.model_kind")


def test_is_decoder_only_checkpoint_reads_the_config(tmp_path):
    def checkpoint(name, text):
        path = tmp_path / name
        path.mkdir()
        (path / checkpoints.CONFIG_NAME).write_text(text)
        return path
    assert checkpoints.is_decoder_only_checkpoint(
        checkpoint("llama", json.dumps({"model_kind": "llama"})))
    assert not checkpoints.is_decoder_only_checkpoint(
        checkpoint("t5", json.dumps({"model_kind": "t5"})))
    for name, text in (("garbled", '{"model_kind": '), ("list", "[1]"),
                       ("odd", '{"model_kind": ["llama"]}')):
        assert not checkpoints.is_decoder_only_checkpoint(checkpoint(name, text))
    assert not checkpoints.is_decoder_only_checkpoint(tmp_path / "missing")
    assert not checkpoints.is_decoder_only_checkpoint(None)


# ----------------------------------------------------------------------------- the boundary

_KIND_STRINGS = {"llama", "t5", *KIND_NAMES.values()}


def _kind_reads(tree: ast.AST) -> list[str]:
    """`<...model...>.kind`, `getattr(x, "kind")`, and comparisons with a kind's name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "kind":
            owner = ast.unparse(node.value)
            if "model" in owner.lower():
                found.append(f"line {node.lineno}: {owner}.kind")
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and node.args[1].value == "kind"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Compare):
            constants = [c.value for c in [node.left, *node.comparators]
                         if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if any(c in _KIND_STRINGS for c in constants):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_kind_reads():
    sample = ast.parse('a = model.kind == "llama"\nb = getattr(m, "kind", None)\n'
                       'c = self.model.kind\nd = split.kind == "niv2"\n'
                       'e = config.model_kind == "decoder_only"\n')
    lines = {int(found.split(":")[0].split()[1]) for found in _kind_reads(sample)}
    assert lines == {1, 2, 3, 5}  # split.kind == "niv2" is not a model's kind


def test_no_module_outside_models_reads_the_model_kind():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "models":
            continue
        found = _kind_reads(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}, "ask model.decoder_only / model.batch_builder() instead"


def test_scoring_imports_nothing_from_training():
    imports = []
    for path in sorted((PACKAGE / "scoring").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imports += [f"{path.name}: {n}" for n in names
                        if n.startswith("activeit_jax.training")]
    assert imports == []
