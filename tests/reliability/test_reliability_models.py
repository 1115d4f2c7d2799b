"""Reliability, round 2: hostile model files and targets for `convert` (issue 23 items 1, 2, 7
and part of 10). A save never deletes what the program did not write; a malformed GGUF header
is refused in bounded time and memory; an absurd model config is refused at convert; a bad
`tokenizer_meta.json` or a swapped `tokenizer.json` names the file read. Each refusal is one
line naming the file (and the field)."""
from __future__ import annotations

import hashlib
import os
import pathlib
import struct
import subprocess
import sys

import jax
import pytest

from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints
from tests.reliability.test_reliability_errors import run_cases

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = T5Config(vocab_size=64, d_model=8, num_heads=2, d_kv=4, d_ff=16,
                num_encoder_layers=1, num_decoder_layers=1)


def snapshot(root) -> dict[str, str]:
    """{relative path: sha256 (files) or "dir"} of everything under `root` (links as links)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny():
    model = EncoderDecoderModel(TINY)
    return model, jax.device_get(model.init_params(jax.random.key(0)))


# ------------------------------------------------- item 1: never delete what we did not write


def _user_files(root):
    """What a user has in a working directory: a GGUF folder with notes, a Hugging Face
    directory, a thesis and an unrelated `keepme.old/` beside it."""
    (root / "v" / "sub").mkdir(parents=True)
    (root / "v" / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (root / "v" / "notes.md").write_text("my notes")
    (root / "v" / "sub" / "x.txt").write_text("x")
    (root / "D").mkdir()
    (root / "D" / "config.json").write_text('{"model_type": "llama"}')
    (root / "D" / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    (root / "thesis.txt").write_text("four years of work")
    (root / "keepme.old").mkdir()
    (root / "keepme.old" / "data.bin").write_bytes(b"\1\2\3")
    (root / "keepme.tmp").write_text("also mine")


@pytest.mark.parametrize("target", ["v", "D", ".", "thesis.txt", "keepme.old", "v/notes.md"])
def test_save_refuses_a_path_that_is_not_a_checkpoint(tmp_path, tiny, monkeypatch, target):
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="refusing") as info:
        checkpoints.save_model(target, *tiny)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(checkpoints.CheckpointError, match="refusing"):
        checkpoints.save_model(target, *tiny, replace=True)  # not even with --overwrite
    assert snapshot(tmp_path) == before


def test_replacing_a_checkpoint_needs_overwrite_and_removes_only_its_own_files(tmp_path, tiny):
    model, params = tiny
    ckpt = tmp_path / "ckpt"
    checkpoints.save_model(ckpt, model, params)
    assert checkpoints.is_checkpoint(ckpt)
    # Pre-existing names like the old code's temporaries are the user's: never touched.
    (tmp_path / "ckpt.old").mkdir()
    (tmp_path / "ckpt.old" / "mine.txt").write_text("mine")
    (tmp_path / "ckpt.tmp").write_text("mine too")
    before = snapshot(tmp_path)
    with pytest.raises(checkpoints.CheckpointError,
                       match="already holds a checkpoint.*--overwrite"):
        checkpoints.save_model(ckpt, model, params)
    assert snapshot(tmp_path) == before
    checkpoints.save_model(ckpt, model, jax.tree.map(lambda a: a * 0, params), replace=True)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("ckpt/")} == \
        {k: v for k, v in before.items() if not k.startswith("ckpt/")}
    assert float(checkpoints.load_model(ckpt)[1]["decoder"]["decoder_norm"]["scale"].sum()) == 0
    # A file of the user's inside the checkpoint: refused even with replace, nothing changed.
    (ckpt / "README.md").write_text("what this model is")
    before = snapshot(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match=r"README\.md.*move them out"):
        checkpoints.save_model(ckpt, model, params, replace=True)
    assert snapshot(tmp_path) == before


def test_leftovers_of_a_killed_save_are_removed_only_when_ours(tmp_path, tiny):
    model, params = tiny
    ckpt = tmp_path / "ckpt"
    # A save killed while orbax wrote: our marker is in the temporary directory.
    partial = tmp_path / f"ckpt{checkpoints.TMP_SUFFIX}"
    (partial / "params").mkdir(parents=True)
    (partial / checkpoints.PARTIAL_MARKER).write_text("")
    checkpoints.save_model(ckpt, model, params)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    # The same name without our marker is someone else's: refused, kept.
    (tmp_path / f"ckpt{checkpoints.OLD_SUFFIX}").mkdir()
    (tmp_path / f"ckpt{checkpoints.OLD_SUFFIX}" / "x").write_text("x")
    with pytest.raises(checkpoints.CheckpointError, match="not written by activeit-jax"):
        checkpoints.save_model(ckpt, model, params, replace=True)
    assert (tmp_path / f"ckpt{checkpoints.OLD_SUFFIX}" / "x").read_text() == "x"


def test_a_kill_between_the_renames_recovers_the_previous_checkpoint(tmp_path, tiny):
    from activeit_jax.training import run_dir
    model, params = tiny
    best = tmp_path / "best"
    checkpoints.save_model(best, model, params)
    os.replace(best, f"{best}{checkpoints.OLD_SUFFIX}")  # killed after the first rename
    run_dir.recover_best_dir(str(tmp_path))
    assert checkpoints.is_checkpoint(best)
    run_dir.save_best(str(tmp_path), model, params, {"epoch": 0})  # the trainer replaces it
    assert checkpoints.is_checkpoint(best) and sorted(os.listdir(tmp_path)) == \
        ["best", "best.json"]


def test_convert_cli_refuses_targets_that_are_not_checkpoints(tmp_path, tiny):
    from activeit_jax.models import hf_convert
    _user_files(tmp_path)
    (tmp_path / "D" / "model.safetensors").unlink()
    hf_convert.export_hf(*tiny, tmp_path / "D")  # a Hugging Face directory that converts
    before = snapshot(tmp_path)
    cases = [
        (["--from_hf=D", "--to=D"], ["/D exists and is not an activeit-jax checkpoint",
                                     "refusing"]),
        (["--from_hf=D", "--to=D", "--overwrite"], ["/D exists and is not an activeit-jax"]),
        (["--from_hf=D", "--to=."], [f"{tmp_path} exists and is not an activeit-jax"]),
        (["--from_hf=D", "--to=thesis.txt"], ["thesis.txt exists and is not a directory"]),
        # Refused before the (garbage) GGUF is read.
        (["--from_gguf=v/model.gguf", "--to=v"], ["/v exists and is not an activeit-jax"]),
    ]
    run_cases("convert", cases, tmp_path)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("convert_cases")} == before


def test_export_never_overwrites_a_model_it_was_not_asked_to(tmp_path, tiny):
    from activeit_jax.models import hf_convert
    ckpt = tmp_path / "ckpt"
    checkpoints.save_model(ckpt, *tiny)
    hf = tmp_path / "hf"
    hf_convert.export_hf(*tiny, hf, max_shard_size="2KB")  # someone's model, in shards
    assert (hf / "model.safetensors.index.json").exists()
    (hf / "tokenizer.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(hf_convert.ConversionError, match="already holds a model.*--overwrite"):
        checkpoints.export_checkpoint_to_hf(ckpt, hf)
    (tmp_path / "file").write_text("x")
    with pytest.raises(hf_convert.ConversionError, match="is not a directory"):
        checkpoints.export_checkpoint_to_hf(ckpt, tmp_path / "file", replace=True)
    (tmp_path / "file").unlink()
    assert snapshot(tmp_path) == before
    # A directory holding only a tokenizer is written into; with replace, a model is replaced
    # (its stale shards removed, the tokenizer kept).
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    assert checkpoints.export_checkpoint_to_hf(ckpt, tok) == ["model.safetensors", "config.json"]
    checkpoints.export_checkpoint_to_hf(ckpt, hf, replace=True)
    assert sorted(os.listdir(hf)) == ["config.json", "model.safetensors", "tokenizer.json"]

# ------------------------------------------------------ item 2: bounded GGUF header reading

# The file of the issue: one metadata array of 2^62 uint8 in 57 bytes.
EVIL_GGUF = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 9) + b"general.x"
             + struct.pack("<IIQ", 9, 0, 2 ** 62))


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str | bytes, value_type: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", value_type) + payload


def _tensor(name: str, dims, ggml_type: int = 0, offset: int = 0) -> bytes:
    return (_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            + struct.pack("<IQ", ggml_type, offset))


def _gguf(kvs=(), tensors=(), data: bytes = b"", version: int = 3, counts=None) -> bytes:
    """A GGUF file by hand: header, key/values, tensor infos, padding to 32, data."""
    tensor_count, kv_count = counts if counts is not None else (len(tensors), len(kvs))
    head = b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count)
    head += b"".join(kvs) + b"".join(tensors)
    return head + b"\0" * (-len(head) % 32) + data


def _u32(key: str, value: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", value))


MALFORMED_HEADERS = {
    "array_past_end": (_gguf([_kv("general.x", 9, struct.pack("<IQ", 0, 2 ** 20))]),
                       "general.x: an array of 1048576 uint8 (1048576 bytes) runs past"),
    "string_array_past_end": (_gguf([_kv("tokenizer.ggml.tokens", 9,
                                         struct.pack("<IQ", 8, 10 ** 7))]),
                              "tokenizer.ggml.tokens: an array of 10000000 strings"),
    "key_length": (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2 ** 40) + b"k" * 16,
                   "metadata key #0: a string of 1099511627776 bytes runs past"),
    "value_string_length": (_gguf([_kv("general.name", 8, struct.pack("<Q", 2 ** 40))]),
                            "general.name: a string of 1099511627776 bytes runs past"),
    "kv_count": (_gguf(counts=(0, 2 ** 40)), "kv_count: 1099511627776 (at most"),
    "tensor_count": (_gguf(counts=(10 ** 5, 0)), "tensor_count: 100000 entries cannot fit"),
    "nested_array": (_gguf([_kv("general.x", 9, struct.pack("<IQ", 9, 1)
                                + struct.pack("<IQ", 0, 0))]),
                     "general.x: an array of arrays"),
    "duplicate_key": (_gguf([_u32("llama.block_count", 2), _u32("llama.block_count", 3)]),
                      "llama.block_count: the key appears twice"),
    "alignment_zero": (_gguf([_u32("general.alignment", 0)]), "general.alignment: must be a"),
    "alignment_odd": (_gguf([_u32("general.alignment", 48)]), "general.alignment: must be a"),
    "alignment_type": (_gguf([_kv("general.alignment", 10, struct.pack("<Q", 32))]),
                       "general.alignment: must be a uint32"),
    "value_type": (_gguf([_kv("general.x", 77, b"")]), "general.x: unknown value type 77"),
    "not_utf8_key": (_gguf([_kv(b"gen\xff", 4, b"\0" * 4)]), "not UTF-8"),
    "dims_overflow": (_gguf(tensors=[_tensor("w", (2 ** 32, 2 ** 32))], data=b"\0" * 64),
                      "truncated GGUF file (tensor w ends at byte"),
    "too_many_dims": (_gguf(tensors=[_tensor("w", (1,) * 5)]), "tensor w: 5 dimensions"),
    "tensor_type": (_gguf(tensors=[_tensor("w", (4,), ggml_type=99)], data=b"\0" * 64),
                    "tensor w: unknown ggml type 99"),
    "unaligned": (_gguf(tensors=[_tensor("w", (4,), offset=8)], data=b"\0" * 64),
                  "tensor w: offset 8 is not a multiple of the alignment 32"),
    "block": (_gguf(tensors=[_tensor("w", (31, 2), ggml_type=8)], data=b"\0" * 128),
              "tensor w: its first dimension 31 is not a multiple of the type's block of 32"),
    "duplicate_tensor": (_gguf(tensors=[_tensor("w", (4,)), _tensor("w", (4,), offset=32)],
                               data=b"\0" * 64), "tensor w: the name appears twice"),
    "version": (_gguf(version=1), "GGUF version 1 is not supported"),
    "short": (b"GGUF\3\0\0\0", "shorter than a GGUF header"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_malformed_gguf_headers_are_refused_with_one_line(tmp_path, case):
    from activeit_jax.models import gguf_convert, hf_convert
    data, match = MALFORMED_HEADERS[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    with pytest.raises(hf_convert.ConversionError) as info:
        gguf_convert.open_gguf(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and match in message, message


def test_the_work_on_strings_is_bounded(tmp_path, monkeypatch):
    from activeit_jax.models import gguf_header
    monkeypatch.setattr(gguf_header, "MAX_STRINGS", 10)
    tokens = struct.pack("<IQ", 8, 11) + b"".join(_string("t") for _ in range(11))
    path = tmp_path / "many.gguf"
    path.write_bytes(_gguf([_kv("tokenizer.ggml.tokens", 9, tokens)]))
    with pytest.raises(gguf_header.GGUFHeaderError, match="11 strings .at most 10 strings"):
        gguf_header.check_header(path)
    bad = struct.pack("<IQ", 8, 2) + _string("ok") + _string(b"\xc3(")
    path.write_bytes(_gguf([_kv("tokenizer.ggml.tokens", 9, bad)]))
    with pytest.raises(gguf_header.GGUFHeaderError,
                       match=r"tokenizer\.ggml\.tokens\[1\]: a string that is not UTF-8"):
        gguf_header.check_header(path)

def test_a_57_byte_gguf_is_refused_in_bounded_time_and_memory(tmp_path):
    """The issue's file, in a child with a 3 GiB address-space cap and a 120 s limit (before,
    `GGUFReader` looped forever on it, growing)."""
    path = tmp_path / "evil.gguf"
    path.write_bytes(EVIL_GGUF)
    assert len(EVIL_GGUF) == 57
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "from activeit_jax.models import checkpoints\n"
              "try:\n"
              "    checkpoints.import_gguf_to_checkpoint(sys.argv[1], sys.argv[2])\n"
              "except checkpoints.hf_convert.ConversionError as err:\n"
              "    print('refused:', err)\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "ckpt")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (f"refused: {path}: malformed GGUF file: general.x: an array "
                                   f"of {2 ** 62} elements (at most {1 << 28})")
    assert sorted(os.listdir(tmp_path)) == ["evil.gguf"]


def test_header_reader_agrees_with_gguf_on_a_valid_file(tmp_path):
    import gguf
    import numpy as np

    from activeit_jax.models import gguf_header
    path = tmp_path / "ok.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "ünï"])
    writer.add_chat_template("{{ x }}")
    writer.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("v", np.ones(40, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = gguf_header.check_header(path)
    reader = gguf.GGUFReader(str(path))
    assert list(header.keys) == [k for k in reader.fields if not k.startswith("GGUF.")]
    assert [(t.name, t.dims, t.offset + header.data_start, t.nbytes) for t in header.tensors] \
        == [(t.name, tuple(int(d) for d in t.shape), t.data_offset, t.n_bytes)
            for t in reader.tensors]


# ------------------------------------------------ item 7: absurd model shapes and configs

_GGUF_BASE = {  # a 2-layer LLaMA of width 8 with a 4-token BPE vocabulary
    "llama.block_count": ("uint32", 2), "llama.embedding_length": ("uint32", 8),
    "llama.feed_forward_length": ("uint32", 16), "llama.attention.head_count": ("uint32", 2),
    "llama.attention.head_count_kv": ("uint32", 2), "llama.context_length": ("uint32", 64),
    "llama.rope.freq_base": ("float32", 10000.0),
    "llama.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
    "tokenizer.ggml.model": ("string", "gpt2"),
    "tokenizer.ggml.tokens": ("array", ["a", "b", "ab", "<eos>"]),
    "tokenizer.ggml.token_type": ("array", [1, 1, 1, 3]),
    "tokenizer.ggml.merges": ("array", ["a b"]),
    "tokenizer.ggml.eos_token_id": ("uint32", 3), "tokenizer.ggml.padding_token_id": ("uint32", 0),
    "tokenizer.chat_template": ("string", "{{ messages }}"),
}


def _llama_gguf(path, layers: int = 2, **changes):
    """A small valid LLaMA GGUF written with gguf.GGUFWriter; `changes` maps a key (dots as
    "__") to (type, value), or to None to leave it out."""
    import gguf
    import numpy as np
    metadata = dict(_GGUF_BASE)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, value) in metadata.items():
        getattr(writer, f"add_{kind}")(key, value)
    shapes = {"token_embd.weight": (4, 8), "output_norm.weight": (8,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.{name}": shape for name, shape in (
            ("attn_norm.weight", (8,)), ("ffn_norm.weight", (8,)), ("attn_q.weight", (8, 8)),
            ("attn_k.weight", (8, 8)), ("attn_v.weight", (8, 8)), ("attn_output.weight", (8, 8)),
            ("ffn_gate.weight", (16, 8)), ("ffn_up.weight", (16, 8)),
            ("ffn_down.weight", (8, 16)))})
    for name, shape in shapes.items():
        writer.add_tensor(name, np.full(shape, 0.01, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BAD_GGUF_CONFIGS = {
    "block_count_huge": ({"llama__block_count": ("uint32", 4_000_000_000)},
                         "llama.block_count': must be <= 4096, got 4000000000"),
    "block_count_more_than_held": ({"llama__block_count": ("uint32", 3)},
                                   "llama.block_count': 3 layers declared, but the weights "
                                   "hold 2 (0..1)"),
    "block_count_list": ({"llama__block_count": ("array", [1, 2])},
                         "llama.block_count': expected an integer, got list [1, 2]"),
    "head_count_zero": ({"llama__attention__head_count": ("uint32", 0)},
                        "llama.attention.head_count': must be >= 1, got 0"),
    "ffn_negative": ({"llama__feed_forward_length": ("int32", -5)},
                     "llama.feed_forward_length': must be >= 1, got -5"),
    "rope_nan": ({"llama__rope__freq_base": ("float32", float("nan"))},
                 "llama.rope.freq_base': expected a finite number, got nan"),
    "eps_negative": ({"llama__attention__layer_norm_rms_epsilon": ("float32", -1e-5)},
                     "llama.attention.layer_norm_rms_epsilon': must be > 0"),
    "eos_float": ({"tokenizer__ggml__eos_token_id": ("float32", 2.7)},
                  "tokenizer.ggml.eos_token_id': expected an integer, got 2.7"),
    "template_not_string": ({"tokenizer__chat_template": ("array", [1, 2])},
                            "tokenizer.chat_template': expected a string, got list"),
    "heads_do_not_divide": ({"llama__attention__head_count_kv": ("uint32", 3)},
                            "2 query heads cannot be split into groups over 3 key/value"),
    "token_not_string": ({"tokenizer__ggml__tokens": ("array", [1, 2, 3, 4])},
                         "tokenizer.ggml.tokens[0]': expected a string, got int 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_GGUF_CONFIGS))
def test_absurd_gguf_configs_are_refused_at_convert(tmp_path, case):
    changes, match = BAD_GGUF_CONFIGS[case]
    path = _llama_gguf(tmp_path / f"{case}.gguf", **changes)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(checkpoints.hf_convert.ConversionError) as info:
        checkpoints.import_gguf_to_checkpoint(path, ckpt)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: field '") and match in message, \
        message
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_the_small_gguf_of_these_tests_converts(tmp_path):
    ckpt = tmp_path / "ckpt"
    model = checkpoints.import_gguf_to_checkpoint(_llama_gguf(tmp_path / "ok.gguf"), ckpt)
    assert model.config.num_layers == 2 and model.config.eos_id == 3
    assert checkpoints.read_model(ckpt).config == model.config


@pytest.fixture
def hf_t5(tmp_path, tiny):
    from activeit_jax.models import hf_convert
    directory = tmp_path / "hf"
    hf_convert.export_hf(*tiny, directory)
    return directory


BAD_HF_CONFIGS = {
    "layers_float": ({"num_layers": 4e9},
                     "field 'num_layers': expected an integer, got 4000000000.0"),
    "layers_huge": ({"num_layers": 4_000_000_000}, "field 'num_layers': must be <= 4096"),
    "layers_more_than_held": ({"num_decoder_layers": 2}, "field 'num_decoder_layers': 2 layers "
                              "declared, but the weights hold 1 (0..0)"),
    "heads_zero": ({"num_heads": 0}, "field 'num_heads': must be >= 1, got 0"),
    "heads_bool": ({"num_heads": True}, "field 'num_heads': expected an integer, got bool True"),
    "width_string": ({"d_model": "8"}, "field 'd_model': expected an integer, got str '8'"),
    "eps_negative": ({"layer_norm_epsilon": -1.0}, "field 'layer_norm_epsilon': must be > 0"),
    "eos_float": ({"eos_token_id": 2.7}, "field 'eos_token_id': expected an integer, got 2.7"),
    "eos_outside": ({"eos_token_id": 64}, "field 'eos_token_id': id 64 is outside the vocabulary"),
    "dropout_one": ({"dropout_rate": 1.0}, "field 'dropout_rate': must be < 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_HF_CONFIGS))
def test_absurd_hf_configs_are_refused_at_convert(hf_t5, tmp_path, case):
    import json
    changes, match = BAD_HF_CONFIGS[case]
    config_path = hf_t5 / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **changes}))
    with pytest.raises(checkpoints.hf_convert.ConversionError) as info:
        checkpoints.import_hf_to_checkpoint(hf_t5, tmp_path / "ckpt")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{config_path}: ") and match in message, \
        message
    assert not (tmp_path / "ckpt").exists()


def test_hf_llama_zero_heads_and_nan_rope_are_refused(tmp_path):
    import json

    from activeit_jax.models import DecoderOnlyModel, LlamaConfig, hf_convert
    model = DecoderOnlyModel(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
                                         num_layers=1, num_heads=2, num_kv_heads=2))
    directory = tmp_path / "hf"
    hf_convert.export_hf(model, jax.device_get(model.init_params(jax.random.key(0))), directory)
    config = json.loads((directory / "config.json").read_text())
    for changes, match in (({"num_attention_heads": 0}, "'num_attention_heads': must be >= 1"),
                           ({"rope_theta": float("nan"), "rope_parameters": None},
                            "'rope_theta': expected a finite number, got nan")):
        (directory / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(hf_convert.ConversionError, match=match):
            hf_convert.import_hf(directory)


@pytest.mark.parametrize("changes,match", [
    ({"num_encoder_layers": 4e9}, "field 'config.num_encoder_layers': expected an integer"),
    ({"num_heads": 0}, "field 'config.num_heads': must be >= 1, got 0"),
    ({"d_model": -8}, "field 'config.d_model': must be >= 1"),
    ({"eos_id": 999}, "field 'config.eos_id': id 999 is outside the vocabulary"),
])
def test_absurd_checkpoint_configs_are_refused_when_read(tmp_path, tiny, changes, match):
    import json
    ckpt = tmp_path / "ckpt"
    checkpoints.save_model(ckpt, *tiny)
    spec = json.loads((ckpt / "config.json").read_text())
    spec["config"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(spec))
    with pytest.raises(checkpoints.CheckpointError) as info:
        checkpoints.load_model(ckpt)
    assert str(info.value).startswith(f"{ckpt / 'config.json'}: ") and match in str(info.value)


# ------------------------------- item 10: tokenizer files and deep JSON name the file read


@pytest.fixture
def gguf_checkpoint(tmp_path):
    """A checkpoint converted from a small GGUF: tokenizer.json + tokenizer_meta.json whose
    "source" is the GGUF file."""
    source = _llama_gguf(tmp_path / "model.gguf")
    ckpt = tmp_path / "ckpt"
    checkpoints.import_gguf_to_checkpoint(source, ckpt)
    return ckpt, source


def _small_tokenizer_json(tokens=("a", "b")) -> str:
    from tokenizers import Tokenizer, models
    return Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[])).to_str()


@pytest.mark.parametrize("swap", ["garbage", "smaller"])
def test_a_swapped_tokenizer_json_is_named_not_the_original_gguf(gguf_checkpoint, swap):
    from activeit_jax.data import errors, vocab as vocab_lib
    ckpt, source = gguf_checkpoint
    assert vocab_lib.vocabulary_from_checkpoint(ckpt).eos_id == 3
    (ckpt / "tokenizer.json").write_text("{not json" if swap == "garbage"
                                         else _small_tokenizer_json())
    with pytest.raises(errors.VocabularyError) as info:
        vocab_lib.vocabulary_from_checkpoint(ckpt)
    message = str(info.value)
    assert message.startswith(f"{ckpt / 'tokenizer.json'}: ") and str(source) not in message
    assert ("not a valid tokenizer.json" if swap == "garbage"
            else "eos_id 3 is outside the vocabulary (0..1)") in message


@pytest.mark.parametrize("field,value,match", [
    ("eos_id", "abc", "expected an integer, got str 'abc'"),
    ("eos_id", [1], "expected an integer, got list [1]"),
    ("bos_id", True, "expected an integer, got bool True"),
    ("pad_id", -1, "must be >= 0, got -1"),
    ("chat_template", ["{{ x }}"], "expected a string, got list ['{{ x }}']"),
    ("format_version", "9", "expected an integer, got str '9'"),
    ("add_bos", "yes", "expected true or false, got str 'yes'"),
    ("source", 5, "expected a string, got int 5"),
])
def test_tokenizer_meta_with_wrong_types_is_one_line(gguf_checkpoint, field, value, match):
    import json

    from activeit_jax.data import errors, vocab as vocab_lib
    ckpt, _ = gguf_checkpoint
    meta_path = ckpt / "tokenizer_meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, field: value}))
    with pytest.raises(errors.VocabularyError) as info:
        vocab_lib.vocabulary_from_checkpoint(ckpt)
    assert str(info.value) == f"{meta_path}: field '{field}': {match}"


@pytest.mark.parametrize("field,value,match", [
    ("model_file", "../../secret.model", "expected a plain file name beside"),
    ("model_file", 3, "expected a file name, got int 3"),
    ("extra_ids", "100", "expected an integer, got str '100'"),
])
def test_sentencepiece_tokenizer_meta_is_checked(tmp_path, vocab, field, value, match):
    import json

    from activeit_jax.data import errors, vocab as vocab_lib
    assert vocab_lib.save_vocabulary(vocab, tmp_path)
    meta_path = tmp_path / "tokenizer_meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, field: value}))
    with pytest.raises(errors.VocabularyError, match=match) as info:
        vocab_lib.vocabulary_from_checkpoint(tmp_path)
    assert str(info.value).startswith(f"{meta_path}: field '{field}': ")


def test_a_non_string_chat_template_in_tokenizer_config_is_refused(tmp_path):
    import json

    from activeit_jax.data import errors, hf_tokenizer
    (tmp_path / "tokenizer.json").write_text(_small_tokenizer_json(("a", "b", "<eos>")))
    config = tmp_path / "tokenizer_config.json"
    for template, field in ((5, "chat_template"),
                            ([{"name": "default", "template": ["x"]}],
                             "chat_template[default].template")):
        config.write_text(json.dumps({"eos_token": "<eos>", "chat_template": template}))
        with pytest.raises(errors.VocabularyError) as info:
            hf_tokenizer.from_hf_tokenizer_files(tmp_path / "tokenizer.json")
        assert str(info.value).startswith(f"{config}: field '{field}': expected a string")


DEEP = "[" * 100_000 + "]" * 100_000


def _deep_json_cases(tmp_path, tiny):
    """(what, callable reading a file nested 100,000 levels deep, the file, error type)."""
    import json

    from activeit_jax.core import io_utils, records
    from activeit_jax.data import errors, hf_tokenizer, vocab as vocab_lib
    from activeit_jax.models import hf_convert
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"a": ' + DEEP + "}")
    index = tmp_path / "index"
    index.mkdir()
    (index / "config.json").write_text('{"model_type": "t5"}')
    (index / "model.safetensors.index.json").write_text(DEEP)
    header = tmp_path / "header"
    header.mkdir()
    raw = DEEP.encode()
    (header / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    ckpt = tmp_path / "ckpt"
    checkpoints.save_model(ckpt, *tiny)
    (ckpt / "config.json").write_text(DEEP)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "tokenizer_meta.json").write_text(DEEP)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(_small_tokenizer_json(("a", "<eos>")))
    (tok / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "x": 1})[:-1]
                                               + ', "deep": ' + DEEP + "}")
    jsonl = tmp_path / "scores.jsonl"
    jsonl.write_text('{"task": "a"}\n' + DEEP + "\n")
    listing = tmp_path / "tasks.json"
    listing.write_text(DEEP)
    return [
        ("hf config.json", lambda: hf_convert.import_hf(hf), hf / "config.json",
         hf_convert.ConversionError),
        ("shard index", lambda: hf_convert.SafetensorsReader(index),
         index / "model.safetensors.index.json", hf_convert.ConversionError),
        ("safetensors header", lambda: hf_convert.SafetensorsReader(header),
         header / "model.safetensors", hf_convert.ConversionError),
        ("checkpoint config.json", lambda: checkpoints.load_model(ckpt), ckpt / "config.json",
         checkpoints.CheckpointError),
        ("tokenizer_meta.json", lambda: vocab_lib.vocabulary_from_checkpoint(meta),
         meta / "tokenizer_meta.json", errors.VocabularyError),
        ("tokenizer_config.json", lambda: hf_tokenizer.from_hf_tokenizer_files(
            tok / "tokenizer.json"), tok / "tokenizer_config.json", errors.VocabularyError),
        ("journal", lambda: io_utils.read_jsonl(jsonl), jsonl, errors.RecordError),
        ("scores", lambda: records.read_score_records(jsonl), jsonl, errors.RecordError),
        ("task list", lambda: records.read_records(listing), listing, errors.RecordError),
    ]


def test_json_nested_100k_deep_is_one_line_naming_the_file(tmp_path, tiny):
    for what, read, path, error in _deep_json_cases(tmp_path, tiny):
        with pytest.raises(error) as info:  # not RecursionError
            read()
        message = str(info.value)
        assert "\n" not in message and str(path) in message, (what, message)
        assert "nested more than 500 levels deep" in message, (what, message)
