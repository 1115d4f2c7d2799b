"""Batch shapes for the scorer: rows sorted by length, cut by a token budget.

A jitted call costs about rows x padded length, whatever the rows hold, so every padded slot
is wasted work. `plan_batches` keeps that waste small with few distinct shapes:

- Lengths are rounded up to *buckets* (`data.buckets.fine_buckets`: `per_octave` steps between
  two powers of two, e.g. 256, 288, 320, ..., 512 with 8 per octave), so a row wastes at most
  one step (< 12.5 %, about 5 % on average) and the number of shapes stays a small constant,
  independent of the pool size: (buckets of the first dimension) x (buckets of the second) x
  (at most `TAIL_SPLITS + 1` row counts).
- All rows of a call (a chunk of tasks) are sorted by (first-dimension bucket, second
  length, first length) and cut into consecutive batches. A batch padded to length L holds
  at most `rows_for(L)` rows (the *token budget* // L, a multiple of the data-parallel size,
  at most `max_rows`), or a power-of-two fraction of that (`allowed_rows`, down to
  1 / 2**TAIL_SPLITS) so that a short group needs few filler rows.
- Where to cut is a dynamic programme over the sorted rows minimising padded slots + a cost
  per call + a cost per distinct shape (a compilation, `plan_batches`): sorted neighbours
  have nearly equal lengths, so batches pad little, and a small call (e.g. decoding a
  chunk's 50 originals) uses a few shapes rather than one per length bucket. The scorer
  plans each call from its rows alone, so a resumed run batches a chunk exactly as an
  uninterrupted one did.

The first dimension is the one the budget is measured on: the source for an
encoder-decoder model (the encoder dominates the cost), the whole sequence for a
decoder-only model; the optional second one (T5 targets) is bucketed by the rows' real
lengths.
"""
from __future__ import annotations

import dataclasses
from typing import Collection, Sequence

import numpy as np

from activeit_jax.data.buckets import bucket_for

# Shape keys (rows, rest) -> rows * _KEY + rest for vectorised membership tests.
_KEY = 1 << 32


# Besides a full batch of b rows, a batch may hold b / 2, b / 4, ..., b / 2**TAIL_SPLITS rows.
TAIL_SPLITS = 3



@dataclasses.dataclass(frozen=True)
class PlanCosts:
    """What the planner minimises, in one unit (slots for `slot_costs`, device seconds for
    `scoring.costs.model_plan_costs`).

    A padded row of lengths (s, t) (t = 0 with one dimension) costs
    `s * (per_s + per_ss * s) + t * (per_t + per_tt * t) + per_st * s * t + per_row`: linear
    terms for the layers and the output head, quadratic ones for attention. A call adds
    `call`; a shape not compiled yet adds `compile`, or `shared_compile` when its row count
    is on the power-of-two grid (`allowed_rows`), where other chunks of a pool are likely to
    reuse it; `share` is what a shape of a plan is worth when deciding to drop it for a larger
    one (`_share_shapes`, 0 = never). With `exact_rows`, a batch may hold any multiple of the
    data-parallel size up to the full count, so the rows of a small job need no filler rows
    beyond that multiple (each such count is a shape of its own, charged `compile`).
    """
    per_s: float = 1.0
    per_t: float = 1.0
    per_ss: float = 0.0
    per_tt: float = 0.0
    per_st: float = 0.0
    per_row: float = 0.0
    call: float = 0.0
    compile: float = 0.0
    shared_compile: float | None = None
    share: float = 0.0
    exact_rows: bool = False

    def row(self, s, t):
        """The cost of one padded row of lengths `s` and `t` (numbers or numpy arrays)."""
        return (s * (self.per_s + self.per_ss * s) + t * (self.per_t + self.per_tt * t)
                + self.per_st * s * t + self.per_row)

    def batch(self, shape: Sequence[int]) -> float:
        """The cost of one call of `shape` (rows, s[, t]), compilation aside."""
        return shape[0] * float(self.row(shape[1], sum(shape[2:]))) + self.call

    @property
    def grid_compile(self) -> float:
        return self.compile if self.shared_compile is None else self.shared_compile


def slot_costs(token_budget: int, call_cost: float = 1 / 16, compile_cost: float = 1.0,
               share_cost: float = 0.0) -> PlanCosts:
    """Costs in padded slots (rows x the sum of the padded lengths), the other costs in full
    batches of `token_budget` slots: the model-free planner (`plan_batches`' defaults)."""
    return PlanCosts(call=call_cost * token_budget, compile=compile_cost * token_budget,
                     share=share_cost * token_budget)


def rows_for(length: int, token_budget: int, max_rows: int, multiple: int) -> int:
    """Rows of a batch padded to `length`: `token_budget // length`, rounded down to a
    multiple of `multiple` (the data-parallel size), between `multiple` and `max_rows`."""
    rows = min(token_budget // max(length, 1), max_rows)
    return max(multiple, rows // multiple * multiple)


def allowed_rows(length: int, token_budget: int, max_rows: int, multiple: int,
                 exact: bool = False) -> list[int]:
    """Row counts a batch padded to `length` may have: `rows_for(...)` and its halves down
    to 1 / 2**TAIL_SPLITS of it (multiples of `multiple`), largest first; with `exact`,
    every multiple of `multiple` up to `rows_for(...)`."""
    full = rows_for(length, token_budget, max_rows, multiple)
    if exact:
        return list(range(full, 0, -multiple))
    sizes = {full}
    for k in range(1, TAIL_SPLITS + 1):
        sizes.add(max(multiple, -(-(full >> k) // multiple) * multiple))
    return sorted(sizes, reverse=True)


def plan_batches(lengths: Sequence[Sequence[int]], buckets: Sequence[Sequence[int]], *,
                 token_budget: int, max_rows: int, multiple: int = 1,
                 call_cost: float = 1 / 16, compile_cost: float = 1.0,
                 share_cost: float = 0.0, compiled: Collection[tuple[int, ...]] = (),
                 costs: PlanCosts | None = None
                 ) -> list[tuple[tuple[int, ...], list[int]]]:
    """Groups rows into padded batches (see the module docstring).

    The sorted rows are cut into consecutive batches by dynamic programming: a batch costs
    its padded rows (`costs.row` of its padded lengths, per row, filler rows included), plus
    `costs.call` per call, plus `costs.compile` when its shape is not compiled yet. So it
    prefers few full batches of known shapes, and pads a short row to a long length only
    when a new shape or a near-empty batch would cost more. The new-shape cost is counted
    per batch, so a second pass repeats the plan with the first pass's shapes counted as
    compiled (a shape used by several batches is compiled once).

    Args:
      lengths: per row, its length in each dimension (1 or 2 dimensions), e.g.
        `[(source_len, target_len), ...]`.
      buckets: per dimension, the allowed padded lengths (increasing; the last must hold
        every row).
      token_budget: rows x padded first-dimension length of a full batch.
      max_rows: the most rows of a batch.
      multiple: row counts are multiples of this (the data-parallel size).
      call_cost / compile_cost / share_cost: without `costs`, the model-free costs in full
        batches (`slot_costs`): a call, a new shape, and what a shape's compilation is worth
        when deciding to drop it for a larger shape of the plan (`_share_shapes`; 0 = never
        drop; a shape a chunk compiles serves every later chunk, so the pool driver passes
        compile_cost / chunks).
      compiled: shapes `(rows, *lengths)` already compiled.
      costs: the costs of the model being run (`scoring.costs.model_plan_costs`); replaces
        the three above.

    Returns:
      `[(shape, row indices), ...]` with `shape = (batch rows, padded length per
      dimension)`; `len(row indices) <= batch rows` (the rest are filler rows). Every row
      appears once; batches follow the sorted order.
    """
    if not lengths:
        return []
    if costs is None:
        costs = slot_costs(token_budget, call_cost, compile_cost, share_cost)
    dims = len(buckets)
    if dims > 2:
        raise ValueError(f"rows are planned over 1 or 2 length dimensions, got {dims}")
    keyed = [tuple(bucket_for(row[d], buckets[d]) for d in range(dims)) for row in lengths]
    order = sorted(range(len(lengths)),
                   key=lambda i: (keyed[i][0],) + tuple(lengths[i][1:]) + (lengths[i][0],))
    known = set(compiled)
    cut = _Cutter(order, keyed, dims, token_budget, max_rows, multiple, costs)
    plan = cut(known)
    if costs.compile > 0 or costs.grid_compile > 0:
        plan = cut(known | {shape for shape, _ in plan})
    if costs.share > 0:
        plan = _share_shapes(plan, order, keyed, dims, costs, known)
    return plan


def _plan_cost(plan: list[tuple[tuple[int, ...], list[int]]], costs: PlanCosts,
               known: set[tuple[int, ...]]) -> float:
    calls = sum(costs.batch(shape) for shape, _ in plan)
    return calls + costs.share * len({shape for shape, _ in plan} - known)


def _share_shapes(plan: list[tuple[tuple[int, ...], list[int]]], order: list[int],
                  keyed: list[tuple[int, ...]], dims: int, costs: PlanCosts,
                  known: set[tuple[int, ...]]) -> list[tuple[tuple[int, ...], list[int]]]:
    """Fewer distinct shapes: `_cut` pads each batch to its own length bucket, so every
    bucket the rows touch is a shape (a compilation), even a bucket of one small batch. Here
    each new shape, least used first, is dropped when padding its batches to a larger shape
    of the plan costs less than compiling it (`costs.share`); the rows are then cut again
    using only the remaining shapes (`_cut_within`), and the cheaper of the two plans is
    kept."""
    shapes = {shape for shape, _ in plan}
    batches: dict[tuple[int, ...], list[list[int]]] = {}
    for shape, rows in plan:
        batches.setdefault(shape, []).append(rows)

    for shape in sorted(shapes - known, key=lambda s: (len(batches[s]), s[1:], s[0])):
        extra = 0.0
        for rows in batches[shape]:
            need = tuple(max(keyed[r][d] for r in rows) for d in range(dims))
            # A larger shape that takes the batch in one call (never many small calls).
            holders = [other for other in shapes if other != shape and other[0] >= len(rows)
                       and all(o >= x for o, x in zip(other[1:], need))]
            if not holders:
                extra = np.inf
                break
            extra += min(costs.batch(o) for o in holders) - costs.batch(shape)
        if extra < costs.share:
            shapes.discard(shape)
    if len(shapes) == len(batches):
        return plan
    shared = _cut_within(order, keyed, dims, sorted(shapes), costs)
    if shared is None or _plan_cost(shared, costs, known) >= _plan_cost(plan, costs, known):
        return plan
    return shared


def _cut_within(order: list[int], keyed: list[tuple[int, ...]], dims: int,
                shapes: list[tuple[int, ...]], costs: PlanCosts
                ) -> list[tuple[tuple[int, ...], list[int]]] | None:
    """The cheapest cut of the sorted rows into consecutive batches of the given shapes
    only (a batch may use any shape that holds its rows); None when some rows fit none.
    Vectorised over (shape, start of the last batch)."""
    n = len(order)
    first = np.asarray([keyed[i][0] for i in order], np.int64)
    rest = np.asarray([sum(keyed[i][1:]) for i in order], np.int64)
    rows_of = np.asarray([s[0] for s in shapes], np.int64)[:, None]
    length_of = np.asarray([s[1] for s in shapes], np.int64)[:, None]
    rest_of = np.asarray([sum(s[2:]) for s in shapes], np.int64)[:, None]
    slot_cost = rows_of * costs.row(length_of, rest_of) + costs.call
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    for j in range(1, n + 1):
        starts = np.arange(j - 1, max(j - int(rows_of.max()), 0) - 1, -1)
        tails = np.maximum.accumulate(rest[starts])[None, :]
        fits = ((length_of >= first[j - 1]) & (j - starts[None, :] <= rows_of)
                & (tails <= rest_of))
        cost = np.where(fits, best[starts][None, :] + slot_cost, np.inf)
        s, k = np.unravel_index(int(np.argmin(cost)), cost.shape)
        best[j], cut[j] = cost[s, k], (int(starts[k]), int(s))
    if not np.isfinite(best[n]):
        return None
    out, j = [], n
    while j > 0:
        i, s = cut[j]
        out.append((tuple(shapes[s]), order[i:j]))
        j = i
    return out[::-1]


class _Cutter:
    """The dynamic programme of `plan_batches` over the sorted rows `order`, vectorised over
    the start of the last batch (numpy), so a chunk of thousands of rows plans in
    milliseconds. Called with the shapes counted as compiled."""

    def __init__(self, order: list[int], keyed: list[tuple[int, ...]], dims: int,
                 token_budget: int, max_rows: int, multiple: int, costs: PlanCosts):
        self.order, self.keyed, self.dims, self.costs = order, keyed, dims, costs
        self.first = np.asarray([keyed[i][0] for i in order], np.int64)
        # The padded second length of each row (0 for one dimension).
        self.rest = np.asarray([sum(keyed[i][1:]) for i in order], np.int64)
        self.sizes = {length: np.asarray(sorted(allowed_rows(
            length, token_budget, max_rows, multiple, costs.exact_rows)))
            for length in set(self.first.tolist())}
        self.grid = {length: np.asarray(allowed_rows(length, token_budget, max_rows, multiple))
                     for length in self.sizes}

    def __call__(self, known: set[tuple[int, ...]]) -> list[tuple[tuple[int, ...], list[int]]]:
        n, costs, first, rest = len(self.order), self.costs, self.first, self.rest
        by_length: dict[int, list[tuple[int, int]]] = {}  # padded first length -> (rows, rest)
        for shape in known:
            by_length.setdefault(shape[1], []).append((shape[0], sum(shape[2:])))
        best = np.full(n + 1, np.inf)
        best[0] = 0.0
        cut: list[tuple[int, tuple[int, ...]]] = [(0, ())] * (n + 1)
        for j in range(1, n + 1):
            length = int(first[j - 1])  # sorted by it: the batch's padded first length
            sizes = self.sizes[length]
            lo = max(j - int(sizes[-1]), 0)
            starts = np.arange(j - 1, lo - 1, -1)             # i = j-1, j-2, ..., lo
            tails = np.maximum.accumulate(rest[starts])       # padded rest of rows i..j-1
            counts = j - starts
            # The smallest row count that holds rows i..j-1, compiled or not ...
            size = sizes[np.searchsorted(sizes, counts)]
            compiled = by_length.get(length, ())
            fresh = ~np.isin(size * _KEY + tails, [b * _KEY + t for b, t in compiled])
            compile_cost = np.where(np.isin(size, self.grid[length]), costs.grid_compile,
                                    costs.compile)
            cost = (best[starts] + size * costs.row(length, tails) + costs.call
                    + fresh * compile_cost)
            options = [(cost, size)]
            # ... or a larger shape already compiled (same padded lengths).
            for b, t in compiled:
                fits = (counts <= b) & (tails == t)
                options.append((np.where(fits, best[starts] + b * costs.row(length, t)
                                         + costs.call, np.inf), np.full_like(counts, b)))
            for cost, size in options:
                k = int(np.argmin(cost))
                if cost[k] < best[j]:
                    best[j] = cost[k]
                    cut[j] = (int(starts[k]), _shape(int(size[k]), length, int(tails[k]),
                                                     self.dims))
        out, j = [], n
        while j > 0:
            i, shape = cut[j]
            rows = self.order[i:j]
            if self.dims > 1:  # the padded lengths of each other dimension
                shape = (shape[0], shape[1]) + tuple(max(self.keyed[r][d] for r in rows)
                                                     for d in range(1, self.dims))
            out.append((shape, rows))
            j = i
        return out[::-1]


def _shape(rows: int, length: int, rest: int, dims: int) -> tuple[int, ...]:
    return (rows, length) + ((rest,) if dims > 1 else ())
