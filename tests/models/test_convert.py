"""Hugging Face import/export, orbax checkpoints, and the `activeit-jax convert` CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

from activeit_jax import partitioning
from activeit_jax.models import (
    checkpoints,  # noqa: E402
    hf_convert,  # noqa: E402
)
from activeit_jax.models.hf_convert import ConversionError  # noqa: E402
from tests.models.test_models_llama import make_hf_llama  # noqa: E402
from tests.models.test_models_t5 import make_batch, make_hf_t5  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_hf_tensors(hf_dir) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) HF directory, via safetensors' NumPy API."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            files = set(json.load(handle)["weight_map"].values())
    else:
        files = {"model.safetensors"}
    tensors = {}
    for name in files:
        tensors.update(load_file(os.path.join(hf_dir, name)))
    return tensors


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), "not bitwise equal"


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Saved random tiny HF models: T5 v1.1 (untied), original T5 (tied), LLaMA (GQA)."""
    dirs = {}
    for name, model in (("t5_v1_1", make_hf_t5("v1_1")), ("t5_original", make_hf_t5("original")),
                        ("llama", make_hf_llama())):
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize("name", ["t5_v1_1", "t5_original", "llama"])
def test_export_reimport_is_bitwise_and_matches_hf_tensors(hf_dirs, tmp_path, name):
    model, params = hf_convert.import_hf(hf_dirs[name])
    written = hf_convert.export_hf(model, params, tmp_path / "out")
    assert written == ["model.safetensors", "config.json"]
    # Every exported tensor equals the Hugging Face original, with the same names.
    original, exported = read_hf_tensors(hf_dirs[name]), read_hf_tensors(tmp_path / "out")
    assert set(exported) == set(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and np.array_equal(exported[key], value), key
    model2, params2 = hf_convert.import_hf(tmp_path / "out")
    assert model2 == model
    assert_trees_equal(params2, params)


def test_transformers_loads_export_with_same_logits(hf_dirs, tmp_path):
    """The exported v1.1 directory is a working HF model: untied head, no output scaling."""
    model, params = hf_convert.import_hf(hf_dirs["t5_v1_1"])
    hf_convert.export_hf(model, params, tmp_path)
    original = transformers.T5ForConditionalGeneration.from_pretrained(hf_dirs["t5_v1_1"])
    reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in make_batch().items()
             if k in ("encoder_input_tokens", "decoder_input_tokens")}
    with torch.no_grad():
        a = original(input_ids=batch["encoder_input_tokens"],
                     decoder_input_ids=batch["decoder_input_tokens"]).logits
        b = reloaded.eval()(input_ids=batch["encoder_input_tokens"],
                            decoder_input_ids=batch["decoder_input_tokens"]).logits
    assert torch.equal(a, b)


def test_transformers5_tied_v1_1_save_imports_as_tied_unscaled(tmp_path):
    """transformers >= 5 ties lm_head even for v1.1 configs (scale_decoder_outputs false)."""
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=1152, d_model=64, d_kv=16, d_ff=128, num_layers=1,
                                num_heads=4, feed_forward_proj="gated-gelu",
                                tie_word_embeddings=False)
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    model, params = hf_convert.import_hf(tmp_path)
    assert model.config.tie_word_embeddings and not model.config.scales_decoder_outputs
    assert "logits_dense" not in params["decoder"]
    exported = hf_convert.hf_config_from_model(model)
    assert exported["tie_word_embeddings"] and exported["scale_decoder_outputs"] is False


def test_sharded_index_layouts(hf_dirs, tmp_path):
    """HF's own sharded save imports; our sharded export round-trips through an index."""
    hf_model = make_hf_t5("v1_1")
    hf_model.save_pretrained(tmp_path / "hf_sharded", max_shard_size="200KB")
    assert os.path.exists(tmp_path / "hf_sharded" / "model.safetensors.index.json")
    model, params = hf_convert.import_hf(tmp_path / "hf_sharded")
    _, single = hf_convert.import_hf(hf_dirs["t5_v1_1"])
    assert_trees_equal(params, single)

    written = hf_convert.export_hf(model, params, tmp_path / "ours", max_shard_size="300KB")
    shards = [f for f in written if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in written
    assert not os.path.exists(tmp_path / "ours" / "model.safetensors")
    _, again = hf_convert.import_hf(tmp_path / "ours")
    assert_trees_equal(again, params)
    # Re-exporting unsharded removes the stale shards and index.
    hf_convert.export_hf(model, params, tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "model.safetensors"]


def test_bfloat16_checkpoint_imports(tmp_path):
    hf_model = make_hf_llama().to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path)
    model, params = hf_convert.import_hf(tmp_path)
    kernel = params["layers_1"]["mlp"]["wo"]["kernel"]
    expected = hf_model.model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, expected)


def _copy_dir(src, dst) -> None:
    import shutil
    shutil.copytree(src, dst)


def test_import_errors_are_clear(hf_dirs, tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        hf_convert.import_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        hf_convert.import_hf(tmp_path / "empty")

    bad = tmp_path / "bert"
    _copy_dir(hf_dirs["t5_v1_1"], bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "model_type": "bert",
                                                 "architectures": ["BertModel"]}))
    with pytest.raises(ConversionError, match="unsupported architecture.*bert"):
        hf_convert.import_hf(bad)

    shape = tmp_path / "shape"
    _copy_dir(hf_dirs["t5_v1_1"], shape)
    (shape / "config.json").write_text(json.dumps({**config, "d_ff": 256}))
    with pytest.raises(ConversionError,
                       match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight has "
                             r"shape \(128, 64\) but the config implies \(256, 64\)"):
        hf_convert.import_hf(shape)

    deeper = tmp_path / "deeper"
    _copy_dir(hf_dirs["t5_v1_1"], deeper)
    (deeper / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ConversionError, match=r"field 'num_layers': 3 layers declared, but the "
                                              r"weights hold 2 \(0\.\.1\)"):
        hf_convert.import_hf(deeper)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConversionError, match="pickled PyTorch weights are not loaded"):
        hf_convert.import_hf(pickled)


def test_save_and_load_model_roundtrip(hf_dirs, tmp_path):
    model, params = hf_convert.import_hf(hf_dirs["llama"])
    ckpt = tmp_path / "ckpt"
    checkpoints.save_model(ckpt, model, params)
    assert sorted(os.listdir(ckpt)) == ["config.json", "params"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
    spec = json.loads((ckpt / "config.json").read_text())
    assert spec["model_kind"] == "llama" and spec["config"]["num_kv_heads"] == 2

    loaded_model, loaded = checkpoints.load_model(ckpt)
    assert loaded_model == model
    assert_trees_equal(jax.device_get(loaded), params)

    # Restore straight onto a data=4 x model=2 mesh.
    mesh = partitioning.make_mesh({"data": 4, "model": 2})
    shardings = partitioning.params_shardings(model, mesh)
    _, sharded = checkpoints.load_model(ckpt, shardings=shardings)
    kernel = sharded["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert kernel.sharding == shardings["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (64, 64)  # mlp 128 split over model=2
    assert_trees_equal(jax.device_get(sharded), params)

    # Saving again replaces the old checkpoint atomically, when asked to.
    zeros = jax.tree.map(np.zeros_like, params)
    with pytest.raises(checkpoints.CheckpointError, match="already holds a checkpoint"):
        checkpoints.save_model(ckpt, model, zeros)
    checkpoints.save_model(ckpt, model, zeros, replace=True)
    assert_trees_equal(jax.device_get(checkpoints.load_model(ckpt)[1]), zeros)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_load_model_errors(hf_dirs, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.load_model(tmp_path / "missing")
    with pytest.raises(checkpoints.CheckpointError, match="looks like a Hugging Face directory"):
        checkpoints.load_model(hf_dirs["llama"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-m", "activeit_jax.main", "convert", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_convert_cli_roundtrip(hf_dirs, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf_out"
    result = run_cli(f"--from_hf={hf_dirs['t5_v1_1']}", f"--to={ckpt}")
    assert result.returncode == 0, result.stderr
    assert "t5" in result.stdout and (ckpt / "config.json").exists()
    result = run_cli(f"--from={ckpt}", f"--to_hf={out}", "--max_shard_size=300KB")
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors.index.json").exists()
    original, exported = read_hf_tensors(hf_dirs["t5_v1_1"]), read_hf_tensors(out)
    assert set(exported) == set(original)
    assert all(np.array_equal(exported[k], v) for k, v in original.items())

    result = run_cli(f"--from_hf={tmp_path / 'nope'}", f"--to={tmp_path / 'x'}")
    assert result.returncode == 1 and "does not exist" in result.stderr
    result = run_cli(f"--from_hf={hf_dirs['llama']}")
    assert result.returncode != 0 and "--from_hf=DIR --to=CKPT_DIR" in result.stderr
