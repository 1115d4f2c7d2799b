"""Flags and helpers shared by several subcommands, and the flags generated from config
dataclasses (`define_config_flags`)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import typing
from typing import Any, Callable, Mapping, Sequence

import gin
from absl import flags

from activeit_jax.core import gin_utils
from activeit_jax.core.errors import ActiveITError, UsageError
from activeit_jax.core.paths import same_path


def define_gin_flags() -> None:
    """Defines `--gin_file` (repeatable), `--gin_search_path` (repeatable) and t5x's
    `--gin_search_paths` (comma-separated) for a subcommand."""
    flags.DEFINE_multi_string("gin_file", [], "gin config file(s), parsed in order.")
    flags.DEFINE_multi_string("gin_search_path", [], "extra directory to look up gin files "
                              "(repeatable); the bundled configs/ is always searched last.")
    flags.DEFINE_list("gin_search_paths", [], "t5x's form of --gin_search_path: "
                      "comma-separated directories, searched in order.")


def parse_gin_from_flags() -> None:
    """Parses `--gin_file` files and the `--gin.X=V` bindings captured from the command line."""
    gin_utils.parse_gin(flags.FLAGS.gin_file, gin_utils.COMMAND_LINE_BINDINGS,
                        [*flags.FLAGS.gin_search_path, *flags.FLAGS.gin_search_paths])


def check_args(argv: list[str], required: tuple[str, ...] = ()) -> None:
    """Rejects positional arguments and missing required flags (named in the message).

    Args:
      argv: what absl left after parsing flags (the program name first).
      required: names of flags that must be set.

    Raises:
      UsageError: with "unexpected arguments: ..." or "--NAME is required".
    """
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    for name in required:
        if not getattr(flags.FLAGS, name):
            raise UsageError(f"--{name} is required")


def refuse_outputs_among_inputs(inputs: Mapping[str, str | Sequence[str] | None],
                                outputs: Mapping[str, str | None],
                                writes: Mapping[str, Sequence[str]] | None = None) -> None:
    """Refuses an output that is one of the command's inputs, before anything is read.

    `select --scores=S --out=S` used to overwrite the scores file (and the score directory
    could no longer resume). An output is refused when it is the same file or directory as
    an input (`os.path.samefile` when both exist, so a symbolic or hard link to the input is
    caught; otherwise the resolved paths), and an output directory when one of the files the
    command writes inside it (`writes`) is an input.

    Args:
      inputs: flag name -> the path it gives (a list for a repeatable flag; None = not given).
      outputs: flag name -> the output path (None = not given).
      writes: output flag -> names the command writes inside that output directory.

    Raises:
      UsageError: "--OUT=PATH is --IN=PATH ...", naming both flags.
    """
    given = [(flag, path) for flag, value in inputs.items()
             for path in ([value] if isinstance(value, (str, os.PathLike)) else value or ())
             if path]
    for out_flag, out in outputs.items():
        if not out:
            continue
        for in_flag, path in given:
            if same_path(out, path):
                raise UsageError(f"--{out_flag}={out} is the input --{in_flag}={path}: writing "
                                 f"it would destroy that input; choose another --{out_flag}")
            for name in (writes or {}).get(out_flag, ()):
                if same_path(os.path.join(out, name), path):
                    raise UsageError(
                        f"--{out_flag}={out} would overwrite the input --{in_flag}={path} (it "
                        f"writes {name} there); choose another --{out_flag}")


def parse_mesh(text: str) -> dict[str, int]:
    """Parses a `--mesh` flag: "data=4,model=2" -> {"data": 4, "model": 2}."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise UsageError(f"--mesh item {item!r} must look like AXIS=SIZE")
        axis, size = item.split("=", 1)
        try:
            out[axis.strip()] = int(size)
        except ValueError:
            raise UsageError(f"--mesh item {item!r}: SIZE must be an integer") from None
    return out


def define_distributed_flags() -> None:
    """Flags of a multi-host run (see `activeit_jax.core.distributed`: ACTIVEIT_* variables
    fill what is not given; without either, JAX detects a SLURM / Open MPI / TPU cluster)."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of JAX processes (hosts).")
    flags.DEFINE_integer("process_id", None, "This process's rank.")
    flags.DEFINE_integer("cpu_devices", None, "CPU only: virtual devices of this process.")
    flags.DEFINE_string("cpu_collectives", None, "CPU only: cross-process collectives "
                        "implementation (gloo) for multi-process CPU runs.")
    flags.DEFINE_float("peer_timeout", None, "Multi-host: seconds without a heartbeat of "
                       "another process before this one gives up with one line (default "
                       "60; env ACTIVEIT_PEER_TIMEOUT).")
    flags.DEFINE_float("barrier_timeout", None, "Multi-host: seconds a barrier waits while "
                       "process 0 writes a shared file (default 1800; env "
                       "ACTIVEIT_BARRIER_TIMEOUT).")


def initialize_distributed_from_flags() -> None:
    """Starts `jax.distributed` from the flags of `define_distributed_flags` (no-op for one
    process). Call before anything touches a JAX device."""
    from activeit_jax.core import distributed
    config = distributed.resolve_config(
        coordinator_address=flags.FLAGS.coordinator_address,
        num_processes=flags.FLAGS.num_processes, process_id=flags.FLAGS.process_id,
        local_device_count=flags.FLAGS.cpu_devices,
        cpu_collectives=flags.FLAGS.cpu_collectives,
        peer_timeout_s=flags.FLAGS.peer_timeout, barrier_timeout_s=flags.FLAGS.barrier_timeout)
    distributed.initialize(config)


def quiet_library_logs() -> None:
    """Shows our INFO lines but only warnings from libraries (orbax logs every checkpoint read
    and write at INFO through absl), or everything with `--verbose` (`core.logs`; the entry
    point already does this for every command)."""
    from activeit_jax.core import logs
    logs.configure(verbose="verbose" in flags.FLAGS and flags.FLAGS["verbose"].value)


# ----------------------------------------------------------------------------------------------
# Config dataclasses on the command line.
#
# Every command reads its settings as a dataclass (`ScoreConfig`, `TrainConfig`, `SelectConfig`)
# from gin: a gin file, or `--gin.ScoreConfig.num_perturbations=5` on the command line. Some
# fields also have a flag (`--num_perturbations=5`), generated from the field by
# `define_config_flags`: its name (or an alias kept for an older flag name), its type, its
# default and its help (the class docstring's Attributes entry) all come from the dataclass,
# so a flag cannot drift from its field. Where a field is set:
#
#   1. a flag given on the command line;
#   2. else a gin binding (a gin file, or a `--gin.` binding);
#   3. else the dataclass default.
#
# A flag and a `--gin.` binding of the same field on one command line are two explicit values
# for one setting: refused in one line. (A gin file's binding is a default the flag
# overrides, as a run's gin file for `evaluate --batch_size=...`.)

_SCALAR_FLAGS = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
                 float: flags.DEFINE_float, str: flags.DEFINE_string}


@dataclasses.dataclass(frozen=True)
class ConfigFlags:
    """The flags `define_config_flags` generated for the fields of one config dataclass.

    Attributes:
      cls: the dataclass.
      selector: its gin selector (e.g. "activeit_jax.scoring.ScoreConfig"); None when the
        class is read from its flags only.
      flag_names: field name -> flag name.
      parsers: field name -> function turning the flag's value into the field's.
      deprecated_selectors: older gin names whose bindings still count, with a warning.
    """
    cls: type
    selector: str | None
    flag_names: Mapping[str, str]
    parsers: Mapping[str, Callable[[Any], Any]]
    deprecated_selectors: tuple[str, ...] = ()

    def given(self) -> dict[str, Any]:
        """field -> value of each of these flags given on the command line (or without a
        dataclass default: always), converted to the field's type.

        Raises:
          UsageError: a value the field's parser refuses (the flag named).
        """
        fields = {f.name: f for f in dataclasses.fields(self.cls)}
        out = {}
        for name, flag in self.flag_names.items():
            if flags.FLAGS[flag].present or not _has_default(fields[name]):
                out[name] = self.parsers[name](flags.FLAGS[flag].value)
        return out

    def gin_bound(self) -> dict[str, Any]:
        """field -> value bound in gin (files and `--gin.` bindings; macros and references
        resolved). Bindings of a deprecated selector count where the class's own name binds
        nothing."""
        if self.selector is None:
            return {}
        bound = gin.get_bindings(self.selector)
        for old in self.deprecated_selectors:
            bound = {**gin.get_bindings(old), **bound}
        return bound

    def check_conflicts(self) -> None:
        """Refuses a flag given together with a `--gin.` binding of the same field.

        Raises:
          UsageError: "--FLAG and --gin.CLASS.FIELD both set CLASS.FIELD: give one".
        """
        if self.selector is not None:
            refuse_flag_and_binding((self.selector, *self.deprecated_selectors),
                                    {flag: name for name, flag in self.flag_names.items()},
                                    self.cls.__name__)

    def value(self, name: str) -> Any:
        """The value field `name` will have (flag > gin binding > dataclass default)."""
        given = self.given()
        if name in given:
            return given[name]
        bound = self.gin_bound()
        if name in bound:
            return bound[name]
        field = {f.name: f for f in dataclasses.fields(self.cls)}[name]
        return (field.default_factory() if field.default is dataclasses.MISSING
                else field.default)

    def build(self, explicit: Mapping[str, Any] | None = None, **fallback: Any) -> Any:
        """The dataclass from the flags given, the gin bindings and the dataclass defaults.

        Args:
          explicit: field -> value the command derived from other flags given (as a flag:
            over any gin binding; the caller checks its conflicts).
          **fallback: values of fields neither a flag nor a gin binding sets, in place of
            the dataclass default (a command's own derived default, e.g. "the decoding
            length follows max_target_length").

        Raises:
          UsageError: a conflict (`check_conflicts`), a malformed flag value, or a value the
            dataclass refuses (its message, in one line).
        """
        self.check_conflicts()
        for old in self.deprecated_selectors:
            if gin.get_bindings(old):
                logging.getLogger(__name__).warning(
                    "gin: %s.* is deprecated and will go; bind %s.* instead",
                    old.rsplit(".", 1)[-1], self.cls.__name__)
        bound = self.gin_bound()
        values = {**{k: v for k, v in fallback.items() if k not in bound}, **bound,
                  **(explicit or {}), **self.given()}
        try:
            return self.cls(**values)
        except ActiveITError:
            raise
        except (TypeError, ValueError) as err:
            raise UsageError(f"{self.cls.__name__}: {err}") from None


def define_config_flags(cls: type, *, gin_module: str | None = None,
                        renamed: Mapping[str, str] | None = None,
                        skip: Sequence[str] = (), only: Sequence[str] | None = None,
                        choices: Mapping[str, Sequence[str]] | None = None,
                        parsers: Mapping[str, Callable[[Any], Any]] | None = None,
                        help_texts: Mapping[str, str] | None = None,
                        required_defaults: Mapping[str, Any] | None = None,
                        deprecated_selectors: Sequence[str] = ()) -> ConfigFlags:
    """Defines one absl flag per field of the dataclass `cls`, from the field itself.

    Each flag is named after its field (or `renamed[field]`, for a flag name kept from an
    older command line), takes the field's type (bool, int, float, str, each maybe None, or
    a tuple of ints: a comma-separated list) and default, and its help is the field's entry
    in the class docstring's "Attributes:" section (or `help_texts[field]`), followed by the
    gin name of the field.

    Args:
      cls: a dataclass with a Google-style "Attributes:" docstring.
      gin_module: registers `cls` with gin under this module (if not registered yet), so
        `CLASS.FIELD` bindings set it; None = the class is read from its flags only.
      renamed: field -> flag name, where the flag is not named after the field.
      skip: fields without a flag (the command sets them some other way).
      only: flag only these fields (default: every field not skipped).
      choices: field -> allowed values (an enum flag).
      parsers: field -> function from the flag value to the field value (default: the flag
        value; a list flag: a tuple of ints, or None when empty).
      help_texts: field -> help, where the docstring's words do not fit a command line.
      required_defaults: field -> flag default, for fields without a dataclass default only.
      deprecated_selectors: older gin selectors whose bindings still set these fields.

    Returns:
      The `ConfigFlags` to read the flags back with.

    Raises:
      TypeError: a field not skipped has a type no flag can hold (a programming error).
    """
    renamed, choices = dict(renamed or {}), dict(choices or {})
    parsers, help_texts = dict(parsers or {}), dict(help_texts or {})
    required_defaults = dict(required_defaults or {})
    selector = None
    if gin_module is not None:
        selector = f"{gin_module}.{cls.__name__}"
        try:
            gin.get_configurable(selector)
        except ValueError:  # not registered yet (the class is plain; gin stays at the edge)
            gin.external_configurable(cls, module=gin_module)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    names, field_parsers = {}, {}
    for field in dataclasses.fields(cls):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        flag = renamed.get(field.name, field.name)
        if field.name in required_defaults:
            if _has_default(field):
                raise TypeError(f"{cls.__name__}.{field.name} has a default of its own")
            default = required_defaults[field.name]
        elif _has_default(field):
            default = (field.default_factory() if field.default is dataclasses.MISSING
                       else field.default)
        else:
            raise TypeError(f"{cls.__name__}.{field.name} has no default: give one in "
                            "required_defaults")
        kind, optional = _flag_kind(hints[field.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag holds "
                            f"{hints[field.name]}; skip it")
        text = help_texts.get(field.name) or docs.get(field.name) or field.name
        if selector is not None:
            text = f"{text} [gin: {cls.__name__}.{field.name}]"
        if kind is tuple:
            flags.DEFINE_list(flag, None if default is None else [str(v) for v in default],
                              text)
            field_parsers[field.name] = parsers.get(
                field.name, functools.partial(_int_tuple, flag, optional))
        elif field.name in choices:
            flags.DEFINE_enum(flag, default, list(choices[field.name]), text)
            field_parsers[field.name] = parsers.get(field.name, _identity)
        else:
            _SCALAR_FLAGS[kind](flag, default, text)
            field_parsers[field.name] = parsers.get(field.name, _identity)
        names[field.name] = flag
    return ConfigFlags(cls, selector, names, field_parsers, tuple(deprecated_selectors))


def refuse_flag_and_binding(selectors: Sequence[str], fields: Mapping[str, str],
                            owner: str) -> None:
    """Refuses a flag given together with a `--gin.` binding of the field it sets.

    Args:
      selectors: the gin selectors of the configurable (its name and older ones).
      fields: flag name -> the field of that configurable it sets.
      owner: the configurable's name, for the message.

    Raises:
      UsageError: "--FLAG and --gin.NAME.FIELD both set OWNER.FIELD: give one".
    """
    explicit = command_line_bound(selectors)
    for flag, name in fields.items():
        if flags.FLAGS[flag].present and name in explicit:
            raise UsageError(f"--{flag} and --gin.{explicit[name]} both set {owner}.{name}: "
                             "give one")


def command_line_bound(selectors: Sequence[str]) -> dict[str, str]:
    """Fields set by the `--gin.` bindings of this command line on one of `selectors`
    (unscoped): field -> the binding's name as written (e.g. "ScoreConfig.seed")."""
    out = {}
    for binding in gin_utils.COMMAND_LINE_BINDINGS:
        key = binding.split("=", 1)[0].strip()
        try:
            parsed = gin.config.ParsedBindingKey.parse(key)
        except ValueError:  # a macro, or a configurable this command does not know
            continue
        if not parsed.scope and parsed.complete_selector in selectors:
            out[parsed.arg_name] = key
    return out


def field_docs(cls: type) -> dict[str, str]:
    """field -> its entry in the "Attributes:" section of `cls`'s docstring, on one line.

    An entry naming several fields ("a / b: ..." or "a, b: ...") is every one's.
    """
    lines = (inspect.getdoc(cls) or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        entry = re.fullmatch(r"([\w ,/]+?):\s*(.*)", line.strip()) if depth == indent else None
        if entry:
            names = [n for n in re.split(r"\s*[,/]\s*", entry.group(1)) if n]
            for name in names:
                out[name] = entry.group(2)
        else:
            for name in names:
                out[name] = f"{out[name]} {line.strip()}"
    return out


def _has_default(field: dataclasses.Field) -> bool:
    return (field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING)


def _flag_kind(hint: Any) -> tuple[Any, bool]:
    """(bool / int / float / str / tuple, whether None is allowed), or (None, _) for a type
    no flag holds. A tuple is a tuple of ints (`tuple[int, ...]`)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, optional
        hint = rest[0]
    if hint in _SCALAR_FLAGS:
        return hint, optional
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (int, Ellipsis):
        return tuple, optional
    return None, optional


def _identity(value: Any) -> Any:
    return value


def _int_tuple(flag: str, optional: bool, value: Sequence[str] | None
               ) -> tuple[int, ...] | None:
    """A list flag's strings as a tuple of ints; empty -> None (or () for a field that may
    not be None)."""
    try:
        out = tuple(int(v) for v in value or ())
    except ValueError:
        raise UsageError(f"--{flag} must be integers, got {','.join(value)}") from None
    return out if out or not optional else None
