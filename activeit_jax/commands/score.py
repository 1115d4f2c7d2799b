"""`activeit-jax score`: prompt uncertainty, prediction probability and perplexity of a pool.

    activeit-jax score --checkpoint=CKPT --vocab=SPM --niv2_dir=DIR --tasks=FILE --out=OUT \\
        [--num_instances=10 --num_perturbations=20 --drop_rate=0.2 --seed=0 --save_prompts \\
         --perturbation=drop --batch_size=64 --mesh=data=-1,fsdp=1,model=1 ...]
    activeit-jax score --checkpoint=CKPT --vocab=SPM --self_instruct=FILE --out=OUT

`--vocab` (a SentencePiece `.model`, a `tokenizer.json` or a tokenizer directory) may be left
out when the checkpoint stores its tokenizer (`activeit-jax convert` and the trainer store it).

The pool: `--tasks=FILE` lists NIV2 task names one per line (read from `--niv2_dir/tasks/`),
or is a `.jsonl` of prepared tasks (`Task.to_dict()` lines, as `activeit-jax prepare` writes
them; lines carrying a "role" are kept only for `--role`, default "pool"); or
`--self_instruct=FILE` (JSON/JSONL, one task per item). NIV2 and prepared tasks are loaded one
at a time as the scorer reaches them (the Self-Instruct reader loads its file at once). A task
file without instances is skipped and listed in summary.json; other malformed files stop the
run unless --on_bad_task=skip.

Writes OUT/scores.jsonl (one line per task), OUT/taskmap.csv, OUT/taskmap.png / .svg,
OUT/summary.json (thresholds, skipped tasks, throughput, padding waste, compilations) and,
with --save_prompts, OUT/prompts.jsonl. Rerunning with the same arguments resumes; different
arguments are refused. See `activeit_jax.scoring` for the definitions.

Multi-host (the flags of `activeit_jax.core.distributed`, ACTIVEIT_* or SLURM variables, or a Cloud
TPU VM): every host runs the same command; host k loads and scores the pool tasks i with
i % num_hosts == k on its own devices (`--mesh` describes this per-host mesh) and journals them
in OUT/shards/host{k}-of-{n}/; process 0 then merges everything into the files above. OUT must
be on a filesystem that every host sees.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

from absl import flags

from activeit_jax.commands import common
from activeit_jax.core.errors import UsageError
from activeit_jax.data.errors import TaskFormatError

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "Model checkpoint directory (config.json + params).")
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
flags.DEFINE_integer("num_instances", 10, "n: instances per task (all when fewer).")
flags.DEFINE_integer("num_perturbations", 20, "K: perturbed prompts per task.")
flags.DEFINE_float("drop_rate", 0.2, "Rate of the word-level perturbations (drop, sentinel, "
                   "repeat, insert).")
flags.DEFINE_integer("seed", 0, "Seed of instance choice and perturbations.")
flags.DEFINE_string("perturbation", "drop", "Perturbation: drop, sentinel, repeat, insert, "
                    "paraphrase.")
flags.DEFINE_multi_string("perturbation_option", [], "KEY=VALUE options of the "
                          "perturbation, e.g. file=paraphrases.jsonl, words=a,b,c "
                          "(rate=R here overrides --drop_rate).")
flags.DEFINE_boolean("save_prompts", False, "Also write prompts.jsonl (one line per task, "
                     "instance and perturbation).")
flags.DEFINE_boolean("entropy", False, "Also compute the mean token entropy baseline.")
flags.DEFINE_enum("prompt_format", "auto", ["auto", "tk_instruct", "alpaca", "tk_instruct_chat",
                  "alpaca_chat"], "Prompt format; auto: Tk-Instruct for T5; decoder-only "
                  "models Tk-Instruct for NIV2 tasks and Alpaca for Self-Instruct items, as the "
                  "user turn of the model's chat template when its tokenizer has one.")
flags.DEFINE_integer("num_pos_examples", 2, "Positive examples in the prompt.")
flags.DEFINE_boolean("fit_examples", True, "Add examples only while the source fits "
                     "max_source_length (Tk-Instruct).")
flags.DEFINE_integer("max_source_length", 1024, "Source tokens (cut with EOS kept).")
flags.DEFINE_integer("max_target_length", 128, "Target tokens (cut with EOS kept).")
flags.DEFINE_integer("max_decode_length", None, "Greedy decoding length "
                     "(default max_target_length).")
flags.DEFINE_integer("batch_size", 64, "The most rows per jitted scoring call.")
flags.DEFINE_integer("batch_tokens", 32768, "Token budget per call: rows x padded source "
                     "length (decoder-only: sequence length); 0 = always --batch_size rows.")
flags.DEFINE_integer("buckets_per_octave", 5, "Default scoring source (decoder-only: "
                     "sequence) buckets: steps between two powers of two (1 = powers of two).")
flags.DEFINE_integer("target_buckets_per_octave", 1, "The same for scoring targets.")
flags.DEFINE_integer("decode_buckets_per_octave", 8, "The same for decoding sources.")
flags.DEFINE_integer("decode_batch_size", None, "Rows per decoding call (default batch_size).")
flags.DEFINE_list("source_buckets", [], "Padded source lengths, e.g. 128,256,512,1024 "
                  "(default: --buckets_per_octave / --decode_buckets_per_octave steps per "
                  "power of two); serves decoding too.")
flags.DEFINE_list("target_buckets", [], "Padded target lengths (default: "
                  "--target_buckets_per_octave steps per power of two from 8).")
flags.DEFINE_integer("tasks_per_chunk", 16, "Consecutive tasks processed together.")
flags.DEFINE_string("mesh", "data=-1,fsdp=1,model=1", "Mesh axis sizes of each host's "
                    "devices, e.g. data=4,model=2 (-1 = the remaining devices).")
flags.DEFINE_float("pu_quantile", 2 / 3, "Task Map: PU quantile above which a task is "
                   "ambiguous.")
flags.DEFINE_float("probability_quantile", 0.5, "Task Map: probability quantile (of the "
                   "non-ambiguous tasks) splitting easy from difficult.")
flags.DEFINE_float("pu_threshold", None, "Task Map: absolute PU threshold (overrides "
                   "--pu_quantile).")
flags.DEFINE_float("probability_threshold", None, "Task Map: absolute probability threshold "
                   "(overrides --probability_quantile).")
flags.DEFINE_enum("on_bad_task", "error", ["error", "skip"], "A malformed NIV2 task file: "
                  "stop, or skip it and list it in summary.json (a file without instances "
                  "is always skipped and listed).")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.DEFINE_integer("adaptive_k0", 0, "Adaptive perturbation budget (off when 0): every task "
                     "gets its first K0 perturbations, tasks near the top-m boundary more, up "
                     "to --num_perturbations (scoring.adaptive; single host, not resumable).")
flags.DEFINE_integer("adaptive_select", 68, "m, the selection size whose boundary matters.")
flags.DEFINE_float("adaptive_z", 2.0, "Confidence bound width, in standard errors.")
common.define_gin_flags()
common.define_distributed_flags()


def iter_pool(niv2_dir: str | None, tasks_file: str | None, self_instruct: str | None,
              on_bad_task: str = "error", role: str = "pool", shard: Any = None
              ) -> tuple[Iterator[Any], int, dict[str, Any]]:
    """The pool as a lazy iterator, its size, and what identifies it (for the fingerprint).

    With `shard` (a `scoring.ShardInfo`), NIV2 and prepared entries of other shards are not
    loaded: a `scoring.TaskStub` (the name only) stands in their place.
    """
    from activeit_jax import scoring
    from activeit_jax.core import records
    from activeit_jax.data import niv2
    from activeit_jax.data.errors import MissingTaskError, RecordError

    def mine(index: int) -> bool:
        return shard is None or shard.owns(index)

    if bool(tasks_file) == bool(self_instruct):
        raise UsageError("give exactly one pool: --tasks (with --niv2_dir) or --self_instruct")
    if self_instruct:
        from activeit_jax.data import self_instruct as si
        tasks = si.load_self_instruct(self_instruct)
        return iter(tasks), len(tasks), {"self_instruct": os.path.abspath(self_instruct)}
    if tasks_file.endswith(".jsonl"):
        def keep(record):
            return "role" not in record or not role or record["role"] == role

        # A first pass checks every line (and counts the pool) before anything is scored.
        total = 0
        for number, record in records.iter_jsonl(tasks_file, "prepared tasks file"):
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                raise RecordError("expected a prepared task object with a 'name'", tasks_file,
                                  f"line {number}")
            total += keep(record)

        def prepared():
            index = 0
            for number, record in records.iter_jsonl(tasks_file, "prepared tasks file"):
                if keep(record):
                    record.pop("role", None)
                    yield (_prepared_task(record, tasks_file, number) if mine(index)
                           else scoring.TaskStub(record["name"]))
                    index += 1
        return prepared(), total, {"tasks": os.path.abspath(tasks_file), "role": role}
    if not niv2_dir:
        raise UsageError("--tasks with task names needs --niv2_dir")
    names = [niv2.check_task_name(name, tasks_file, where)
             for where, name in records.read_records(tasks_file, "task list")]
    missing = [n for n in names if not os.path.exists(niv2.task_file_path(niv2_dir, n))]
    if missing:
        raise MissingTaskError(f"{len(missing)} task(s) of {tasks_file} have no file in "
                               f"{niv2_dir}/tasks: {missing[:5]}", tasks_file)
    return _load_lazily(niv2_dir, names, on_bad_task, mine), len(names), {
        "tasks": os.path.abspath(tasks_file), "niv2_dir": os.path.abspath(niv2_dir)}


def _prepared_task(record: dict[str, Any], path: str, number: int) -> Any:
    """A `Task` from a prepared tasks.jsonl line; a malformed one names its line."""
    from activeit_jax.data import niv2
    try:
        return niv2.Task.from_dict(record)
    except (KeyError, TypeError, ValueError) as err:
        raise TaskFormatError(f"not a prepared task ({err!r})", path, f"line {number}") from None


def _load_lazily(niv2_dir: str, names: list[str], on_bad_task: str,
                 mine: Any = None) -> Iterator[Any]:
    """Loads each task when the scorer reaches it; a file without instances (or, with
    on_bad_task="skip", any malformed file) becomes a `SkippedTask` with the reason; a task
    for which `mine(index)` is False (another host's) a `TaskStub`."""
    from activeit_jax import scoring
    from activeit_jax.data import errors, niv2

    for index, name in enumerate(names):
        if mine is not None and not mine(index):
            yield scoring.TaskStub(name)
            continue
        path = niv2.task_file_path(niv2_dir, name)
        try:
            yield niv2.load_niv2_task(path)
        except errors.TaskFormatError as err:
            if err.field == "Instances" and "empty" in err.message:
                yield scoring.SkippedTask(name, "no instances")
            elif on_bad_task == "skip":
                yield scoring.SkippedTask(name, str(err))
            else:
                raise


def _buckets(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(b) for b in getattr(FLAGS, name)) or None
    except ValueError:
        raise UsageError(f"--{name} must be integers, got {getattr(FLAGS, name)}") from None


def build_config() -> "Any":
    """The `ScoreConfig` of the command line.

    Raises:
      UsageError: a value the scorer cannot use (checked before anything is written).
    """
    from activeit_jax import scoring
    from activeit_jax.scoring import perturbation as perturbation_lib, taskmap

    try:
        options = perturbation_lib.parse_options(FLAGS.perturbation_option)
        thresholds = taskmap.TaskMapThresholds(
            pu_quantile=FLAGS.pu_quantile, probability_quantile=FLAGS.probability_quantile,
            pu_threshold=FLAGS.pu_threshold, probability_threshold=FLAGS.probability_threshold)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if FLAGS.perturbation in ("drop", "sentinel", "repeat", "insert"):
        options.setdefault("rate", FLAGS.drop_rate)
    return scoring.ScoreConfig(
        num_instances=FLAGS.num_instances, num_perturbations=FLAGS.num_perturbations,
        seed=FLAGS.seed, perturbation=FLAGS.perturbation,
        perturbation_options=tuple(sorted(options.items())),
        prompt_format=FLAGS.prompt_format, num_pos_examples=FLAGS.num_pos_examples,
        max_source_length=FLAGS.max_source_length,
        max_target_length=FLAGS.max_target_length,
        max_decode_length=FLAGS.max_decode_length or FLAGS.max_target_length,
        fit_examples=FLAGS.fit_examples, compute_entropy=FLAGS.entropy,
        save_prompts=FLAGS.save_prompts, batch_size=FLAGS.batch_size,
        decode_batch_size=FLAGS.decode_batch_size or FLAGS.batch_size,
        batch_tokens=FLAGS.batch_tokens or None, buckets_per_octave=FLAGS.buckets_per_octave,
        target_buckets_per_octave=FLAGS.target_buckets_per_octave,
        decode_buckets_per_octave=FLAGS.decode_buckets_per_octave,
        tasks_per_chunk=FLAGS.tasks_per_chunk,
        source_buckets=_buckets("source_buckets"), target_buckets=_buckets("target_buckets"),
        thresholds=thresholds)


def _check_prompt_format(config: Any, model: Any, vocab: Any) -> None:
    """A chat format needs a chat template: say so in one line before loading weights."""
    from activeit_jax import scoring
    from activeit_jax.core.errors import UsageError
    from activeit_jax.data import chat as chat_lib
    try:
        scoring.prompt_formats(config, model.decoder_only,
                               chat_lib.from_vocabulary(vocab) is not None)
    except ValueError as err:
        raise UsageError(f"--prompt_format: {err}") from None


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    common.check_args(argv, ("checkpoint", "out"))
    common.initialize_distributed_from_flags()  # before anything touches a device
    common.parse_gin_from_flags()

    import jax

    from activeit_jax import partitioning, scoring
    from activeit_jax.data import vocab as vocab_lib
    from activeit_jax.models import check_vocabulary, checkpoints
    shard = scoring.ShardInfo.of_process()
    # Every argument is checked (and the pool listed) before the run directory is touched.
    config = build_config()
    tasks, total, pool_args = iter_pool(FLAGS.niv2_dir, FLAGS.tasks, FLAGS.self_instruct,
                                        FLAGS.on_bad_task, FLAGS.role, shard)
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
    if FLAGS.adaptive_k0:
        from activeit_jax.scoring import adaptive
        policy = adaptive.AdaptiveConfig(initial_perturbations=FLAGS.adaptive_k0,
                                         num_select=FLAGS.adaptive_select, z=FLAGS.adaptive_z)
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
