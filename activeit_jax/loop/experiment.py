"""The experiment `activeit-jax run` runs: its settings (`Experiment`) and their resolution
and checks (`resolve`); `loop.stages.run_experiment` runs it.

The command line reads an `Experiment` from gin under the name `experiment`
(`experiment.pool = "niv2"`, `experiment.loop = @LoopConfig()`, ...): each field below is one
gin parameter, so the gin face cannot drift from the dataclass. `resolve` turns what the user
wrote into what the loop runs: defaults filled in, the model and vocabulary read from the base
checkpoint when not bound, the label file loaded, every contradiction refused before anything
is written.

Task labels (`label_source`): the paper's NIV2 configs name Active-IT's `task_metadata.json`
(`%TASK_METADATA_FILE`, a path the user sets); a run refuses to start without it unless the
user chooses our rule explicitly (`--gin.experiment.label_source='"rule"'`). `label_overrides`
is the old name of the same setting (a path); giving both is refused.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from activeit_jax.core.errors import UsageError
from activeit_jax.data import labels, splits, vocab as vocab_lib
from activeit_jax.data.configurables import resolve_repo_path
from activeit_jax.loop import active_loop, judge as judge_lib, selection
from activeit_jax.models import checkpoints
from activeit_jax.scoring import adaptive as adaptive_lib
from activeit_jax.scoring.config import ScoreConfig
from activeit_jax.training.config import TrainConfig

log = logging.getLogger(__name__)

POOLS = ("niv2", "self_instruct")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything `run` needs; gin binds each field as `experiment.<field>`.

    As written in gin, several fields may be left to `resolve`; after it, every field holds
    what the loop runs (noted "resolved" below).

    Attributes:
      model: the model wrapper (`%MODEL` of configs/models/*.gin); None = the one recorded in
        `init_checkpoint` (its config.json). Resolved: a model.
      vocabulary: its vocabulary; None = the tokenizer stored beside `init_checkpoint`'s
        weights. Resolved: a vocabulary.
      niv2_dir: the NIV2 root of the "niv2" pool.
      train_config: the trainer's settings (None = `TrainConfig()`).
      score_config: the scorer's settings (None = `ScoreConfig()`); resolved with
        `compute_entropy` on when a strategy ranks by entropy.
      loop: the loop's shape (None = `LoopConfig()`).
      init_checkpoint: the base weights every iteration fine-tunes (None: random init).
      quotas: `NIV2Quotas` or `SelfInstructQuotas` (matching the pool); None = the paper's,
        scaled down on partial data.
      max_instances_per_task: NIV2 instances kept per task.
      on_bad_task: a malformed NIV2 task file: "error" or "skip".
      partitioning: a `PartitioningConfig` whose mesh and rules replace the trainer's.
      pool: "niv2" (needs `niv2_dir`) or "self_instruct" (needs `self_instruct_file`).
      self_instruct_file: the Self-Instruct / Alpaca file of the "self_instruct" pool.
      self_instruct_test_file: evaluation-only test tasks (the 252 user-oriented ones).
      self_instruct_max_items: read only the first N items of the Self-Instruct file.
      self_instruct_num_validation: pool tasks held out (seeded) as validation tasks.
      select_epoch_on_validation: the trainer picks its best epoch on the validation tasks;
        None = True for NIV2 (Tk-Instruct), False for Self-Instruct (Alpaca: last epoch).
      judge: a `JudgeConfig` or a list of them enabling the judge stage, or None (off).
        Resolved: None or a tuple of `JudgeConfig`s with distinct names.
      judge_reference: the strategy every other one is compared with.
      judge_seed: seeds the judge's presentation order.
      label_source: where each task's cls / gen label comes from (`data.labels`): "rule"
        (ours, `data/labels.py`), or the path of a label file (Active-IT's
        `task_metadata.json`: `DefHasLabel == "ExactMentioned"` for the selection, `CLS_GEN`
        for the scores; or JSON / CSV task -> cls|gen) labelling the tasks it names, the rule
        the others; None = the rule. Resolved: `RULE` or a `labels.LabelSource`.
      label_overrides: the old name of `label_source` (a path; None = unset). Resolved: None.
      adaptive_perturbations: K0 of the adaptive perturbation budget (`scoring.adaptive`):
        every pool task gets K0 perturbations, undecided ones more, up to
        `ScoreConfig.num_perturbations`; 0 = exact scoring (every task gets K). Needs a fixed
        `LoopConfig.tasks_per_iteration` (the selection size whose boundary matters) and no
        entropy (the "uncertainty" strategy); single host; a killed scoring stage restarts.
      adaptive_z: the adaptive budget's confidence bound, in standard errors.
      adaptive: resolved only: the loop's `AdaptiveConfig`, or None (exact scoring).
    """
    model: Any = None
    vocabulary: Any = None
    niv2_dir: str | None = None
    train_config: TrainConfig | None = None
    score_config: ScoreConfig | None = None
    loop: active_loop.LoopConfig | None = None
    init_checkpoint: str | None = None
    quotas: splits.NIV2Quotas | splits.SelfInstructQuotas | None = None
    max_instances_per_task: int | None = 100
    on_bad_task: str = "error"
    partitioning: Any = None
    pool: str = "niv2"
    self_instruct_file: str | None = None
    self_instruct_test_file: str | None = None
    self_instruct_max_items: int | None = None
    self_instruct_num_validation: int = 0
    select_epoch_on_validation: bool | None = None
    judge: judge_lib.JudgeConfig | Sequence[judge_lib.JudgeConfig] | None = None
    judge_reference: str = "random"
    judge_seed: int = 0
    label_overrides: str | Mapping[str, str] | None = None
    label_source: str | labels.LabelSource | None = None
    adaptive_perturbations: int = 0
    adaptive_z: float = 2.0
    adaptive: adaptive_lib.AdaptiveConfig | None = None


RULE = "rule"  # `Experiment.label_source`: our rule labels every task

_LABEL_SOURCE_MISSING = (
    "experiment.label_source: the paper's task labels come from Active-IT's task_metadata.json "
    "(DefHasLabel == \"ExactMentioned\" decides the 24 / 44 pools, CLS_GEN the cls / gen "
    "scores); set its path with --gin.TASK_METADATA_FILE='\"/path/to/task_metadata.json\"', "
    "or choose our rule (activeit_jax/data/labels.py) with "
    "--gin.experiment.label_source='\"rule\"'")


def resolve_label_source(label_source: Any, label_overrides: Any,
                         is_required: Callable[[Any], bool] = lambda value: False
                         ) -> str | labels.LabelSource:
    """`Experiment.label_source` resolved: `RULE`, or the label file loaded.

    Args:
      label_source: as bound: None, "rule", a path, or a loaded `labels.LabelSource`.
      label_overrides: its old name as bound: None, a path, or a {task: label} mapping.
      is_required: tells gin's "must be bound" marker from a value.

    Raises:
      UsageError: the label source must be bound (a paper config) and is not, both names are
        given, or the file cannot be read (one line, naming the way out).
    """
    if is_required(label_source):
        raise UsageError(_LABEL_SOURCE_MISSING)
    if isinstance(label_overrides, (str, os.PathLike)):
        label_overrides = os.fspath(label_overrides) or None  # "" = none, as before
    if label_overrides:
        if label_source is not None:
            raise UsageError("experiment.label_overrides is the old name of "
                             "experiment.label_source: set only experiment.label_source")
        log.warning("experiment.label_overrides is deprecated: use experiment.label_source")
        label_source = label_overrides
    if isinstance(label_source, labels.LabelSource):
        return label_source
    if label_source is None or label_source == RULE:
        return RULE
    if isinstance(label_source, Mapping):  # an in-memory {task: label} (library callers)
        return labels.LabelSource("(in memory)", dict(label_source))
    path = resolve_repo_path(os.fspath(label_source))
    if not os.path.isfile(path):
        raise UsageError(f"experiment.label_source: no label file at {path}; set the path of "
                         f"Active-IT's task_metadata.json (--gin.TASK_METADATA_FILE), or "
                         f"--gin.experiment.label_source='\"rule\"' for our rule")
    return labels.load_label_source(path)


def resolve(spec: Experiment, is_required: Callable[[Any], bool] = lambda value: False
            ) -> Experiment:
    """What the loop runs, from what the user wrote; refuses contradictions before anything
    is written.

    Args:
      spec: the settings as bound (gin at the entry point).
      is_required: tells the entry point's "must be bound" marker (gin's `REQUIRED`) apart
        from a value.

    Returns:
      A new `Experiment` with every field resolved (see its attributes).

    Raises:
      ValueError: a missing or contradictory setting (named in the message).
      UsageError: no model bound and no base checkpoint to read one from.
      VocabularyError: no vocabulary bound and none stored with the base checkpoint.
    """
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(Experiment)}
    label_source = resolve_label_source(spec.label_source, spec.label_overrides, is_required)
    missing = [name for name, value in fields.items() if is_required(value)]
    if missing:
        raise ValueError(f"experiment.{missing[0]} is required: bind it (e.g. "
                         f"--gin.experiment.{missing[0]}=...) or the macro the config names")
    model, vocabulary = _model_and_vocabulary(spec.model, spec.vocabulary,
                                              spec.init_checkpoint)
    loop = spec.loop or active_loop.LoopConfig()
    _check_pool(spec, loop)
    if spec.judge:
        if spec.judge_reference not in loop.strategies:
            raise ValueError(f"experiment.judge_reference {spec.judge_reference!r} is not one "
                             f"of LoopConfig.strategies {list(loop.strategies)}")
        if spec.pool == "self_instruct" and not spec.self_instruct_test_file:
            raise ValueError("the judge compares answers on experiment.self_instruct_test_file")
    judges = _judge_configs(spec.judge)
    select_epoch = spec.select_epoch_on_validation
    score_config = spec.score_config or ScoreConfig()
    if "entropy" in loop.scores_needed() and not score_config.compute_entropy:
        # Entropy is an optional extra of the scorer; a strategy that ranks by it needs it on.
        score_config = dataclasses.replace(score_config, compute_entropy=True)
    adaptive = adaptive_policy(spec.adaptive_perturbations, spec.adaptive_z, loop,
                               score_config)
    return Experiment(**{
        **fields, "model": model, "vocabulary": vocabulary, "loop": loop,
        "train_config": spec.train_config or TrainConfig(), "score_config": score_config,
        "select_epoch_on_validation": (spec.pool == "niv2" if select_epoch is None
                                       else select_epoch),
        "judge": judges, "label_overrides": None, "label_source": label_source,
        "adaptive": adaptive})


def adaptive_policy(k0: int, z: float, loop: active_loop.LoopConfig, score_config: ScoreConfig
                    ) -> adaptive_lib.AdaptiveConfig | None:
    """The loop's adaptive perturbation policy, or None for exact scoring.

    The boundary that matters is the next selection: `tasks_per_iteration` tasks, split by the
    loop's label quota as `selection.select` splits them.

    Args:
      k0: the perturbations every pool task gets first (0 = off).
      z: the confidence bound, in standard errors.
      loop, score_config: the resolved loop and scorer settings.

    Raises:
      ValueError: a setting the adaptive budget cannot serve (named in the message).
    """
    if not k0:
        return None
    if k0 < 1 or z <= 0:
        raise ValueError(f"experiment.adaptive_perturbations must be >= 1 (0 = off) and "
                         f"adaptive_z > 0, got {k0}, {z}")
    if not loop.tasks_per_iteration:
        raise ValueError("experiment.adaptive_perturbations needs a fixed "
                         "LoopConfig.tasks_per_iteration (the selection it decides)")
    if score_config.compute_entropy or score_config.save_prompts:
        raise ValueError("experiment.adaptive_perturbations computes neither entropy (the "
                         "'uncertainty' strategy) nor saved prompts: turn one of them off")
    quota = (selection.label_quota(loop.tasks_per_iteration, loop.label_ratio)
             if loop.quota == "niv2" else None)
    return adaptive_lib.AdaptiveConfig(initial_perturbations=k0,
                                       num_select=loop.tasks_per_iteration, z=z, quota=quota)


def _check_pool(spec: Experiment, loop: active_loop.LoopConfig) -> None:
    """The pool's own settings, and the quotas and selection quota that match it."""
    if spec.pool not in POOLS:
        raise ValueError(f"experiment.pool must be one of {POOLS}, got {spec.pool!r}")
    quotas = spec.quotas
    if spec.pool == "niv2":
        if not spec.niv2_dir:
            raise ValueError("experiment.niv2_dir is required for the 'niv2' pool")
        if quotas is not None and not isinstance(quotas, splits.NIV2Quotas):
            raise ValueError("the 'niv2' pool takes NIV2Quotas (experiment.quotas)")
        if loop.quota == "self_instruct":
            raise ValueError("LoopConfig.quota 'self_instruct' needs the 'self_instruct' pool "
                             "(NIV2 tasks have no output-length chunks)")
    else:
        if not spec.self_instruct_file:
            raise ValueError("experiment.self_instruct_file is required for the "
                             "'self_instruct' pool")
        if quotas is not None and not isinstance(quotas, splits.SelfInstructQuotas):
            raise ValueError("the 'self_instruct' pool takes SelfInstructQuotas "
                             "(experiment.quotas)")
        if loop.quota == "niv2":
            raise ValueError("the 'self_instruct' pool selects by output-length chunk: set "
                             "LoopConfig.quota = \"self_instruct\" (or \"none\")")
        if spec.self_instruct_num_validation < 0:
            raise ValueError("experiment.self_instruct_num_validation must be >= 0")
    if (quotas is not None and quotas.num_initial == 0 and not loop.tasks_per_iteration
            and not loop.train_set_sizes):
        raise ValueError("a zero-shot iteration 0 (num_initial = 0) needs "
                         "LoopConfig.tasks_per_iteration or LoopConfig.train_set_sizes")


def _judge_configs(judge: Any) -> tuple[judge_lib.JudgeConfig, ...] | None:
    """None, one `JudgeConfig` or a list of them -> None or a tuple with unique names."""
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
    if model is None:
        if not init_checkpoint:
            raise UsageError("experiment.model is required without experiment.init_checkpoint "
                             "(bind it, e.g. the macro %MODEL of configs/models/*.gin)")
        model = checkpoints.read_model(init_checkpoint)
    if vocabulary is None:  # get_vocabulary.path unset (gin): the checkpoint's own tokenizer
        vocabulary = vocab_lib.resolve_vocabulary(None, init_checkpoint,
                                                  what="get_vocabulary.path (gin)")
    return model, vocabulary
