"""The run directory: every file and directory name the commands write, in one place.

Resuming reads back what an earlier process wrote, the report reads what the loop wrote, and
the loop reads what the trainer, the evaluator and the scorer wrote; they agree because they
all take the names from here. Nothing else in the library spells them (a test scans the
sources). The module imports nothing of the project, so every package above `core` may use it
(`data` for the prepared split, `training` and `scoring` for their own run directories).

`activeit-jax run --out=RUN` (names of this module in brackets)::

    RUN/
      loop_config.json              [LOOP_CONFIG_FILE] the LoopConfig; a resume must match it
      seed_{s}/                     [seed_dir] one per seed
        data/                       [data_dir] the prepared split, as `activeit-jax prepare`
          tasks.jsonl               [TASKS_FILE]  writes it: every task with its role
          splits.json               [SPLITS_FILE] the split + the hash of tasks.jsonl; last
        iter_0/                     [iteration_dir(RUN, s, None, 0)] iteration 0, shared by
                                    every strategy of the seed
        {strategy}/iter_{i}/        [iteration_dir(RUN, s, strategy, i)] i = 1, 2, ...
          selected_tasks.json       [SELECTED_FILE] tasks added at this iteration
          train/                    [TRAIN_DIR] a trainer run directory (below)
          eval_{split}/             [eval_dir] an evaluator directory (below); split val|test
          per_task_metrics.jsonl    [PER_TASK_FILE] both splits' per-task metrics
          metrics_{split}.json      [metrics_file] their means (`loop.iteration_metrics`)
          scoring/                  [SCORING_DIR] a scorer run directory (below)
          scores.jsonl              [SCORES_FILE] copy of scoring/scores.jsonl, for the report
          task_map.png              [TASK_MAP_FILE] copy of scoring/taskmap.png
          DONE                      [DONE_FILE] written last: the iteration is complete
          judge_vs_{ref}[@iter_{j}][.{judge}].jsonl
                                    [judge_file] optional, after the loop: pairwise LLM-judge
                                    verdicts against the reference strategy, one per judge;
                                    "@iter_{j}": against the reference's iteration j, not
                                    this one (the fully trained model against every
                                    iteration of the reference)
      report/                       [REPORT_DIR] `activeit-jax report`: REPORT_FILES

A trainer run directory (`activeit-jax train --out=DIR`; an iteration's train/)::

    run_args.json                   [RUN_ARGS_FILE] fingerprint of the run's arguments
    metrics.jsonl                   [TRAIN_METRICS_FILE] one record per logged step / eval
    tensorboard/                    [TENSORBOARD_DIR]
    checkpoints/                    [CHECKPOINTS_DIR] orbax step checkpoints
    checkpoints_damaged/            [DAMAGED_CHECKPOINTS_DIR] unreadable ones, moved aside
    best/                           [BEST_DIR] the best epoch, a model checkpoint
                                    (`models.checkpoints`' format)
    best.json                       [BEST_INFO_FILE] its epoch, step and scores
    eval/                           [TRAIN_EVAL_DIR] epoch_{e}_predictions.jsonl,
                                    epoch_{e}_metrics.json [epoch_predictions_file, ...]
    train_summary.json              [TRAIN_SUMMARY_FILE] written last: training finished
    config.gin                      [GIN_CONFIG_FILE] the operative gin config
                                    (`activeit-jax train` only)

An evaluator directory (`activeit-jax evaluate --out=DIR`; an iteration's eval_{split}/)::

    metrics.json                    [EVAL_METRICS_FILE] overall / cls / gen / per_task
    per_task_metrics.jsonl          [PER_TASK_FILE] one line per task
    predictions.jsonl               [PREDICTIONS_FILE] one line per instance

A scorer run directory (`activeit-jax score --out=DIR`; an iteration's scoring/)::

    run_args.json                   [RUN_ARGS_FILE] fingerprint of the run's arguments
    scores.jsonl                    [SCORES_FILE] one line per task (journal, then final)
    prompts.jsonl                   [PROMPTS_FILE] with ScoreConfig.save_prompts
    skipped.jsonl                   [SKIPPED_FILE]
    sessions.jsonl                  [SESSIONS_FILE] throughput of each call
    taskmap.csv / .png / .svg       [TASKMAP_CSV, TASKMAP_PNG, TASKMAP_SVG]
    summary.json                    [SCORE_SUMMARY_FILE] written last
    shards/host{k}-of-{n}/          [SHARDS_DIR, shard_name] one host's journal (scores,
                                    prompts, skipped, sessions) and done.json [SHARD_DONE_FILE]

Outside this layout: the run lock (`core.run_lock`), the temp files of atomic writes
(`core.io_utils`) and the contents of a model checkpoint (`models.checkpoints`,
`data.vocab`). Which process of a multi-host run writes which of these files:
`activeit_jax.loop.hosts`.
"""
from __future__ import annotations

import os
import re

# -- a run of the active loop ------------------------------------------------------------------
LOOP_CONFIG_FILE = "loop_config.json"
DATA_DIR = "data"
SELECTED_FILE = "selected_tasks.json"
TRAIN_DIR = "train"
PER_TASK_FILE = "per_task_metrics.jsonl"
SCORING_DIR = "scoring"
SCORES_FILE = "scores.jsonl"
TASK_MAP_FILE = "task_map.png"
DONE_FILE = "DONE"
REPORT_DIR = "report"

# -- the report (in REPORT_DIR) ----------------------------------------------------------------
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
CURVES_PNG = "curves.png"
CURVES_SVG = "curves.svg"
SELECTED_UNCERTAINTY_PNG = "selected_uncertainty.png"
REPORT_HTML = "report.html"
REPORT_FILES = (RESULTS_MD, RESULTS_CSV, CURVES_PNG, CURVES_SVG, SELECTED_UNCERTAINTY_PNG,
                REPORT_HTML)

# -- a prepared split (a seed's data/, or `activeit-jax prepare --out`) ------------------------
TASKS_FILE = "tasks.jsonl"
SPLITS_FILE = "splits.json"

# -- a trainer run directory (and a scorer's: the same fingerprint file) ------------------------
RUN_ARGS_FILE = "run_args.json"
TRAIN_METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_CHECKPOINTS_DIR = "checkpoints_damaged"
BEST_DIR = "best"
BEST_INFO_FILE = "best.json"
TRAIN_EVAL_DIR = "eval"
TRAIN_SUMMARY_FILE = "train_summary.json"
GIN_CONFIG_FILE = "config.gin"

# -- an evaluator directory --------------------------------------------------------------------
EVAL_METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"

# -- a scorer run directory --------------------------------------------------------------------
PROMPTS_FILE = "prompts.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SESSIONS_FILE = "sessions.jsonl"
TASKMAP_CSV = "taskmap.csv"
TASKMAP_PNG = "taskmap.png"
TASKMAP_SVG = "taskmap.svg"
SCORE_SUMMARY_FILE = "summary.json"
SHARDS_DIR = "shards"
SHARD_DONE_FILE = "done.json"

_SEED_RE = re.compile(r"^seed_(\d+)$")
_ITERATION_RE = re.compile(r"^iter_(\d+)$")
# Strategy names hold no "." or "@", so the first "." after the reference (and its optional
# "@iter_{j}") starts the judge's name.
_JUDGE_RE = re.compile(r"^judge_vs_([^.@]+)(?:@iter_(\d+))?(?:\.(.+))?\.jsonl$")


def seed_dir(run_dir: str, seed: int) -> str:
    """`RUN/seed_{seed}`."""
    return os.path.join(run_dir, f"seed_{seed}")


def data_dir(run_dir: str, seed: int) -> str:
    """`RUN/seed_{seed}/data`: the seed's prepared split."""
    return os.path.join(seed_dir(run_dir, seed), DATA_DIR)


def iteration_name(iteration: int) -> str:
    """`iter_{iteration}`."""
    return f"iter_{iteration}"


def iteration_dir(run_dir: str, seed: int, strategy: str | None, iteration: int) -> str:
    """`RUN/seed_{s}/iter_0` for iteration 0 (shared by the strategies of a seed, `strategy`
    ignored), else `RUN/seed_{s}/{strategy}/iter_{i}`."""
    if iteration == 0:
        return os.path.join(seed_dir(run_dir, seed), iteration_name(0))
    return os.path.join(seed_dir(run_dir, seed), strategy, iteration_name(iteration))


def parse_seed_name(name: str) -> int | None:
    """The seed of a `seed_{s}` directory name, None for another name."""
    match = _SEED_RE.match(name)
    return int(match.group(1)) if match else None


def parse_iteration_name(name: str) -> int | None:
    """The iteration of an `iter_{i}` directory name, None for another name."""
    match = _ITERATION_RE.match(name)
    return int(match.group(1)) if match else None


def eval_dir(iteration_path: str, split: str) -> str:
    """`ITER/eval_{split}`: the evaluator's directory of one split ("val" or "test")."""
    return os.path.join(iteration_path, f"eval_{split}")


def metrics_file(iteration_path: str, split: str) -> str:
    """`ITER/metrics_{split}.json`: the means of one split's per-task metrics."""
    return os.path.join(iteration_path, f"metrics_{split}.json")


def judge_file(iteration_path: str, reference: str, judge_name: str | None = None,
               reference_iteration: int | None = None) -> str:
    """`ITER/judge_vs_{reference}[@iter_{reference_iteration}][.{judge_name}].jsonl` (no
    `.{judge_name}` for None; no `@iter_{j}` for None: the reference at ITER's iteration)."""
    suffix = "" if judge_name is None else f".{judge_name}"
    at = "" if reference_iteration is None else f"@{iteration_name(reference_iteration)}"
    return os.path.join(iteration_path, f"judge_vs_{reference}{at}{suffix}.jsonl")


def parse_judge_file(name: str) -> tuple[str, str | None] | None:
    """(reference strategy, judge name or None) of a `judge_file` name; None for another
    file (`judge_reference_iteration` reads its "@iter_{j}")."""
    match = _JUDGE_RE.match(name)
    return (match.group(1), match.group(3)) if match else None


def judge_reference_iteration(name: str) -> int | None:
    """The reference's iteration j of a `judge_file` name with "@iter_{j}"; None without one
    (the reference at the file's own iteration) or for another file."""
    match = _JUDGE_RE.match(name)
    return int(match.group(2)) if match and match.group(2) else None


def epoch_predictions_file(train_eval_dir: str, epoch: int) -> str:
    """`TRAIN/eval/epoch_{epoch}_predictions.jsonl`: the trainer's validation predictions."""
    return os.path.join(train_eval_dir, f"epoch_{epoch}_predictions.jsonl")


def epoch_metrics_file(train_eval_dir: str, epoch: int) -> str:
    """`TRAIN/eval/epoch_{epoch}_metrics.json`: the trainer's validation metrics."""
    return os.path.join(train_eval_dir, f"epoch_{epoch}_metrics.json")


def shard_name(index: int, num_shards: int) -> str:
    """`host{index}-of-{num_shards}`: one host's journal directory under `SHARDS_DIR`."""
    return f"host{index}-of-{num_shards}"
