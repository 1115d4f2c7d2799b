"""`activeit-jax run`: the whole active instruction tuning loop, resumable, then the report.

    activeit-jax run --gin_file=configs/demo.gin --out=demo_output
    activeit-jax run --gin_file=configs/experiments/niv2_t5_large.gin --out=runs/niv2 \\
        --gin.LoopConfig.seeds="(0, 1, 2)"

The gin file binds the model (`%MODEL`), the vocabulary (`%VOCABULARY`), the NIV2 directory
(`%NIV2_DIR`), the trainer settings (`TrainConfig.*`), the scorer settings (`ScoreConfig.*`),
the loop (`LoopConfig.*`) and the experiment split (`experiment.*`). Rerunning the same
command continues an interrupted run; at the end `OUT/report/` holds the tables, the plots and
`report.html`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

import gin
from absl import flags

from activeit_jax.commands import common

FLAGS = flags.FLAGS

flags.DEFINE_string("out", None, "Run directory (created, or resumed when it exists).")
flags.DEFINE_boolean("report", True, "Write OUT/report/ when the loop is done.")
common.define_gin_flags()
common.define_distributed_flags()


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything `run` needs, resolved from gin at the entry point."""
    model: Any
    vocabulary: Any
    niv2_dir: str
    train_config: Any
    score_config: Any
    loop: Any
    init_checkpoint: str | None
    quotas: Any
    max_instances_per_task: int | None
    on_bad_task: str
    partitioning: Any


def _register_configurables() -> None:
    """Makes the library's plain dataclasses bindable from gin (edges only)."""
    from activeit_jax import active_loop, scoring
    from activeit_jax.data import splits
    for cls, module in ((active_loop.LoopConfig, "activeit_jax.active_loop"),
                        (scoring.ScoreConfig, "activeit_jax.scoring"),
                        (splits.NIV2Quotas, "activeit_jax.data.splits")):
        try:
            gin.external_configurable(cls, module=module)
        except ValueError:
            pass  # already registered (the command ran before in this process)


@gin.configurable(module="activeit_jax.commands.run")
def experiment(model: Any = gin.REQUIRED, vocabulary: Any = gin.REQUIRED,
               niv2_dir: str = gin.REQUIRED, train_config: Any = None,
               score_config: Any = None, loop: Any = None,
               init_checkpoint: str | None = None, quotas: Any = None,
               max_instances_per_task: int | None = 100, on_bad_task: str = "error",
               partitioning: Any = None) -> Experiment:
    """gin face of the experiment; only the entry point calls it."""
    from activeit_jax import active_loop, scoring, trainer
    return Experiment(model=model, vocabulary=vocabulary, niv2_dir=niv2_dir,
                      train_config=train_config or trainer.TrainConfig(),
                      score_config=score_config or scoring.ScoreConfig(),
                      loop=loop or active_loop.LoopConfig(), init_checkpoint=init_checkpoint,
                      quotas=quotas, max_instances_per_task=max_instances_per_task,
                      on_bad_task=on_bad_task, partitioning=partitioning)


def build_stages(exp: Experiment):
    """Binds the loop's stages to the data layer, the trainer and the scorer."""
    from activeit_jax import active_loop, checkpoints, partitioning, scoring, trainer
    from activeit_jax.data import prepared as prepared_lib

    train_config = exp.train_config
    if exp.partitioning is not None:
        train_config = dataclasses.replace(
            train_config, mesh_shape=dict(exp.partitioning.axis_sizes),
            logical_axis_rules=tuple(exp.partitioning.logical_axis_rules))
    init = exp.init_checkpoint

    def prepare(seed: int, out_dir: str):
        if os.path.exists(os.path.join(out_dir, "splits.json")):
            return prepared_lib.load_prepared(out_dir)
        data = prepared_lib.prepare_niv2(exp.niv2_dir, seed=seed, on_bad_task=exp.on_bad_task,
                                         quotas=exp.quotas,
                                         max_instances_per_task=exp.max_instances_per_task)
        prepared_lib.write_prepared(data, out_dir)
        return prepared_lib.load_prepared(out_dir)

    def train(train_tasks, val_tasks, out_dir: str) -> str:
        best = os.path.join(out_dir, "best")
        if os.path.exists(os.path.join(out_dir, trainer.SUMMARY_FILE)):
            return best  # finished before (its intermediate checkpoints may be gone)
        result = trainer.train_and_evaluate(exp.model, train_tasks, val_tasks,
                                            exp.vocabulary, train_config, out_dir, init=init)
        return result.best_checkpoint_dir

    def evaluate(checkpoint_dir: str, tasks, out_dir: str):
        summary = trainer.evaluate_checkpoint(checkpoint_dir, tasks, exp.vocabulary,
                                              train_config, out_dir, model=exp.model)
        labels = {task.name: task.label for task in tasks}
        counts = {task.name: min(len(task.instances),
                                 train_config.max_eval_instances_per_task or len(task.instances))
                  for task in tasks}
        return [{"task": name, "label": labels[name], "rouge_l": scores["rougeL"],
                 "exact_match": scores["exact_match"], "n_instances": counts[name]}
                for name, scores in summary["per_task"].items()]

    def score(checkpoint_dir: str, tasks, out_dir: str) -> None:
        if os.path.exists(os.path.join(out_dir, scoring.SUMMARY_FILE)):
            return
        mesh = partitioning.make_mesh(train_config.mesh_shape)
        shardings = partitioning.params_shardings(exp.model, mesh,
                                                  train_config.logical_axis_rules)
        params = checkpoints.restore_params(checkpoint_dir, exp.model, shardings)
        scoring.score_pool(exp.model, params, exp.vocabulary, tasks, out_dir,
                           exp.score_config, mesh=mesh, total=len(tasks),
                           run_args={"checkpoint": os.path.abspath(checkpoint_dir)})

    return active_loop.Stages(prepare=prepare, train=train, evaluate=evaluate, score=score)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.out:
        sys.exit("activeit-jax run: --out is required")
    common.initialize_distributed_from_flags()
    common.quiet_library_logs()
    _register_configurables()
    from activeit_jax import active_loop, reports, trainer  # noqa: F401 (gin registrations)
    import activeit_jax.data.configurables  # noqa: F401
    import activeit_jax.models  # noqa: F401
    common.parse_gin_from_flags()
    exp = experiment()
    result = active_loop.run_loop(FLAGS.out, exp.loop, build_stages(exp))
    logging.info("loop finished: %s", result)
    if FLAGS.report:
        written = reports.write_report(FLAGS.out)
        print(f"report: {written.get('report.html', os.path.join(FLAGS.out, 'report'))}")
