"""Hugging Face Flax weights (`flax_model.msgpack`, single and sharded) import to the same
parameters as the safetensors of the same weights; bad files are one line."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from flax import serialization, traverse_util  # noqa: E402

from activeit_jax.models import flax_msgpack, hf_convert  # noqa: E402
from tests.models.test_models_llama import make_hf_llama  # noqa: E402
from tests.models.test_models_t5 import make_hf_t5  # noqa: E402


def flax_tree_of(model, tied_head: bool, dtype=np.float32) -> dict:
    """The parameter tree transformers' Flax class of `model` has, built module by module
    (Dense `kernel` = weight.T, Embed `embedding`, RMSNorm `weight`); a tied head has no
    parameters of its own."""
    flat = {}
    for name, module in model.named_modules():  # shared modules appear once
        path = tuple(name.split(".")) if name else ()
        if tied_head and name == "lm_head":
            continue
        weight = getattr(module, "weight", None)
        if weight is None or not isinstance(weight, torch.nn.Parameter):
            continue
        array = weight.detach().numpy().astype(dtype)
        if isinstance(module, torch.nn.Linear):
            flat[(*path, "kernel")] = np.ascontiguousarray(array.T)
        elif isinstance(module, torch.nn.Embedding):
            flat[(*path, "embedding")] = array
        else:  # T5LayerNorm / LlamaRMSNorm
            flat[(*path, "weight")] = array
    return flat


def _write(directory, model, flat: dict, shards: int = 1) -> None:
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    if shards == 1:
        data = serialization.msgpack_serialize(traverse_util.unflatten_dict(flat))
        (directory / "flax_model.msgpack").write_bytes(data)
        return
    keys = list(flat)
    weight_map = {}
    for k in range(shards):
        part = {key: flat[key] for key in keys[k::shards]}
        name = f"flax_model-{k + 1:05d}-of-{shards:05d}.msgpack"
        (directory / name).write_bytes(
            serialization.msgpack_serialize(traverse_util.unflatten_dict(part)))
        weight_map.update({"/".join(key): name for key in part})
    (directory / "flax_model.msgpack.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))


def _assert_bitwise(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("name,make,tied", [
    ("t5_v1_1", lambda: make_hf_t5("v1_1"), False),
    ("t5_original", lambda: make_hf_t5("original"), True),
    ("llama", lambda: make_hf_llama(), False),
    ("llama_tied", lambda: make_hf_llama(tie_word_embeddings=True), True),
])
def test_flax_msgpack_imports_as_the_safetensors_do(tmp_path, name, make, tied):
    model = make()
    model.save_pretrained(tmp_path / "safetensors")
    expected = hf_convert.import_hf_model(tmp_path / "safetensors")
    flat = flax_tree_of(model, tied)
    _write(tmp_path / "flax", model, flat)
    assert hf_convert.open_hf_weights(tmp_path / "flax").__class__.__name__ == \
        "FlaxMsgpackReader"
    imported = hf_convert.import_hf_model(tmp_path / "flax")
    assert imported.model == expected.model
    _assert_bitwise(imported.params, expected.params)
    _write(tmp_path / "sharded", model, flat, shards=3)
    _assert_bitwise(hf_convert.import_hf_model(tmp_path / "sharded").params, expected.params)


def test_bfloat16_flax_weights_and_a_base_model_tree(tmp_path):
    import ml_dtypes
    model = make_hf_llama()
    model.save_pretrained(tmp_path / "safetensors")
    expected = hf_convert.import_hf_model(tmp_path / "safetensors")
    flat = flax_tree_of(model, False, dtype=ml_dtypes.bfloat16)
    # Saved from the base model + head: no "model" level (transformers adds it on load).
    flat = {(key[1:] if key[0] == "model" else key): value for key, value in flat.items()}
    _write(tmp_path / "flax", model, flat)
    imported = hf_convert.import_hf_model(tmp_path / "flax")
    for ours, ref in zip(jax.tree.leaves(imported.params), jax.tree.leaves(expected.params)):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_bad_flax_files_are_one_line(tmp_path):
    model = make_hf_llama()
    directory = tmp_path / "flax"
    _write(directory, model, flax_tree_of(model, False))
    weights = directory / "flax_model.msgpack"
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(hf_convert.ConversionError, match="Git LFS pointer") as info:
        hf_convert.import_hf_model(directory)
    assert "\n" not in str(info.value)
    weights.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(hf_convert.ConversionError, match="not a Flax") as info:
        hf_convert.import_hf_model(directory)
    assert "\n" not in str(info.value) and str(weights) in str(info.value)
    flat = flax_tree_of(model, False)
    flat.pop(("model", "norm", "weight"))
    weights.write_bytes(serialization.msgpack_serialize(traverse_util.unflatten_dict(flat)))
    with pytest.raises(hf_convert.ConversionError, match="model.norm.weight is missing"):
        hf_convert.import_hf_model(directory)
    weights.unlink()
    (directory / "pytorch_model.bin").write_bytes(b"pickled")
    with pytest.raises(hf_convert.ConversionError, match="flax_model.msgpack in .*pickled"):
        hf_convert.import_hf_model(directory)
    assert not flax_msgpack.has_flax_weights(directory)
