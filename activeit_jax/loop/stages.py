"""An experiment run: the loop's stages bound to the real components (`build_stages`: the
data layer prepares a seed's split, the trainer trains, the evaluator evaluates, the scorer
scores), then the loop and the judge (`run_experiment`).

`active_loop.run_loop` only sees `active_loop.Stages`; this module is where a resolved
`loop.experiment.Experiment` meets the packages below the loop. Multi-host rules: `loop.hosts`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from activeit_jax import layout, partitioning, scoring
from activeit_jax.data import hashing, labels as labels_lib, prepared as prepared_lib
from activeit_jax.data.configurables import resolve_repo_path
from activeit_jax.data.errors import SplitError
from activeit_jax.loop import active_loop, hosts, judge as judge_lib
from activeit_jax.loop.experiment import Experiment
from activeit_jax.models import checkpoints
from activeit_jax.training import evaluation, trainer

log = logging.getLogger(__name__)

LABEL_SOURCE_WORDS = labels_lib.LABEL_SOURCE_WORDS


def hold_out_validation(data: prepared_lib.PreparedData, num_validation: int, seed: int
                        ) -> prepared_lib.PreparedData:
    """Moves `num_validation` seeded pool tasks of a Self-Instruct `PreparedData` to its
    validation role (and out of the pool's output-length chunks).

    Raises:
      SplitError: the pool would be left empty.
    """
    split = data.split
    if num_validation <= 0:
        return data
    if num_validation >= len(split.pool):
        raise SplitError(f"{num_validation} validation tasks would leave no pool task "
                         f"({len(split.pool)} in the pool)")
    held = set(hashing.stable_shuffle(split.pool, seed, "validation")[:num_validation])
    new_split = dataclasses.replace(
        split, validation=tuple(sorted(held)),
        pool=tuple(n for n in split.pool if n not in held),
        chunks=tuple(tuple(n for n in chunk if n not in held) for chunk in split.chunks),
        note=f"{split.note}; {num_validation} pool tasks held out for validation")
    return dataclasses.replace(data, split=new_split)


def label_file_of(exp: Experiment) -> labels_lib.LabelSource | None:
    """The label file of a resolved experiment, or None when the rule labels every task."""
    return exp.label_source if isinstance(exp.label_source, labels_lib.LabelSource) else None


def check_label_source(data: prepared_lib.PreparedData,
                       label_file: labels_lib.LabelSource | None, out_dir: str) -> None:
    """Refuses a prepared split whose labels disagree with the label source.

    A run resumed with another (or no longer any) label file would otherwise keep the labels
    it was prepared with, silently.

    Raises:
      ValueError: a task named in `label_file` has another label, metric label (CLS_GEN) or
        source in `data`, or a task labelled by a file is not named in `label_file`.
    """
    metric = label_file.metric_labels if label_file is not None else {}
    for name, task in data.tasks.items():
        wanted = label_file.get(name) if label_file is not None else None
        if wanted is not None:
            agrees = (task.label, task.label_source, task.metric_label) == (
                wanted, "override", metric.get(name))
        else:
            agrees = task.label_source != "override"
        if not agrees:
            raise ValueError(f"{out_dir} was prepared with another label source (task {name!r} "
                             f"is {task.label!r} from the {task.label_source}); use the same "
                             f"experiment.label_source or a new --out")


def _draw_split(exp: Experiment, seed: int) -> prepared_lib.PreparedData:
    """The seed's experiment split of the configured pool (process 0 draws and writes it,
    the others read it)."""
    if exp.pool == "self_instruct":
        test_file = exp.self_instruct_test_file
        data = prepared_lib.prepare_self_instruct(
            resolve_repo_path(exp.self_instruct_file),
            test_path=resolve_repo_path(test_file) if test_file else None, seed=seed,
            label_overrides=label_file_of(exp), quotas=exp.quotas,
            max_items=exp.self_instruct_max_items)
        return hold_out_validation(data, exp.self_instruct_num_validation, seed)
    return prepared_lib.prepare_niv2(exp.niv2_dir, seed=seed, on_bad_task=exp.on_bad_task,
                                     label_overrides=label_file_of(exp), quotas=exp.quotas,
                                     max_instances_per_task=exp.max_instances_per_task)


def _evaluation_records(tasks: Sequence[Any], summary: Mapping[str, Any], max_instances: int | None
                        ) -> list[dict[str, Any]]:
    """The loop's per-task records of an evaluator summary (`loop.iteration_metrics`)."""
    labels = {task.name: labels_lib.metric_label_of(task) for task in tasks}
    counts = {task.name: min(len(task.instances), max_instances or len(task.instances))
              for task in tasks}
    return [{"task": name, "label": labels[name], "rouge_l": scores["rougeL"],
             "exact_match": scores["exact_match"], "n_instances": counts[name]}
            for name, scores in summary["per_task"].items()]


def build_stages(exp: Experiment) -> active_loop.Stages:
    """Binds the loop's stages to the data layer, the trainer, the evaluator and the scorer.

    Args:
      exp: a resolved `Experiment`.

    Returns:
      The stages `active_loop.run_loop` and `active_loop.run_judge` call; each skips what a
      finished earlier call wrote.
    """
    train_config = exp.train_config.with_partitioning(exp.partitioning)
    init_checkpoint = exp.init_checkpoint
    reported: set[int] = set()

    def prepared_with_labels(seed: int, out_dir: str) -> prepared_lib.PreparedData:
        data = prepared_lib.load_prepared(out_dir)
        check_label_source(data, label_file_of(exp), out_dir)
        if seed not in reported and hosts.is_writer():
            reported.add(seed)
            counts = prepared_lib.label_source_counts(data.summary())
            where = label_file_of(exp)
            print(f"seed {seed}: task labels (cls/gen) of {sum(counts.values())} tasks: "
                  + ", ".join(f"{n} from the {LABEL_SOURCE_WORDS.get(k, k)}"
                              for k, n in counts.items())
                  + (f" ({where.path})" if where is not None else
                     " (label_source: rule)"))
        return data

    def prepare(seed: int, out_dir: str) -> prepared_lib.PreparedData:
        # Not bounded: `run_judge` prepares each seed again while process 0 judges.
        if not hosts.exists(os.path.join(out_dir, layout.SPLITS_FILE), bounded=False):
            hosts.write_once("activeit_run_prepared", lambda: prepared_lib.write_prepared(
                _draw_split(exp, seed), out_dir))
        return prepared_with_labels(seed, out_dir)

    def train(train_tasks: Sequence[Any], val_tasks: Sequence[Any], out_dir: str) -> str:
        if not train_tasks:  # zero-shot iteration 0: the base model as installed
            if not init_checkpoint:
                raise ValueError("no training tasks and no experiment.init_checkpoint: "
                                 "iteration 0 has no model to evaluate")
            return init_checkpoint
        best = os.path.join(out_dir, layout.BEST_DIR)
        if hosts.exists(os.path.join(out_dir, layout.TRAIN_SUMMARY_FILE)):
            return best  # finished before (its intermediate checkpoints may be gone)
        if not exp.select_epoch_on_validation:
            val_tasks = []  # fixed epochs, the last one is kept (the evaluate stage validates)
        result = trainer.train_and_evaluate(exp.model, train_tasks, val_tasks,
                                            exp.vocabulary, train_config, out_dir,
                                            init_checkpoint=init_checkpoint)
        return result.best_checkpoint_dir

    def evaluate(checkpoint_dir: str, tasks: Sequence[Any], out_dir: str
                 ) -> list[dict[str, Any]]:
        summary = evaluation.evaluate_checkpoint(checkpoint_dir, tasks, exp.vocabulary,
                                                 train_config, out_dir, model=exp.model)
        return _evaluation_records(tasks, summary, train_config.max_eval_instances_per_task)

    def score(checkpoint_dir: str, tasks: Sequence[Any], out_dir: str) -> None:
        if hosts.exists(os.path.join(out_dir, layout.SCORE_SUMMARY_FILE)):
            return
        mesh = partitioning.make_mesh(train_config.mesh_shape)
        shardings = partitioning.params_shardings(exp.model, mesh,
                                                  train_config.logical_axis_rules)
        params = checkpoints.restore_params(checkpoint_dir, exp.model, shardings)
        scoring.score_pool(exp.model, params, exp.vocabulary, tasks, out_dir,
                           exp.score_config, mesh=mesh, total=len(tasks),
                           run_args={"checkpoint": os.path.abspath(checkpoint_dir)})

    return active_loop.Stages(prepare=prepare, train=train, evaluate=evaluate, score=score)


def run_experiment(run_dir: str, exp: Experiment,
                   after_loop: Callable[[], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) a resolved experiment in `run_dir`: the loop, then the judge.

    Every process of a multi-host job calls it (`loop.hosts` says who writes what). A missing
    judge API key fails before the first iteration.

    Args:
      run_dir: the run directory (created, or resumed when it exists).
      exp: from `experiment.resolve`.
      after_loop: called in process 0 once the loop and the judge are done, still holding
        the run directory's lock (the command line writes the report there).

    Returns:
      `active_loop.run_loop`'s result.
    """
    clients = None
    if exp.judge is not None:
        clients = hosts.on_writer(lambda: {judge_lib.judge_name(c): judge_lib.ChatClient(c)
                                           for c in exp.judge})
    stages = build_stages(exp)
    with hosts.run_directory(run_dir):
        result = active_loop.run_loop(run_dir, exp.loop, stages)
        log.info("loop finished: %s", result)
        if exp.judge is not None:
            comparisons = active_loop.run_judge(run_dir, exp.loop, stages, clients,
                                                reference=exp.judge_reference,
                                                seed=exp.judge_seed)
            for c in comparisons:
                if c["win"] is not None:
                    print(f"judge {c['judge']} seed {c['seed']} {c['strategy']} iteration "
                          f"{c['iteration']} vs {c['reference']} iteration "
                          f"{c['reference_iteration']}: {c['win']} win / {c['tie']} tie / "
                          f"{c['lose']} lose / {c['error']} error")
        if after_loop is not None and hosts.is_writer():
            after_loop()
        # Nobody leaves before process 0 is done: a process that exits early would fail
        # JAX's shutdown barrier (and the others' watchdog) while process 0 still works.
        hosts.wait_for_writer("activeit_run_done")
    return result
