"""NIV2 reader: real task files, split semantics, validation errors, instance sampling."""
import json
import math
import shutil

import pytest

from activeit_jax.data import niv2
from activeit_jax.data.errors import DataError, MissingTaskError, TaskFormatError


def test_reads_the_shared_subset_with_partial_checkout_counts(shared_data, niv2_manifest):
    train = niv2.scan_niv2_split(shared_data / "niv2", "train")
    test = niv2.scan_niv2_split(shared_data / "niv2", "test")
    # 756 / 119 names in the official split files; the shared subset holds the files its
    # manifest lists, every other name is missing.
    n_train, n_test = niv2_manifest["train"], niv2_manifest["test"]
    assert (len(train.names), len(train.tasks), len(train.missing)) == (756, n_train,
                                                                        756 - n_train)
    assert (len(test.names), len(test.tasks), len(test.missing)) == (119, n_test,
                                                                     119 - n_test)
    assert train.skipped == () and test.skipped == ()
    # Split-file order is kept, and only named tasks are read.
    assert [t.name for t in train.tasks] == [n for n in train.names if n not in train.missing]
    for task in train.tasks + test.tasks:
        assert task.source == "niv2" and task.label in ("cls", "gen")
        assert task.instruction_language == ("English",)
        assert all(inst.id.startswith(task.name.split("_")[0] + "-") for inst in task.instances)
        assert all(inst.outputs for inst in task.instances)


def test_real_task_fields(shared_data):
    task = niv2.load_niv2_task(
        shared_data / "niv2" / "tasks" / "task092_check_prime_classification.json")
    assert task.name == "task092_check_prime_classification"
    assert task.definition.startswith("In this task, you need to output 'Yes'")
    assert [e.input for e in task.positive_examples] == ["7", "12"]
    assert task.positive_examples[0].explanation.startswith("7 is a prime number")
    assert task.categories == ("Mathematics",)
    assert len(task.instances) == 20
    assert task.instances[0].outputs == ("No",)
    assert task.label == "cls"
    # task393 lost its 20th instance at a page boundary (shared README): 19 are read.
    short = niv2.load_niv2_task(
        shared_data / "niv2" / "tasks" / "task393_plausible_result_generation.json")
    assert len(short.instances) == 19


def test_nan_url_is_accepted(sample_data):
    path = sample_data / "niv2" / "tasks" / "task092_check_prime_classification.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert math.isnan(raw["URL"][0])  # the quirk of the real files is kept in the sample
    assert niv2.load_niv2_task(path).name == "task092_check_prime_classification"


def test_sample_splits(sample_data):
    train = niv2.scan_niv2_split(sample_data / "niv2", "train")
    test = niv2.scan_niv2_split(sample_data / "niv2", "test")
    assert len(train.tasks) == 28 and len(test.tasks) == 12
    assert len(train.missing) == 756 - 28 and len(test.missing) == 119 - 12
    assert max(len(t.instances) for t in train.tasks + test.tasks) == 50


def test_task_dict_round_trip(sample_data):
    task = niv2.load_niv2_task(
        sample_data / "niv2" / "tasks" / "task1289_trec_classification.json")
    again = niv2.Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    assert niv2.Task.from_dict({"role": "pool", **task.to_dict()}) == task  # extra keys ignored


def _copy_niv2(sample_data, tmp_path, names):
    root = tmp_path / "niv2"
    shutil.copytree(sample_data / "niv2" / "splits", root / "splits")
    (root / "tasks").mkdir(parents=True)
    for name in names:
        shutil.copy(sample_data / "niv2" / "tasks" / f"{name}.json", root / "tasks")
    return root


GOOD = "task092_check_prime_classification"


def _good_raw(sample_data):
    return json.loads((sample_data / "niv2" / "tasks" / f"{GOOD}.json").read_text("utf-8"))


def _breakers():
    def drop(key):
        return lambda raw: {k: v for k, v in raw.items() if k != key}

    def set_(key, value):
        return lambda raw: {**raw, key: value}

    def empty_output(raw):
        instances = [dict(i) for i in raw["Instances"]]
        instances[3]["output"] = []
        return {**raw, "Instances": instances}

    return {
        "missing Definition": (drop("Definition"), "Definition"),
        "missing Instances": (drop("Instances"), "Instances"),
        "empty Instances": (set_("Instances", []), "Instances"),
        "empty output list": (empty_output, "Instances[3].output"),
        "Definition not a list": (set_("Definition", "Do it."), "Definition"),
        "Instances not a list": (set_("Instances", {"id": "x"}), "Instances"),
        "Categories not a list": (set_("Categories", "Mathematics"), "Categories"),
        "Positive Examples not a list": (set_("Positive Examples", "7 -> Yes"),
                                         "Positive Examples"),
    }


@pytest.mark.parametrize("case", sorted(_breakers()))
def test_malformed_task_names_file_and_field(sample_data, tmp_path, case):
    breaker, field = _breakers()[case]
    path = tmp_path / f"{GOOD}.json"
    path.write_text(json.dumps(breaker(_good_raw(sample_data))), encoding="utf-8")
    with pytest.raises(TaskFormatError) as info:
        niv2.load_niv2_task(path)
    assert info.value.path == str(path) and info.value.field == field
    assert str(path) in str(info.value) and f"field '{field}'" in str(info.value)


def test_broken_json_names_file_and_position(tmp_path):
    path = tmp_path / "task999_broken.json"
    path.write_text('{"Definition": ["x"],\n "Instances": [', encoding="utf-8")
    with pytest.raises(TaskFormatError, match=r"task999_broken\.json: invalid JSON at line 2"):
        niv2.load_niv2_task(path)


def test_bad_task_in_split_error_or_skip(sample_data, tmp_path):
    root = _copy_niv2(sample_data, tmp_path, [GOOD, "task1289_trec_classification",
                                              "task1331_reverse_array"])
    (root / "tasks" / "task1331_reverse_array.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(TaskFormatError, match="task1331_reverse_array.json"):
        niv2.scan_niv2_split(root, "train")
    read = niv2.scan_niv2_split(root, "train", on_bad_task="skip")
    assert [t.name for t in read.tasks] == sorted([GOOD, "task1289_trec_classification"],
                                                  key=read.names.index)
    assert [name for name, _ in read.skipped] == ["task1331_reverse_array"]
    assert "invalid JSON" in read.skipped[0][1]
    with pytest.raises(ValueError):
        niv2.scan_niv2_split(root, "train", on_bad_task="ignore")


def test_required_task_missing_and_wrong_dirs(sample_data, tmp_path):
    root = _copy_niv2(sample_data, tmp_path, [GOOD])
    tasks, skipped = niv2.load_niv2_tasks(root, [GOOD])
    assert [t.name for t in tasks] == [GOOD] and skipped == []
    with pytest.raises(MissingTaskError, match="task1289_trec_classification.*required"):
        niv2.load_niv2_tasks(root, [GOOD, "task1289_trec_classification"])
    # A directory without the layout, and a checkout where no named task has a file.
    with pytest.raises(MissingTaskError, match="split file not found"):
        niv2.scan_niv2_split(tmp_path / "nowhere", "train")
    with pytest.raises(MissingTaskError, match="none of the 119 tasks"):
        niv2.scan_niv2_split(root, "test")
    assert niv2.scan_niv2_split(root, "test", require_any=False).tasks == ()
    assert issubclass(MissingTaskError, DataError)


def test_select_instances_is_seeded_and_order_free(sample_data):
    task = niv2.load_niv2_task(
        sample_data / "niv2" / "tasks" / "task1393_superglue_copa_text_completion.json")
    first = niv2.select_instances(task, 10, seed=0, shuffle=False)
    assert first.instances == task.instances[:10]
    a = niv2.select_instances(task, 10, seed=0, shuffle=True)
    b = niv2.select_instances(niv2.Task(**{**task.__dict__,
                                           "instances": task.instances[::-1]}), 10, 0, True)
    c = niv2.select_instances(task, 10, seed=1, shuffle=True)
    assert a.instances == b.instances  # depends on ids and seed, not on file order
    assert a.instances != c.instances and len(a.instances) == 10
    assert niv2.select_instances(task, None, 0, True).instances != task.instances
    assert len(niv2.select_instances(task, -1, 0, False).instances) == len(task.instances)
