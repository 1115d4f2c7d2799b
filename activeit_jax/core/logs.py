"""The terminal of a command: our progress bars and our own lines; other libraries' lines only
when they warn, or with `--verbose`.

Library code logs through `logging.getLogger(__name__)` (loggers under "activeit_jax"); the
entry point (`main.py`) calls `configure` once the flags are parsed:

  our loggers         INFO and up (DEBUG with --verbose), printed as the bare message
                      ("warning: ..." / "error: ..." above INFO);
  other libraries     WARNING and up (INFO with --verbose: orbax's per-checkpoint lines,
                      absl's), printed as "<logger>: <level>: <message>";
  native code         TensorFlow / XLA C++ logging (`TF_CPP_MIN_LOG_LEVEL`, set by `main.py`
                      before anything is imported) stays off unless --verbose.

Lines go through `tqdm.write`, so a line logged while a progress bar runs does not break it.
absl's own handler (glog-style "I1208 01:53:59.846 ... file.py:173]" prefixes) is replaced.
"""
from __future__ import annotations

import logging
import sys

OUR_LOGGER = "activeit_jax"


class _TerminalFormatter(logging.Formatter):
    """Our lines bare; library lines named after their logger."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        level = record.levelname.lower()
        if record.name == OUR_LOGGER or record.name.startswith(OUR_LOGGER + "."):
            return message if record.levelno <= logging.INFO else f"{level}: {message}"
        return f"{record.name}: {level}: {message}"


class TerminalHandler(logging.Handler):
    """Writes records to the current `sys.stderr` through `tqdm.write` (above the bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            from tqdm import tqdm
            tqdm.write(line, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def define_verbose_flag() -> None:
    """Defines `--verbose` (once per process)."""
    from absl import flags
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean("verbose", False, "Also show other libraries' INFO lines "
                             "(orbax, absl, TensorFlow/XLA native logs) and our DEBUG lines.")


def configure(verbose: bool = False) -> None:
    """Routes every log record to one `TerminalHandler` on the root logger, with the levels
    of the module docstring. Idempotent (a second call replaces the first's handler).

    Args:
      verbose: show other libraries' INFO lines and our DEBUG lines.
    """
    from absl import logging as absl_logging
    root = logging.getLogger()
    # absl's handler prints glog-style prefixes; ours replaces it (and any of ours before).
    for handler in list(root.handlers):
        if isinstance(handler, TerminalHandler) or handler is absl_logging.get_absl_handler():
            root.removeHandler(handler)
    handler = TerminalHandler()
    handler.setFormatter(_TerminalFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    # absl's logger ("absl": orbax and absl-based libraries) follows the root's level.
    logging.getLogger("absl").setLevel(logging.NOTSET)
    logging.getLogger(OUR_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
