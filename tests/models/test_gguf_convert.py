"""GGUF import on small synthetic files: every supported tensor type, the rotary row order and
an untied head against transformers reading the same file; the tokenizer against transformers'
GGUF tokenizer; the convert CLI; and one clear line (nothing written) for each bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from activeit_jax.data import vocab as vocab_lib  # noqa: E402
from activeit_jax.models import (  # noqa: E402
    checkpoints,  # noqa: E402
    gguf_convert,
    hf_convert,
)
from tests import gguf_testlib as lib  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bpe(sample_data):
    return lib.sample_bpe(sample_data)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, bpe):
    directory = tmp_path_factory.mktemp("gguf")
    return lib.write_tiny_llama_gguf(directory / "tiny.gguf", bpe, pre="llama-bpe")


def _texts(sample_data):
    from activeit_jax.data import niv2
    tasks = niv2.read_niv2_split(sample_data / "niv2", "test")
    return ([t.definition for t in tasks] + [i.input for t in tasks for i in t.instances[:2]]
            + ["héllo wörld ☃ 日本語  12   345", "<|im_start|>user\nhi<|im_end|>\n"])


def test_unpermute_inverts_llama_cpp_row_order():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    for heads in (1, 2, 4):
        assert np.array_equal(gguf_convert.unpermute_rotary_rows(
            lib._interleave_rotary(w, heads), heads), w)
    assert not np.array_equal(gguf_convert.unpermute_rotary_rows(w, 4), w)


def test_all_tensor_types_match_transformers_logits(tiny_gguf, sample_data):
    imported = gguf_convert.import_gguf(tiny_gguf)
    cfg = imported.model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (2, 256, 4, 2)
    assert not cfg.tie_word_embeddings and cfg.rope_theta == 50000.0
    used = {t for layer in lib.LAYER_TYPES for t in layer.values()} | {"F32", "F16", "BF16"}
    assert used == set(gguf_convert.SUPPORTED_TYPES)
    reference = transformers.LlamaForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    ids = imported.vocabulary.encode(_texts(sample_data)[0])[:48]
    ours = np.asarray(imported.model.logits(imported.params,
                                            {"decoder_input_tokens": np.array([ids])}))
    with torch.no_grad():
        ref = reference(torch.tensor([ids])).logits.numpy()
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale, (np.abs(ours - ref).max(), scale)


def test_tokenizer_matches_transformers(tiny_gguf, sample_data):
    imported = gguf_convert.import_gguf(tiny_gguf)
    reference = transformers.AutoTokenizer.from_pretrained(tiny_gguf.parent,
                                                           gguf_file=tiny_gguf.name)
    vocab = imported.vocabulary
    for text in _texts(sample_data):
        assert vocab.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (1, 2, 0, 0)
    assert vocab.chat_template == lib.CHAT_TEMPLATE and not vocab.add_bos
    assert vocab.special_tokens == {t: i for i, t in enumerate(lib.SPECIALS)}


def test_tied_embeddings_when_the_file_has_no_output_tensor(tmp_path, bpe):
    path = lib.write_tiny_llama_gguf(tmp_path / "tied.gguf", bpe, tied=True)
    imported = gguf_convert.import_gguf(path)
    assert imported.model.config.tie_word_embeddings
    assert "logits_dense" not in imported.params


def _run_convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-m", "activeit_jax.main", "convert", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_convert_cli_stores_the_tokenizer(tiny_gguf, tmp_path, sample_data):
    ckpt = tmp_path / "ckpt"
    result = _run_convert(f"--from_gguf={tiny_gguf}", f"--to={ckpt}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "converted" in result.stdout and "dequantized" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
    model, params = checkpoints.load_model(ckpt)
    imported = gguf_convert.import_gguf(tiny_gguf)
    assert model.config == imported.model.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params,
                 imported.params)
    stored = vocab_lib.vocabulary_from_checkpoint(ckpt)
    assert stored == imported.vocabulary
    assert [stored.encode(t) for t in _texts(sample_data)] == \
        [imported.vocabulary.encode(t) for t in _texts(sample_data)]


def _refused(path, tmp_path, match: str) -> None:
    ckpt = tmp_path / "ckpt"
    with pytest.raises(hf_convert.ConversionError, match=match) as info:
        checkpoints.import_gguf_to_checkpoint(path, ckpt)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not os.path.exists(ckpt) and not os.path.exists(f"{ckpt}{checkpoints.TMP_SUFFIX}")


def test_bad_inputs_are_refused_with_one_line(tmp_path, tiny_gguf, bpe):
    other = lib.write_tiny_llama_gguf(tmp_path / "gemma.gguf", bpe, arch="gemma")
    _refused(other, tmp_path, "GGUF architecture 'gemma' is not supported")
    iq = lib.write_tiny_llama_gguf(tmp_path / "iq.gguf", bpe, layer_types=(
        {**lib.LAYER_TYPES[0], "attn_v": "IQ2_XXS"}, lib.LAYER_TYPES[1]))
    _refused(iq, tmp_path, "blk.0.attn_v.weight has type IQ2_XXS, which is not supported")
    data = tiny_gguf.read_bytes()
    for cut in (200, len(data) // 2, len(data) - 100):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(data[:cut])
        _refused(truncated, tmp_path, "truncated")
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model\n")
    _refused(text, tmp_path, "not a GGUF file")
    _refused(tmp_path / "missing.gguf", tmp_path, "GGUF file not found")
    too_many = lib.write_tiny_llama_gguf(tmp_path / "big_vocab.gguf", bpe, extra_tokens=5)
    _refused(too_many, tmp_path, "405 ids but the model's embedding has only 400 rows")


def test_cli_bad_input_exits_1_with_one_line(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    result = _run_convert(f"--from_gguf={text}", f"--to={tmp_path / 'ckpt'}")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "activeit-jax convert" in line]
    assert errors == [f"activeit-jax convert: error: {text}: not a GGUF file (it starts with "
                      "b'not ', not b'GGUF')"]
    assert not (tmp_path / "ckpt").exists()
    both = _run_convert(f"--from_gguf={text}", f"--from_hf={tmp_path}", f"--to={tmp_path}/x")
    assert both.returncode != 0 and "--from_gguf=FILE --to=CKPT_DIR" in both.stderr
