"""Throughput of the prompt-uncertainty scorer vs a naive one-prompt-per-call loop.

Prints, in one run, for each model config (tiny and small T5, random init):
  - scoring: rows/s, target tokens/s, achieved FLOP/s (XLA's cost analysis of each compiled
    shape x its calls / wall time) and its ratio to this machine's measured f32 matmul peak;
  - the same for a naive loop that scores one prompt per jitted call (padded to the maximum
    lengths, so it compiles once) with the same model;
  - the end-to-end pipeline (decode + score + bookkeeping) rows/s;
  - padding waste (source / target / filler rows);
and, once, the number of compilations for a 200-task pool (tiny model; the count depends on
the buckets, not on the model size). `--smollm2` adds the real SmolLM2-135M-Instruct: our
scorer's rows/s vs transformers (PyTorch) on the same rows (`benchmarks/smollm2_throughput.py`).

    python benchmarks/score_throughput.py                     # a few minutes on CPU
    python benchmarks/score_throughput.py --configs=tiny --num_tasks=8 --compile_pool_tasks=50
    python benchmarks/score_throughput.py --configs= --compile_pool_tasks=0 --smollm2

The pool is built from the bundled NIV2 sample (real definitions, examples and instance
lengths), repeated under new names to reach the requested size.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax.core import xla_defaults  # noqa: E402

xla_defaults.apply()  # what `activeit-jax` applies, before jax starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import smollm2_throughput  # noqa: E402 (benchmarks/, beside this file)

from activeit_jax import partitioning, scoring
from activeit_jax.core import gin_utils, profiling  # noqa: E402
from activeit_jax.data import niv2, vocab as vocab_lib  # noqa: E402
from activeit_jax.models import EncoderDecoderModel, T5Config  # noqa: E402


def model_config(name: str, dtype: str) -> T5Config:
    """The T5Config of configs/models/t5_<name>.gin (its MODEL), with `dtype` overridden."""
    import gin
    gin.clear_config()
    try:
        gin_utils.parse_gin([os.path.join(REPO, "configs", "models", f"t5_{name}.gin")], [])
        config = gin.get_configurable(EncoderDecoderModel)().config
    finally:
        gin.clear_config()
    return dataclasses.replace(config, dtype=dtype, dropout_rate=0.0)


def make_pool(num_tasks: int) -> list:
    files = sorted(glob.glob(os.path.join(REPO, "data", "sample", "niv2", "tasks", "*.json")))
    base = [niv2.load_niv2_task(f) for f in files]
    return [dataclasses.replace(base[i % len(base)], name=f"{base[i % len(base)].name}_r{i}")
            for i in range(num_tasks)]


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def shape_structs(params, sharding, b, s, t):
    feats = {"encoder_input_tokens": (b, s), "decoder_input_tokens": (b, t),
             "decoder_target_tokens": (b, t), "decoder_loss_weights": (b, t)}
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=sharding) for k, v in feats.items()}
    return params, batch


def score_config(args, before: bool) -> "scoring.ScoreConfig":
    """The scoring config: `before` = the old batching (fixed rows, powers-of-two buckets)."""
    return scoring.ScoreConfig(
        num_instances=args.num_instances, num_perturbations=args.num_perturbations,
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        max_decode_length=args.max_target_length, batch_size=args.batch_size,
        tasks_per_chunk=args.tasks_per_chunk,
        batch_tokens=None if before else args.batch_tokens,
        buckets_per_octave=1 if before else args.buckets_per_octave)


def bench_variant(label, model, params, mesh, vocab, pool, args, peak):
    """Pipeline (cold + warm) and scoring-only figures of one batching variant; returns the
    scorer and the rows."""
    config = score_config(args, before=label == "before")
    scorer = scoring.RowScorer.from_config(model, params, mesh, config)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        scoring.score_pool(model, params, vocab, pool, os.path.join(tmp, "cold"), config,
                           mesh=mesh, progress=False, scorer=scorer)
        cold = time.perf_counter() - t0
        scorer.score_padding = scoring.PaddingStats()
        scorer.decode_padding = scoring.PaddingStats()
        warm = scoring.score_pool(model, params, vocab, pool, os.path.join(tmp, "warm"),
                                  config, mesh=mesh, progress=False, scorer=scorer)
    dpad = warm["decode_padding"]
    print(f"[{label}] pipeline (decode + score): cold {cold:.1f}s ({warm['num_compilations']} "
          f"compilations), warm {warm['seconds']:.1f}s = {warm['rows'] / warm['seconds']:.1f} "
          f"rows/s; decode padding waste source {dpad['source_padding_waste']:.1%}, filler "
          f"rows {dpad['filler_row_waste']:.1%}", flush=True)
    builder = scoring.PromptBuilder(vocab, config)
    sources = [src for i, task in enumerate(pool) for src in builder.plan(i, task).source_ids]
    generated = scorer.decode_async([src[0] for src in sources]).result()
    rows = []
    for src, gen in zip(sources, generated):
        target = builder.encode_target(vocab.decode(gen))
        rows += [(s, target) for s in src]
    while True:  # the pipeline compiled every bucket; time again if a shape was new
        compiled = scorer.num_compilations
        scorer.score_shapes.clear()
        scorer.score_padding = scoring.PaddingStats()
        t0 = time.perf_counter()
        scorer.score_async(rows).result()
        batched = time.perf_counter() - t0
        if scorer.num_compilations == compiled:
            break
    shapes = dict(scorer.score_shapes)
    pad = scorer.score_padding.as_dict()
    flops = sum(flops_of(scorer._score, *shape_structs(params, scorer._matrix_sharding, *shape))
                * calls for shape, calls in shapes.items())
    target_tokens = sum(len(t) for _, t in rows)
    source_tokens = sum(len(s) for s, _ in rows)
    print(f"[{label}] batched scoring: {len(rows) / batched:.1f} rows/s, "
          f"{(source_tokens + target_tokens) / batched:.0f} real tok/s, "
          f"{flops / batched / 1e9:.2f} GFLOP/s executed = {flops / batched / peak:.1%} of "
          f"matmul peak; {len(shapes)} shapes; padding waste source "
          f"{pad['source_padding_waste']:.1%}, target {pad['target_padding_waste']:.1%}, "
          f"filler rows {pad['filler_row_waste']:.1%}", flush=True)
    return scorer, rows, len(rows) / batched


def bench_config(name, args, vocab, peak):
    cfg = model_config(name, args.dtype)
    model = EncoderDecoderModel(cfg)
    mesh = partitioning.make_mesh({"data": -1})
    params = jax.jit(model.init_params,
                     out_shardings=partitioning.params_shardings(model, mesh))(jax.random.key(0))
    num_tasks = args.num_tasks_small if name != "tiny" else args.num_tasks
    pool = make_pool(num_tasks)
    print(f"\n== {name}: {model.num_params() / 1e6:.1f}M params, {cfg.dtype}, "
          f"{num_tasks} tasks x n={args.num_instances} x (1+K={args.num_perturbations}); load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rates = {}
    for label in ("before", "after"):
        scorer, rows, rates[label] = bench_variant(label, model, params, mesh, vocab, pool,
                                                   args, peak)
    print(f"after / before scoring rows/s: {rates['after'] / rates['before']:.2f}x")
    config = score_config(args, before=False)

    # Naive loop: one prompt per call, padded to the maximum lengths (one compilation).
    s_max, t_max = config.max_source_length, config.max_target_length
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    naive = jax.jit(lambda p, b: model.token_log_probs(p, b).sum(-1),
                    in_shardings=(jax.tree.map(lambda x: x.sharding, params), replicated))

    def one(src, tgt):
        enc = np.zeros((1, s_max), np.int32)
        enc[0, :len(src)] = src
        t = np.zeros((1, t_max), np.int32)
        t[0, :len(tgt)] = tgt
        d = np.zeros_like(t)
        d[:, 1:] = t[:, :-1]
        return {"encoder_input_tokens": enc, "decoder_input_tokens": d,
                "decoder_target_tokens": t, "decoder_loss_weights": (t > 0).astype(np.int32)}

    with partitioning.mesh_context(mesh, model.logical_axis_rules):
        naive(params, one(*rows[0])).block_until_ready()
        sample = rows[:args.naive_rows]
        t0 = time.perf_counter()
        for src, tgt in sample:
            float(naive(params, one(src, tgt))[0])
        naive_s = time.perf_counter() - t0
        naive_flops = flops_of(naive, params, one(*rows[0])) * len(sample)
    naive_tokens = sum(len(t) for _, t in sample)
    print(f"naive loop ({len(sample)} rows, 1 per call): {len(sample) / naive_s:.1f} rows/s, "
          f"{naive_tokens / naive_s:.0f} target tok/s, {naive_flops / naive_s / 1e9:.2f} "
          f"GFLOP/s = {naive_flops / naive_s / peak:.1%} of peak")
    print(f"speed-up batched (after) / naive: {rates['after'] / (len(sample) / naive_s):.1f}x "
          "(rows/s)")
    return model, params, mesh


def count_compilations(model, params, mesh, vocab, args):
    config = score_config(args, before=False)
    pool = make_pool(args.compile_pool_tasks)
    with tempfile.TemporaryDirectory() as tmp:
        summary = scoring.score_pool(model, params, vocab, pool, tmp, config, mesh=mesh,
                                     progress=False)
    pad = summary["score_padding"]
    print(f"\n== compilations for a {args.compile_pool_tasks}-task pool (tiny): "
          f"{summary['num_compilations']} (score shapes {summary['score_shapes']}, decode "
          f"shapes {summary['decode_shapes']}); {summary['rows']} rows in "
          f"{summary['seconds']:.1f}s = {summary['rows_per_s']:.1f} rows/s; padding waste "
          f"source {pad['source_padding_waste']:.1%}, target {pad['target_padding_waste']:.1%}, "
          f"filler rows {pad['filler_row_waste']:.1%}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--num_tasks", type=int, default=8, help="pool size, tiny model")
    parser.add_argument("--num_tasks_small", type=int, default=2, help="pool size, others")
    parser.add_argument("--num_instances", type=int, default=2)
    parser.add_argument("--num_perturbations", type=int, default=4)
    parser.add_argument("--max_source_length", type=int, default=512)
    parser.add_argument("--max_target_length", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64, help="the most rows per call")
    parser.add_argument("--batch_tokens", type=int, default=32768,
                        help="token budget per call (after)")
    parser.add_argument("--buckets_per_octave", type=int, default=8, help="(after)")
    parser.add_argument("--tasks_per_chunk", type=int, default=8)
    parser.add_argument("--naive_rows", type=int, default=16)
    parser.add_argument("--compile_pool_tasks", type=int, default=200)
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--smollm2", action="store_true",
                        help="also compare SmolLM2 scoring with transformers")
    smollm2_throughput.add_arguments(parser)
    args = parser.parse_args(argv)

    print(f"devices: {jax.devices()}; load average {os.getloadavg()}")
    peak = profiling.matmul_peak(args.matmul_size, reps=10)
    print(f"measured f32 matmul peak (n <= {args.matmul_size}): {peak / 1e9:.1f} GFLOP/s "
          f"({os.cpu_count()} CPU cores visible)")
    vocab = vocab_lib.get_vocabulary(os.path.join(REPO, vocab_lib.SAMPLE_VOCAB_RELPATH))
    tiny = None
    for name in filter(None, args.configs.split(",")):
        result = bench_config(name.strip(), args, vocab, peak)
        if name.strip() == "tiny":
            tiny = result
    if args.compile_pool_tasks > 0:
        if tiny is None:
            model = EncoderDecoderModel(model_config("tiny", args.dtype))
            mesh = partitioning.make_mesh({"data": -1})
            params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
                model, mesh))(jax.random.key(0))
            tiny = (model, params, mesh)
        count_compilations(*tiny, vocab, args)
    if args.smollm2:
        smollm2_throughput.run(args)


if __name__ == "__main__":
    main()
