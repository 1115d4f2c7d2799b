"""The active instruction tuning loop: train, score, select, repeat; resumable at any point.

For each seed:

1. The experiment split (initial / validation / pool / test) is drawn with that seed and
   written to the seed's data directory (the data layer's prepared-pool format).
2. Iteration 0 trains a model from the base weights on the initial tasks, evaluates it on the
   validation and test tasks and scores the whole pool. It is shared by all strategies.
3. For each strategy and iteration i >= 1: the strategy picks the schedule's number of tasks
   (`activeit_jax.loop.schedule`: a fixed increment, a list of training-set sizes or a growth
   factor) from the part of the pool not yet selected (using the previous iteration's
   scores), a new model
   is trained *from the base weights* on the union of everything selected so far, evaluated,
   and (when another iteration follows, or the Task Map is wanted) scores the remaining pool.

Everything lives under one run directory, in the layout of `activeit_jax.layout` (an
iteration's selected tasks, its trainer, evaluator and scorer directories, its metrics, the
scores and Task Map the report reads, and `DONE`, written last). Which process of a multi-host
run writes which file: `activeit_jax.loop.hosts`.

Each stage is itself resumable (trainer and scorer resume from what they wrote; the small files
are written atomically), and a stage whose output exists is skipped, so a loop killed at any
moment and restarted with the same command continues where it was and ends with the same
selections, scores and metrics as an uninterrupted one.

Self-Instruct pools carry output-length chunks (`split.chunks`); each pool task's chunk id
(its position in that list) feeds the "self_instruct" quota of `selection.select`.

After the loop, `run_judge` optionally compares every strategy's model with a reference
strategy's model (default random) at the same iteration, through one or several LLM judges
(`activeit_jax.loop.judge`; the paper uses GPT-4 and ChatGPT) on the test tasks
(Self-Instruct: the 252 user-oriented instructions). The answers compared are the greedy
predictions the evaluate stage stored in the iteration's test evaluator directory; the judge's
results file is resumable item by item.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

from activeit_jax import layout
from activeit_jax.core import io_utils
from activeit_jax.core.errors import UsageError
from activeit_jax.loop import hosts, iteration_metrics, judge as judge_lib, schedule, selection

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The shape of an active-learning experiment.

    Attributes:
      strategies: selection strategies to compare (`selection.list_strategies()`).
      seeds: experiment seeds; each draws its own split and iteration-0 set.
      num_iterations: iterations including iteration 0 (NIV2: 1 + 5 at 68 tasks each).
      tasks_per_iteration: tasks added per iteration; None = as many as the initial set.
      train_set_sizes: instead, the training-set size after each iteration 1 .. N-1 (the
        paper's Self-Instruct runs: 1,000 ... 16,000); see `activeit_jax.loop.schedule`.
      growth_factor: instead, multiply the training set by this every iteration (2 doubles).
      quota: "niv2" (keep the cls/gen ratio), "self_instruct" (per length chunk) or "none".
      label_ratio: {"cls": a, "gen": b} for the NIV2 quota; None = 24 / 44, the reference
        run script's 0.356 classification share of 68 (`selection.DEFAULT_LABEL_RATIO`).
      score_all_strategies: also score the pool after iterations of strategies that do not
        need scores (random, fully_trained), for their Task Maps and the uncertainty figure.
      evaluate_test: evaluate each iteration's model on the test split too.
      keep_train_checkpoints: keep the trainer's intermediate checkpoints once an iteration is
        complete (its best/ checkpoint is always kept).
      perplexity_variant: how high / low perplexity rank (`selection.VARIANTS`): "reference"
        (the reference code: perplexity for every task) or "paper_text" (the paper's text:
        entropy for classification, perplexity for generative tasks).
      category_selection: the order inside a Task Map category (ambiguous / easy / difficult):
        "rank" (the reference code's rankings) or "random" (our seeded draw).
    """
    strategies: Sequence[str] = ("prompt_uncertainty", "random")
    seeds: Sequence[int] = (0,)
    num_iterations: int = 6
    tasks_per_iteration: int | None = None
    train_set_sizes: Sequence[int] | None = None
    growth_factor: float | None = None
    quota: str = "niv2"
    label_ratio: Mapping[str, int] | None = None
    score_all_strategies: bool = True
    evaluate_test: bool = True
    keep_train_checkpoints: bool = False
    perplexity_variant: str = selection.VARIANTS["perplexity"][1]
    category_selection: str = selection.VARIANTS["category"][1]

    def __post_init__(self):
        # Checked when the config is built (gin included), before anything is written.
        validate_loop_config(self)

    def scores_needed(self) -> set[str]:
        """The score fields the configured strategies read (`selection.required_score_keys`);
        the entry point turns on the scorer's optional entropy when "entropy" is among them."""
        return selection.required_score_keys(self.strategies, self.perplexity_variant,
                                             self.category_selection)

    def strategy(self, name: str) -> selection.Strategy:
        """`selection.get_strategy` of `name` in this config's variants."""
        return selection.get_strategy(name, self.perplexity_variant, self.category_selection)


def validate_loop_config(config: LoopConfig) -> None:
    """Refuses a `LoopConfig` the loop cannot run, in one line naming the setting.

    Everything that does not depend on the pool is checked here: types (a string where a
    list is expected, 1e999 -- infinity -- where an integer is), ranges, known strategies and
    quota, and the schedule (`schedule.check_schedule`). What depends on the pool's size (at
    most one iteration per pool task; a growth that overflows) is checked once the split is
    drawn, before iteration 0 (`schedule.train_set_sizes(pool_size=...)`).

    Raises:
      UsageError: "LoopConfig.<field> ...".
    """
    def names(field: str, value: Any, kind: type) -> list[Any]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise UsageError(f"LoopConfig.{field} must be a non-empty list, got {value!r}")
        bad = [v for v in value if not isinstance(v, kind) or isinstance(v, bool)
               or (kind is int and v < 0)]
        if bad:
            raise UsageError(f"LoopConfig.{field}: {bad[0]!r} is not a "
                             f"{'name' if kind is str else 'non-negative integer'}")
        if len(set(value)) != len(value):
            raise UsageError(f"LoopConfig.{field} repeats an entry: {list(value)}")
        return list(value)

    unknown = [s for s in names("strategies", config.strategies, str)
               if s not in selection.list_strategies()]
    if unknown:
        raise UsageError(f"LoopConfig.strategies: unknown strategy {unknown[0]!r}; known: "
                         f"{', '.join(selection.list_strategies())}")
    names("seeds", config.seeds, int)
    _check_integer("num_iterations", config.num_iterations, 1)
    if config.tasks_per_iteration is not None:
        _check_integer("tasks_per_iteration", config.tasks_per_iteration, 1)
    if config.train_set_sizes is not None:
        sizes = config.train_set_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (list, tuple)):
            raise UsageError(f"LoopConfig.train_set_sizes must be a list of sizes, got "
                             f"{sizes!r}")
        for size in sizes:
            _check_integer("train_set_sizes", size, 1)
    growth = config.growth_factor
    if growth is not None and (isinstance(growth, bool) or not isinstance(growth, (int, float))
                               or not math.isfinite(growth) or growth <= 1):
        raise UsageError(f"LoopConfig.growth_factor must be > 1 and finite, got {growth!r}")
    if config.quota not in selection.QUOTAS:
        raise UsageError(f"LoopConfig.quota must be one of {list(selection.QUOTAS)}, got "
                         f"{config.quota!r}")
    ratio = config.label_ratio
    if ratio is not None and (not isinstance(ratio, Mapping) or not ratio or any(
            not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 0
            for k, v in ratio.items()) or not sum(ratio.values())):
        raise UsageError(f"LoopConfig.label_ratio must map labels to integers >= 0, not all "
                         f"0 (e.g. {{'cls': 24, 'gen': 44}}), got {ratio!r}")
    for field in ("score_all_strategies", "evaluate_test", "keep_train_checkpoints"):
        if not isinstance(getattr(config, field), bool):
            raise UsageError(f"LoopConfig.{field} must be True or False, got "
                             f"{getattr(config, field)!r}")
    try:
        schedule.check_schedule(config.num_iterations, config.tasks_per_iteration,
                                config.train_set_sizes, config.growth_factor)
        selection.check_variants(config.perplexity_variant, config.category_selection)
    except ValueError as err:
        raise UsageError(f"LoopConfig: {err}") from None


def _check_integer(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"LoopConfig.{field} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass
class Stages:
    """The heavy operations the loop calls; the entry point binds them to real components.

    Keeping them injectable keeps the loop itself free of model, mesh and gin details, and
    lets the tests count and interrupt the calls.

    Attributes:
      prepare: (seed, out_dir) -> PreparedData; writes/reads the seed's split in out_dir.
      train: (train_tasks, val_tasks, out_dir) -> best checkpoint directory.
      evaluate: (checkpoint_dir, tasks, out_dir) -> per-task records
        [{"task", "label", "rouge_l", "exact_match", "n_instances"}]; also writes the
        predictions file of an evaluator directory ({"task", "id", "prediction", ...} per
        instance), which the judge stage reads.
      score: (checkpoint_dir, tasks, out_dir) -> None; writes a scorer run directory (its
        scores and Task Map are copied to the iteration for the report).
    """
    prepare: Callable[[int, str], Any]
    train: Callable[[Sequence[Any], Sequence[Any], str], str]
    evaluate: Callable[[str, Sequence[Any], str], list[dict[str, Any]]]
    score: Callable[[str, Sequence[Any], str], None]


def check_run_config(run_dir: str, config: LoopConfig) -> None:
    """Records the loop config in a new run dir; refuses to resume with a different one.

    Seeds and strategies may grow (adding a seed or a strategy to a finished run is a natural
    extension), but everything that changes existing results must stay the same.
    """
    path = os.path.join(run_dir, layout.LOOP_CONFIG_FILE)
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
        fixed = ("num_iterations", "tasks_per_iteration", "train_set_sizes", "growth_factor",
                 "quota", "label_ratio")
        changed = {k: stored.get(k) for k in fixed if stored.get(k) != current.get(k)}
        changed.update(_changed_variants(stored, config))
        if changed and not iterations_started(run_dir):
            # A start refused before iteration 0 (e.g. more iterations than pool tasks): no
            # result depends on its settings, so they must not block the corrected command.
            log.warning("%s: replacing the loop settings %s of a start that reached no "
                        "iteration", run_dir, list(changed))
        elif changed:
            raise UsageError(f"{run_dir} was started with different settings {list(changed)}: "
                             f"{changed}; bind those values to resume, or use a new --out")
    hosts.write_once("activeit_loop_config", lambda: io_utils.atomic_write_json(path, current))


def iterations_started(run_dir: str) -> bool:
    """Whether any seed of the run reached iteration 0 (its directory exists)."""
    if not os.path.isdir(run_dir):
        return False
    seeds = [layout.parse_seed_name(name) for name in os.listdir(run_dir)]
    return any(os.path.isdir(layout.iteration_dir(run_dir, seed, None, 0))
               for seed in seeds if seed is not None)


# A variant setting, the strategies it changes, and its value in runs started before it existed.
_VARIANT_SETTINGS = (("perplexity_variant", "perplexity", "reference"),
                     ("category_selection", "category", "random"))


def _changed_variants(stored: Mapping[str, Any], config: LoopConfig) -> dict[str, str]:
    """{setting: the stored run's value} of the variant settings that differ from the stored
    run's, where a strategy of either run has variants of that kind (a setting no strategy
    reads may change)."""
    strategies = set(stored.get("strategies") or ()) | set(config.strategies)
    return {setting: stored.get(setting, legacy) for setting, kind, legacy in _VARIANT_SETTINGS
            if any(selection.has_variants(name, kind) for name in strategies)
            and stored.get(setting, legacy) != getattr(config, setting)}


def run_loop(run_dir: str, config: LoopConfig, stages: Stages,
             on_stage: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Runs (or resumes) every seed x strategy x iteration of the experiment.

    Args:
      run_dir: the run directory.
      config: the experiment.
      stages: the train / evaluate / score / prepare operations.
      on_stage: optional callback(stage, directory) after each finished stage (progress
        display; tests use it to simulate a kill between stages).

    Returns:
      {"iterations": number of iterations completed, "run_dir": run_dir}.
    """
    os.makedirs(run_dir, exist_ok=True)
    check_run_config(run_dir, config)
    total = len(config.seeds) * (1 + len(config.strategies) * (config.num_iterations - 1))
    done = 0
    started = time.time()

    def progress(label: str) -> None:
        nonlocal done
        done += 1
        elapsed = time.time() - started
        eta = elapsed / done * (total - done)
        log.info("[%d/%d iterations] %s done (elapsed %.0fs, ETA %.0fs)", done, total, label,
                 elapsed, eta)

    for seed in config.seeds:
        prepared = stages.prepare(seed, layout.data_dir(run_dir, seed))
        initial = list(prepared.split.initial)
        pool_names = list(prepared.split.pool)
        validation = prepared.role_tasks("validation")
        test = prepared.role_tasks("test") if config.evaluate_test else []
        budgets = schedule.tasks_to_add(len(initial), config.num_iterations,
                                        config.tasks_per_iteration, config.train_set_sizes,
                                        config.growth_factor, pool_size=len(pool_names))
        # Iteration 0 is shared: the union is just the initial set.
        iter0 = layout.iteration_dir(run_dir, seed, None, 0)
        _run_iteration(iter0, selected_now={"tasks": initial, "strategy": "initial"},
                       union=initial, remaining=pool_names, prepared=prepared,
                       validation=validation, test=test, stages=stages,
                       score_needed=True, config=config, on_stage=on_stage)
        progress(f"seed {seed} iteration 0")
        for strategy_name in config.strategies:
            strategy = config.strategy(strategy_name)
            union, remaining, prev_dir = list(initial), list(pool_names), iter0
            iterations = 2 if strategy.selects_all else config.num_iterations
            for iteration in range(1, iterations):
                it_dir = layout.iteration_dir(run_dir, seed, strategy_name, iteration)
                chosen = _select(it_dir, prev_dir, strategy_name, remaining, prepared,
                                 budgets[iteration], config, seed, iteration)
                union = union + chosen["tasks"]
                added = set(chosen["tasks"])
                remaining = [name for name in remaining if name not in added]
                last = iteration == iterations - 1
                score_needed = bool(remaining) and (
                    config.score_all_strategies or (strategy.needs_scores and not last))
                _run_iteration(it_dir, chosen, union, remaining, prepared, validation, test,
                               stages, score_needed, config, on_stage)
                prev_dir = it_dir
                progress(f"seed {seed} {strategy_name} iteration {iteration}")
            done += config.num_iterations - iterations  # fully_trained has a single iteration
    return {"iterations": done, "run_dir": run_dir}


def _select(it_dir: str, prev_dir: str, strategy: str, remaining: Sequence[str], prepared: Any,
            num_tasks: int, config: LoopConfig, seed: int, iteration: int) -> dict[str, Any]:
    """Selects (or re-reads) the tasks added at `iteration`, from the previous scores."""
    path = os.path.join(it_dir, layout.SELECTED_FILE)
    if hosts.exists(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    # Self-Instruct: the output-length chunk of each pool task (split.chunks lists the pool's
    # names per chunk, shortest outputs first); NIV2 splits have no chunks.
    chunk_of = {name: c for c, names in enumerate(prepared.split.chunks or ()) for name in names}
    pool = [selection.TaskInfo(name=name, label=prepared.tasks[name].label,
                               chunk=chunk_of.get(name))
            for name in remaining]
    scores = None
    spec = config.strategy(strategy)
    if spec.needs_scores:
        remaining_set = set(remaining)
        scores_path = os.path.join(prev_dir, layout.SCORES_FILE)
        scores = [r for r in io_utils.read_jsonl(scores_path) if r["task"] in remaining_set]
        absent = [k for k in spec.score_keys if any(r.get(k) is None for r in scores)]
        if absent:
            raise ValueError(f"{scores_path} lacks {absent[0]!r}, which strategy {strategy!r} "
                             f"reads (scored before the strategy joined the run?): remove "
                             f"{os.path.join(prev_dir, layout.SCORING_DIR)} and its "
                             f"{layout.SCORES_FILE} to rescore, or use a new --out")
    chosen = selection.select(strategy, scores, pool, num_tasks=num_tasks, quota=config.quota,
                              seed=seed, iteration=iteration, label_ratio=config.label_ratio,
                              perplexity_variant=config.perplexity_variant,
                              category_selection=config.category_selection)
    record = chosen.to_json()
    hosts.write_once("activeit_loop_select", lambda: io_utils.atomic_write_json(path, record))
    return record


def _run_iteration(it_dir: str, selected_now: Mapping[str, Any], union: Sequence[str],
                   remaining: Sequence[str], prepared: Any, validation: Sequence[Any],
                   test: Sequence[Any], stages: Stages, score_needed: bool, config: LoopConfig,
                   on_stage: Callable[[str, str], None] | None) -> None:
    """Train, evaluate and score one iteration, skipping the stages already done."""
    if hosts.exists(os.path.join(it_dir, layout.DONE_FILE)):
        return
    os.makedirs(it_dir, exist_ok=True)
    selected_path = os.path.join(it_dir, layout.SELECTED_FILE)
    # Every host reaches the barrier; only the writer looks at and writes the file.
    hosts.write_once("activeit_loop_selected",
                     lambda: os.path.exists(selected_path) or io_utils.atomic_write_json(
                         selected_path, dict(selected_now)))
    notify = on_stage or (lambda stage, directory: None)

    train_dir = os.path.join(it_dir, layout.TRAIN_DIR)
    best = stages.train([prepared.tasks[n] for n in union], validation, train_dir)
    notify("train", it_dir)

    if not hosts.exists(os.path.join(it_dir, layout.PER_TASK_FILE)):
        records = []
        for split, tasks in (("val", validation), ("test", test)):
            if tasks:
                for rec in stages.evaluate(best, tasks, layout.eval_dir(it_dir, split)):
                    records.append({"split": split, **rec})
        hosts.write_once("activeit_loop_metrics",
                         lambda: iteration_metrics.write_iteration_metrics(it_dir, records))
    notify("evaluate", it_dir)

    if score_needed:
        scoring_dir = os.path.join(it_dir, layout.SCORING_DIR)
        stages.score(best, [prepared.tasks[n] for n in remaining], scoring_dir)
        hosts.write_once("activeit_loop_scores", lambda: _copy_for_report(scoring_dir, it_dir))
        notify("score", it_dir)

    def finish() -> None:
        if not config.keep_train_checkpoints:
            shutil.rmtree(os.path.join(train_dir, layout.CHECKPOINTS_DIR), ignore_errors=True)
        io_utils.atomic_write_text(os.path.join(it_dir, layout.DONE_FILE), "")
    hosts.write_once("activeit_loop_done", finish)


def _copy_for_report(scoring_dir: str, it_dir: str) -> None:
    """Copies the scorer's scores and Task Map to the iteration's top level, where the report
    (and the next iteration's selection) reads them."""
    for source, target in ((layout.SCORES_FILE, layout.SCORES_FILE),
                           (layout.TASKMAP_PNG, layout.TASK_MAP_FILE)):
        src = os.path.join(scoring_dir, source)
        if os.path.exists(src):
            with open(src, "rb") as handle:
                data = handle.read()
            with io_utils.atomic_open(os.path.join(it_dir, target), "wb") as out:
                out.write(data)


# ----------------------------------------------------------------------------------------------
# Pairwise judge (after the loop).

def judge_path(it_dir: str, reference: str, judge_name: str | None = None,
               reference_iteration: int | None = None) -> str:
    """`layout.judge_file` of a checked judge name (None: an unnamed judge); the reference's
    iteration is named only where it differs from `it_dir`'s."""
    own = layout.parse_iteration_name(os.path.basename(os.path.normpath(it_dir)))
    return layout.judge_file(it_dir, reference, None if judge_name is None
                             else judge_lib.check_judge_name(judge_name),
                             None if reference_iteration in (None, own) else reference_iteration)


def _num_iterations(strategy: str, config: LoopConfig) -> int:
    return 2 if selection.get_strategy(strategy).selects_all else config.num_iterations


def judge_pairs(strategy: str, reference: str, config: LoopConfig) -> list[tuple[int, int]]:
    """(strategy's iteration, reference's iteration) of every comparison of `strategy` with
    `reference`: the same iteration for two strategies that select, and a strategy that takes
    the whole pool (fully trained: a single model, iteration 1) against every iteration of the
    other, as the paper compares the fully trained model with random at every size."""
    own, ref = _num_iterations(strategy, config), _num_iterations(reference, config)
    if selection.get_strategy(strategy).selects_all:
        return [(1, j) for j in range(1, ref)]
    if selection.get_strategy(reference).selects_all:
        return [(i, 1) for i in range(1, own)]
    return [(i, i) for i in range(1, min(own, ref))]


def _test_predictions(it_dir: str, test: Sequence[Any], stages: Stages,
                      must_exist: bool) -> dict[str, str]:
    """{instance id: prediction} of the test tasks for the model of `it_dir`; runs the evaluate
    stage on the iteration's best checkpoint into its test evaluator directory first when the
    loop did not store them (evaluate_test=False; the iteration's per-task metrics are left as
    they are)."""
    test_dir = layout.eval_dir(it_dir, "test")
    path = os.path.join(test_dir, layout.PREDICTIONS_FILE)
    if not hosts.exists(path, bounded=False):  # the others wait while process 0 judges
        stages.evaluate(os.path.join(it_dir, layout.TRAIN_DIR, layout.BEST_DIR), test, test_dir)
    if not os.path.exists(path):
        if must_exist:
            raise FileNotFoundError(f"{path}: the evaluate stage wrote no predictions, which "
                                    "the judge compares")
        return {}
    return {str(r["id"]): str(r["prediction"]) for r in io_utils.read_jsonl(path)}


def judge_items(test: Sequence[Any], ours: Mapping[str, str], theirs: Mapping[str, str]
                ) -> list[judge_lib.JudgeItem]:
    """One item per test instance that both models answered (test-task order, then instance
    order): instruction = the task's definition, input = the instance input, A = `ours`,
    B = `theirs`."""
    items = []
    for task in test:
        for instance in task.instances:
            if instance.id in ours and instance.id in theirs:
                items.append(judge_lib.JudgeItem(
                    id=instance.id, instruction=task.definition, input=instance.input,
                    output_a=ours[instance.id], output_b=theirs[instance.id]))
    return items


def run_judge(run_dir: str, config: LoopConfig, stages: Stages,
              client: judge_lib.ChatCompleter | Mapping[str, judge_lib.ChatCompleter] | None,
              reference: str = "random", seed: int = 0,
              on_stage: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """Compares each strategy's models with the reference strategy's, iteration by iteration.

    For every seed, strategy s != `reference` and pair of iterations (`judge_pairs`: the same
    iteration i >= 1; the fully trained model against every iteration of the other) that both
    finished (`DONE`; iteration 0 is shared, so never compared): the two models' test
    predictions are paired by instance id (`judge_items`) and judged with
    `judge.run_pairwise` by every judge into s's iteration directory (`judge_path`: the
    reference's iteration is named in the file when it is not s's), model A being s.
    Rerunning skips the items already judged, so a killed judge stage resumes.

    Args:
      run_dir: the run directory of a finished (or partly finished) `run_loop`.
      config: its loop config.
      stages: its stages (`prepare` re-reads each seed's split; `evaluate` produces missing
        predictions).
      client: the judges: {name: client} (each gets its own file and totals), one client
        (an unnamed judge: `judge_vs_{reference}.jsonl`), or None, which only makes sure that
        the predictions exist (what the other processes of a multi-host run do while process 0
        judges).
      reference: the strategy every other one is compared with (one of `config.strategies`).
      seed: seeds the judge's presentation order (`judge.presentation_order`); every judge
        sees an item in the same order.
      on_stage: optional callback("judge", iteration dir) after each comparison.

    Returns:
      One record per comparison and judge: {"seed", "strategy", "iteration",
      "reference_iteration", "reference", "judge" (None for an unnamed one), "path",
      "n_items", "win", "tie", "lose", "error", "win_rate"} (without a client: one record per
      comparison, the counts None).

    Raises:
      ValueError: `reference` is not a strategy of the run, or a seed has no test tasks.
    """
    if reference not in config.strategies:
        raise ValueError(f"judge reference {reference!r} is not one of the run's strategies "
                         f"{list(config.strategies)}")
    judges: dict[str | None, Any]
    if client is None:
        judges = {None: None}
    elif isinstance(client, Mapping):
        judges = dict(client)
    else:
        judges = {None: client}
    notify = on_stage or (lambda stage, directory: None)
    results = []
    for run_seed in config.seeds:
        prepared = stages.prepare(run_seed, layout.data_dir(run_dir, run_seed))
        test = prepared.role_tasks("test")
        if not test:
            raise ValueError(f"seed {run_seed}: the judge compares answers on the test tasks, "
                             "and this split has none")
        for strategy in config.strategies:
            if strategy == reference:
                continue
            for iteration, ref_iteration in judge_pairs(strategy, reference, config):
                it_dir = layout.iteration_dir(run_dir, run_seed, strategy, iteration)
                ref_dir = layout.iteration_dir(run_dir, run_seed, reference, ref_iteration)
                if not all(hosts.exists(os.path.join(d, layout.DONE_FILE), bounded=False)
                           for d in (it_dir, ref_dir)):
                    log.warning("judge: %s or %s is not finished; skipped", it_dir, ref_dir)
                    continue
                ours = _test_predictions(it_dir, test, stages, client is not None)
                theirs = _test_predictions(ref_dir, test, stages, client is not None)
                items = judge_items(test, ours, theirs) if client is not None else []
                if client is not None and not items:
                    raise ValueError(f"no test instance answered by both {it_dir} and "
                                     f"{ref_dir}")
                for name, judge_client in judges.items():
                    path = judge_path(it_dir, reference, name, ref_iteration)
                    record: dict[str, Any] = {
                        "seed": run_seed, "strategy": strategy, "iteration": iteration,
                        "reference_iteration": ref_iteration, "reference": reference,
                        "judge": name, "path": path, "n_items": None, "win": None,
                        "tie": None, "lose": None, "error": None, "win_rate": None}
                    if judge_client is not None:
                        summary = judge_lib.run_pairwise(items, judge_client, path, seed=seed)
                        record.update(n_items=len(items), win=summary.win, tie=summary.tie,
                                      lose=summary.lose, error=summary.error,
                                      win_rate=summary.win_rate)
                        log.info("judge %s seed %d %s iteration %d vs %s iteration %d: %d win "
                                 "/ %d tie / %d lose / %d error", name or "", run_seed,
                                 strategy, iteration, reference, ref_iteration, summary.win,
                                 summary.tie, summary.lose, summary.error)
                        notify("judge", it_dir)
                    results.append(record)
    return results
