"""SeqIO task registrations of activeit-jax (t5x style: `import activeit_jax.tasks` registers
them; in a t5x gin file, `MIXTURE_OR_TASK_MODULE = "activeit_jax.tasks"`). This folder sits at
the top of the repository and installs as `activeit_jax.tasks` (setup.py's `package_dir`).

At import, the bundled sample (data/sample) is registered with the sample vocabulary:
  activeit_sample_niv2_train        all 28 NIV2 train tasks of the sample (Tk-Instruct prompts)
  activeit_sample_niv2_test         the 12 NIV2 test tasks (first 100 instances each)
  activeit_sample_self_instruct     the 300 Alpaca items (Alpaca prompts)
Reading the files costs milliseconds; prompts are rendered at the first `get_dataset`.

For a real experiment, `register_prepared(prepared_dir, vocabulary)` registers what
`activeit-jax prepare` wrote: one seqio task per task (for per-iteration mixtures) and one per
role ("<prefix>initial", "<prefix>validation", "<prefix>pool", "<prefix>test").
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from activeit_jax.core import resources
from activeit_jax.data import niv2, prepared, self_instruct, seqio_tasks, vocab as vocab_lib
from activeit_jax.data.errors import DataError

# The checkout, or the installed package: both hold data/sample/ (`core.resources`).
REPO_ROOT = resources.RESOURCE_ROOT
SAMPLE_DIR = resources.SAMPLE_DIR
SAMPLE_NIV2_DIR = os.path.join(SAMPLE_DIR, "niv2")
SAMPLE_ALPACA_FILE = os.path.join(SAMPLE_DIR, "self_instruct", "alpaca_sample.json")
SAMPLE_VOCAB_PATH = os.path.join(REPO_ROOT, vocab_lib.SAMPLE_VOCAB_RELPATH)

SAMPLE_TASK_NAMES = ("activeit_sample_niv2_train", "activeit_sample_niv2_test",
                     "activeit_sample_self_instruct")


def register_sample_tasks(vocabulary: Any = None) -> tuple[str, ...]:
    """Registers (or re-registers) the three sample seqio tasks listed in the module docstring.

    Args:
      vocabulary: defaults to the bundled sample vocabulary (100 extra ids); ours or seqio's.

    Returns:
      The seqio task names.
    """
    if vocabulary is None:
        vocabulary = vocab_lib.get_vocabulary(SAMPLE_VOCAB_PATH)
    train = niv2.read_niv2_split(SAMPLE_NIV2_DIR, "train")
    test = [niv2.select_instances(t, niv2.DEFAULT_MAX_INSTANCES_PER_TASK, seed=0, shuffle=False)
            for t in niv2.read_niv2_split(SAMPLE_NIV2_DIR, "test")]
    seqio_tasks.register_niv2_task(SAMPLE_TASK_NAMES[0], train, vocabulary)
    seqio_tasks.register_niv2_task(SAMPLE_TASK_NAMES[1], test, vocabulary)
    seqio_tasks.register_self_instruct_task(
        SAMPLE_TASK_NAMES[2], self_instruct.load_self_instruct(SAMPLE_ALPACA_FILE), vocabulary)
    return SAMPLE_TASK_NAMES


def register_prepared(prepared_dir: str, vocabulary: Any,
                      prefix: str = "activeit_", per_task: bool = True,
                      roles: Sequence[str] = ("initial", "validation", "pool", "test"),
                      prompt_format: str | None = None) -> dict[str, dict[str, str]]:
    """Registers the seqio tasks of a directory written by `activeit-jax prepare`.

    Args:
      prepared_dir: holds tasks.jsonl + splits.json.
      vocabulary: vocabulary of inputs and targets.
      prefix: prefix of every seqio name.
      per_task: also register one seqio task per task ("<prefix><task name>").
      roles: roles to register as one seqio task each ("<prefix><role>"); empty roles skipped.
      prompt_format: None picks Tk-Instruct for NIV2 and Alpaca for Self-Instruct.

    Returns:
      {"tasks": {task name: seqio name}, "roles": {role: seqio name}}.

    Raises:
      DataError: not a (complete) prepared directory.
    """
    data = prepared.load_prepared(prepared_dir)
    if prompt_format is None:
        prompt_format = "alpaca" if data.split.kind == "self_instruct" else "tk_instruct"
    result: dict[str, dict[str, str]] = {"tasks": {}, "roles": {}}
    if per_task:
        result["tasks"] = seqio_tasks.register_per_task(list(data.tasks.values()), vocabulary,
                                                        prefix, prompt_format=prompt_format)
    for role in roles:
        tasks = data.role_tasks(role)
        if tasks:
            name = f"{prefix}{role}"
            seqio_tasks.register_prompt_task(name, tasks, vocabulary, prompt_format=prompt_format)
            result["roles"][role] = name
    return result


# Import-time registration of the sample; an installation without data/sample simply has none.
if os.path.exists(SAMPLE_VOCAB_PATH):
    try:
        register_sample_tasks()
    except DataError as _err:  # a broken sample must not break the import
        import logging
        logging.getLogger(__name__).warning("sample seqio tasks not registered: %s", _err)
