"""The `activeit-jax` console entry point: one subcommand per stage of the active loop.

Each subcommand lives in `activeit_jax/commands/<name>.py`, defines its own absl flags and a
`main(argv)`; only the chosen one is imported, so flag names never collide across commands.

This is the one error boundary of the command line: the project's own errors
(`activeit_jax.core.errors.ActiveITError`: bad input, a refused run, an unreachable judge) and
operating-system errors on a named file (a permission) or a full disk end the command with one
line on stderr, `activeit-jax <command>: error: <message>`, and exit status 1. Anything else
keeps its traceback: it is a bug.
"""
from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any, Callable

# Subcommand -> one-line description (shown by `activeit-jax --help`).
SUBCOMMANDS: dict[str, str] = {
    "prepare": "Read an NIV2 directory or a Self-Instruct file, split it, print a summary, "
               "write the resolved pool.",
    "convert": "Convert checkpoints: Hugging Face (safetensors) or llama.cpp GGUF -> "
               "activeit-jax (orbax), and back to Hugging Face.",
    "train": "Fine-tune a model on a task set on a device mesh; keep the best epoch.",
    "score": "Score a task pool by prompt uncertainty, prediction probability and perplexity; "
             "write the Task Map.",
    "select": "Pick the next tasks from scored pool files with a selection strategy.",
    "evaluate": "Evaluate a checkpoint on validation/test tasks (ROUGE-L, exact match).",
    "run": "Run the whole active instruction tuning loop (train, score, select, repeat).",
    "report": "Write tables, plots and a self-contained HTML report of a run directory.",
    "compile": "Compile every program of a run ahead of time for a TPU topology (no TPU "
               "needed): HBM per device, fits or not, FLOPs, collectives, roofline time.",
}

# Commands that compile programs for devices other than this machine's (`apply`'s argument).
CROSS_COMPILING = ("compile",)


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: activeit-jax <command> [--flags] [--gin_file=F --gin.NAME=VALUE ...]", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`activeit-jax <command> --help` lists a command's flags."]
    return "\n".join(lines)


def default_compilation_cache_dir() -> str:
    """Where compiled XLA programs persist across runs unless JAX_COMPILATION_CACHE_DIR says
    otherwise (empty: off): every scoring and training shape compiles once per machine, not
    once per process, so the active loop's later iterations and a resumed run start at once
    (a T5-large shape takes tens of seconds to compile on an accelerator)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "activeit_jax", "xla")


def run_main(argv: list[str] | None = None) -> None:
    """Dispatches `activeit-jax <command> ...` to `activeit_jax.commands.<command>.main`."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in SUBCOMMANDS:
        print(f"activeit-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    if not _verbose(argv[2:]):  # native (C++) logs of XLA / TensorFlow: before any import
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", default_compilation_cache_dir())
    from activeit_jax.core import xla_defaults
    if command in CROSS_COMPILING:  # its devices are compile-only: never open this machine's
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # a TPU job may hold it
    xla_defaults.apply(compiles_for_this_machine=command not in CROSS_COMPILING)
    xla_defaults.quiet_tpu_probe()
    module = importlib.import_module(f"activeit_jax.commands.{command}")
    from absl import app, flags  # imported late: keeps `--help` fast.

    from activeit_jax.core import logs
    logs.define_verbose_flag()
    if any(arg in ("-h", "--help", "-help") for arg in argv[2:]):
        # absl's own --help lists the flags of `sys.argv[0]`'s module, not the command's.
        print((module.__doc__ or SUBCOMMANDS[command]).strip() + "\n")
        print(flags.FLAGS.module_help(module))
        if hasattr(module, "common"):
            print(flags.FLAGS.module_help(module.common))
        print(flags.FLAGS.module_help(logs))
        sys.exit(0)
    app.run(_guarded(command, module.main), argv=[f"activeit-jax {command}", *argv[2:]],
            flags_parser=module.parse_flags if hasattr(module, "parse_flags") else
            _default_flags_parser)


def _verbose(args: list[str]) -> bool:
    """`--verbose` is on the command line (read before absl parses it: the environment of
    native logging must be set before jax or TensorFlow load)."""
    return any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
               for arg in args)


def _guarded(command: str, main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` with the terminal set up (`core.logs`: our lines, other libraries' warnings)
    and the project's errors turned into one line on stderr and exit status 1.

    Nothing it prints carries a credential (`core.redaction.redact`: the judge's API key, an
    `Authorization` header, a URL's user:password): a bug's traceback that would show one is
    printed masked (exit status 1) instead of being re-raised.
    """
    from absl import flags

    from activeit_jax.core import logs
    from activeit_jax.core.errors import ActiveITError, one_line
    from activeit_jax.core.redaction import redact

    def guarded(argv: list[str]) -> Any:
        logs.configure(verbose="verbose" in flags.FLAGS and flags.FLAGS["verbose"].value)
        try:
            return main(argv)
        except ActiveITError as err:
            message = one_line(str(err))
        except OSError as err:
            if err.filename is not None:
                message = f"{err.filename}: {err.strerror or err}"
            elif err.errno in (errno.ENOSPC, errno.EDQUOT):  # a write names no file
                message = (f"{err.strerror}: free some space and rerun the same command; it "
                           "resumes where it stopped")
            else:
                _reraise_without_secrets(err)  # not about a file or the disk: a bug
        except Exception as err:  # noqa: BLE001 - a bug: keep its traceback, masked
            _reraise_without_secrets(err)
        print(f"activeit-jax {command}: error: {redact(message)}", file=sys.stderr,
              flush=True)
        sys.exit(1)
    return guarded


def _reraise_without_secrets(err: BaseException) -> None:
    """Re-raises a bug's exception (its traceback is how it gets fixed), unless the
    traceback would show a credential: then it is printed masked and the command exits 1."""
    import traceback

    from activeit_jax.core.redaction import redact
    text = "".join(traceback.format_exception(err))
    masked = redact(text)
    if masked == text:
        raise err
    print(masked, end="", file=sys.stderr, flush=True)
    sys.exit(1)


def _default_flags_parser(argv: list[str]) -> list[str]:
    """absl flag parsing that first strips `--gin.X=V` bindings into
    `gin_utils.COMMAND_LINE_BINDINGS`."""
    from absl import flags

    from activeit_jax.core import gin_utils
    from activeit_jax.core.errors import UsageError
    try:
        rest, bindings = gin_utils.split_gin_bindings(argv)
    except UsageError as err:  # runs before the guarded main: report it the same way
        print(f"{argv[0]}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    gin_utils.COMMAND_LINE_BINDINGS[:] = bindings
    return flags.FLAGS(rest)


if __name__ == "__main__":
    run_main()
