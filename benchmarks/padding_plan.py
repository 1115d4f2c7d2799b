"""Padding waste and compiled shapes of the scorer's batch plans on a real pool, no model run.

Builds every task's prompts exactly as `activeit-jax score` does (`scoring.PromptBuilder`,
the pool in chunks of `tasks_per_chunk`), then plans each chunk's decoding batches (the
unique originals) and scoring batches (1 + K prompts per instance, each with a target) with
`RowScorer`'s planner and prints, for the old bucket grid and decoding costs and for the
defaults now, the padding waste of source positions, target positions and filler rows
(`summary.json`'s definitions) and the number of distinct shapes (= compilations). Decoding waste is exact; scoring targets are the instances' reference
outputs standing in for the model's greedy predictions (a run's `summary.json` has the real
figure). Seconds, not the hour a tiny-model run of the shared pool takes.

    python benchmarks/padding_plan.py                       # the shared NIV2 pool, defaults
    python benchmarks/padding_plan.py --num_instances=2 --num_perturbations=4
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--niv2_dir", default=default_niv2_dir())
    parser.add_argument("--num_tasks", type=int, default=0, help="0 = every task file")
    parser.add_argument("--num_instances", type=int, default=10)
    parser.add_argument("--num_perturbations", type=int, default=20)
    parser.add_argument("--tasks_per_chunk", type=int, default=16)
    args = parser.parse_args(argv)
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
