"""Data layer: NIV2 / Self-Instruct readers, labels, prompts, splits, vocabularies, SeqIO.

Only the light modules are imported here; import the others explicitly
(`from activeit_jax.data import vocab`). `seqio_tasks` and `seqio_vocabulary` import seqio and
TensorFlow (the `[seqio]` extra): only the seqio tasks (`activeit_jax.tasks`) use them.
"""
from __future__ import annotations

from activeit_jax.data.errors import (
                                      DataError,
                                      EmptyPoolError,
                                      LabelOverrideError,
                                      MissingTaskError,
                                      SplitError,
                                      TaskFormatError,
                                      VocabularyError,
)
from activeit_jax.data.labels import CLS, GEN
from activeit_jax.data.niv2 import (
                                      Example,
                                      Instance,
                                      Task,
                                      load_niv2_task,
                                      read_niv2_split,
                                      scan_niv2_split,
)
from activeit_jax.data.prompts import (
                                      PromptParts,
                                      alpaca_prompt,
                                      render_tk_instruct,
                                      tk_instruct_parts,
)

__all__ = [
    "CLS", "GEN", "DataError", "EmptyPoolError", "Example", "Instance", "LabelOverrideError",
    "MissingTaskError", "PromptParts", "SplitError", "Task", "TaskFormatError",
    "VocabularyError", "alpaca_prompt", "load_niv2_task", "read_niv2_split",
    "render_tk_instruct", "scan_niv2_split", "tk_instruct_parts",
]
