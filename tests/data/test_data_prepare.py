"""`activeit-jax prepare`: summary, written files, every bad-input case, nothing partial."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from activeit_jax.core import io_utils
from activeit_jax.data import prepared
from activeit_jax.data.errors import DataError, MissingTaskError, TaskFormatError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args):
    """Runs the real console entry point in a subprocess (exit code + stderr as users see)."""
    return subprocess.run([sys.executable, "-m", "activeit_jax.main", "prepare", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _copy_niv2(sample_data, tmp_path):
    root = tmp_path / "niv2"
    shutil.copytree(sample_data / "niv2", root)
    return root


def test_cli_niv2_sample(sample_data, tmp_path):
    out = tmp_path / "out"
    result = _cli(f"--niv2_dir={sample_data / 'niv2'}", f"--out={out}", "--seed=3")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    rows = {line.split("  ")[0]: line.split()[-4:] for line in text.splitlines()}
    assert rows["train split"] == ["756", "28", "728", "0"]  # named, read, missing, skipped
    assert rows["test split"] == ["119", "12", "107", "0"]
    assert "classification ratio (train split, 28 tasks): 0.393" in text
    assert "quotas 3/1/1 = paper 68/34/34 scaled by 28/756" in text
    assert sorted(os.listdir(out)) == ["splits.json", "tasks.jsonl"]
    meta = json.loads((out / "splits.json").read_text("utf-8"))
    assert meta["seed"] == 3 and len(meta["pool"]) == 23 and len(meta["test"]) == 12
    assert meta["summary"]["roles"]["test"]["tasks"] == 12
    lines = (out / "tasks.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["role"] == "initial"
    data = prepared.load_prepared(out)
    assert data.split.to_dict() == {k: meta[k] for k in data.split.to_dict()}
    assert len(data.tasks) == 40


def test_library_and_cli_agree_and_are_seeded(sample_data, tmp_path):
    a = prepared.prepare_niv2(sample_data / "niv2", seed=3)
    b = prepared.prepare_niv2(sample_data / "niv2", seed=3)
    c = prepared.prepare_niv2(sample_data / "niv2", seed=4)
    assert a.split == b.split and a.split != c.split
    assert a.tasks == b.tasks
    # Train-split tasks: a seeded sample of instances; test tasks: the first N.
    test_task = a.tasks[a.split.test[0]]
    assert test_task.instances[0].id.split("-")[0] in test_task.name
    capped = prepared.prepare_niv2(sample_data / "niv2", seed=3, max_instances_per_task=5)
    assert max(len(t.instances) for t in capped.tasks.values()) == 5
    assert prepared.format_summary(a).count("\n") > 8


def test_cli_self_instruct(sample_data, tmp_path):
    out = tmp_path / "si"
    si = sample_data / "self_instruct"
    result = _cli(f"--self_instruct={si / 'alpaca_sample.json'}",
                  f"--self_instruct_test={si / 'user_oriented_instructions.jsonl'}",
                  f"--out={out}", "--num_initial=20")
    assert result.returncode == 0, result.stderr
    assert "pool output-length chunks: 13" in result.stdout
    meta = json.loads((out / "splits.json").read_text("utf-8"))
    assert (len(meta["initial"]), len(meta["pool"]), len(meta["test"])) == (20, 280, 252)
    assert len(meta["chunks"]) == 13 and sum(map(len, meta["chunks"])) == 280


BAD_FILES = {
    "broken JSON": ('{"Definition": ["x"], ', "invalid JSON"),
    "missing Definition": ({"Instances": [{"id": "a-1", "input": "i", "output": ["o"]}]},
                           "field 'Definition': missing"),
    "missing Instances": ({"Definition": ["x"]}, "field 'Instances': missing"),
    "empty output list": ({"Definition": ["x"], "Instances": [
        {"id": "a-1", "input": "i", "output": []}]}, "field 'Instances[0].output': empty"),
    "non-list Definition": ({"Definition": "x", "Instances": [
        {"id": "a-1", "input": "i", "output": ["o"]}]},
        "field 'Definition': expected a list, got str"),
}
BAD_TASK = "task1331_reverse_array"


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_bad_task_file_errors_then_skip(sample_data, tmp_path, case):
    content, message = BAD_FILES[case]
    root = _copy_niv2(sample_data, tmp_path)
    path = root / "tasks" / f"{BAD_TASK}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    out = tmp_path / "out"
    result = _cli(f"--niv2_dir={root}", f"--out={out}")
    assert result.returncode == 1
    assert f"error: {path}" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing written, not even the directory
    result = _cli(f"--niv2_dir={root}", f"--out={out}", "--on_bad_task=skip")
    assert result.returncode == 0, result.stderr
    assert f"skipped {BAD_TASK}: {path}" in result.stdout
    meta = json.loads((out / "splits.json").read_text("utf-8"))
    assert BAD_TASK not in sum((meta[r] for r in ("initial", "validation", "pool")), [])


def test_cli_required_task_absent(sample_data, tmp_path):
    root = _copy_niv2(sample_data, tmp_path)
    # Named in the train split, but the sample has no file for it.
    result = _cli(f"--niv2_dir={root}", f"--out={tmp_path / 'out'}",
                  "--tasks=task092_check_prime_classification,task001_quoref_question_generation")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "task001_quoref_question_generation.json" in result.stderr
    assert "required (explicit task list) but has no file" in result.stderr
    with pytest.raises(MissingTaskError, match="not named in the train split"):
        prepared.prepare_niv2(root, tasks=["task020_mctaco_span_based_question"])  # a test task


def test_explicit_task_list(sample_data, tmp_path):
    names = ["task092_check_prime_classification", "task1289_trec_classification",
             "task1331_reverse_array", "task1146_country_capital", "task063_first_i_elements"]
    root = _copy_niv2(sample_data, tmp_path)
    # Only the listed tasks are read: a broken file outside the list does not matter.
    (root / "tasks" / "task113_count_frequency_of_letter.json").write_text("[", "utf-8")
    data = prepared.prepare_niv2(root, tasks=names)
    used = set(data.split.initial + data.split.validation + data.split.pool)
    assert used == set(names)
    assert data.sources[0].named == 5 and data.sources[0].read == 5


def test_cli_empty_pool_and_impossible_quotas(sample_data, tmp_path):
    out = tmp_path / "out"
    result = _cli(f"--niv2_dir={sample_data / 'niv2'}", f"--out={out}",
                  "--num_initial=16", "--num_val_cls=6", "--num_val_gen=6")
    assert result.returncode == 1 and "no task left for the pool" in result.stderr
    result = _cli(f"--niv2_dir={sample_data / 'niv2'}", f"--out={out}", "--num_val_cls=20")
    assert result.returncode == 1
    assert "validation needs 20 classification tasks but the train split has only 11" in \
        result.stderr
    assert not out.exists()


def test_cli_wrong_vocabulary_and_usage_errors(sample_data, tmp_path):
    out = tmp_path / "out"
    result = _cli(f"--self_instruct={sample_data / 'self_instruct' / 'alpaca_sample.json'}",
                  f"--out={out}", f"--vocab={tmp_path / 'missing.model'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'missing.model'}: SentencePiece model not found" in result.stderr
    result = _cli(f"--out={out}")
    assert result.returncode == 2 and "exactly one of --niv2_dir or --self_instruct" in \
        result.stderr
    result = _cli(f"--niv2_dir={tmp_path / 'nowhere'}", f"--out={out}")
    assert result.returncode == 1 and "split file not found" in result.stderr
    assert not out.exists()


def test_bad_label_override_file_via_cli(sample_data, tmp_path):
    overrides = tmp_path / "labels.json"
    overrides.write_text('{"task092_check_prime_classification": "both"}', "utf-8")
    for flag in ("label_source", "label_overrides"):  # the name and its old name
        result = _cli(f"--niv2_dir={sample_data / 'niv2'}", f"--out={tmp_path / 'out'}",
                      f"--{flag}={overrides}")
        assert result.returncode == 1
        assert f"{overrides}: field 'task092_check_prime_classification': label must be" in \
            result.stderr


def test_interrupted_write_leaves_no_usable_partial_output(sample_data, tmp_path, monkeypatch):
    data = prepared.prepare_niv2(sample_data / "niv2")
    out = tmp_path / "out"
    prepared.write_prepared(data, out)
    assert prepared.load_prepared(out).split == data.split

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_utils, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        prepared.write_prepared(prepared.prepare_niv2(sample_data / "niv2", seed=9), out)
    # The old splits.json was removed first, the new one never written: the directory is
    # refused instead of pairing old splits with new tasks. No temp files remain.
    assert sorted(os.listdir(out)) == ["tasks.jsonl"]
    with pytest.raises(DataError, match="not a prepared directory"):
        prepared.load_prepared(out)


def test_tampered_tasks_file_is_refused(sample_data, tmp_path):
    out = tmp_path / "out"
    prepared.write_prepared(prepared.prepare_niv2(sample_data / "niv2"), out)
    with open(out / "tasks.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{}\n")
    with pytest.raises(DataError, match="changed since splits.json was written"):
        prepared.load_prepared(out)


def test_library_raises_specific_errors(sample_data, tmp_path):
    root = _copy_niv2(sample_data, tmp_path)
    (root / "tasks" / f"{BAD_TASK}.json").write_text("[", "utf-8")
    with pytest.raises(TaskFormatError):
        prepared.prepare_niv2(root)
