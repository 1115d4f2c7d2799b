"""Raw examples: every instance of a task set rendered as a prompt, in plain Python.

The one renderer of training, evaluation and the seqio tasks (`training.inputs.encode_tasks`,
`seqio_tasks.register_prompt_task`); it imports neither seqio nor TensorFlow.
"""
from __future__ import annotations

from typing import Any, Sequence

from activeit_jax.data import prompts as prompts_lib
from activeit_jax.data.niv2 import Task


def build_examples(tasks: Sequence[Task], prompt_format: str = prompts_lib.TK_INSTRUCT,
                   fits: prompts_lib.Fits | None = None,
                   max_instances_per_task: int | None = None,
                   num_pos_examples: int = prompts_lib.NUM_POS_EXAMPLES,
                   chat: Any = None) -> list[dict[str, Any]]:
    """Renders every instance of every task into a raw example dict (plain Python).

    Args:
      tasks: the tasks, in order.
      prompt_format: one of `prompts.PROMPT_FORMATS`.
      fits: the max_source_length test for Tk-Instruct examples (None: no limit).
      max_instances_per_task: the first N instances of each task (None: all). Sampling
        happens earlier, in `niv2.select_instances` / `activeit-jax prepare`.
      num_pos_examples: positive examples per Tk-Instruct prompt.
      chat: the model's `chat.ChatTemplate` (needed by the chat formats).

    Returns:
      Dicts with inputs, targets, task_name, instance_id, references (list of str).
    """
    examples = []
    for task in tasks:
        instances = task.instances
        if max_instances_per_task is not None and max_instances_per_task >= 0:
            instances = instances[:max_instances_per_task]
        for instance in instances:
            parts = prompts_lib.tk_instruct_parts(task, instance, num_pos_examples)
            examples.append({
                "inputs": prompts_lib.render(parts, prompt_format, fits, chat),
                "targets": instance.outputs[0],
                "task_name": task.name,
                "instance_id": instance.id,
                "references": list(instance.outputs),
            })
    return examples
