"""Flags and helpers shared by several subcommands."""
from __future__ import annotations

from absl import flags

from activeit_jax import gin_utils


def define_gin_flags() -> None:
    """Defines `--gin_file` (repeatable) and `--gin_search_path` for a subcommand."""
    flags.DEFINE_multi_string("gin_file", [], "gin config file(s), parsed in order.")
    flags.DEFINE_multi_string("gin_search_path", [], "extra directories to look up gin files.")


def parse_gin_from_flags() -> None:
    """Parses `--gin_file` files and the `--gin.X=V` bindings captured from the command line."""
    gin_utils.parse_gin(flags.FLAGS.gin_file, gin_utils.COMMAND_LINE_BINDINGS,
                        flags.FLAGS.gin_search_path)
