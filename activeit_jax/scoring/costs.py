"""What a batch costs on the model being run: the planner's costs in device seconds.

`batching.plan_batches` weighs the padding of a batch (a filler row, a padded position)
against a call and a compilation. Constants tuned on a tiny T5 do not fit a real model: on
SmolLM2-135M (30 layers, a 49k vocabulary) a filler row of 312 positions is about 70 GFLOP,
a third of a second on a 2-core CPU, while compiling one more shape takes a few seconds, so
a 40-row job must not be padded to 64 rows. Here every cost comes from the model:

- a padded position: the model's matmul FLOPs (`model.flops()`, `models.flops.RowFlops`:
  the layers per position, attention per (query, key) pair, the vocabulary-wide head per
  scored position) over the device's achieved FLOP/s (`DEVICE_FLOPS`, per platform, times
  the data-parallel devices a call runs on);
- a decoding call: its prefill and `max_decode_length` steps per row (the random or
  untrained model rarely stops early), and per step the weights read once from memory;
- a compilation: estimated from the number of layers XLA sees (`compile_seconds`; one with
  `scan_layers`), and charged in full for a row count of its own, but shared by the pool's
  chunks (1 / chunks of it) on the power-of-two row grid that other chunks reuse.

Every number is a deterministic function of the model's config, the platform, the mesh and
the pool's size, so a resumed run plans each chunk exactly as before. The scorer records
each shape's measured compile time next to this estimate (`RowScorer.compile_log`, in
summary.json), so the estimate can be checked on a new machine.
"""
from __future__ import annotations

from activeit_jax.models.flops import RowFlops
from activeit_jax.scoring.batching import PlanCosts

# Achieved f32 FLOP/s of one device on the scorer's calls: about half the measured matmul
# peak of the 2-core CI machine (380-515 GFLOP/s, `core.profiling.matmul_peak`); rough
# figures for accelerators (their compilations weigh more against a batch).
DEVICE_FLOPS = {"cpu": 2.0e11, "gpu": 1.0e14, "tpu": 1.0e14}
# Bytes/s a decoding step reads the weights at (memory bandwidth).
MEMORY_BYTES_PER_S = {"cpu": 2.0e10, "gpu": 2.0e12, "tpu": 1.0e12}
# Fixed seconds of one call (dispatch, the host-side batch, its transfer).
CALL_SECONDS = 0.005
# Compile seconds of one shape: a fixed part + a part per layer XLA sees. Measured on the
# 2-core CI machine under a load of 3-4 (`python benchmarks/padding_plan.py --compile`):
# SmolLM2's widths with 2 / 8 / 30 layers, scoring 40 x 312: 3.5 / 4.2 / 6.0 s, decoding
# 8 x 288 for 32 steps: 4.5 / 6.5 / 13.4 s; a width-256 T5 (4 + 4 layers) scoring 64 x 512:
# 5.2 s, decoding 7.1 s. About half of that on an idle machine, and compilations overlap
# the batches that run meanwhile (`row_scorer._Executables`): these sit in between.
COMPILE_BASE_SECONDS = {"score": 2.0, "decode": 2.5}
COMPILE_LAYER_SECONDS = {"score": 0.06, "decode": 0.15}
# A decoding loop step besides its matmuls (the while loop, the cache update).
STEP_SECONDS = 0.0005


def compile_seconds(flops: RowFlops, decoding: bool) -> float:
    """Estimated seconds to compile one scoring or decoding shape of the model (host CPU
    time; the shape's size barely matters). With `scan_layers` XLA compiles one layer."""
    kind = "decode" if decoding else "score"
    layers = 1 if flops.scan_layers else flops.layers
    return COMPILE_BASE_SECONDS[kind] + COMPILE_LAYER_SECONDS[kind] * layers


def model_plan_costs(flops: RowFlops, *, decoding: bool, pool_chunks: int,
                     data_parallel: int = 1, platform: str = "cpu",
                     max_decode_length: int = 0) -> PlanCosts:
    """`batching.PlanCosts` of a scoring (`decoding` False) or decoding plan, in seconds.

    Args:
      flops: the model's `model.flops()`.
      decoding: a plan of greedy decoding (one dimension: the prompt or source length).
      pool_chunks: chunks of the pool that share a compiled shape (1 = a one-chunk job: each
        compilation counts in full).
      data_parallel: devices a call's rows are split over.
      platform: "cpu", "gpu" or "tpu" (`DEVICE_FLOPS`).
      max_decode_length: decoding steps of a row (decoding plans).

    Returns:
      The costs, with `exact_rows`: a batch holds any multiple of `data_parallel` rows.
    """
    rate = DEVICE_FLOPS.get(platform, DEVICE_FLOPS["cpu"]) * max(data_parallel, 1)
    compile_s = compile_seconds(flops, decoding)
    shared = compile_s / max(int(pool_chunks), 1)
    if decoding:
        steps = float(max_decode_length)
        bandwidth = MEMORY_BYTES_PER_S.get(platform, MEMORY_BYTES_PER_S["cpu"])
        per_call = CALL_SECONDS + steps * (flops.param_bytes / bandwidth + STEP_SECONDS)
        return PlanCosts(per_s=(flops.decode_prefill_s + steps * flops.decode_cross_s) / rate,
                         per_ss=flops.decode_prefill_ss / rate, per_t=0.0,
                         per_row=steps * (flops.decode_per_step
                                          + flops.decode_per_key * steps) / rate,
                         call=per_call, compile=compile_s, shared_compile=shared,
                         share=shared, exact_rows=True)
    return PlanCosts(per_s=flops.per_s / rate, per_ss=flops.per_ss / rate,
                     per_t=flops.per_t / rate, per_tt=flops.per_tt / rate,
                     per_st=flops.per_st / rate, call=CALL_SECONDS, compile=compile_s,
                     shared_compile=shared, share=shared, exact_rows=True)
