"""Programs compiled for real TPU topologies by libtpu's compiler, on this CPU machine.

Skipped (with the reason) where libtpu is not installed: `pip install -e '.[tpu]'` (the
pinned test environment, requirements.lock, includes it).
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="libtpu not installed: pip install -e '.[tpu]' "
                    "(needed to compile for TPU topologies)")

from activeit_jax import aot, partitioning  # noqa: E402
from activeit_jax.aot import analysis, programs, targets  # noqa: E402
from activeit_jax.models import (  # noqa: E402
    DecoderOnlyModel,
    EncoderDecoderModel,
    LlamaConfig,
    T5Config,
    layers,
)
from activeit_jax.scoring import batching  # noqa: E402
from activeit_jax.training.config import TrainConfig  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]

# T5 shaped for the TPU's (8, 128) tiles (a width of 64 or 16 is padded to 128 in HBM, which
# would hide the sharding arithmetic): 1 + 1 layers, compiles in seconds.
TILE_T5 = EncoderDecoderModel(T5Config(
    vocab_size=1024, d_model=256, num_heads=2, d_kv=128, d_ff=512, num_encoder_layers=1,
    num_decoder_layers=1, feed_forward_proj="gated-gelu", dtype="bfloat16"))


def _tiny_run(monkeypatch):
    """(model, TrainConfig, ScoreConfig) of configs/demo_tiny.gin, as the command reads it."""
    import gin

    from activeit_jax.commands import compile as compile_command
    from activeit_jax.core import gin_utils
    # gin first tries an `include 'models/x.gin'` as a file of a Python package `models`:
    # with tests/ on the path, that is tests/models (a namespace package without a file).
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if pathlib.Path(p or ".").resolve() != REPO / "tests"])
    compile_command.run_command._register_configurables()
    gin.clear_config()
    try:
        gin_utils.parse_gin(["demo_tiny.gin"], [], [])
        return compile_command.resolve_run()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_tiny_run_compiles_fits_and_scores_at_the_planners_shapes(topology, monkeypatch):
    model, train_config, score_config = _tiny_run(monkeypatch)
    lines = []
    result = aot.compile_run(model, train_config, score_config, topology,
                             progress=lines.append)
    reports = {r["program"]: r for r in result["programs"]}
    assert list(reports) == ["train_step", "eval_decode", "score", "decode"]
    assert all(r["fits"] and 0 < r["total_bytes"] < r["hbm_bytes"] for r in reports.values())
    assert all(r["flops"] > 0 and r["roofline_seconds"] > 0 for r in reports.values())
    assert len(lines) == 2 * len(reports)  # a line before and after each compilation
    dp = result["mesh"]["data"] * result["mesh"]["fsdp"]
    assert dp == targets.parse_target(topology).num_chips
    src = score_config.src_buckets[-1]
    rows = batching.rows_for(src, score_config.batch_tokens, score_config.batch_size, dp)
    assert reports["score"]["shape"] == {"rows": rows, "source": src,
                                         "target": score_config.tgt_buckets[-1]}
    assert reports["train_step"]["shape"] == {"rows": train_config.batch_size,
                                              "source": train_config.max_source_length,
                                              "target": train_config.max_target_length}


def _train_report(axes, topology="v5e:2x2", model=TILE_T5):
    target = targets.parse_target(topology)
    config = TrainConfig(batch_size=8, max_source_length=128, max_target_length=32,
                         mesh_shape=axes, use_dropout=False)
    mesh = aot.make_target_mesh(target, axes)
    program = programs.train_program(model, config, mesh)
    batch_bytes = sum(x.size * x.dtype.itemsize for x in program.args[1].values())
    return analysis.compile_and_analyse(program, mesh, target.chip), batch_bytes


def test_fsdp_divides_the_state_and_gathers_weights_and_scatters_gradients():
    data, batch = _train_report({"data": -1})
    fsdp, _ = _train_report({"fsdp": -1})
    # Per device: the whole train state (and a quarter of the batch) on the data mesh, a
    # quarter of everything on the fsdp mesh, but for the few replicated leaves (relative
    # position biases, counters) and the padding of uneven shards.
    state = data.argument_bytes - batch / 4
    state_fsdp = fsdp.argument_bytes - batch / 4
    assert 3.6 < state / state_fsdp <= 4.0
    params = TILE_T5.num_params()
    # Data parallel: gradients all-reduced (bf16, as computed), no weight traffic.
    assert set(data.collectives) == {"all-reduce"}
    assert data.collectives["all-reduce"]["bytes"] >= 2 * params * 0.95
    # FSDP: weights all-gathered (bf16 compute copies), gradients reduce-scattered (each
    # device receives its quarter).
    assert fsdp.collectives["all-gather"]["bytes"] >= 2 * params * 0.95
    assert fsdp.collectives["reduce-scatter"]["bytes"] >= 2 * params / 4 * 0.95
    assert fsdp.collectives.get("all-reduce", {"bytes": 0})["bytes"] < 0.1 * 2 * params


def test_scanned_layers_compile_to_a_loop_with_the_same_state_and_work():
    """`scan_layers` reaches the compiled train step: one loop over stacked layers (the
    layers' trip count weights its body), the same train state per device and the same
    FLOPs as the unrolled layers."""
    import dataclasses
    deep = dataclasses.replace(TILE_T5.config, num_encoder_layers=3, num_decoder_layers=3)
    unrolled, _ = _train_report({"fsdp": -1}, model=EncoderDecoderModel(deep))
    scanned, _ = _train_report({"fsdp": -1}, model=EncoderDecoderModel(
        dataclasses.replace(deep, scan_layers=True)))
    assert unrolled.fits and scanned.fits
    assert 3 in {loop["trips"] for loop in scanned.loops}
    assert 3 not in {loop["trips"] for loop in unrolled.loops}
    assert scanned.argument_bytes == pytest.approx(unrolled.argument_bytes, rel=0.02)
    assert scanned.flops == pytest.approx(unrolled.flops, rel=0.05)


def test_a_model_too_big_for_the_slice_is_reported_as_not_fitting():
    wide = DecoderOnlyModel(LlamaConfig(
        vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_layers=2,
        num_heads=64, num_kv_heads=64, dtype="bfloat16"))  # 2.1B parameters, data parallel
    config = TrainConfig(batch_size=8, max_source_length=64, max_target_length=64,
                         mesh_shape={"data": -1}, use_dropout=False, eval_batch_size=8)
    lines = []
    result = aot.compile_run(wide, config, None, "v5e:2x2", which=("train_step",),
                             search_compiles=2, progress=lines.append)
    report, = result["programs"]
    # f32 parameters and two AdamW moments, replicated: 12 bytes x 2.1B > 16 GiB, so the TPU
    # compiler itself refuses the program (RESOURCE_EXHAUSTED), and that is the verdict.
    assert not report["fits"] and report["out_of_memory"]
    assert report["total_bytes"] > report["hbm_bytes"]
    assert report["advice"]["rows"] is None
    # The search: 4 rows do not fit either, nor does a slice twice as large (replicated).
    assert report["advice"]["probes"] == [("rows", 4, False), ("chips", 8, False)]
    assert report["advice"]["text"] == ("does not fit at any batch on v5e:2x2, nor on 8 v5e "
                                        "chips with this mesh")
    assert any("DOES NOT FIT" in line for line in lines)


def _attention(q):
    return layers.dot_product_attention(q, q, q, None, None, 1.0, 0.0, True, jnp.float32)


def _attention_hlo(devices):
    mesh = partitioning.make_mesh({"data": -1}, devices)
    q = jax.ShapeDtypeStruct((8, 512, 4, 64), jnp.float32)
    with partitioning.mesh_context(mesh):
        return jax.jit(_attention).lower(q).compile().as_text()


def test_tpu_attention_is_not_chunked_like_the_cpu_one():
    # 8 rows of 4 x 512 x 512 float32 weights (32 MiB): the CPU attends them 2 rows at a time
    # (a lax.map: a while loop); a TPU program attends the whole batch at once.
    assert " while(" in _attention_hlo(jax.devices()[:1])
    tpu = targets.target_devices(targets.parse_target("v5e:2x2"))
    assert " while(" not in _attention_hlo(tpu)


def test_the_command_prints_a_table_writes_json_and_no_libtpu_noise(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TPU_") and k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = tmp_path / "compile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "activeit_jax.main", "compile",
         f"--gin_file={REPO / 'configs' / 'demo_tiny.gin'}", "--topology=v5e-4",
         "--programs=score", f"--out={out}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "score" in proc.stdout and "fits" in proc.stdout
    # Only the progress lines: nothing from libtpu, absl's C++ logging or TensorFlow.
    noise = [line for line in proc.stderr.splitlines() if not line.startswith("[1/1] ")]
    assert noise == [], proc.stderr
    result = json.loads(out.read_text())
    assert result["target"]["topology"] == "v5e:2x2" and result["programs"][0]["fits"]
    assert np.isclose(result["target"]["peak_flops"], 197e12)
    assert result["scan_layers"] is False  # demo_tiny.gin: the default, per-layer
