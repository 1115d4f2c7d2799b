"""gin at the edges: `--gin_file=...` and `--gin.X=...` command-line bindings, as in t5x.

absl does not know `--gin.NAME=VALUE` flags, so they are pulled out of argv before absl parses
the rest, and turned into gin bindings `NAME = VALUE`.
"""
from __future__ import annotations

import logging
import os
import tokenize
from typing import Sequence

import gin

from activeit_jax.core import resources
from activeit_jax.core.errors import ConfigError, one_line

# The directory that holds `configs/` (a checkout, or the installed package: `resources`).
REPO_ROOT = resources.RESOURCE_ROOT

_GIN_PREFIX = "--gin."

# Filled by the entry point's flag parser with the `--gin.X=V` overrides of the current
# command (kept here, not in `main`, which may also run as `__main__`).
COMMAND_LINE_BINDINGS: list[str] = []


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.X=V` arguments from the rest of argv.

    Args:
      argv: the full command line, program name first.

    Returns:
      (argv without the gin arguments, gin bindings as "X = V" strings).
    """
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith(_GIN_PREFIX):
            body = arg[len(_GIN_PREFIX):]
            if "=" not in body:
                raise ConfigError(f"gin override {arg!r} must look like --gin.NAME=VALUE")
            name, value = body.split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
    """Parses gin files then bindings; files are looked up in the repo's `configs/` too.

    Args:
      gin_files: paths of gin files, absolute, relative to the working directory or to
        one of the search paths.
      bindings: "NAME = VALUE" strings applied after the files.
      search_paths: extra directories for gin `include` statements and file lookup.

    Raises:
      ConfigError: a file is missing, or a file or binding does not parse (gin's message).
    """
    repo_configs = resources.CONFIGS_DIR
    roots = [*search_paths, repo_configs]
    for path in roots:
        gin.add_config_file_search_path(path)
    resolved = []
    for gin_file in gin_files:
        # Resolve here (gin's own probing logs an ERROR line for every miss).
        candidates = [gin_file, *(os.path.join(root, gin_file) for root in roots)]
        found = next((c for c in candidates if os.path.exists(c)), None)
        if found is None:
            raise ConfigError(f"gin file not found: {gin_file} (looked in the working "
                              f"directory and {roots})")
        resolved.append(found)
    # gin logs "Path not found" at ERROR level for each search-path probe of an `include`
    # before it finds the file; those lines are noise, real misses still raise.
    root_logger = logging.getLogger()
    root_logger.addFilter(_drop_gin_probe_messages)
    try:
        gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
    except (ValueError, SyntaxError, tokenize.TokenError, IOError) as err:
        # gin's messages name the binding or file line; one line is enough to fix it.
        raise ConfigError(f"gin: {one_line(_describe(err))}") from None
    finally:
        root_logger.removeFilter(_drop_gin_probe_messages)


def _describe(err: BaseException) -> str:
    if isinstance(err, tokenize.TokenError):
        return f"unfinished value in a binding ({err.args[0]})"
    return str(err)


def _drop_gin_probe_messages(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")
