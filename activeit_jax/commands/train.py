"""`activeit-jax train`: fine-tune a model on a task set, validate every epoch, keep the best.

    activeit-jax train --gin_file=runs/finetune_niv2.gin --tasks=FILE [--val_tasks=FILE] \\
        --out=DIR [--niv2_dir=DIR] [--init_checkpoint=CKPT] [--gin.TrainConfig.num_epochs=2]
    activeit-jax train --gin_file=runs/finetune_tiny.gin --tasks=FILE --val_tasks=FILE --out=DIR
    activeit-jax train --gin_file=runs/finetune_self_instruct.gin --self_instruct=FILE --out=DIR

The settings are the `TrainConfig` of gin (`--gin.TrainConfig.num_epochs=2` or a gin file);
this command has no shortcut flags for them. `--niv2_dir` and `--init_checkpoint` (the weights
the run starts from; one name for that concept everywhere: `train_job.init_checkpoint`,
`experiment.init_checkpoint`, `train_and_evaluate(init_checkpoint=...)`) override the gin
file's `train_job.niv2_dir` / `train_job.init_checkpoint`; given together with a `--gin.`
binding of the same field they are refused.

`--tasks` / `--val_tasks`: a text file of NIV2 task names (one per line, read from
`--niv2_dir/tasks/`), a JSON list / `{"tasks": [...]}`, or a `.jsonl` of prepared tasks.
gin binds `train_job` (`activeit_jax.training.trainer.TrainJob`). The model comes from
`train_job.model` (e.g. `MODEL` of `configs/models/*.gin`) and/or `--init_checkpoint`: with a
checkpoint and no gin model, the checkpoint's own config is used; with both, the gin model (its
dtype, dropout) must have the checkpoint's parameter shapes. Without a checkpoint, training
starts from random weights only when the gin config allows it
(`train_job.allow_random_init = True`, as in the tiny config).

Writes DIR/best (the best epoch, `checkpoints.save_model` layout), DIR/best.json,
DIR/metrics.jsonl, DIR/tensorboard/, DIR/eval/, DIR/train_summary.json and DIR/checkpoints/.
Rerunning the same command after a kill resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import gin
from absl import flags

from activeit_jax import layout
from activeit_jax.commands import common
from activeit_jax.core import io_utils
from activeit_jax.core.errors import UsageError

logger = logging.getLogger(__name__)

FLAGS = flags.FLAGS

flags.DEFINE_string("tasks", None, "Training tasks: names file, JSON list or prepared .jsonl.")
flags.DEFINE_string("val_tasks", None, "Validation tasks (same formats); none = keep the last "
                    "epoch.")
flags.DEFINE_string("self_instruct", None, "Train on a Self-Instruct / Alpaca JSON(L) file "
                    "instead of --tasks (decoder-only models).")
flags.DEFINE_string("niv2_dir", None, "NIV2 root for task names (default: gin "
                    "train_job.niv2_dir).")
flags.DEFINE_string("out", None, "Run directory (resumed when it holds the same run).")
flags.DEFINE_string("init_checkpoint", None, "Initial weights: an activeit-jax checkpoint "
                    "directory (default: gin train_job.init_checkpoint).")
flags.DEFINE_integer("stop_after_steps", None, "Stop after this many optimizer steps, as if "
                     "killed (for testing resumption).")
common.define_gin_flags()
common.define_distributed_flags()


def resolve_model(model: Any, init_checkpoint: str | None, rules: Any) -> Any:
    """The gin model, the checkpoint's, or the gin model checked against the checkpoint."""
    import jax

    from activeit_jax.models import checkpoints
    if init_checkpoint is None:
        if model is None:
            raise UsageError("no model: bind train_job.model (e.g. include a "
                             "configs/models/*.gin) or pass --init_checkpoint")
        return model
    saved = checkpoints.read_model(init_checkpoint, rules)
    if model is None:
        return saved
    shapes = lambda m: jax.tree.map(lambda a: (a.shape, str(a.dtype)),  # noqa: E731
                                    m.abstract_params())
    if shapes(model) != shapes(saved):
        raise UsageError(f"the gin model {model!r} does not have the parameter shapes of "
                         f"{init_checkpoint} ({saved!r})")
    return model


def check_paths(niv2_dir: str | None, init_checkpoint: str | None) -> None:
    """Refuses an --out that is (or would overwrite) one of the inputs."""
    from activeit_jax import layout
    common.refuse_outputs_among_inputs(
        {"tasks": FLAGS.tasks, "val_tasks": FLAGS.val_tasks, "self_instruct": FLAGS.self_instruct,
         "niv2_dir": niv2_dir, "init_checkpoint": init_checkpoint},
        {"out": FLAGS.out},
        {"out": (layout.CHECKPOINTS_DIR, layout.BEST_DIR, layout.BEST_INFO_FILE,
                 layout.TRAIN_METRICS_FILE, layout.TRAIN_SUMMARY_FILE, layout.RUN_ARGS_FILE,
                 layout.DAMAGED_CHECKPOINTS_DIR, layout.TRAIN_EVAL_DIR, layout.TENSORBOARD_DIR,
                 layout.GIN_CONFIG_FILE)})


def main(argv: list[str]) -> None:
    common.check_args(argv, ("out",))
    if bool(FLAGS.tasks) == bool(FLAGS.self_instruct):
        raise UsageError("give exactly one training set: --tasks or --self_instruct")
    common.initialize_distributed_from_flags()  # before anything touches a device
    common.parse_gin_from_flags()

    from activeit_jax.training import config as train_config, inputs as train_data, trainer
    # The path flags override the gin file's train_job defaults, not a --gin. binding.
    common.refuse_flag_and_binding(("activeit_jax.training.train_job",),
                                   {"niv2_dir": "niv2_dir",
                                    "init_checkpoint": "init_checkpoint"}, "train_job")

    job = train_config.train_job()
    config = job.resolved_config()
    niv2_dir = FLAGS.niv2_dir or job.niv2_dir
    if niv2_dir and not FLAGS.niv2_dir:
        from activeit_jax.data.configurables import resolve_repo_path
        niv2_dir = resolve_repo_path(niv2_dir)  # gin's "data/sample/niv2" from anywhere
    init_checkpoint = FLAGS.init_checkpoint or job.init_checkpoint
    check_paths(niv2_dir, init_checkpoint)
    if init_checkpoint is None and not job.allow_random_init:
        raise UsageError("no --init_checkpoint: convert a pretrained model first "
                         "(activeit-jax convert), or set train_job.allow_random_init = True")
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import checkpoints

    # The gin vocabulary, else the tokenizer stored with the initial checkpoint.
    vocabulary = vocab_lib.resolve_vocabulary(
        job.vocabulary, init_checkpoint,
        what="get_vocabulary.path or train_job.vocabulary (gin)",
        decoder_only=checkpoints.is_decoder_only_checkpoint(init_checkpoint))
    model = resolve_model(job.model, init_checkpoint, config.logical_axis_rules)

    if FLAGS.self_instruct:
        from activeit_jax.data import self_instruct
        train_tasks = self_instruct.load_self_instruct(FLAGS.self_instruct)
    else:
        train_tasks = train_data.read_tasks(FLAGS.tasks, niv2_dir)
    val_tasks = train_data.read_tasks(FLAGS.val_tasks, niv2_dir) if FLAGS.val_tasks else []
    logger.info("model %r; %d training tasks, %d validation tasks", model, len(train_tasks),
                len(val_tasks))
    result = trainer.train_and_evaluate(
        model, train_tasks, val_tasks, vocabulary, config, FLAGS.out,
        init_checkpoint=init_checkpoint, stop_after_steps=FLAGS.stop_after_steps)
    if result.completed:
        io_utils.atomic_write_text(os.path.join(FLAGS.out, layout.GIN_CONFIG_FILE),
                                   gin.operative_config_str())
    print(json.dumps({"out": os.path.abspath(FLAGS.out), "completed": result.completed,
                      "final_step": result.final_step, "best_epoch": result.best_epoch,
                      "best_checkpoint": result.best_checkpoint_dir,
                      "best_scores": {k: v for k, v in result.best_metrics.items()
                                      if not isinstance(v, dict)}}))
