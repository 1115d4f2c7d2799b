"""A jinja sandbox whose renders do bounded work and allocate bounded memory.

A chat template ships inside a downloaded model file (`tokenizer_config.json`, a GGUF's
metadata): it is data, not code we wrote. jinja's `ImmutableSandboxedEnvironment` already
refuses escapes (`__mro__`, `__globals__`, unsafe `format`) and caps a single `range` at
100,000 items, but it bounds neither work nor memory: two nested `range(100000)` loops run
for hours, and `'x' * 3000000000`, `2 ** 100000000`, `lipsum(n=100000000)` or
`tojson(indent=1000000000)` allocate until the machine gives out. `BoundedEnvironment`
renders under a budget (`Limits`), per render:

- **work**: every loop iteration, call, filter, subscript and intercepted operator is one
  operation; more than `operations`, or more than `seconds` of this thread's CPU time, stops
  the render;
- **size**: no string or list made by the template may exceed `value_size` characters /
  items, and all those it makes together not `allocated` (its output included, every
  `{{ ... }}` counted as it is written); the amplifying operations are checked *before* they
  run: repetition (`*`), concatenation (`+`, `~`), powers (`**`, at most `power_bits` bits),
  `%` and `format` widths, `join`, `replace`, `indent`, `wordwrap`, `expandtabs`;
- **arguments**: no integer argument of a call or filter above `argument` (widths, counts),
  `lipsum` at most 100 paragraphs, `tojson` indent and separators at most `indent`
  characters.

The loop and concatenation hooks are added to the parsed template (a node transformer
rewrites `{% for x in it %}` to iterate a counting wrapper, and `a ~ b` to a checked join)
with jinja's `ImportedName`, so a template cannot shadow them. Exceeding a limit raises
`TemplateBudgetError`; `data.chat.ChatTemplate` reports it in one line naming the file.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import re
import time
from typing import Any, Callable, Iterable, Iterator

import jinja2
import jinja2.nodes as nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer


class TemplateBudgetError(Exception):
    """A template render went past one of its `Limits` (the message says which)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """The budget of one render (module docstring).

    The defaults are far above what real chat templates need (a few hundred operations and
    the length of the conversation) and far below what hurts a machine (a few hundred MB).
    """
    operations: int = 1_000_000
    seconds: float = 5.0
    value_size: int = 4_000_000
    allocated: int = 32_000_000
    argument: int = 1_000_000
    power_bits: int = 100_000
    indent: int = 16
    lipsum_paragraphs: int = 100


LIMITS = Limits()


class _Budget:
    """What one render has used so far (`active`); an inactive budget (jinja folding constants
    while it compiles) only checks the size of each value."""

    def __init__(self, limits: Limits, active: bool = True):
        self.limits = limits
        self.active = active
        self.operations = 0
        self.allocated = 0
        self.deadline = time.thread_time() + limits.seconds

    def tick(self) -> None:
        if not self.active:
            return
        self.operations += 1
        if self.operations > self.limits.operations:
            raise TemplateBudgetError(
                f"more than {self.limits.operations:,} operations (loop iterations, calls, "
                f"operators): a template that does not end in reasonable time")
        if self.operations % 64 == 0 and time.thread_time() > self.deadline:
            raise TemplateBudgetError(f"more than {self.limits.seconds:g} s of CPU time")

    def charge(self, size: int) -> None:
        """Counts a value of `size` characters / items made by the template."""
        if size > self.limits.value_size:
            raise TemplateBudgetError(f"a value of {size:,} characters or items (the limit is "
                                      f"{self.limits.value_size:,})")
        if not self.active:
            return
        self.allocated += size
        if self.allocated > self.limits.allocated:
            raise TemplateBudgetError(f"more than {self.limits.allocated:,} characters or "
                                      f"items made in one render")


_CURRENT: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "activeit_template_budget", default=None)
_INACTIVE = _Budget(LIMITS, active=False)


def _budget() -> _Budget:
    return _CURRENT.get() or _INACTIVE


def _size(value: Any) -> int:
    """Characters of a string, items of a container; 0 for anything else."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset, range)):
        return len(value)
    return 0


def _check_size(size: int, what: str) -> None:
    """Refuses an operation whose result would hold `size` characters / items, before it
    runs."""
    limit = _budget().limits.value_size
    if size > limit:
        raise TemplateBudgetError(f"{what} would make {size:,} characters or items (the limit "
                                  f"is {limit:,})")


def _check_number(value: Any, what: str) -> None:
    """Refuses an integer (or float) argument beyond `Limits.argument`."""
    limit = _budget().limits.argument
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            not abs(value) <= limit:
        raise TemplateBudgetError(f"{what}: argument {value!r} is beyond {limit:,}")


_PRINTF_FIELD = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


def _check_format_text(text: str, printf: bool) -> None:
    """Refuses widths / precisions beyond `Limits.argument` in a `%` or `str.format` text."""
    limit = _budget().limits.argument
    if printf:
        numbers = [n for field in _PRINTF_FIELD.findall(text) for n in field if n.isdigit()]
    else:
        numbers = [n for spec in _FORMAT_SPEC.findall(text) for n in re.findall(r"\d+", spec)]
    for number in numbers:
        if len(number) > 12 or int(number) > limit:
            raise TemplateBudgetError(f"a format width or precision of {number} (the limit is "
                                      f"{limit:,})")


def _len_of_str(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


# ----------------------------------------------------------------------------- operators


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """The size of `left <operator> right`, checked before it is computed."""
    ints = (isinstance(left, int) and not isinstance(left, bool)
            and isinstance(right, int) and not isinstance(right, bool))
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        bits = abs(left).bit_length() * right
        if bits > _budget().limits.power_bits:
            raise TemplateBudgetError(f"{left} ** {right} would have about {bits:,} bits "
                                      f"(the limit is {_budget().limits.power_bits:,})")
    elif operator == "*" and ints:
        bits = abs(left).bit_length() + abs(right).bit_length()
        if bits > _budget().limits.power_bits:
            raise TemplateBudgetError(f"a product of about {bits:,} bits")
    elif operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(count, int):
                _check_size(len(sequence) * max(count, 0), "repetition (*)")
    elif operator == "+":
        _check_size(_size(left) + _size(right), "concatenation (+)")
    elif operator == "%" and isinstance(left, str):
        _check_format_text(left, printf=True)
        for value in (right if isinstance(right, (tuple, list)) else
                      right.values() if isinstance(right, dict) else (right,)):
            _check_number(value, "% formatting")


# ----------------------------------------------------------------------------- calls


def _check_str_method(method: Any, args: tuple, kwargs: dict) -> tuple:
    """Pre-checks the str methods that can amplify (`join`, `replace`, `expandtabs`,
    `format`); returns the arguments to call with (a generator given to `join` is read
    into a list first, so that it is measured)."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    receiver, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
    if not isinstance(receiver, str):
        return args
    if name == "join" and args:
        items = args[0] if isinstance(args[0], (list, tuple)) else list(args[0])
        _check_size(len(receiver) * max(len(items) - 1, 0)
                    + sum(len(x) for x in items if isinstance(x, str)), "join")
        return (items, *args[1:])
    if name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        old, new = args[0], args[1]
        count = len(receiver) + 1 if not old else receiver.count(old)
        _check_size(len(receiver) + count * max(len(new) - len(old), 0), "replace")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_size(len(receiver) + receiver.count("\t") * max(size, 0), "expandtabs")
    elif name in ("format", "format_map"):
        _check_format_text(receiver, printf=False)
    return args


def _check_filter(name: str, value: Any, args: tuple, kwargs: dict) -> None:
    """Pre-checks the built-in filters that can amplify their input."""
    text = value if isinstance(value, str) else None
    if name == "indent" and text is not None:
        width = args[0] if args else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) \
            else 0
        _check_size(len(text) + (text.count("\n") + 1) * max(per_line, 0), "indent")
    elif name == "replace" and text is not None and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = len(text) + 1 if not old else text.count(old)
        _check_size(len(text) + count * max(len(new) - len(old), 0), "replace")
    elif name == "wordwrap" and text is not None:
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        if isinstance(width, int) and isinstance(wrap, str):
            _check_size(len(text) + (len(text) // max(width, 1) + 1) * len(wrap), "wordwrap")
    elif name == "format" and text is not None:
        _check_format_text(text, printf=True)
    elif name == "join" and isinstance(value, (list, tuple)):
        separator = args[0] if args else kwargs.get("d", "")
        _check_size(_len_of_str(separator) * max(len(value) - 1, 0)
                    + sum(len(x) for x in value if isinstance(x, str)), "join")


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a filter) with its arguments checked, its run counted and its result
    measured. Keeps jinja's pass-context / environment marker (copied by `wraps`)."""
    passes = getattr(function, "jinja_pass_arg", None) is not None  # context / environment

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        head, rest = (args[:2], args[2:]) if passes else (args[:1], args[1:])
        value = head[-1] if head else None
        for arg in (*rest, *kwargs.values()):
            _check_number(arg, f"filter {name!r}")
        if name == "join" and not isinstance(value, (list, tuple, str)) and value is not None:
            value = list(value)  # measured; join reads its input once anyway
            args = (*head[:-1], value, *rest)
        _check_filter(name, value, rest, kwargs)
        result = function(*args, **kwargs)
        budget.charge(_size(result))
        return result
    return bounded


# ----------------------------------------------------------------------------- hooks


def bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """Each `{% for %}` loop iterates through this: one operation per item."""
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


def bounded_concat(*parts: Any) -> str:
    """`a ~ b ~ ...`: the parts as text, joined once their total length is checked."""
    texts = [str(part) for part in parts]
    size = sum(len(text) for text in texts)
    _check_size(size, "concatenation (~)")
    _budget().charge(size)
    return "".join(texts)


def _bounded_output(value: Any) -> Any:
    """The environment's `finalize`: every `{{ ... }}` written (captured `{% set %}` blocks
    included) counts towards the render's size budget."""
    _budget().charge(_len_of_str(value) if value is not None else 0)
    return value


def check_json_layout(indent: Any, separators: Any) -> None:
    """Refuses a `tojson` indent or separators longer than `Limits.indent` characters (an
    indent of 10^9 spaces repeats at every line)."""
    limit = _budget().limits.indent
    width = (len(indent) if isinstance(indent, str) else indent if isinstance(indent, int)
             and not isinstance(indent, bool) else None if indent is None else -1)
    if width is not None and not 0 <= width <= limit:
        raise TemplateBudgetError(f"tojson indent {indent!r:.40}: at most {limit} characters")
    if separators is not None and (not isinstance(separators, (list, tuple)) or any(
            not isinstance(part, str) or len(part) > limit for part in separators)):
        raise TemplateBudgetError(f"tojson separators {separators!r:.40}: strings of at most "
                                  f"{limit} characters")


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20,  # noqa: A002 (jinja's)
                    max: int = 100) -> str:  # noqa: A002
    limit = _budget().limits.lipsum_paragraphs
    if not (isinstance(n, int) and 0 <= n <= limit and isinstance(min, int)
            and isinstance(max, int) and 0 <= min <= max <= 1000):
        raise TemplateBudgetError(f"lipsum(n={n!r}, min={min!r}, max={max!r}): at most {limit} "
                                  f"paragraphs of at most 1000 words")
    from jinja2.utils import generate_lorem_ipsum
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


_INTERNAL = (bounded_iter, bounded_concat)
_CALL_NAMES = {"safe_range": "range", "_bounded_lipsum": "lipsum"}  # as the template says
_MODULE = __name__


def _hook(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.ImportedName(f"{_MODULE}.{name}"), args, [], None, None,
                      lineno=lineno)


class _AddHooks(NodeTransformer):
    """Rewrites loops to iterate `bounded_iter` and `~` to call `bounded_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = _hook("bounded_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        node = self.generic_visit(node)
        return _hook("bounded_concat", list(node.nodes), node.lineno)


# ----------------------------------------------------------------------------- environment


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """`ImmutableSandboxedEnvironment` whose renders keep to `Limits` (module docstring).

    Compile with `compile_template`, render with `render`: a template compiled otherwise
    lacks the loop and concatenation hooks.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, finalize=_bounded_output, **kwargs)
        self.globals["lipsum"] = _bounded_lipsum

    def bound_filters(self) -> None:
        """Wraps every filter (call after adding the environment's own filters)."""
        self.filters = {name: _bounded_filter(name, function)
                        for name, function in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().tick()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _budget().charge(_size(result))
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _budget()
        budget.tick()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            budget.charge(_size(result))
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any,  # noqa: N805 (jinja's names)
             **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if any(__obj is hook for hook in _INTERNAL):  # they count their own work
            return super().call(__context, __obj, *args, **kwargs)
        name = getattr(__obj, "__name__", "a function")
        for arg in (*args, *kwargs.values()):
            _check_number(arg, _CALL_NAMES.get(name, name))
        args = _check_str_method(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_size(result))
        return result

    def compile_template(self, source: str) -> jinja2.Template:
        """The template of `source` with the loop and concatenation hooks."""
        tree = _AddHooks().visit(self.parse(source))
        return self.from_string(tree)

    def render(self, template: jinja2.Template, limits: Limits = LIMITS,
               **variables: Any) -> str:
        """Renders `template` within `limits`.

        Raises:
          TemplateBudgetError: a limit was reached (the render stopped there).
          Exception: whatever the template itself raises (jinja errors, `raise_exception`).
        """
        budget = _Budget(limits)
        token = _CURRENT.set(budget)
        try:
            out: list[str] = []
            size = 0
            for chunk in template.generate(**variables):
                size += len(chunk)
                if size > limits.value_size:
                    raise TemplateBudgetError(f"an output of more than {limits.value_size:,} "
                                              f"characters")
                out.append(chunk)
            return "".join(out)
        finally:
            _CURRENT.reset(token)
