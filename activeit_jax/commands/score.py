"""`activeit-jax score`: prompt uncertainty, prediction probability and perplexity of a pool.

    activeit-jax score --checkpoint=CKPT --vocab=SPM --niv2_dir=DIR --tasks=FILE --out=OUT \\
        [--num_instances=10 --num_perturbations=20 --drop_rate=0.2 --seed=0 --save_prompts \\
         --perturbation=drop --batch_size=64 --mesh=data=-1,fsdp=1,model=1 ...]
    activeit-jax score --checkpoint=CKPT --vocab=SPM --self_instruct=FILE --out=OUT

`--vocab` (a SentencePiece `.model`, a `tokenizer.json` or a tokenizer directory) may be left
out when the checkpoint stores its tokenizer (`activeit-jax convert` and the trainer store it).
`--checkpoint` is the model being scored (a run's starting weights are `init_checkpoint`).

The settings are a `scoring.ScoreConfig`, read from gin (`--gin_file=...`,
`--gin.ScoreConfig.num_perturbations=5`). The flags that set its fields (`--num_instances`,
`--num_perturbations`, `--seed`, ... and `--entropy` for `compute_entropy`; `--drop_rate` and
`--perturbation_option` for `perturbation_options`; `--pu_quantile` ... for `thresholds`;
`--adaptive_*` for `scoring.adaptive.AdaptiveConfig`) are generated from the dataclass fields
with their defaults (`commands.common.define_config_flags`). A flag given wins over a gin
binding, which wins over the default; a flag and a `--gin.` binding of the same field are
refused. Without either, the decoding length follows `max_target_length`.

The pool: `--tasks=FILE` lists NIV2 task names one per line (read from `--niv2_dir/tasks/`),
or is a `.jsonl` of prepared tasks (`Task.to_dict()` lines, as `activeit-jax prepare` writes
them; lines carrying a "role" are kept only for `--role`, default "pool"); or
`--self_instruct=FILE` (JSON/JSONL, one task per item). NIV2 and prepared tasks are loaded one
at a time as the scorer reaches them (the Self-Instruct reader loads its file at once). A task
file without instances is skipped and listed in summary.json; other malformed tasks (a file,
an item, a line; a string with a lone surrogate too) stop the run unless --on_bad_task=skip.

Writes OUT/scores.jsonl (one line per task), OUT/taskmap.csv, OUT/taskmap.png / .svg,
OUT/summary.json (thresholds, skipped tasks, throughput, padding waste, compilations) and,
with --save_prompts, OUT/prompts.jsonl. Rerunning with the same arguments resumes; different
arguments are refused. See `activeit_jax.scoring` for the definitions.

Multi-host (the flags of `activeit_jax.core.distributed`, ACTIVEIT_* variables, or a cluster
that JAX detects: SLURM, Open MPI, a Cloud TPU VM): every host runs the same command; host k
loads and scores the pool tasks i with i % num_hosts == k on its own devices (`--mesh`
describes this per-host mesh) and journals them in OUT/shards/host{k}-of-{n}/; process 0 then
merges everything into the files above. OUT must be on a filesystem that every host sees.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import flags

from activeit_jax import scoring
from activeit_jax.commands import common
from activeit_jax.core.errors import UsageError
from activeit_jax.data import prompts
from activeit_jax.scoring import adaptive, perturbation as perturbation_lib, pool_source, taskmap

FLAGS = flags.FLAGS

# Flags whose name is not their field's (kept from the command line's first version).
SCORE_FLAG_NAMES = {"compute_entropy": "entropy"}
ADAPTIVE_FLAG_NAMES = {"initial_perturbations": "adaptive_k0", "num_select": "adaptive_select",
                       "z": "adaptive_z"}
# Perturbations whose `rate` option --drop_rate sets.
WORD_LEVEL = ("drop", "sentinel", "repeat", "insert")

flags.DEFINE_string("checkpoint", None, "The model to score: a checkpoint directory "
                    "(config.json + params). Not the weights a run starts from: that is "
                    "`train --init_checkpoint` / experiment.init_checkpoint.")
flags.DEFINE_string("vocab", None, "Vocabulary of the checkpoint: SentencePiece .model, "
                    "tokenizer.json or a tokenizer directory (default: the tokenizer stored "
                    "in the checkpoint).")
flags.DEFINE_string("niv2_dir", None, "NIV2 root (tasks/<name>.json), with --tasks.")
flags.DEFINE_string("tasks", None, "Pool: file of task names (one per line) or a .jsonl of "
                    "prepared tasks.")
flags.DEFINE_string("role", "pool", "With a prepared tasks.jsonl whose lines carry a role: "
                    "score only this role ('' = every line).")
flags.DEFINE_string("self_instruct", None, "Pool: Self-Instruct / Alpaca JSON or JSONL file.")
flags.DEFINE_string("out", None, "Output directory (resumed when it holds the same run).")
flags.DEFINE_string("mesh", "data=-1,fsdp=1,model=1", "Mesh axis sizes of each host's "
                    "devices, e.g. data=4,model=2 (-1 = the remaining devices).")
flags.DEFINE_enum("on_bad_task", "error", ["error", "skip"], "A malformed NIV2 task file, "
                  "Self-Instruct item or prepared line (a lone surrogate in a string "
                  "included): stop, or skip it and list it in summary.json (a file without "
                  "instances is always skipped and listed).")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
# ScoreConfig.perturbation_options, as KEY=VALUE flags and the word-level rate.
flags.DEFINE_multi_string("perturbation_option", [], "KEY=VALUE options of the "
                          "perturbation, e.g. file=paraphrases.jsonl, words=a,b,c "
                          "(rate=R here overrides --drop_rate) [gin: "
                          "ScoreConfig.perturbation_options].")
flags.DEFINE_float("drop_rate", 0.2, "Rate of the word-level perturbations (drop, sentinel, "
                   "repeat, insert) [gin: ScoreConfig.perturbation_options].")

# Flags generated from the fields of ScoreConfig, TaskMapThresholds and AdaptiveConfig (name,
# type, default, help); `--entropy` keeps its older name. See `common.define_config_flags` for
# the precedence (flag > gin binding > default).
SCORE_FLAGS = common.define_config_flags(
    scoring.ScoreConfig, gin_module="activeit_jax.scoring",
    renamed=SCORE_FLAG_NAMES, skip=("perturbation_options", "thresholds"),
    choices={"prompt_format": [prompts.AUTO, *prompts.PROMPT_FORMATS],
             "plan_costs": ["model", "slots"]},
    parsers={"batch_tokens": lambda value: value or None},
    help_texts={
        "max_decode_length": "Greedy decoding length of the originals (default: "
                             "max_target_length).",
        "batch_tokens": "Token budget per call: rows x padded source length (decoder-only: "
                        "sequence length); 0 = always --batch_size rows.",
        "source_buckets": "Padded source lengths, e.g. 128,256,512,1024 (default: "
                          "--buckets_per_octave / --decode_buckets_per_octave steps per power "
                          "of two); serves decoding too.",
        "target_buckets": "Padded target lengths (default: --target_buckets_per_octave steps "
                          "per power of two from 8).",
        "sequence_buckets": "Decoder-only scoring: padded lengths of prompt + response "
                            "(default: --buckets_per_octave steps per power of two)."})
THRESHOLD_FLAGS = common.define_config_flags(taskmap.TaskMapThresholds)
ADAPTIVE_FLAGS = common.define_config_flags(
    adaptive.AdaptiveConfig, renamed=ADAPTIVE_FLAG_NAMES, skip=("growth", "quota"),
    required_defaults={"initial_perturbations": 0, "num_select": 68},
    help_texts={"initial_perturbations": "Adaptive perturbation budget (off when 0): every "
                "task gets its first K0 perturbations, tasks near the top-m boundary more, up "
                "to --num_perturbations (scoring.adaptive; single host, not resumable).",
                "z": "Confidence bound width, in standard errors."})
common.define_gin_flags()
common.define_distributed_flags()


def build_config() -> scoring.ScoreConfig:
    """The `ScoreConfig` of the command line: its flags, else its gin bindings, else its
    defaults (`common.define_config_flags`). Derived defaults of the command line: the
    decoding length follows max_target_length; the perturbation options are the
    `--perturbation_option`s plus `--drop_rate` as the rate of a word-level perturbation.

    Raises:
      UsageError: a value the scorer cannot use, or a flag and a `--gin.` binding of the same
        field (checked before anything is written).
    """
    explicit: dict[str, Any] = {}
    command_line = common.command_line_bound((SCORE_FLAGS.selector,))
    for field, group in (("perturbation_options", ("perturbation_option", "drop_rate")),
                         ("thresholds", tuple(THRESHOLD_FLAGS.flag_names.values()))):
        given = [name for name in group if FLAGS[name].present]
        if given and field in command_line:
            raise UsageError(f"--{given[0]} and --gin.{command_line[field]} both set "
                             f"ScoreConfig.{field}: give one")
        if field == "thresholds" and given:
            explicit[field] = THRESHOLD_FLAGS.build()
        elif field == "perturbation_options" and (given or field not in
                                                  SCORE_FLAGS.gin_bound()):
            explicit[field] = _perturbation_options()
    return SCORE_FLAGS.build(
        explicit, max_decode_length=SCORE_FLAGS.value("max_target_length"))


def build_policy(config: scoring.ScoreConfig) -> adaptive.AdaptiveConfig | None:
    """The adaptive budget of the command line (`--adaptive_k0` > 0), or None.

    Raises:
      UsageError: a value `AdaptiveConfig` refuses (--adaptive_k0=-1, --adaptive_select=0),
        an --adaptive_* flag without --adaptive_k0 (it would do nothing), or a ScoreConfig
        setting the adaptive budget does not support (--save_prompts, --entropy).
    """
    if not FLAGS["adaptive_k0"].present:
        given = [f"--{flag}" for flag in ADAPTIVE_FLAGS.flag_names.values()
                 if FLAGS[flag].present]
        if given:
            raise UsageError(f"{given[0]} sets the adaptive budget, which is off without "
                             f"--adaptive_k0")
        return None
    if FLAGS.adaptive_k0 == 0:  # documented: 0 = off
        return None
    policy = ADAPTIVE_FLAGS.build()
    adaptive.check_supported(config)
    return policy


def _perturbation_options() -> tuple[tuple[str, Any], ...]:
    """`--perturbation_option`s, with `--drop_rate` as the rate of a word-level perturbation
    (`ScoreConfig.perturbation_options`)."""
    try:
        options = perturbation_lib.parse_options(FLAGS.perturbation_option)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if SCORE_FLAGS.value("perturbation") in WORD_LEVEL:
        options.setdefault("rate", FLAGS.drop_rate)
    return tuple(sorted(options.items()))


def _check_prompt_format(config: Any, model: Any, vocab: Any) -> None:
    """Every prompt format of the run renders (a chat format needs a chat template, and the
    template must render): said in one line before loading weights, with nothing written."""
    from activeit_jax.data import chat as chat_lib
    try:
        prompts.check_formats_render(config.prompt_format, model.decoder_only,
                                     chat_lib.from_vocabulary(vocab))
    except UsageError as err:
        raise UsageError(f"--{err}") from None


def check_paths() -> None:
    """Refuses an --out that is (or would overwrite) one of the inputs."""
    from activeit_jax import layout
    common.refuse_outputs_among_inputs(
        {name: FLAGS[name].value for name in ("tasks", "self_instruct", "checkpoint", "vocab",
                                              "niv2_dir")},
        {"out": FLAGS.out},
        {"out": (layout.SCORES_FILE, layout.PROMPTS_FILE, layout.SKIPPED_FILE,
                 layout.SCORE_SUMMARY_FILE, layout.RUN_ARGS_FILE, layout.SESSIONS_FILE,
                 layout.SHARDS_DIR, layout.TASKMAP_CSV, layout.TASKMAP_PNG,
                 layout.TASKMAP_SVG)})


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    common.check_args(argv, ("checkpoint", "out"))
    check_paths()
    common.initialize_distributed_from_flags()  # before anything touches a device
    common.parse_gin_from_flags()

    import jax

    from activeit_jax import partitioning
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import check_vocabulary, checkpoints
    shard = scoring.ShardInfo.of_process()
    # Every argument is checked (and the pool listed) before the run directory is touched.
    config = build_config()
    policy = build_policy(config)
    tasks, total, pool_args = pool_source.iter_pool(FLAGS.niv2_dir, FLAGS.tasks,
                                                    FLAGS.self_instruct, FLAGS.on_bad_task,
                                                    FLAGS.role, shard)
    model = checkpoints.read_model(FLAGS.checkpoint)
    # --vocab, else the tokenizer stored with the checkpoint (a LLaMA .model gets no T5
    # sentinels and keeps its own special ids). The scorer only encodes and decodes: a
    # SentencePiece model loads without TensorFlow (`light`), sparing seconds of start-up.
    vocab = vocab_lib.resolve_vocabulary(FLAGS.vocab, FLAGS.checkpoint, light=True,
                                         decoder_only=model.decoder_only)
    check_vocabulary(model, vocab, FLAGS.checkpoint)
    _check_prompt_format(config, model, vocab)
    mesh = partitioning.local_mesh(common.parse_mesh(FLAGS.mesh))  # this host's devices
    setup = time.perf_counter()
    params = checkpoints.restore_params(FLAGS.checkpoint, model,
                                        partitioning.params_shardings(model, mesh))
    loaded = time.perf_counter()
    run_args = {"checkpoint": os.path.abspath(FLAGS.checkpoint),
                "vocab": (os.path.abspath(FLAGS.vocab) if FLAGS.vocab
                          else "stored with the checkpoint"),
                "on_bad_task": FLAGS.on_bad_task,
                **pool_args}
    if policy is not None:
        summary = adaptive.score_pool_adaptive(model, params, vocab, tasks, FLAGS.out, config,
                                               policy, mesh=mesh, run_args=run_args)
        summary.setdefault("rows_per_s", 0.0)
    else:
        summary = scoring.score_pool(model, params, vocab, tasks, FLAGS.out, config,
                                     mesh=mesh, run_args=run_args, total=total,
                                     progress=FLAGS.progress and jax.process_index() == 0,
                                     shard=shard)
    if jax.process_index() != 0:
        return
    # Phase times for benchmarks/score_vs_torch.py (since main() began).
    print("timing: " + json.dumps({"setup_seconds": setup - start,
                                   "load_seconds": loaded - setup,
                                   "main_seconds": time.perf_counter() - start}))
    pad = summary["score_padding"]
    print(f"scored {summary['num_tasks']} tasks ({len(summary['skipped'])} skipped) -> "
          f"{FLAGS.out}; categories {summary['categories']}; "
          f"{summary['rows_per_s']:.1f} rows/s; source padding waste "
          f"{pad['source_padding_waste']:.1%}, target {pad['target_padding_waste']:.1%}; "
          f"{summary['num_compilations']} compilations")
