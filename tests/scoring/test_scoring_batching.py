"""Batch planning: every row once, shapes that hold their rows, budget respected, little
padding on length-clustered rows, few distinct shapes whatever the number of rows."""
import numpy as np
import pytest

from activeit_jax.data import buckets as buckets_lib
from activeit_jax.scoring import batching


def test_fine_buckets():
    assert buckets_lib.fine_buckets(128, 16, 4) == (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96,
                                                 112, 128)
    assert buckets_lib.fine_buckets(100, 32, 1) == (32, 64, 100)
    assert buckets_lib.fine_buckets(8, 8, 4) == (8,)
    # Steps that do not divide evenly are rounded up to multiples of 8 from 64 on.
    assert buckets_lib.fine_buckets(1024, 256, 5) == (256, 312, 360, 416, 464, 512, 616, 720, 824,
                                                   928, 1024)


def _rows(n, seed):
    """Rows clustered as a scoring chunk's are: per instance, 21 sources of similar length
    (perturbations drop words) sharing one target."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n // 21 + 1):
        src, tgt = int(rng.integers(40, 1000)), int(rng.integers(1, 128))
        out += [(max(1, min(1024, src - int(rng.integers(0, 40)))), tgt) for _ in range(21)]
    return out[:n]


@pytest.mark.parametrize("n,multiple", [(1, 1), (50, 1), (1050, 8), (3360, 1)])
def test_plan_covers_rows_within_budget(n, multiple):
    lengths = _rows(n, seed=n)
    buckets = (buckets_lib.fine_buckets(1024, 16, 8), buckets_lib.fine_buckets(128, 8, 8))
    plan = batching.plan_batches(lengths, buckets, token_budget=16384, max_rows=64,
                                 multiple=multiple)
    seen = sorted(i for _, rows in plan for i in rows)
    assert seen == list(range(n))
    for (b, s, t), rows in plan:
        assert len(rows) <= b <= 64 and b % multiple == 0
        assert b * s <= max(16384, multiple * s)
        assert s in buckets[0] and t in buckets[1]
        assert all(lengths[i][0] <= s and lengths[i][1] <= t for i in rows)
    if n >= 1000:
        slots = sum(b * s for (b, s, _), _ in plan)
        assert 1 - sum(l[0] for l in lengths) / slots <= 0.10
        assert 1 - n / sum(b for (b, _, _), _ in plan) <= 0.10


def test_shapes_bounded_independent_of_rows():
    buckets = (buckets_lib.fine_buckets(512), buckets_lib.fine_buckets(64, 8))
    bound = len(buckets[0]) * len(buckets[1]) * (batching.TAIL_SPLITS + 1)
    shapes = set()
    for seed in range(4):
        plan = batching.plan_batches([(min(s, 512), min(t, 64)) for s, t in _rows(2000, seed)],
                                     buckets, token_budget=8192, max_rows=64)
        shapes |= {shape for shape, _ in plan}
    assert len(shapes) <= bound


def test_no_budget_means_max_rows_and_its_fractions():
    """`batch_tokens=None` (a budget of max_rows x the largest bucket): max_rows rows per
    call, or a power-of-two fraction of it for the rows left at the end."""
    lengths = [(l,) for l in (3, 9, 17, 30, 31, 64)]
    plan = batching.plan_batches(lengths, ((16, 32, 64),), token_budget=4 * 64, max_rows=4)
    assert {shape[0] for shape, _ in plan} <= set(batching.allowed_rows(64, 256, 4, 1))
    assert sorted(i for _, rows in plan for i in rows) == list(range(6))


def test_shape_sharing_compiles_fewer_shapes_and_keeps_every_row():
    """A one-chunk job (share cost = a whole compilation) uses fewer shapes than a chunk of a
    long pool (a small share); every row is still planned once into a shape that holds it."""
    lengths = _rows(1050, seed=7)
    buckets = (buckets_lib.fine_buckets(1024, 16, 5), buckets_lib.fine_buckets(128, 8, 1))
    plans = {share: batching.plan_batches(lengths, buckets, token_budget=32768, max_rows=64,
                                          share_cost=share)
             for share in (0.0, 0.05, 1.0)}
    counts = {share: len({shape for shape, _ in plan}) for share, plan in plans.items()}
    assert counts[1.0] < counts[0.0] and counts[0.05] <= counts[0.0]
    for plan in plans.values():
        assert sorted(i for _, rows in plan for i in rows) == list(range(1050))
        for (b, s, t), rows in plan:
            assert len(rows) <= b and all(lengths[i][0] <= s and lengths[i][1] <= t
                                          for i in rows)
