"""`activeit-jax evaluate`: ROUGE-L and exact match of a checkpoint on a task set.

    activeit-jax evaluate --checkpoint=CKPT --niv2_dir=DIR --tasks=FILE --out=DIR \\
        [--vocab=SPM | --gin_file=runs/finetune_niv2.gin] [--max_instances_per_task=100] \\
        [--batch_size=64] [--mesh=data=-1,fsdp=1,model=1]

The vocabulary: `--vocab`, else the gin binding, else the tokenizer stored with the checkpoint
(converted and trained checkpoints store theirs).

Greedy-decodes the first `--max_instances_per_task` instances of every task (Tk-Instruct
prompts: definition + 2 positive examples, source 1024 / target 128 tokens by default) and
scores them with Tk-Instruct's metric semantics (`activeit_jax.training.metrics`). The
settings are the `TrainConfig` of the `train_job` gin bindings of a run config (lengths, eval
batch, mesh, vocabulary); `--max_instances_per_task` (`max_eval_instances_per_task`),
`--batch_size` (`eval_batch_size`), `--max_source_length` and `--max_target_length` are
shortcuts generated from its fields, and `--mesh` replaces its mesh. A flag given wins over the
gin binding, which wins over the default; a flag and a `--gin.TrainConfig.` binding of the same
field are refused. Writes, atomically:
DIR/metrics.json (overall, cls, gen, per_task), DIR/per_task_metrics.jsonl and
DIR/predictions.jsonl. `--tasks` accepts the formats of `activeit-jax train`.
"""
from __future__ import annotations

import dataclasses
import json

from absl import flags

from activeit_jax import layout
from activeit_jax.commands import common
from activeit_jax.training import config as train_config

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "The model to evaluate: a checkpoint directory "
                    "(config.json + params), e.g. a training run's best/.")
flags.DEFINE_string("tasks", None, "Evaluation tasks: names file, JSON list or prepared .jsonl.")
flags.DEFINE_string("niv2_dir", None, "NIV2 root (tasks/<name>.json) for task names.")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_string("vocab", None, "Vocabulary: SentencePiece .model, tokenizer.json or a "
                    "tokenizer directory (default: the gin binding train_job.vocabulary, else "
                    "the tokenizer stored with the checkpoint).")
flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=4,model=2 (-1 = the remaining "
                    "devices); default the TrainConfig's.")
# Shortcuts generated from TrainConfig fields (two keep their shorter flag names).
EVAL_FLAGS = common.define_config_flags(
    train_config.TrainConfig, gin_module="activeit_jax.training",
    only=("max_eval_instances_per_task", "eval_batch_size", "max_source_length",
          "max_target_length"),
    renamed={"max_eval_instances_per_task": "max_instances_per_task",
             "eval_batch_size": "batch_size"})
common.define_gin_flags()
common.define_distributed_flags()


def main(argv: list[str]) -> None:
    common.check_args(argv, ("checkpoint", "tasks", "out"))
    common.refuse_outputs_among_inputs(
        {name: FLAGS[name].value for name in ("checkpoint", "tasks", "vocab", "niv2_dir")},
        {"out": FLAGS.out},
        {"out": (layout.EVAL_METRICS_FILE, layout.PER_TASK_FILE, layout.PREDICTIONS_FILE)})
    common.initialize_distributed_from_flags()  # before anything touches a device
    common.parse_gin_from_flags()

    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import checkpoints
    from activeit_jax.training import evaluation, inputs as train_data

    EVAL_FLAGS.check_conflicts()
    job = train_config.train_job()  # the run's gin file gives lengths, batch, mesh, vocabulary
    config, vocabulary = job.resolved_config(), job.vocabulary
    overrides = EVAL_FLAGS.given()
    if FLAGS.mesh:
        overrides["mesh_shape"] = common.parse_mesh(FLAGS.mesh)
    config = dataclasses.replace(config, **overrides)
    vocabulary = vocab_lib.resolve_vocabulary(
        FLAGS.vocab or vocabulary, FLAGS.checkpoint,
        what="--vocab or a gin binding of train_job.vocabulary",
        decoder_only=checkpoints.is_decoder_only_checkpoint(FLAGS.checkpoint))
    tasks = train_data.read_tasks(FLAGS.tasks, FLAGS.niv2_dir)
    summary = evaluation.evaluate_checkpoint(FLAGS.checkpoint, tasks, vocabulary, config,
                                          FLAGS.out)
    print(json.dumps({"out": FLAGS.out, "num_tasks": len(tasks),
                      **{k: v for k, v in summary.items() if not isinstance(v, dict)}}))
