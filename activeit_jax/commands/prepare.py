"""`activeit-jax prepare`: read NIV2 or Self-Instruct data, split it, summarise, write the pool.

    activeit-jax prepare --niv2_dir=DIR --out=OUT [--seed=42] [--on_bad_task=error|skip]
                         [--label_source=rule|FILE] [--tasks=a,b,...]
                         [--num_initial=N --num_val_cls=N --num_val_gen=N]
                         [--max_instances_per_task=100]
    activeit-jax prepare --self_instruct=FILE [--self_instruct_test=FILE] --out=OUT
                         [--num_initial=N] [--vocab=spm.model] [--num_chunks=13]

Writes OUT/tasks.jsonl (every task of the experiment with its resolved instances) and
OUT/splits.json (task names per role, summary), both atomically; prints a summary table.
Bad input (malformed task file, missing required task, impossible split, wrong vocabulary
path) exits with status 1 and one line naming the file and field; nothing is written then.
"""
from __future__ import annotations

import sys

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string("niv2_dir", None, "NIV2 root: holds tasks/*.json and "
                    "splits/default/{train,test,excluded}_tasks.txt.")
flags.DEFINE_string("self_instruct", None, "Self-Instruct / Alpaca JSON or JSONL file "
                    "({instruction, input, output} items); instead of --niv2_dir.")
flags.DEFINE_string("self_instruct_test", None, "optional Self-Instruct evaluation file "
                    "(e.g. the 252 user-oriented instructions): the test role.")
flags.DEFINE_string("out", None, "output directory for tasks.jsonl and splits.json.")
flags.DEFINE_integer("seed", 42, "seed of the split and of train-task instance sampling.")
flags.DEFINE_enum("on_bad_task", "error", ["error", "skip"],
                  "malformed task file (NIV2) or item (Self-Instruct): stop with an error, or "
                  "skip it and report it.")
flags.DEFINE_string("label_source", None, "where task labels (cls / gen) come from: 'rule' "
                    "(ours, the default) or a label file (Active-IT's task_metadata.json, or "
                    "a JSON / CSV task -> cls|gen file) labelling the tasks it names.")
flags.DEFINE_string("label_overrides", None, "deprecated: the old name of --label_source "
                    "(a label file).")
flags.DEFINE_list("tasks", None, "NIV2: use only these train-split tasks (comma-separated); "
                  "each must be in the train split and have a file.")
flags.DEFINE_integer("num_initial", None, "initial training tasks (paper: 68 NIV2, 500 "
                     "Self-Instruct). Unset counts take the paper value, scaled down "
                     "proportionally when fewer tasks are available; set counts are exact.")
flags.DEFINE_integer("num_val_cls", None, "NIV2 validation classification tasks (default 34: "
                     "Active-IT holds out 68 train tasks, the 34 + 34 mix is ours).")
flags.DEFINE_integer("num_val_gen", None, "NIV2 validation generation tasks (default 34).")
flags.DEFINE_integer("max_instances_per_task", 100, "NIV2 instances kept per task (test: the "
                     "first N; others: a seeded random N); -1 keeps all.")
flags.DEFINE_integer("max_items", None, "Self-Instruct: read only the first N items.")
flags.DEFINE_string("vocab", None, "Self-Instruct: vocabulary (SentencePiece .model, "
                    "tokenizer.json or a checkpoint directory) to measure output "
                    "length in tokens for the chunks (default: whitespace words).")
flags.DEFINE_integer("num_chunks", 13, "Self-Instruct: output-length chunks of the pool.")


def _fail(message: str, status: int = 1) -> None:
    print(f"activeit-jax prepare: error: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str]) -> None:
    """Runs the command (absl has parsed the flags)."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if (FLAGS.niv2_dir is None) == (FLAGS.self_instruct is None):
        _fail("give exactly one of --niv2_dir or --self_instruct", 2)
    if not FLAGS.out:
        _fail("--out is required", 2)
    from activeit_jax import layout
    from activeit_jax.commands import common
    common.refuse_outputs_among_inputs(
        {name: FLAGS[name].value for name in ("niv2_dir", "self_instruct", "self_instruct_test",
                                              "label_source", "label_overrides", "vocab")},
        {"out": FLAGS.out}, {"out": (layout.TASKS_FILE, layout.SPLITS_FILE)})

    # Imported after flag checks: `--help` and usage errors stay fast.
    from activeit_jax.data import labels, prepared, self_instruct, splits
    from activeit_jax.data.errors import DataError

    if FLAGS.label_source and FLAGS.label_overrides:
        _fail("--label_overrides is the old name of --label_source: give only --label_source",
              2)
    source = FLAGS.label_source or FLAGS.label_overrides
    try:
        overrides = (labels.load_label_source(source) if source and source != "rule"
                     else None)
        if FLAGS.niv2_dir is not None:
            given = {"num_initial": FLAGS.num_initial, "num_val_cls": FLAGS.num_val_cls,
                     "num_val_gen": FLAGS.num_val_gen}
            quotas = (None if all(v is None for v in given.values()) else
                      splits.NIV2Quotas(**{k: v for k, v in given.items() if v is not None}))
            max_instances = FLAGS.max_instances_per_task
            data = prepared.prepare_niv2(
                FLAGS.niv2_dir, seed=FLAGS.seed, on_bad_task=FLAGS.on_bad_task,
                label_overrides=overrides, tasks=FLAGS.tasks, quotas=quotas,
                max_instances_per_task=None if max_instances < 0 else max_instances)
            header = f"NIV2 {FLAGS.niv2_dir}"
        else:
            if FLAGS.tasks or FLAGS.num_val_cls is not None or FLAGS.num_val_gen is not None:
                _fail("--tasks / --num_val_cls / --num_val_gen apply to --niv2_dir only", 2)
            length_fn = self_instruct.whitespace_length
            if FLAGS.vocab:
                from activeit_jax.data import vocab as vocab_lib
                # Any vocabulary kind (a .model, a tokenizer.json, a checkpoint directory);
                # only lengths are measured, so no T5-id check and no sentinels.
                vocabulary = vocab_lib.load_vocabulary(FLAGS.vocab, extra_ids=0,
                                                       require_t5_ids=False)
                length_fn = lambda text: len(vocabulary.encode(text))  # noqa: E731
            quotas = (None if FLAGS.num_initial is None
                      else splits.SelfInstructQuotas(FLAGS.num_initial))
            data = prepared.prepare_self_instruct(
                FLAGS.self_instruct, FLAGS.self_instruct_test, seed=FLAGS.seed,
                label_overrides=overrides, quotas=quotas, max_items=FLAGS.max_items,
                length_fn=length_fn, num_chunks=FLAGS.num_chunks, on_bad_task=FLAGS.on_bad_task)
            header = f"Self-Instruct {FLAGS.self_instruct}"
        paths = prepared.write_prepared(data, FLAGS.out)
    except DataError as err:
        _fail(str(err))
    except OSError as err:  # e.g. the output directory cannot be created
        _fail(f"{err.filename or FLAGS.out}: {err.strerror}")
    print(header)
    print(prepared.format_summary(data))
    print(f"\nwrote {paths['tasks']}\nwrote {paths['splits']}")
