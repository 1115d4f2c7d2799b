"""Adaptive perturbation budget (`scoring.adaptive`): selection overlap vs rows scored.

Two parts, printed in one run:

1. Offline replay on a saved ``prompts.jsonl`` (a `score --save_prompts` run; default
   /work/smollm2_taskmap/[scores/]prompts.jsonl when present): for each K0 and selection size m, the
   policy replayed on the saved p values (identical to running it: the perturbations are a
   deterministic sequence whose first K0 are the same at every K) -> overlap of its top-m
   with the full-K top-m, and the fraction of rows it scored (originals included).
   With ``scores.jsonl`` beside it, the NIV2 cls/gen quota is also evaluated.
2. Live on a tiny random T5 over the bundled sample pool: full-K `score_pool` (with
   --save_prompts), the live adaptive driver (`score_adaptive`), and the replay of the
   same policy on the full run's prompts.jsonl -> both selections agree, the rows scored and
   the wall times.

    python benchmarks/adaptive_budget.py
    python benchmarks/adaptive_budget.py --prompts=/path/to/prompts.jsonl --k0=2,4,5 --select=20,68
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax.scoring import adaptive  # noqa: E402

# Where the SmolLM2 Task Map run writes (its score output directory is scores/).
DEFAULT_PROMPTS = next((p for p in ("/work/smollm2_taskmap/prompts.jsonl",
                                    "/work/smollm2_taskmap/scores/prompts.jsonl")
                        if os.path.exists(p)), "/work/smollm2_taskmap/prompts.jsonl")


def read_labels(prompts_path: str) -> dict[str, str] | None:
    scores = os.path.join(os.path.dirname(prompts_path), "scores.jsonl")
    if not os.path.exists(scores):
        return None
    with open(scores, encoding="utf-8") as handle:
        return {r["task"]: r.get("label", "gen") for r in map(json.loads, handle) if r}


def replay_table(p_full, k0s, selects, labels=None, z=2.0) -> None:
    """Prints overlap and fraction scored for each (K0, m), plus a cls/gen quota row."""
    num_tasks = len(p_full)
    K = min(v.shape[1] for v in p_full.values()) - 1
    print(f"{num_tasks} tasks, K = {K}, z = {z}")
    print(f"{'K0':>4}{'m':>6}{'quota':>14}{'overlap':>9}{'rows scored':>13}{'rounds':>8}")
    for k0 in k0s:
        for m in selects:
            if m >= num_tasks:
                continue
            quotas = [None]
            if labels:
                cls = sum(1 for t in p_full if labels.get(t) == "cls")
                share = round(m * cls / num_tasks)
                quotas.append({"cls": share, "gen": m - share})
            for quota in quotas:
                config = adaptive.AdaptiveConfig(initial_perturbations=k0, num_select=m, z=z,
                                                 quota=quota)
                result, full = adaptive.replay_from_prompts(p_full, config, labels)
                overlap = len(set(result.selected) & set(full)) / max(len(full), 1)
                name = "-" if quota is None else f"{quota['cls']}c+{quota['gen']}g"
                print(f"{k0:>4}{m:>6}{name:>14}{overlap:>9.2f}{result.fraction_scored:>13.1%}"
                      f"{result.rounds:>8}")


def live(args) -> dict:
    """Full-K vs adaptive on a tiny random T5 over the sample pool (see module docstring);
    returns the full run's p values (task -> [n, 1 + K])."""
    import jax

    from activeit_jax import partitioning, scoring
    from activeit_jax.data import niv2, vocab as vocab_lib
    from activeit_jax.models import EncoderDecoderModel, T5Config
    model = EncoderDecoderModel(T5Config(vocab_size=1152, d_model=64, num_heads=4, d_kv=16,
                                         d_ff=128, num_encoder_layers=2, num_decoder_layers=2))
    mesh = partitioning.make_mesh({"data": -1})
    params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
        model, mesh))(jax.random.key(0))
    vocab = vocab_lib.get_vocabulary(os.path.join(REPO, vocab_lib.SAMPLE_VOCAB_RELPATH),
                                     light=True)
    files = sorted(glob.glob(os.path.join(REPO, "data", "sample", "niv2", "tasks", "*.json")))
    pool = [niv2.load_niv2_task(f) for f in files][:args.live_tasks]
    config = scoring.ScoreConfig(num_instances=args.live_instances,
                                 num_perturbations=args.live_k, max_source_length=512,
                                 max_target_length=32, max_decode_length=32, save_prompts=True)
    scorer = scoring.RowScorer.from_config(model, params, mesh, config)
    policy = adaptive.AdaptiveConfig(initial_perturbations=args.live_k0,
                                     num_select=args.live_select)
    with tempfile.TemporaryDirectory() as tmp:
        scoring.score_pool(model, params, vocab, pool[:2], os.path.join(tmp, "warm"),
                           dataclasses.replace(config, save_prompts=False), mesh=mesh,
                           progress=False, scorer=scorer)  # compile the common shapes first
        start = time.perf_counter()
        scoring.score_pool(model, params, vocab, pool, tmp, config, mesh=mesh,
                           progress=False, scorer=scorer)
        full_s = time.perf_counter() - start
        p_full = adaptive.read_prompt_probabilities(os.path.join(tmp, "prompts.jsonl"))
    replayed, full = adaptive.replay_from_prompts(p_full, policy)
    start = time.perf_counter()
    result = adaptive.score_adaptive(scorer, scoring.PromptBuilder(vocab, config), pool, policy)
    live_s = time.perf_counter() - start
    overlap = len(set(result.selected) & set(full)) / len(full)
    print(f"live, tiny random T5, {len(pool)} sample tasks x n={args.live_instances}, "
          f"K={args.live_k}, K0={args.live_k0}, m={args.live_select}:")
    print(f"  full-K score_pool {full_s:.1f}s; adaptive {live_s:.1f}s scoring "
          f"{result.fraction_scored:.1%} of the rows in {result.rounds} extra rounds; overlap "
          f"with full-K {overlap:.2f}; live selection == replayed selection: "
          f"{sorted(result.selected) == sorted(replayed.selected)}")
    return p_full


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS)
    parser.add_argument("--k0", default="2,3,4,5,8")
    parser.add_argument("--select", default="10,20,68")
    parser.add_argument("--z", type=float, default=2.0)
    parser.add_argument("--live_tasks", type=int, default=40)
    parser.add_argument("--live_instances", type=int, default=10)
    parser.add_argument("--live_k", type=int, default=20)
    parser.add_argument("--live_k0", type=int, default=4)
    parser.add_argument("--live_select", type=int, default=10)
    parser.add_argument("--no_live", action="store_true")
    args = parser.parse_args(argv)
    k0s = [int(x) for x in args.k0.split(",")]
    selects = [int(x) for x in args.select.split(",")]
    print(f"load {os.getloadavg()}")
    if os.path.exists(args.prompts):
        print(f"== replay on {args.prompts}")
        p_full = adaptive.read_prompt_probabilities(args.prompts)
        replay_table(p_full, k0s, selects, read_labels(args.prompts), args.z)
    else:
        print(f"== replay skipped: {args.prompts} not found (no real Task Map run yet)")
    if not args.no_live:
        print("== live")
        p_live = live(args)
        print("== replay on the live full-K run's prompts.jsonl (tiny random T5)")
        replay_table(p_live, k0s, [m for m in selects if m < len(p_live)] or [len(p_live) // 4],
                     None, args.z)


if __name__ == "__main__":
    main()
