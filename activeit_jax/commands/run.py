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
command continues an interrupted run; at the end OUT's report directory holds the tables, the
plots and one HTML page (the run directory's layout: `activeit_jax.layout`).

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
  predictions stay in the iteration's evaluator directories.
- score: prompt uncertainty with the same prompt (`scoring`, decoder-only path).
- judge (optional, off by default): `experiment.judge = @JudgeConfig()`, or a list of them
  for several judges (`[@gpt4/JudgeConfig(), @chatgpt/JudgeConfig()]`, as the paper's GPT-4
  and ChatGPT; base_url, model, name, api_key_env naming the environment variable that holds
  the key) compares, after the loop, every strategy's model with `judge_reference`'s (default
  "random") at the same iteration on the test predictions (`active_loop.run_judge`; the fully
  trained model against every iteration), in the paper's prompt (`JudgeConfig.prompt_template`,
  "paper" or "ours"), one results file per judge in each compared iteration; the report has,
  per judge, a Win / Tie / Lose / Error table per seed and their mean ± sd across seeds.

Every field of `experiment` is one of `activeit_jax.loop.experiment.Experiment`'s; the library
resolves and checks them (`experiment.resolve`) and runs the loop (`stages.run_experiment`).

Both pools:

- labels: `experiment.label_source` (`activeit_jax/data/labels.py`): "rule" (ours, the
  default) or a label file (Active-IT's `task_metadata.json`: DefHasLabel for the selection,
  CLS_GEN for the scores; or JSON / CSV task -> cls|gen, as `prepare --label_source`) that
  labels the tasks it names. The paper's NIV2 configs refuse to start until the user sets
  `TASK_METADATA_FILE` or chooses `"rule"`. Each seed prints how many labels came from the rule
  and from the file, and the top of the report repeats it (`label_overrides` is the old name).
- scoring: strategies that read the scorer's optional entropy (the "uncertainty" baseline)
  turn `ScoreConfig.compute_entropy` on.
"""
from __future__ import annotations

import gin
from absl import flags

from activeit_jax.commands import common

FLAGS = flags.FLAGS

flags.DEFINE_string("out", None, "Run directory (created, or resumed when it exists).")
flags.DEFINE_boolean("report", True, "Write the run's report directory when the loop is done.")
common.define_gin_flags()
common.define_distributed_flags()

# The library is imported when the command runs, not when it is loaded: `--help` stays fast
# and nothing of jax is set up before `jax.distributed` starts.
EXPERIMENT = "activeit_jax.commands.run.experiment"


def _register_configurables() -> None:
    """Makes the library's plain dataclasses bindable from gin (edges only). gin's
    `experiment` is the `loop.experiment.Experiment` dataclass itself: its parameters are the
    dataclass's fields."""
    import activeit_jax.data.configurables  # noqa: F401 (gin registrations)
    import activeit_jax.models  # noqa: F401 (gin registrations)
    import activeit_jax.training.config  # noqa: F401 (gin registrations)
    from activeit_jax import scoring
    from activeit_jax.data import splits
    from activeit_jax.loop import active_loop, experiment, judge
    for cls, name, module in (
            (experiment.Experiment, "experiment", "activeit_jax.commands.run"),
            (active_loop.LoopConfig, None, "activeit_jax.loop.active_loop"),
            (scoring.ScoreConfig, None, "activeit_jax.scoring"),
            (splits.NIV2Quotas, None, "activeit_jax.data.splits"),
            (splits.SelfInstructQuotas, None, "activeit_jax.data.splits"),
            (judge.JudgeConfig, None, "activeit_jax.loop.judge")):
        try:
            gin.external_configurable(cls, name=name, module=module)
        except ValueError:
            pass  # already registered (the command ran before in this process)


def configured_experiment():
    """The resolved `loop.experiment.Experiment` of the parsed gin config (a `%gin.REQUIRED`
    binding that nobody filled is named in the error)."""
    from activeit_jax.loop import experiment
    return experiment.resolve(gin.get_configurable(EXPERIMENT)(),
                              is_required=lambda value: value is gin.REQUIRED)


def main(argv: list[str]) -> None:
    common.check_args(argv, ("out",))
    common.initialize_distributed_from_flags()  # before anything touches a device
    common.quiet_library_logs()
    _register_configurables()
    common.parse_gin_from_flags()
    exp = configured_experiment()
    from activeit_jax import layout
    from activeit_jax.loop import preflight, stages
    from activeit_jax.reporting import render
    preflight.check_experiment(exp, FLAGS.out)  # what would fail later, before any write

    def report() -> None:
        print(f"report: {render.write_report(FLAGS.out)[layout.REPORT_HTML]}")

    stages.run_experiment(FLAGS.out, exp, after_loop=report if FLAGS.report else None)
