"""What an active-loop experiment will cost, counted from its config before it runs.

Counts, from the parsed gin experiment and the real split of its pool (seed 0's quotas): the
trainings and their optimizer steps / examples / tokens, the evaluations and their answers
(test, validation, per-epoch validation), the scorings and their rows (with the adaptive
budget at an assumed share of the full-K rows), then prices them with per-unit rates:

- ``--rates=cpu``: this 2-core CPU, measured on SmolLM2-135M-Instruct when the machine was
  quiet (`make demo`'s log: 7.5 s per training step of 4 x 288 tokens, 1.9 scoring rows/s at
  256 + 32 tokens including the greedy decode of the originals, about 0.5 s per evaluated
  answer; fixed costs per training (3 checkpoint writes, restores), evaluation and scoring
  from the same log). Steps, rows and answers scale with tokens from those lengths.
- ``--rates=h100``: assumed, not measured (no accelerator was lent): FLOPs (6 N per trained
  token, 2 N per scored token, N = 134.5M) at ``--tflops`` effective (default 100 TFLOP/s, a
  fifth of an H100's dense TF32 peak: the checkpoint is float32), greedy decoding at
  ``--decode_step_ms`` per step of a batch (2 ms: 30 layers of launch-bound kernels), fixed
  costs per training (checkpoint writes of the 1.6 GB train state per epoch dominate),
  evaluation and scoring, and 2 minutes of compilation.

    python benchmarks/experiment_cost.py --gin_file=configs/experiments/niv2_smollm2_cpu.gin \\
        --checkpoint=demo_models/smollm2-135m-instruct --rates=cpu
    python benchmarks/experiment_cost.py \\
        --gin_file=configs/experiments/niv2_smollm2_accelerator.gin \\
        --checkpoint=demo_models/smollm2-135m-instruct --rates=h100
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PARAMS = 134_515_008  # SmolLM2-135M-Instruct (activeit-jax convert prints it)


@dataclasses.dataclass
class Rates:
    """Seconds per unit of work."""
    train_token: float      # per trained (padded) token
    score_token: float      # per scored (padded) token, decode of the originals included
    answer: float           # per evaluated answer (greedy decode, its share of a batch)
    per_training: float     # fixed: restore, 1 checkpoint per epoch + best/, setup
    per_eval: float         # fixed: restore the checkpoint, jit from the cache
    per_scoring: float      # fixed: restore, plan, compile from the cache
    compile_once: float     # first compilations of the run


def cpu_rates() -> Rates:
    # make demo, quiet 2 cores: 7.5 s / step of 4 x 288 tokens; 1.9 rows/s at 288 tokens.
    return Rates(train_token=7.5 / (4 * 288), score_token=1 / (1.9 * 288), answer=0.5,
                 per_training=20.0, per_eval=5.0, per_scoring=10.0, compile_once=120.0)


def h100_rates(tflops: float, decode_step_ms: float, max_decode: int, batch: int,
               epochs: int) -> Rates:
    flops = tflops * 1e12
    # Per training: restore the base weights (0.54 GB) and write best/ (0.54 GB), about 0.5 s
    # each, plus one 1.6 GB train-state checkpoint per epoch at about 2 GB/s to local disk.
    return Rates(train_token=6 * PARAMS / flops, score_token=2 * PARAMS / flops,
                 answer=decode_step_ms / 1e3 * max_decode / batch,
                 per_training=1.0 + 0.8 * epochs, per_eval=1.0, per_scoring=2.0,
                 compile_once=120.0)


def count(exp, pool: int, test: int, val: int, val_cls: int, adaptive_share: float):
    """Work units of the whole run (all seeds), from the experiment and the split sizes."""
    from activeit_jax.loop import schedule, selection
    loop, tc, sc = exp.loop, exp.train_config, exp.score_config
    seeds = len(loop.seeds)
    budgets = schedule.tasks_to_add(exp.quotas.num_initial, loop.num_iterations,
                                    loop.tasks_per_iteration, loop.train_set_sizes,
                                    loop.growth_factor)
    m, v = tc.max_eval_instances_per_task, tc.max_val_instances_per_task or \
        tc.max_eval_instances_per_task
    seq_train = tc.max_source_length + tc.max_target_length
    seq_score = sc.max_source_length + sc.max_target_length
    row_share = adaptive_share if exp.adaptive is not None else 1.0
    out = dict(trainings=0, steps=0, train_tokens=0, evals=0, answers=0, scorings=0, rows=0.0)

    def evaluate():
        out["evals"] += 1
        out["answers"] += (test + val) * m

    def score(remaining):
        out["scorings"] += 1
        out["rows"] += remaining * sc.num_instances * (1 + sc.num_perturbations * row_share)

    for _ in range(seeds):
        evaluate()
        score(pool)
        for name in loop.strategies:
            spec = selection.get_strategy(name)
            union = exp.quotas.num_initial
            iterations = 2 if spec.selects_all else loop.num_iterations
            for i in range(1, iterations):
                union = pool if spec.selects_all else union + budgets[i]
                examples = union * tc.max_instances_per_task
                steps = math.ceil(examples / tc.batch_size) * tc.num_epochs
                out["trainings"] += 1
                out["steps"] += steps
                out["train_tokens"] += steps * tc.batch_size * seq_train
                out["answers"] += tc.num_epochs * val * v  # per-epoch validation
                evaluate()
                last = i == iterations - 1
                if pool - union > 0 and (loop.score_all_strategies
                                         or (spec.needs_scores and not last)):
                    score(pool - union)
    out["score_tokens"] = out["rows"] * seq_score
    return out


def price(units, rates: Rates) -> dict[str, float]:
    return {
        "train": units["train_tokens"] * rates.train_token + units["trainings"]
        * rates.per_training,
        "evaluate": units["answers"] * rates.answer + units["evals"] * rates.per_eval,
        "score": units["score_tokens"] * rates.score_token + units["scorings"]
        * rates.per_scoring,
        "compile": rates.compile_once,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gin_file", required=True)
    parser.add_argument("--checkpoint", default="demo_models/smollm2-135m-instruct")
    parser.add_argument("--gin", action="append", default=[], help="extra bindings")
    parser.add_argument("--niv2_dir", default=os.path.join(REPO, "..", "shared", "data",
                                                           "niv2"))
    parser.add_argument("--rates", choices=("cpu", "h100"), default="cpu")
    parser.add_argument("--tflops", type=float, default=100.0)
    parser.add_argument("--decode_step_ms", type=float, default=2.0)
    parser.add_argument("--adaptive_share", type=float, default=0.4,
                        help="perturbed rows scored by the adaptive budget / full K "
                             "(docs/speed.md: 0.35-0.40 at K0 = 2-3)")
    args = parser.parse_args()

    import gin

    from activeit_jax.commands import run
    from activeit_jax.core import gin_utils
    from activeit_jax.data import prepared
    run._register_configurables()
    import activeit_jax.data.configurables  # noqa: F401
    import activeit_jax.models  # noqa: F401
    import activeit_jax.training.config  # noqa: F401
    gin_utils.parse_gin([args.gin_file], [f'SMOLLM2_CHECKPOINT = "{args.checkpoint}"',
                                          f'NIV2_DIR = "{args.niv2_dir}"'] + args.gin)
    exp = run.experiment()
    gin.clear_config()
    data = prepared.prepare_niv2(exp.niv2_dir, seed=0, quotas=exp.quotas,
                                 max_instances_per_task=exp.max_instances_per_task)
    split = data.split
    val_cls = sum(data.tasks[n].label == "cls" for n in split.validation)
    units = count(exp, len(split.pool), len(split.test), len(split.validation), val_cls,
                  args.adaptive_share)
    tc = exp.train_config
    rates = (cpu_rates() if args.rates == "cpu" else
             h100_rates(args.tflops, args.decode_step_ms, tc.max_decode_length
                        or tc.max_target_length, tc.eval_batch_size, tc.num_epochs))
    cost = price(units, rates)
    print(f"{args.gin_file}: pool {len(split.pool)}, validation {len(split.validation)} "
          f"({val_cls} cls), test {len(split.test)}; seeds {len(exp.loop.seeds)}, "
          f"strategies {len(exp.loop.strategies)}, iterations {exp.loop.num_iterations}")
    print(f"  trainings {units['trainings']}, optimizer steps {units['steps']:,}, trained "
          f"tokens {units['train_tokens']:,} ({6 * PARAMS * units['train_tokens'] / 1e15:.1f}"
          f" PFLOP)")
    print(f"  evaluations {units['evals']}, answers {units['answers']:,}")
    print(f"  scorings {units['scorings']}, rows {units['rows']:,.0f}, scored tokens "
          f"{units['score_tokens']:,.0f} ({2 * PARAMS * units['score_tokens'] / 1e15:.1f} "
          f"PFLOP)")
    total = sum(cost.values())
    print(f"  estimate ({args.rates}): " + ", ".join(f"{k} {v / 60:.1f} min"
                                                    for k, v in cost.items())
          + f"; total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
