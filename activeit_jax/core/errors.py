"""The project's own errors: what a user can cause and fix, shown as one line without a
traceback.

Every error the library raises on purpose for bad input, a refused run or an unreachable
service derives from `ActiveITError`; the entry point (`activeit_jax.main`) prints its message
as `activeit-jax <command>: error: <message>` and exits with status 1. Anything else that
escapes is a bug and keeps its traceback. So a message must say, on its own, what is wrong and
where: the file, the line and the field when there is one.
"""
from __future__ import annotations


class ActiveITError(Exception):
    """Base class of the errors the entry point reports in one line."""


class UsageError(ActiveITError, ValueError):
    """A command-line flag or a config value is missing, malformed or out of range.

    Also a `ValueError`, so library callers that catch bad values keep working.
    """


class ConfigError(UsageError):
    """A gin file or binding cannot be parsed or names something that does not exist."""


def one_line(message: str) -> str:
    """`message` with its line breaks folded, so an error fits the one-line contract."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())
