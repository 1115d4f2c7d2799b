"""SeqIO tasks and mixtures built from in-memory `Task`s.

`register_niv2_task(name, tasks, vocabulary, ...)` registers one seqio.Task whose examples are
the rendered prompts of every instance of the given tasks (Tk-Instruct format);
`register_self_instruct_task` does the same with the Alpaca template; `register_per_task`
registers one seqio.Task per task, and `make_mixture` mixes registered tasks (the active loop
makes one mixture per iteration from the selected tasks).

Each example holds
  inputs / targets                         int32 token ids (EOS appended after trimming),
  inputs_pretokenized / targets_pretokenized  the raw strings,
  task_name, instance_id                   strings,
  references                               1-D string tensor: every acceptable output.
The target is the first reference output (Tk-Instruct draws one at random per batch; a fixed
choice keeps runs reproducible, and evaluation compares against all `references`).

Read them with `get_dataset(name, sequence_length)`: for a mixture it asks seqio to keep the
pretokenized strings and `PASSTHROUGH_FEATURES`, which a seqio.Mixture drops by default.

Registering a name that exists replaces it, so re-registration (e.g. in a second active-loop
iteration, or a test run twice in one process) never raises.

The data source is a `seqio.FunctionDataSource` over a Python list. Prompts are rendered
lazily, on the first `get_dataset`, because rendering asks the vocabulary whether each
positive example still fits `max_source_length`.
"""
from __future__ import annotations

import functools
import re
import threading
from typing import Any, Callable, Mapping, Sequence

from activeit_jax.data import chat as chat_lib, examples as examples_lib, prompts as prompts_lib
from activeit_jax.data.niv2 import Task
from activeit_jax.data.seqio_vocabulary import adapt, seqio, tf

# The renderer moved to the TensorFlow-free `examples` module; this name stays for callers.
build_examples = examples_lib.build_examples

DEFAULT_SPLITS = ("train", "validation", "test")
DEFAULT_SEQUENCE_LENGTH = {"inputs": prompts_lib.MAX_SOURCE_LENGTH,
                           "targets": prompts_lib.MAX_TARGET_LENGTH}

_OUTPUT_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "task_name": tf.TensorSpec([], tf.string),
    "instance_id": tf.TensorSpec([], tf.string),
    "references": tf.TensorSpec([None], tf.string),
}

# Features beyond inputs/targets that every example carries; a seqio.Mixture drops them unless
# asked (`get_dataset` below asks).
PASSTHROUGH_FEATURES = ("task_name", "instance_id", "references")

# seqio task name -> number of examples, for default mixture rates.
_NUM_EXAMPLES: dict[str, int] = {}


def output_features(vocabulary: Any,
                    add_eos_to_inputs: bool = True) -> dict[str, seqio.Feature]:
    """The `inputs` / `targets` output features.

    Args:
      vocabulary: the vocabulary of both features (ours or seqio's: `seqio_vocabulary.adapt`).
      add_eos_to_inputs: True for encoder-decoder inputs (T5 appends EOS to the source);
        False for decoder-only prompts, where inputs and targets are concatenated.

    Returns:
      {"inputs": Feature, "targets": Feature}; targets always end in EOS.
    """
    vocabulary = adapt(vocabulary)
    return {"inputs": seqio.Feature(vocabulary, add_eos=add_eos_to_inputs, required=True),
            "targets": seqio.Feature(vocabulary, add_eos=True, required=True)}


def _count_examples(tasks: Sequence[Task], max_instances_per_task: int | None) -> int:
    if max_instances_per_task is None or max_instances_per_task < 0:
        return sum(len(t.instances) for t in tasks)
    return sum(min(len(t.instances), max_instances_per_task) for t in tasks)


class _InMemorySource:
    """Renders the examples once, on first use, and serves them as a tf.data.Dataset."""

    def __init__(self, render: Callable[[], list[dict[str, Any]]]):
        self._render = render
        self._examples: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def examples(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._examples is None:
                self._examples = self._render()
            return self._examples

    def dataset_fn(self, split: str, shuffle_files: bool, seed: int | None = None
                   ) -> tf.data.Dataset:
        # One in-memory "file": there is nothing to shuffle at file level; seqio's
        # get_dataset(shuffle=True) shuffles examples. Every split serves the same examples:
        # the role of a task set is chosen by which seqio task is read, not by the split.
        del split, shuffle_files, seed
        examples = self.examples()
        return tf.data.Dataset.from_generator(lambda: iter(examples),
                                              output_signature=_OUTPUT_SIGNATURE)


def register_prompt_task(name: str, tasks: Sequence[Task], vocabulary: Any, *,
                         prompt_format: str = prompts_lib.TK_INSTRUCT,
                         max_instances_per_task: int | None = None,
                         max_source_length: int = prompts_lib.MAX_SOURCE_LENGTH,
                         num_pos_examples: int = prompts_lib.NUM_POS_EXAMPLES,
                         add_eos_to_inputs: bool | None = None,
                         splits: Sequence[str] = DEFAULT_SPLITS) -> seqio.Task:
    """Registers (or replaces) a seqio.Task over the rendered prompts of `tasks`.

    Args:
      name: the seqio task name.
      tasks: tasks whose instances become examples.
      vocabulary: vocabulary of inputs and targets (a `vocab.Vocabulary`, or seqio's).
      prompt_format: one of `prompts.PROMPT_FORMATS` (a chat format uses the vocabulary's
        chat template).
      max_instances_per_task: first N instances per task (None: all).
      max_source_length: token budget the Tk-Instruct examples must fit in.
      num_pos_examples: positive examples per Tk-Instruct prompt.
      add_eos_to_inputs: default True for tk_instruct, False for alpaca.
      splits: split names the task answers to (all serve the same examples).

    Returns:
      The registered seqio.Task.
    """
    prompts_lib.check_prompt_format(prompt_format)
    if add_eos_to_inputs is None:
        add_eos_to_inputs = prompt_format == prompts_lib.TK_INSTRUCT
    tasks = list(tasks)
    num_examples = _count_examples(tasks, max_instances_per_task)

    def render() -> list[dict[str, Any]]:
        fits = (prompts_lib.make_fits(vocabulary, max_source_length, add_eos=add_eos_to_inputs)
                if prompt_format in (prompts_lib.TK_INSTRUCT, prompts_lib.TK_INSTRUCT_CHAT)
                else None)
        return examples_lib.build_examples(
            tasks, prompt_format, fits, max_instances_per_task, num_pos_examples,
            chat_lib.from_vocabulary(vocabulary))

    source = _InMemorySource(render)
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=source.dataset_fn, splits=tuple(splits),
            num_input_examples={split: num_examples for split in splits},
            caching_permitted=False),
        preprocessors=[
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=output_features(vocabulary, add_eos_to_inputs),
    )
    _NUM_EXAMPLES[name] = num_examples
    return task


def register_niv2_task(name: str, tasks: Sequence[Task], vocabulary: Any,
                       max_instances_per_task: int | None = None, **kwargs) -> seqio.Task:
    """`register_prompt_task` with the Tk-Instruct format (see there for the arguments)."""
    return register_prompt_task(name, tasks, vocabulary, prompt_format=prompts_lib.TK_INSTRUCT,
                                max_instances_per_task=max_instances_per_task, **kwargs)


def register_self_instruct_task(name: str, tasks: Sequence[Task], vocabulary: Any,
                                max_instances_per_task: int | None = None,
                                prompt_format: str = prompts_lib.ALPACA,
                                **kwargs) -> seqio.Task:
    """`register_prompt_task` with the Alpaca template by default (see there)."""
    return register_prompt_task(name, tasks, vocabulary, prompt_format=prompt_format,
                                max_instances_per_task=max_instances_per_task, **kwargs)


def seqio_task_name(prefix: str, task_name: str) -> str:
    """A registry-safe seqio name: `prefix` + task name with odd characters turned into "_"."""
    return prefix + re.sub(r"[^0-9A-Za-z_]+", "_", task_name)


def register_per_task(tasks: Sequence[Task], vocabulary: Any,
                      prefix: str = "activeit_", **kwargs) -> dict[str, str]:
    """Registers one seqio task per task (Tk-Instruct for NIV2, Alpaca for Self-Instruct).

    Args:
      tasks: the tasks.
      vocabulary: the vocabulary.
      prefix: prefix of the seqio names (`seqio_task_name`).
      **kwargs: passed to `register_prompt_task` (e.g. max_instances_per_task,
        prompt_format to force one format).

    Returns:
      {task name: seqio task name}.
    """
    names = {}
    for task in tasks:
        seqio_name = seqio_task_name(prefix, task.name)
        if "prompt_format" in kwargs:
            register_prompt_task(seqio_name, [task], vocabulary, **kwargs)
        elif task.source == "self_instruct":
            register_self_instruct_task(seqio_name, [task], vocabulary, **kwargs)
        else:
            register_niv2_task(seqio_name, [task], vocabulary, **kwargs)
        names[task.name] = seqio_name
    return names


def num_examples(seqio_name: str) -> int:
    """Number of examples of a task registered here (KeyError for other tasks)."""
    return _NUM_EXAMPLES[seqio_name]


def make_mixture(name: str, task_names: Sequence[str],
                 rates: Mapping[str, float] | None = None) -> seqio.Mixture:
    """Registers (or replaces) a mixture of registered seqio tasks.

    Args:
      name: the mixture name (e.g. "activeit_iter3").
      task_names: seqio task names (as returned by `register_per_task`).
      rates: optional {seqio name: rate}; by default each task's rate is its number of
        examples, i.e. examples are drawn as from the concatenation of all instances, which is
        how Tk-Instruct / Active-IT train on a task set.

    Returns:
      The registered seqio.Mixture.

    Raises:
      ValueError: no task names, or a name that is not registered.
    """
    if not task_names:
        raise ValueError(f"mixture {name!r} needs at least one task")
    missing = [t for t in task_names if t not in seqio.TaskRegistry.names()]
    if missing:
        raise ValueError(f"mixture {name!r}: tasks not registered: {missing[:5]}")
    entries = []
    for task_name in task_names:
        if rates is not None and task_name in rates:
            rate = rates[task_name]
        else:
            rate = _NUM_EXAMPLES.get(task_name)
            if rate is None:  # registered elsewhere: let seqio count
                rate = seqio.mixing_rate_num_examples(seqio.get_mixture_or_task(task_name))
        entries.append((task_name, float(rate)))
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, entries)


def get_dataset(name: str, sequence_length: Mapping[str, int] | None = None,
                split: str = "train", shuffle: bool = False, seed: int | None = None,
                num_epochs: int | None = 1) -> tf.data.Dataset:
    """Tokenised examples of a registered task or mixture, with every feature kept.

    A seqio.Mixture keeps only the output features by default; this keeps the pretokenized
    strings and `PASSTHROUGH_FEATURES` for mixtures too, so tasks and mixtures look alike.

    Args:
      name: a seqio task or mixture name.
      sequence_length: {"inputs": n, "targets": n}; default 1024 / 128 (Tk-Instruct).
      split: split name (all splits serve the same examples for tasks registered here).
      shuffle: shuffle examples (seeded by `seed`).
      seed: shuffle / mixture sampling seed.
      num_epochs: passes over the data (None: repeat forever).

    Returns:
      tf.data.Dataset of dicts: inputs, targets (int32), inputs_pretokenized,
      targets_pretokenized, task_name, instance_id (string), references (string [None]).
    """
    provider = seqio.get_mixture_or_task(name)
    kwargs: dict[str, Any] = dict(sequence_length=dict(sequence_length or DEFAULT_SEQUENCE_LENGTH),
                                  split=split, shuffle=shuffle, seed=seed,
                                  num_epochs=num_epochs, use_cached=False)
    if isinstance(provider, seqio.Mixture):
        kwargs.update(copy_pretokenized=True, passthrough_features=list(PASSTHROUGH_FEATURES))
    return provider.get_dataset(**kwargs)
