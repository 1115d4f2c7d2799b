"""Self-Instruct / Alpaca reader: both file shapes, labels, malformed items."""
import json

import pytest

from activeit_jax.data import self_instruct
from activeit_jax.data.errors import TaskFormatError


def test_alpaca_json_list(sample_data):
    tasks = self_instruct.load_self_instruct(sample_data / "self_instruct" / "alpaca_sample.json")
    assert len(tasks) == 300
    first = tasks[0]
    assert first.name == "alpaca_sample_00000" and first.source == "self_instruct"
    assert first.definition == "Given two integers, find their average."
    assert [(i.id, i.input, i.outputs) for i in first.instances] == [
        ("alpaca_sample_00000-0", "2, 3", ("(2 + 3) / 2 = 2.5",))]
    assert first.positive_examples == () and first.label in ("cls", "gen")
    assert len({t.name for t in tasks}) == 300


def test_self_instruct_repo_shape(sample_data):
    tasks = self_instruct.load_self_instruct(
        sample_data / "self_instruct" / "user_oriented_instructions.jsonl")
    assert len(tasks) == 252 and tasks[0].name == "user_oriented_task_0"
    assert tasks[0].instances[0].id == "user_oriented_task_0-0"
    assert tasks[0].definition.startswith("The sentence you are given might be too wordy")


def test_is_classification_flag_is_the_label(shared_data):
    seed = self_instruct.load_self_instruct(
        shared_data / "self_instruct" / "self_instruct_repo" / "seed_tasks.jsonl")
    # `is_classification` (26 true of 175) is used as the label when present.
    assert sum(t.label == "cls" for t in seed) == 26
    assert {t.label_source for t in seed} == {"metadata"}


def test_jsonl_items_and_empty_input(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text('{"instruction": "Is it positive or negative?", "input": "great", '
                    '"output": "Positive"}\n\n{"instruction": "Tell a joke.", "output": "No."}\n',
                    encoding="utf-8")
    tasks = self_instruct.load_self_instruct(path)
    assert [t.name for t in tasks] == ["mini_00000", "mini_00001"]
    assert tasks[0].label == "cls" and tasks[1].label == "gen"
    assert tasks[1].instances[0].input == ""  # a missing input means no input


@pytest.mark.parametrize("content, field", [
    ('[{"instruction": "x", "input": "", "output": 3}]', "[0].output"),
    ('[{"input": "", "output": "y"}]', "[0].instruction"),
    ('[{"instruction": "x", "output": "y"}, "oops"]', "[1]"),
    ('[{"id": "a", "instruction": "x", "instances": []}]', "[0].instances"),
    ('[{"id": "a", "instruction": "x", "output": "y"}, {"id": "a", "instruction": "x", '
     '"output": "y"}]', "[1].id"),
    ('{"instruction": "x", "output": "y"}\n{"instruction": ', "line 2"),
])
def test_malformed_items(tmp_path, content, field):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TaskFormatError) as info:
        self_instruct.load_self_instruct(path)
    assert info.value.field == field and str(path) in str(info.value)


def test_broken_and_empty_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(TaskFormatError, match="invalid JSON"):
        self_instruct.load_self_instruct(broken)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([]), encoding="utf-8")
    with pytest.raises(TaskFormatError, match="no items"):
        self_instruct.load_self_instruct(empty)
    with pytest.raises(TaskFormatError, match="cannot read"):
        self_instruct.load_self_instruct(tmp_path / "absent.json")
