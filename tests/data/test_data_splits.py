"""Seeded experiment splits: determinism, quotas, the scaling rule, errors; length chunks."""
import pytest

from activeit_jax.data import niv2, self_instruct, splits
from activeit_jax.data.errors import EmptyPoolError, SplitError
from activeit_jax.data.hashing import stable_shuffle
from activeit_jax.data.niv2 import Instance, Task


def _fake_tasks(num, num_cls, prefix="task"):
    return [Task(name=f"{prefix}{i:04d}", definition="d", positive_examples=(),
                 negative_examples=(), instances=(Instance(f"{prefix}{i:04d}-0", "x", ("y",)),),
                 label="cls" if i < num_cls else "gen") for i in range(num)]


def test_stable_shuffle_is_a_fixed_function_of_values():
    # Golden value: SHA-256 based, so identical on every machine and library version.
    assert stable_shuffle(["a", "b", "c", "d", "e"], seed=1, salt="x") == \
        stable_shuffle(["e", "d", "c", "b", "a"], seed=1, salt="x")
    assert stable_shuffle(["a", "b", "c", "d", "e"], seed=1, salt="x") == [
        "a", "d", "b", "c", "e"]  # = order of sha256("1\\0x\\0<item>"), checked with sha256sum


def test_paper_quotas_on_full_size_data():
    train = _fake_tasks(756, 269)  # 269 / 756 = 0.356, the reference run script's cls share
    test = _fake_tasks(119, 40, prefix="test")
    split = splits.split_niv2(train, test, seed=0)
    assert (len(split.initial), len(split.validation), len(split.pool)) == (68, 68, 620)
    labels = {t.name: t.label for t in train}
    assert sum(labels[n] == "cls" for n in split.validation) == 34
    assert len(split.test) == 119
    roles = [split.initial, split.validation, split.pool]
    assert sorted(n for r in roles for n in r) == sorted(labels)  # a partition
    assert split.note.startswith("paper quotas 68/34/34")


def test_same_seed_same_split_different_seed_differs(sample_data):
    train = niv2.read_niv2_split(sample_data / "niv2", "train")
    a = splits.split_niv2(train, seed=7)
    b = splits.split_niv2(list(reversed(train)), seed=7)  # input order does not matter
    c = splits.split_niv2(train, seed=8)
    assert a == b
    assert (a.initial, a.validation) != (c.initial, c.validation)


def test_scaling_rule_on_partial_data(sample_data):
    sample_train = niv2.read_niv2_split(sample_data / "niv2", "train")  # 28 tasks
    split = splits.split_niv2(sample_train, seed=0)
    # round(68 * 28/756) = 3, round(34 * 28/756) = 1 -> 3 initial, 1 + 1 validation, 23 pool.
    assert (len(split.initial), len(split.validation), len(split.pool)) == (3, 2, 23)
    assert "scaled by 28/756" in split.note
    quotas, note = splits.scaled_quotas(splits.PAPER_NIV2_QUOTAS, 300, 756)
    assert quotas == splits.NIV2Quotas(27, 13, 13) and "scaled by 300/756" in note


def test_scaling_rule_on_the_shared_subset(shared_data, niv2_manifest):
    shared_train = niv2.read_niv2_split(shared_data / "niv2", "train")
    n = len(shared_train)
    assert n == niv2_manifest["train"] < 756
    split = splits.split_niv2(shared_train, seed=0)
    # The paper's 68 initial and 34 + 34 validation tasks of 756, scaled by n/756 and
    # rounded (at least 1 each); the rest is the pool.
    initial, per_label = max(1, round(68 * n / 756)), max(1, round(34 * n / 756))
    assert (len(split.initial), len(split.validation)) == (initial, 2 * per_label)
    assert len(split.pool) == n - initial - 2 * per_label
    assert f"scaled by {n}/756" in split.note


def test_explicit_quotas_are_exact_or_an_error(sample_data):
    train = niv2.read_niv2_split(sample_data / "niv2", "train")  # 11 cls, 17 gen
    split = splits.split_niv2(train, seed=0, quotas=splits.NIV2Quotas(5, 3, 4))
    labels = {t.name: t.label for t in train}
    assert len(split.initial) == 5 and len(split.pool) == 28 - 12
    assert [labels[n] for n in split.validation] == ["cls"] * 3 + ["gen"] * 4
    with pytest.raises(SplitError, match="needs 12 classification tasks but the train split "
                                         "has only 11"):
        splits.split_niv2(train, quotas=splits.NIV2Quotas(1, 12, 1))
    with pytest.raises(SplitError, match="initial set needs 30"):
        splits.split_niv2(train, quotas=splits.NIV2Quotas(30, 1, 1))
    with pytest.raises(EmptyPoolError, match="no task left for the pool"):
        splits.split_niv2(train, quotas=splits.NIV2Quotas(16, 6, 6))
    with pytest.raises(EmptyPoolError):  # 3 tasks: scaled quotas 1/1/1 leave nothing
        splits.split_niv2(_fake_tasks(3, 1))


def test_split_dict_round_trip():
    split = splits.split_self_instruct(_fake_tasks(40, 5), seed=3,
                                       quotas=splits.SelfInstructQuotas(10),
                                       chunks=[[f"task{i:04d}" for i in range(20)],
                                               [f"task{i:04d}" for i in range(20, 40)]])
    assert splits.ExperimentSplit.from_dict(split.to_dict()) == split
    assert len(split.initial) == 10 and len(split.pool) == 30
    assert sum(len(c) for c in split.chunks) == 30  # chunks restricted to the pool


def test_self_instruct_split_and_length_chunks(sample_data):
    tasks = self_instruct.load_self_instruct(sample_data / "self_instruct" / "alpaca_sample.json")
    chunks = self_instruct.output_length_chunks(tasks)
    split = splits.split_self_instruct(tasks, seed=0, chunks=chunks)
    # round(500 * 300/52002) = 3 initial tasks; the other 297 are the pool.
    assert len(split.initial) == 3 and len(split.pool) == 297
    assert len(split.chunks) == 13 and sum(map(len, split.chunks)) == 297
    full = [len(c) for c in chunks]
    assert max(full) - min(full) <= 1
    length = {t.name: self_instruct.whitespace_length(t.instances[0].outputs[0]) for t in tasks}
    for shorter, longer in zip(chunks, chunks[1:]):
        assert max(length[n] for n in shorter) <= min(length[n] for n in longer)
    assert splits.split_self_instruct(tasks, seed=0, chunks=chunks) == split
    with pytest.raises(SplitError, match="needs 500 tasks but the file has 300"):
        splits.split_self_instruct(tasks, quotas=splits.SelfInstructQuotas(500))
