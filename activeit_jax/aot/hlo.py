"""What the optimized HLO of a compiled program says: its collectives and its loops.

XLA's `cost_analysis()` counts the body of a while loop once, whatever its trip count, so a
train step that accumulates M microbatches, a greedy decoder of L steps or a scanned layer
stack (`nn.scan`) is undercounted by the loop. This module reads the optimized HLO text
(`compiled.as_text()`), weights every computation by how often it runs (the product of the
trip counts of the loops around it: XLA's `known_trip_count`, or a bound the caller gives for
loops with a data-dependent end, e.g. greedy decoding that stops at EOS) and counts:

- FLOPs of the matrix products (`dot`, and `convolution`, which TPU HLO uses for dots): the
  work of a transformer, counted once (`flops_once`) and weighted (`flops`);
- bytes read and written at the boundaries of the top-level instructions (fusions, copies,
  collectives), once and weighted: HBM traffic, as XLA's own count defines it;
- collectives (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute): count
  and bytes (the output of each, weighted).

`analysis` scales XLA's own totals by the weighted / once ratio of these counts.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterator

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")

_DTYPE_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16,
               "u16": 16, "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16,
               "f32": 32, "f64": 64, "c64": 64, "c128": 128, "token": 0}
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)="
                    r"%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# Instructions that move no data of their own (views, tuples, control flow).
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "iota", "async-done",
         "all-gather-done", "all-reduce-done", "collective-permute-done", "copy-done",
         "send-done", "recv-done", "opt-barrier"}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of an HLO element type (f8 types: 1; unknown: 4)."""
    if dtype.startswith("f8"):
        return 1.0
    return _DTYPE_BITS.get(dtype, 32) / 8


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(element type, dimensions) of every array in an HLO shape (a tuple has several)."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape)]


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape (the sum over a tuple's arrays)."""
    return sum(math.prod(dims) * dtype_bytes(dtype) for dtype, dims in arrays(shape))


@dataclasses.dataclass
class Instruction:
    """One HLO instruction: `[ROOT] %name = shape opcode(operands), attributes`."""
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str
    root: bool = False
    literal: str = ""  # the text between the parentheses (a constant's value)


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instructions: list[Instruction]


def _split_top(text: str) -> tuple[str, str]:
    """(the text up to the parenthesis closing the one before it, the rest)."""
    depth = 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return text[:i], text[i + 1:]
    return text, ""


def parse_instruction(line: str) -> Instruction | None:
    """One instruction line of HLO text, or None for anything else."""
    match = _NAME.match(line)
    if not match:
        return None
    rest = line[match.end():]
    if rest.startswith("("):  # a tuple shape
        inner, rest = _split_top(rest[1:])
        shape = "(" + inner + ")"
    else:
        shape, _, rest = rest.partition(" ")
    rest = rest.lstrip()
    opcode, paren, rest = rest.partition("(")
    if not paren:
        return None
    operand_text, attributes = _split_top(rest)
    operands = re.findall(r"%([\w.\-]+)", operand_text)
    return Instruction(match.group(2), shape, opcode.strip(), operands, attributes,
                       root=bool(match.group(1)), literal=operand_text)


def parse_module(text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text, by name."""
    computations: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and current is None:
            current = Computation(header.group(2), bool(header.group(1)), [])
            continue
        if current is None:
            continue
        if line.strip() == "}":
            computations[current.name] = current
            current = None
            continue
        instruction = parse_instruction(line)
        if instruction is not None:
            current.instructions.append(instruction)
    return computations


def _callees(instruction: Instruction) -> Iterator[tuple[str, str]]:
    for kind, name in _CALLS.findall(instruction.attributes):
        yield kind, name
    for group in _BRANCHES.findall(instruction.attributes):
        for name in re.findall(r"%([\w.\-]+)", group):
            yield "branch", name


@dataclasses.dataclass
class LoopInfo:
    """A while loop: its trip count and where the count came from."""
    name: str
    trips: int
    known: bool


def multipliers(computations: dict[str, Computation], unknown_trips: int = 1
                ) -> tuple[dict[str, float], list[LoopInfo], set[str]]:
    """How often each computation runs per execution of the entry computation.

    Args:
      computations: `parse_module`'s result.
      unknown_trips: trip count assumed for a loop whose count XLA does not know (a
        data-dependent end); 1 counts it once.

    Returns:
      ({computation: runs}, the loops, the names of computations called by fusions or as
      reducers: their data stays on chip).
    """
    order = [name for name, comp in computations.items() if comp.entry]
    runs: dict[str, float] = {name: 1.0 for name in order}
    loops: list[LoopInfo] = []
    inner: set[str] = set()
    # Callers precede nothing in particular in the text: walk from the entry, depth first.
    stack = list(order)
    edges: dict[str, list[tuple[str, float]]] = {}
    for comp in computations.values():
        for instruction in comp.instructions:
            trips = 1.0
            if instruction.opcode == "while":
                known = _known_trips(instruction, computations)
                count = int(unknown_trips) if known is None else known
                loops.append(LoopInfo(instruction.name, count, known is not None))
                trips = float(count)
            for kind, callee in _callees(instruction):
                factor = trips if kind in ("body", "condition") else 1.0
                edges.setdefault(comp.name, []).append((callee, factor))
                if kind == "to_apply" or (kind == "calls" and instruction.opcode == "fusion"):
                    inner.add(callee)
    # Accumulate along every path (HLO call graphs are DAGs).
    indegree: dict[str, int] = {}
    for caller, outs in edges.items():
        for callee, _ in outs:
            indegree[callee] = indegree.get(callee, 0) + 1
    ready = [name for name in stack]
    while ready:
        caller = ready.pop()
        for callee, factor in edges.get(caller, []):
            runs[callee] = runs.get(callee, 0.0) + runs.get(caller, 0.0) * factor
            indegree[callee] -= 1
            if indegree[callee] == 0:
                ready.append(callee)
    return runs, loops, inner


def _known_trips(loop: Instruction, computations: dict[str, Computation]) -> int | None:
    """A while loop's trip count: XLA's `known_trip_count`, else a condition
    `counter < constant` (a `lax.scan` / `fori_loop` counter, from 0); None when the end
    depends on data (e.g. greedy decoding that stops once every row has its EOS)."""
    found = _TRIP.search(loop.attributes)
    if found:
        return int(found.group(1))
    names = dict(_CALLS.findall(loop.attributes))
    condition = computations.get(names.get("condition", ""))
    if condition is None or not condition.instructions:
        return None
    by_name = {ins.name: ins for ins in condition.instructions}
    root = next((ins for ins in condition.instructions if ins.root), condition.instructions[-1])
    if root.opcode != "compare" or "direction=LT" not in root.attributes:
        return None
    limit = by_name.get(root.operands[1]) if len(root.operands) == 2 else None
    counter = by_name.get(root.operands[0]) if len(root.operands) == 2 else None
    if (limit is None or counter is None or limit.opcode != "constant"
            or counter.opcode != "get-tuple-element"):
        return None
    value = re.fullmatch(r"\s*(-?\d+)\s*", limit.literal)
    return int(value.group(1)) if value else None


def matmul_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """FLOPs of a `dot` or `convolution` (2 per multiply-add), else 0."""
    if instruction.opcode == "dot":
        out = arrays(instruction.shape)
        lhs = arrays(shapes.get(instruction.operands[0], "")) if instruction.operands else []
        found = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction.attributes)
        if not out or not lhs or not found:
            return 0.0
        contracting = [int(d) for d in found.group(1).split(",") if d]
        depth = math.prod(lhs[0][1][d] for d in contracting)
        return 2.0 * math.prod(out[0][1]) * depth
    if instruction.opcode == "convolution":
        return _convolution_flops(instruction, shapes)
    return 0.0


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x output batch x output features x input features per group x valid window
    positions (padding excluded), as XLA's cost analysis counts a convolution."""
    labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)",
                       instruction.attributes)
    if not labels or len(instruction.operands) < 2:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    lhs = arrays(shapes.get(instruction.operands[0], ""))
    rhs = arrays(shapes.get(instruction.operands[1], ""))
    out = arrays(instruction.shape)
    if not lhs or not rhs or not out:
        return 0.0
    lhs_dims, rhs_dims, out_dims = lhs[0][1], rhs[0][1], out[0][1]
    groups = re.search(r"feature_group_count=(\d+)", instruction.attributes)
    batch_groups = re.search(r"batch_group_count=(\d+)", instruction.attributes)
    feature_groups = int(groups.group(1)) if groups else 1
    batch_group_count = int(batch_groups.group(1)) if batch_groups else 1
    in_features = lhs_dims[lhs_labels.index("f")] // feature_groups
    out_features = out_dims[out_labels.index("f")]
    batch = out_dims[out_labels.index("b")]
    window = _window(instruction.attributes)
    spatial = [c for c in out_labels if c.isdigit()]
    valid = 1.0
    for k, label in enumerate(sorted(spatial)):
        size_in = lhs_dims[lhs_labels.index(label)]
        size_kernel = rhs_dims[rhs_labels.index(label)]
        size_out = out_dims[out_labels.index(label)]
        dim = window[k] if k < len(window) else {}
        valid *= _valid_pairs(size_in, size_kernel, size_out, dim)
    return 2.0 * batch * out_features * in_features * valid / batch_group_count


def _window(attributes: str) -> list[dict[str, int]]:
    """Per spatial dimension: stride, padding and dilations of a `window={...}`."""
    found = re.search(r"window=\{([^}]*)\}", attributes)
    if not found:
        return []
    fields = dict(part.split("=", 1) for part in found.group(1).split() if "=" in part)
    count = len(fields.get("size", "").split("x"))

    def each(key: str, default: str) -> list[str]:
        return fields.get(key, "x".join([default] * count)).split("x")
    pads = each("pad", "0_0")
    return [{"stride": int(s), "low": int(p.split("_")[0]), "high": int(p.split("_")[1]),
             "lhs_dilate": int(ld), "rhs_dilate": int(rd)}
            for s, p, ld, rd in zip(each("stride", "1"), pads, each("lhs_dilate", "1"),
                                    each("rhs_dilate", "1"))]


def _valid_pairs(size_in: int, size_kernel: int, size_out: int, dim: dict[str, int]) -> int:
    """(output position, kernel position) pairs that read a real (not padding) input."""
    stride, low = dim.get("stride", 1), dim.get("low", 0)
    lhs_dilate, rhs_dilate = dim.get("lhs_dilate", 1), dim.get("rhs_dilate", 1)
    dilated_in = (size_in - 1) * lhs_dilate + 1 if size_in else 0
    count = 0
    for out in range(size_out):
        for k in range(size_kernel):
            pos = out * stride + k * rhs_dilate - low
            if 0 <= pos < dilated_in and pos % lhs_dilate == 0:
                count += 1
    return count


@dataclasses.dataclass
class HloCounts:
    """What `count` finds (per device; `*_once` count every loop body once, as XLA does).

    Attributes:
      flops / flops_once: matrix-product FLOPs.
      bytes / bytes_once: bytes at top-level instruction boundaries.
      collectives: {kind: {"count": static instructions, "bytes": weighted output bytes}}.
      loops: the while loops (trip counts, known or assumed).
    """
    flops: float = 0.0
    flops_once: float = 0.0
    bytes: float = 0.0
    bytes_once: float = 0.0
    collectives: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    loops: list[LoopInfo] = dataclasses.field(default_factory=list)


def collective_kind(opcode: str) -> str | None:
    """The collective an opcode is ("all-gather-start" -> "all-gather"), else None."""
    base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    return base if base in COLLECTIVES else None


# TPU HLO writes a reduce-scatter as a fusion of this computation (an all-reduce whose result
# each device slices): counted as one reduce-scatter of the fusion's output.
_REDUCE_SCATTER_FUSION = "all-reduce-scatter"


def count(text: str, unknown_trips: int = 1) -> HloCounts:
    """Loop-weighted matrix FLOPs, bytes and collectives of optimized HLO text."""
    computations = parse_module(text)
    runs, loops, inner = multipliers(computations, unknown_trips)
    out = HloCounts(loops=loops)
    for comp in computations.values():
        weight = runs.get(comp.name, 0.0)
        if weight == 0.0:
            continue
        shapes = {ins.name: ins.shape for ins in comp.instructions}
        for ins in comp.instructions:
            flops = matmul_flops(ins, shapes)
            out.flops += weight * flops
            out.flops_once += flops
            kind = collective_kind(ins.opcode)
            called = dict(_CALLS.findall(ins.attributes)).get("calls", "")
            if ins.opcode == "fusion" and called.startswith(_REDUCE_SCATTER_FUSION):
                kind = "reduce-scatter"
            elif comp.name.startswith(_REDUCE_SCATTER_FUSION):
                kind = None  # the all-reduce inside the fusion counted above
            if kind is not None:
                entry = out.collectives.setdefault(kind, {"count": 0, "bytes": 0.0})
                entry["count"] += 1
                entry["bytes"] += weight * _payload_bytes(ins)
            if comp.name in inner or ins.opcode in _FREE:
                continue
            moved = shape_bytes(ins.shape) + sum(shape_bytes(shapes.get(name, ""))
                                                 for name in ins.operands)
            out.bytes += weight * moved
            out.bytes_once += moved
    return out


def _payload_bytes(instruction: Instruction) -> float:
    """Bytes a collective delivers: its output (an async start's output tuple holds the
    operands first, so the last half of it)."""
    parts = arrays(instruction.shape)
    if instruction.opcode.endswith("-start") and len(parts) >= 2:
        parts = parts[len(parts) // 2:]
    return sum(math.prod(dims) * dtype_bytes(dtype) for dtype, dims in parts)
