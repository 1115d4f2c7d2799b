"""Classification vs generation: the explicit rule, overrides, ratios on real data."""
import json

import pytest

from activeit_jax.data import labels, niv2
from activeit_jax.data.errors import LabelOverrideError


@pytest.mark.parametrize("definition, outputs, expected", [
    # Label space written in the definition (quoted, capitalised, punctuated) -> cls.
    ('Classify a sentence as "POS" or as "NEG".', ["POS", "NEG", "POS"], "cls"),
    ("The answer will be 'yes' or 'no'.", ["Yes.", "No."], "cls"),
    ("one of 'World', 'Sports', 'Business', 'Sci/Tech'", ["Sci/Tech", "World"], "cls"),
    ("Indicate your choice by 'a' or 'b'.", ["a", "b"], "cls"),
    # A label missing from the definition, or a substring only, -> gen.
    ("Count the letters.", ["3", "5"], "gen"),
    ("Answer with nothing else.", ["no"], "gen"),
    ("The following are multiple choice questions about x.", ["A", "B", "C", "D"], "gen"),
    # Too many distinct outputs, or too long a label -> gen.
    (" ".join(str(i) for i in range(20)), [str(i) for i in range(20)], "gen"),
    ("say one two three four five six", ["one two three four five six"], "gen"),
    ("anything", [], "gen"),
])
def test_rule(definition, outputs, expected):
    assert labels.infer_label(definition, outputs) == expected


def test_rule_thresholds_are_parameters():
    definition = " ".join(str(i) for i in range(20))
    outputs = [str(i) for i in range(20)]
    assert labels.infer_label(definition, outputs, labels.LabelRule(max_labels=20)) == "cls"


def test_real_tasks(shared_data):
    tasks = {t.name: t for t in niv2.read_niv2_split(shared_data / "niv2", "train")
             + niv2.read_niv2_split(shared_data / "niv2", "test")}
    for name in ("task363_sst2_polarity_classification", "task1289_trec_classification",
                 "task1332_check_leap_year", "task190_snli_classification",
                 "task880_schema_guided_dstc8_classification"):
        assert tasks[name].label == "cls", name
    for name in ("task113_count_frequency_of_letter", "task1146_country_capital",
                 "task664_mmmlu_answer_generation_abstract_algebra",
                 "task957_e2e_nlg_text_generation_generate"):
        assert tasks[name].label == "gen", name


def test_ratio_on_shared_train_split(shared_data, niv2_manifest):
    train = niv2.read_niv2_split(shared_data / "niv2", "train")
    ratio = labels.classification_ratio(train)
    print(f"classification ratio, shared train split ({len(train)} tasks): {ratio:.3f} "
          f"(reference run script {labels.REFERENCE_CLS_RATIO})")
    assert len(train) == niv2_manifest["train"]
    num_cls = sum(t.label == "cls" for t in train)
    assert 0 < num_cls < len(train) and ratio == pytest.approx(num_cls / len(train))
    # The MMMLU tasks (free-form answers to a multiple-choice prompt) are generation by the
    # rule, and they are a large share of the shared subset.
    mmmlu = [t for t in train if "mmmlu" in t.name]
    assert mmmlu and all(t.label == "gen" for t in mmmlu)


def test_ratio_on_sample(sample_data):
    train = niv2.read_niv2_split(sample_data / "niv2", "train")
    assert (sum(t.label == "cls" for t in train), len(train)) == (11, 28)
    assert labels.classification_ratio(train) == pytest.approx(11 / 28)
    assert labels.classification_ratio([]) == 0.0


@pytest.mark.parametrize("suffix, text", [
    (".json", json.dumps({"task092_check_prime_classification": "GEN",
                          "task113_count_frequency_of_letter.json": "classification"})),
    (".json", json.dumps({  # Active-IT task_metadata.json shape
        "task092_check_prime_classification.json": {"DefHasLabel": "NotMentioned"},
        "task113_count_frequency_of_letter.json": {"DefHasLabel": "ExactMentioned"}})),
    (".json", json.dumps({"task092_check_prime_classification": {"CLS_GEN": "GEN"},
                          "task113_count_frequency_of_letter": {"CLS_GEN": "CLS"}})),
    (".csv", "task,label\ntask092_check_prime_classification,gen\n"
             "task113_count_frequency_of_letter,cls\n"),
])
def test_overrides(sample_data, tmp_path, suffix, text):
    path = tmp_path / f"overrides{suffix}"
    path.write_text(text, encoding="utf-8")
    overrides = labels.load_label_overrides(path)
    assert overrides == {"task092_check_prime_classification": "gen",
                         "task113_count_frequency_of_letter": "cls"}
    tasks = niv2.read_niv2_split(sample_data / "niv2", "train", label_overrides=overrides)
    by_name = {t.name: t for t in tasks}
    assert by_name["task092_check_prime_classification"].label == "gen"
    assert by_name["task113_count_frequency_of_letter"].label == "cls"
    assert by_name["task113_count_frequency_of_letter"].label_source == "override"
    assert by_name["task1289_trec_classification"].label_source == "rule"


@pytest.mark.parametrize("suffix, text, match", [
    (".json", '{"task1": "maybe"}', r"field 'task1': label must be 'cls' or 'gen'"),
    (".json", '["task1"]', "expected a JSON object"),
    (".json", '{"task1": ', "invalid JSON"),
    (".csv", "task1\n", "field 'line 1': expected two columns"),
])
def test_bad_override_file(tmp_path, suffix, text, match):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelOverrideError, match=match) as info:
        labels.load_label_overrides(path)
    assert str(path) in str(info.value)
    with pytest.raises(LabelOverrideError, match="cannot read"):
        labels.load_label_overrides(tmp_path / "absent.json")
