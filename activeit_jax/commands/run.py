"""`activeit-jax run`: the whole active instruction tuning loop, resumable, then the report.

    activeit-jax run --gin_file=configs/demo.gin --out=demo_output
    activeit-jax run --gin_file=configs/experiments/niv2_t5_large.gin --out=runs/niv2 \\
        --gin.LoopConfig.seeds="(0, 1, 2)"
    activeit-jax run --gin_file=configs/demo_self_instruct.gin --out=demo_si

The gin file binds the model (`%MODEL`) and the vocabulary (`%VOCABULARY`) -- or leaves them to
the base checkpoint (`experiment.init_checkpoint`: its config.json and stored tokenizer, as
`activeit-jax convert` writes them) --, the task pool
(`experiment.pool`: "niv2" with `experiment.niv2_dir`, or "self_instruct" with
`experiment.self_instruct_file` and `experiment.self_instruct_test_file`), the trainer settings
(`TrainConfig.*`), the scorer settings (`ScoreConfig.*`), the loop (`LoopConfig.*`) and the
experiment split (`experiment.*`, `NIV2Quotas` / `SelfInstructQuotas`). Rerunning the same
command continues an interrupted run; at the end `OUT/report/` holds the tables, the plots and
`report.html`.

Zero-shot iteration 0 (`NIV2Quotas.num_initial = 0` / `SelfInstructQuotas.num_initial = 0`,
with `LoopConfig.tasks_per_iteration` set): iteration 0 trains nothing; its model is the base
checkpoint as installed, evaluated and scoring the pool as it is, and every later iteration
fine-tunes from the base weights on the tasks selected so far (`configs/demo.gin`:
SmolLM2-135M-Instruct).

Self-Instruct pool (`experiment.pool = "self_instruct"`, a decoder-only model):

- prepare: `prepared.prepare_self_instruct` draws the initial tasks (`SelfInstructQuotas`:
  500 in the paper; None scales 500 by file size / 52,002, so give it explicitly for small
  files), the rest is the pool, cut into 13 output-length chunks (`split.chunks`); the loop's
  selection uses `LoopConfig.quota = "self_instruct"` (required) with those chunk ids.
  The test role is `self_instruct_test_file` (the 252 user-oriented instructions), used for
  evaluation only. `self_instruct_num_validation` tasks may be held out of the pool (seeded)
  as a validation role.
- train: the Alpaca recipe -- fixed epochs, the last epoch is the model (`train/best`): the
  trainer gets no validation tasks unless `select_epoch_on_validation` is True. (NIV2 keeps
  the Tk-Instruct practice: best epoch by validation ROUGE-L.)
- evaluate: ROUGE-L / exact match of greedy predictions (Alpaca prompt, as the user turn of
  the model's chat template when it has one) on the held-out
  validation tasks ("val", the loop's validation signal) and on the test file ("test"); the
  predictions stay in `iter_i/eval_{val,test}/predictions.jsonl`.
- score: prompt uncertainty with the same prompt (`scoring`, decoder-only path).
- judge (optional, off by default): `experiment.judge = @JudgeConfig()`, or a list of them
  for several judges (`[@gpt4/JudgeConfig(), @chatgpt/JudgeConfig()]`, as the paper's GPT-4
  and ChatGPT; base_url, model, name, api_key_env naming the environment variable that holds
  the key) compares, after the loop, every strategy's model with `judge_reference`'s (default
  "random") at the same iteration on the test predictions (`active_loop.run_judge`), writing
  `seed_{s}/{strategy}/iter_{i}/judge_vs_{reference}.{judge name}.jsonl`; the report has one
  Win / Tie / Lose table per judge.

Both pools:

- labels: a task is classification or generative by the rule of `activeit_jax/data/labels.py`;
  `experiment.label_overrides` names a file (Active-IT `task_metadata.json` format, JSON or
  CSV task -> cls|gen, as `prepare --label_overrides`) whose labels win. Each seed prints how
  many labels came from the rule and from the file, and the report repeats it.
- scoring: strategies that read the scorer's optional entropy (the "uncertainty" baseline)
  turn `ScoreConfig.compute_entropy` on.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import gin
from absl import flags

from activeit_jax.commands import common

FLAGS = flags.FLAGS

flags.DEFINE_string("out", None, "Run directory (created, or resumed when it exists).")
flags.DEFINE_boolean("report", True, "Write OUT/report/ when the loop is done.")
common.define_gin_flags()
common.define_distributed_flags()


POOLS = ("niv2", "self_instruct")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything `run` needs, resolved from gin at the entry point.

    `niv2_dir` is set for the "niv2" pool, `self_instruct_file` (+ the optional test file)
    for the "self_instruct" pool; `judge` is None when the judge stage is off, else the judges'
    `JudgeConfig`s (names unique); `label_overrides` is the loaded override file's
    {task: "cls" | "gen"}, or None.
    """
    model: Any
    vocabulary: Any
    niv2_dir: str | None
    train_config: Any
    score_config: Any
    loop: Any
    init_checkpoint: str | None
    quotas: Any
    max_instances_per_task: int | None
    on_bad_task: str
    partitioning: Any
    pool: str = "niv2"
    self_instruct_file: str | None = None
    self_instruct_test_file: str | None = None
    self_instruct_max_items: int | None = None
    self_instruct_num_validation: int = 0
    select_epoch_on_validation: bool = True
    judge: tuple[Any, ...] | None = None
    judge_reference: str = "random"
    judge_seed: int = 0
    label_overrides: dict[str, str] | None = None
    adaptive: Any = None


def _register_configurables() -> None:
    """Makes the library's plain dataclasses bindable from gin (edges only)."""
    from activeit_jax import scoring
    from activeit_jax.data import splits
    from activeit_jax.loop import active_loop, judge
    for cls, module in ((active_loop.LoopConfig, "activeit_jax.loop.active_loop"),
                        (scoring.ScoreConfig, "activeit_jax.scoring"),
                        (splits.NIV2Quotas, "activeit_jax.data.splits"),
                        (splits.SelfInstructQuotas, "activeit_jax.data.splits"),
                        (judge.JudgeConfig, "activeit_jax.loop.judge")):
        try:
            gin.external_configurable(cls, module=module)
        except ValueError:
            pass  # already registered (the command ran before in this process)


@gin.configurable(module="activeit_jax.commands.run")
def experiment(model: Any = None, vocabulary: Any = None,
               niv2_dir: str | None = None, train_config: Any = None,
               score_config: Any = None, loop: Any = None,
               init_checkpoint: str | None = None, quotas: Any = None,
               max_instances_per_task: int | None = 100, on_bad_task: str = "error",
               partitioning: Any = None, pool: str = "niv2",
               self_instruct_file: str | None = None,
               self_instruct_test_file: str | None = None,
               self_instruct_max_items: int | None = None,
               self_instruct_num_validation: int = 0,
               select_epoch_on_validation: bool | None = None, judge: Any = None,
               judge_reference: str = "random", judge_seed: int = 0,
               label_overrides: str | None = None, adaptive_perturbations: int = 0,
               adaptive_z: float = 2.0) -> Experiment:
    """gin face of the experiment; only the entry point calls it.

    Args (beyond the obvious):
      model / vocabulary: the model wrapper and its vocabulary; None = the ones recorded in
        `init_checkpoint` (its config.json; the tokenizer stored beside its weights).
      pool: "niv2" (needs `niv2_dir`) or "self_instruct" (needs `self_instruct_file`).
      quotas: `NIV2Quotas` or `SelfInstructQuotas` (matching the pool), None = the paper's,
        scaled down on partial data.
      self_instruct_test_file: evaluation-only test tasks (the 252 user-oriented ones).
      self_instruct_max_items: read only the first N items of the Self-Instruct file.
      self_instruct_num_validation: pool tasks held out (seeded) as validation tasks.
      select_epoch_on_validation: the trainer picks its best epoch on the validation tasks;
        None = True for NIV2 (Tk-Instruct), False for Self-Instruct (Alpaca: last epoch).
      judge: a `judge.JudgeConfig` or a list of them enabling the judge stage, or None (off).
      judge_reference / judge_seed: the strategy compared against; the presentation seed.
      label_overrides: path of a task -> cls|gen file whose labels win over the rule.
      adaptive_perturbations: K0 of the adaptive perturbation budget (`scoring.adaptive`):
        every pool task gets K0 perturbations, undecided ones more, up to
        `ScoreConfig.num_perturbations`; 0 = exact scoring (every task gets K). Needs a fixed
        `LoopConfig.tasks_per_iteration` (the selection size whose boundary matters) and no
        entropy (the "uncertainty" strategy); single host; a killed scoring stage restarts.
      adaptive_z: the adaptive budget's confidence bound, in standard errors.

    Raises:
      ValueError: a missing or contradictory setting (named in the message).
    """
    # gin hands a `%gin.REQUIRED` binding (or macro) over as its sentinel instead of failing.
    missing = [name for name, value in locals().items() if value is gin.REQUIRED]
    if missing:
        raise ValueError(f"experiment.{missing[0]} is required: bind it (e.g. "
                         f"--gin.experiment.{missing[0]}=...) or the macro the config names")
    from activeit_jax import scoring
    from activeit_jax.data import splits
    from activeit_jax.loop import active_loop
    from activeit_jax.training.config import TrainConfig
    model, vocabulary = _model_and_vocabulary(model, vocabulary, init_checkpoint)
    loop = loop or active_loop.LoopConfig()
    if pool not in POOLS:
        raise ValueError(f"experiment.pool must be one of {POOLS}, got {pool!r}")
    if pool == "niv2":
        if not niv2_dir:
            raise ValueError("experiment.niv2_dir is required for the 'niv2' pool")
        if quotas is not None and not isinstance(quotas, splits.NIV2Quotas):
            raise ValueError("the 'niv2' pool takes NIV2Quotas (experiment.quotas)")
        if loop.quota == "self_instruct":
            raise ValueError("LoopConfig.quota 'self_instruct' needs the 'self_instruct' pool "
                             "(NIV2 tasks have no output-length chunks)")
    else:
        if not self_instruct_file:
            raise ValueError("experiment.self_instruct_file is required for the "
                             "'self_instruct' pool")
        if quotas is not None and not isinstance(quotas, splits.SelfInstructQuotas):
            raise ValueError("the 'self_instruct' pool takes SelfInstructQuotas "
                             "(experiment.quotas)")
        if loop.quota == "niv2":
            raise ValueError("the 'self_instruct' pool selects by output-length chunk: set "
                             "LoopConfig.quota = \"self_instruct\" (or \"none\")")
        if self_instruct_num_validation < 0:
            raise ValueError("experiment.self_instruct_num_validation must be >= 0")
    if (quotas is not None and quotas.num_initial == 0 and not loop.tasks_per_iteration
            and not loop.train_set_sizes):
        raise ValueError("a zero-shot iteration 0 (num_initial = 0) needs "
                         "LoopConfig.tasks_per_iteration or LoopConfig.train_set_sizes")
    if judge:
        if judge_reference not in loop.strategies:
            raise ValueError(f"experiment.judge_reference {judge_reference!r} is not one of "
                             f"LoopConfig.strategies {list(loop.strategies)}")
        if pool == "self_instruct" and not self_instruct_test_file:
            raise ValueError("the judge compares answers on experiment.self_instruct_test_file")
    judges = _judge_configs(judge)
    if select_epoch_on_validation is None:
        select_epoch_on_validation = pool == "niv2"
    score_config = score_config or scoring.ScoreConfig()
    if "entropy" in loop.scores_needed() and not score_config.compute_entropy:
        # Entropy is an optional extra of the scorer; a strategy that ranks by it needs it on.
        score_config = dataclasses.replace(score_config, compute_entropy=True)
    adaptive = _adaptive_policy(adaptive_perturbations, adaptive_z, loop, score_config)
    overrides = None
    if label_overrides:
        from activeit_jax.data import labels
        from activeit_jax.data.configurables import resolve_repo_path
        overrides = labels.load_label_overrides(resolve_repo_path(label_overrides))
    return Experiment(model=model, vocabulary=vocabulary, niv2_dir=niv2_dir,
                      train_config=train_config or TrainConfig(),
                      score_config=score_config,
                      loop=loop, init_checkpoint=init_checkpoint,
                      quotas=quotas, max_instances_per_task=max_instances_per_task,
                      on_bad_task=on_bad_task, partitioning=partitioning, pool=pool,
                      self_instruct_file=self_instruct_file,
                      self_instruct_test_file=self_instruct_test_file,
                      self_instruct_max_items=self_instruct_max_items,
                      self_instruct_num_validation=self_instruct_num_validation,
                      select_epoch_on_validation=select_epoch_on_validation, judge=judges,
                      judge_reference=judge_reference, judge_seed=judge_seed,
                      label_overrides=overrides, adaptive=adaptive)


def _adaptive_policy(k0: int, z: float, loop: Any, score_config: Any) -> Any:
    """The loop's adaptive perturbation policy (`scoring.adaptive.AdaptiveConfig`), or None.

    The boundary that matters is the next selection: `tasks_per_iteration` tasks, split by the
    loop's label quota as `selection.select` splits them.

    Raises:
      ValueError: a setting the adaptive budget cannot serve (named in the message).
    """
    if not k0:
        return None
    from activeit_jax.loop import selection
    from activeit_jax.scoring import adaptive
    if k0 < 1 or z <= 0:
        raise ValueError(f"experiment.adaptive_perturbations must be >= 1 (0 = off) and "
                         f"adaptive_z > 0, got {k0}, {z}")
    if not loop.tasks_per_iteration:
        raise ValueError("experiment.adaptive_perturbations needs a fixed "
                         "LoopConfig.tasks_per_iteration (the selection it decides)")
    if score_config.compute_entropy or score_config.save_prompts:
        raise ValueError("experiment.adaptive_perturbations computes neither entropy (the "
                         "'uncertainty' strategy) nor saved prompts: turn one of them off")
    quota = None
    if loop.quota == "niv2":
        ratio = dict(selection.DEFAULT_LABEL_RATIO if loop.label_ratio is None
                     else loop.label_ratio)
        parts = selection.largest_remainder(loop.tasks_per_iteration, list(ratio.values()))
        quota = dict(zip(ratio, parts))
    return adaptive.AdaptiveConfig(initial_perturbations=k0,
                                   num_select=loop.tasks_per_iteration, z=z, quota=quota)


def _judge_configs(judge: Any) -> tuple[Any, ...] | None:
    """None, one `JudgeConfig` or a list of them -> None or a tuple with unique names."""
    from activeit_jax.loop import judge as judge_lib
    if judge is None:
        return None
    configs = tuple(judge) if isinstance(judge, (list, tuple)) else (judge,)
    if not configs:
        return None
    names = [judge_lib.judge_name(c) for c in configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"experiment.judge: judges need distinct names, {repeated[0]!r} "
                         f"repeats (set JudgeConfig.name)")
    return configs


def _model_and_vocabulary(model: Any, vocabulary: Any, init_checkpoint: str | None
                          ) -> tuple[Any, Any]:
    """The bound model and vocabulary, each falling back to the base checkpoint's (its
    config.json; the tokenizer stored beside its weights).

    Raises:
      UsageError: no model bound and no base checkpoint to read one from.
      VocabularyError: no vocabulary bound and none stored with the base checkpoint.
    """
    from activeit_jax.core.errors import UsageError
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import checkpoints
    if model is None:
        if not init_checkpoint:
            raise UsageError("experiment.model is required without experiment.init_checkpoint "
                             "(bind it, e.g. the macro %MODEL of configs/models/*.gin)")
        model = checkpoints.read_model(init_checkpoint)
    if vocabulary is None:  # get_vocabulary.path unset (gin): the checkpoint's own tokenizer
        vocabulary = vocab_lib.resolve_vocabulary(None, init_checkpoint,
                                                  what="get_vocabulary.path (gin)")
    return model, vocabulary


def hold_out_validation(data: Any, num_validation: int, seed: int) -> Any:
    """Moves `num_validation` seeded pool tasks of a Self-Instruct `PreparedData` to its
    validation role (and out of the pool's output-length chunks).

    Raises:
      SplitError: the pool would be left empty.
    """
    from activeit_jax.data import hashing
    from activeit_jax.data.errors import SplitError
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


LABEL_SOURCE_WORDS = {"rule": "rule", "override": "override file",
                      "metadata": "Self-Instruct metadata"}


def check_label_overrides(data: Any, overrides: dict[str, str] | None, out_dir: str) -> None:
    """Refuses a prepared split whose labels disagree with the override file.

    A run resumed with another (or no longer any) override file would otherwise keep the
    labels it was prepared with, silently.

    Raises:
      ValueError: a task named in `overrides` has another label (or source) in `data`.
    """
    for name, task in data.tasks.items():
        wanted = overrides.get(name) if overrides else None
        if (wanted is not None and (task.label, task.label_source) != (wanted, "override")) or (
                wanted is None and task.label_source == "override"):
            raise ValueError(f"{out_dir} was prepared with other label overrides (task {name!r} "
                             f"is {task.label!r} from the {task.label_source}); use the same "
                             f"experiment.label_overrides or a new --out")


def build_stages(exp: Experiment):
    """Binds the loop's stages to the data layer, the trainer and the scorer."""
    from activeit_jax import partitioning, scoring
    from activeit_jax.core import distributed
    from activeit_jax.data import prepared as prepared_lib
    from activeit_jax.loop import active_loop
    from activeit_jax.models import checkpoints
    from activeit_jax.training import evaluation, run_dir, trainer

    train_config = exp.train_config
    if exp.partitioning is not None:
        train_config = dataclasses.replace(
            train_config, mesh_shape=dict(exp.partitioning.axis_sizes),
            logical_axis_rules=tuple(exp.partitioning.logical_axis_rules))
    init = exp.init_checkpoint

    reported: set[int] = set()

    def prepared_with_labels(seed: int, out_dir: str):
        data = prepared_lib.load_prepared(out_dir)
        check_label_overrides(data, exp.label_overrides, out_dir)
        if seed not in reported and distributed.is_primary():
            reported.add(seed)
            counts = prepared_lib.label_source_counts(data.summary())
            print(f"seed {seed}: task labels (cls/gen) of {sum(counts.values())} tasks: "
                  + ", ".join(f"{n} from the {LABEL_SOURCE_WORDS.get(k, k)}"
                              for k, n in counts.items()))
        return data

    def prepare(seed: int, out_dir: str):
        distributed.barrier("activeit_run_prepare")  # all hosts look at out_dir together
        if os.path.exists(os.path.join(out_dir, "splits.json")):
            return prepared_with_labels(seed, out_dir)
        if exp.pool == "self_instruct":
            from activeit_jax.data.configurables import resolve_repo_path
            test_file = exp.self_instruct_test_file
            data = prepared_lib.prepare_self_instruct(
                resolve_repo_path(exp.self_instruct_file),
                test_path=resolve_repo_path(test_file) if test_file else None, seed=seed,
                label_overrides=exp.label_overrides, quotas=exp.quotas,
                max_items=exp.self_instruct_max_items)
            data = hold_out_validation(data, exp.self_instruct_num_validation, seed)
        else:
            data = prepared_lib.prepare_niv2(exp.niv2_dir, seed=seed,
                                             on_bad_task=exp.on_bad_task,
                                             label_overrides=exp.label_overrides,
                                             quotas=exp.quotas,
                                             max_instances_per_task=exp.max_instances_per_task)
        if distributed.is_primary():  # every host drew the same split; one writes it
            prepared_lib.write_prepared(data, out_dir)
        distributed.barrier("activeit_run_prepared")
        return prepared_with_labels(seed, out_dir)

    def train(train_tasks, val_tasks, out_dir: str) -> str:
        if not train_tasks:  # zero-shot iteration 0: the base model as installed
            if not init:
                raise ValueError("no training tasks and no experiment.init_checkpoint: "
                                 "iteration 0 has no model to evaluate")
            return init
        best = os.path.join(out_dir, "best")
        if os.path.exists(os.path.join(out_dir, run_dir.SUMMARY_FILE)):
            return best  # finished before (its intermediate checkpoints may be gone)
        if not exp.select_epoch_on_validation:
            val_tasks = []  # fixed epochs, the last one is kept (the evaluate stage validates)
        result = trainer.train_and_evaluate(exp.model, train_tasks, val_tasks,
                                            exp.vocabulary, train_config, out_dir, init=init)
        return result.best_checkpoint_dir

    def evaluate(checkpoint_dir: str, tasks, out_dir: str):
        summary = evaluation.evaluate_checkpoint(checkpoint_dir, tasks, exp.vocabulary,
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
        if exp.adaptive is not None:
            import jax

            from activeit_jax.scoring import adaptive
            if jax.process_count() > 1:
                raise ValueError("experiment.adaptive_perturbations runs on one host only")
            adaptive.score_pool_adaptive(
                exp.model, params, exp.vocabulary, tasks, out_dir, exp.score_config,
                exp.adaptive, mesh=mesh,
                run_args={"checkpoint": os.path.abspath(checkpoint_dir)})
            return
        scoring.score_pool(exp.model, params, exp.vocabulary, tasks, out_dir,
                           exp.score_config, mesh=mesh, total=len(tasks),
                           run_args={"checkpoint": os.path.abspath(checkpoint_dir)})

    return active_loop.Stages(prepare=prepare, train=train, evaluate=evaluate, score=score)


def main(argv: list[str]) -> None:
    common.check_args(argv, ("out",))
    common.initialize_distributed_from_flags()
    common.quiet_library_logs()
    _register_configurables()
    import activeit_jax.data.configurables  # noqa: F401
    import activeit_jax.models  # noqa: F401
    from activeit_jax.loop import active_loop  # noqa: F401 (gin registrations)
    from activeit_jax.reporting import render as reports
    from activeit_jax.training import config as _train_config  # noqa: F401 (gin registrations)
    common.parse_gin_from_flags()
    exp = experiment()
    import jax

    from activeit_jax.core import io_utils, run_lock
    from activeit_jax.loop import judge
    clients = None
    if exp.judge is not None and jax.process_index() == 0:
        # A missing API key fails now, not after hours of training.
        clients = {judge.judge_name(c): judge.ChatClient(c) for c in exp.judge}
    stages = build_stages(exp)
    with run_lock.hold(FLAGS.out, "run", jax.process_index()):
        if jax.process_index() == 0:  # what a killed atomic write left anywhere in the run
            io_utils.remove_stale_temp_files(FLAGS.out, recursive=True)
        result = active_loop.run_loop(FLAGS.out, exp.loop, stages)
        logging.info("loop finished: %s", result)
        if exp.judge is not None:
            comparisons = active_loop.run_judge(FLAGS.out, exp.loop, stages, clients,
                                                reference=exp.judge_reference,
                                                seed=exp.judge_seed)
            for c in comparisons:
                if c["win"] is not None:
                    print(f"judge {c['judge']} seed {c['seed']} {c['strategy']} vs "
                          f"{c['reference']} iteration {c['iteration']}: {c['win']} win / "
                          f"{c['tie']} tie / {c['lose']} lose")
        if FLAGS.report:
            written = reports.write_report(FLAGS.out)
            print(f"report: {written.get('report.html', os.path.join(FLAGS.out, 'report'))}")
