"""Metric functions against hand-computed cases (Tk-Instruct compute_metrics.py semantics)."""
import pytest

from activeit_jax.training import metrics


def test_normalize_answer_lowercases_strips_punctuation_keeps_articles():
    assert metrics.normalize_answer("  The  Cat's   hat!! ") == "the cats hat"
    # Tk-Instruct comments article removal out of the SQuAD normaliser: "a"/"the" stay.
    assert metrics.normalize_answer("A cat.") == "a cat"


@pytest.mark.parametrize("pred,ref,expected", [
    ("The Cat!", "the cat", 1.0),
    ("a cat", "cat", 0.0),          # articles matter
    ("Yes.", "yes", 1.0),
    ("yes no", "yesno", 0.0),       # whitespace separates words
    ("", "", 1.0),
])
def test_exact_match_score(pred, ref, expected):
    assert metrics.exact_match_score(pred, ref) == expected


def test_rouge_l_hand_computed():
    # LCS of [the cat sat on the mat] and [the cat is on the mat] = 5 tokens; P = R = 5/6.
    assert metrics.rouge_l_score("the cat sat on the mat", "the cat is on the mat") == \
        pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3.
    assert metrics.rouge_l_score("quick fox", "the quick brown fox") == pytest.approx(2 / 3)
    # Default tokenizer: case and punctuation are dropped; Porter stemmer: runs/running -> run.
    assert metrics.rouge_l_score("Hello, World!", "hello world") == pytest.approx(1.0)
    assert metrics.rouge_l_score("dogs running", "dog runs") == pytest.approx(1.0)
    assert metrics.rouge_l_score("abc", "xyz") == 0.0


def test_compute_metrics_max_over_references_and_mean_x100():
    preds = ["the cat sat on the mat", "Positive", "quick fox"]
    refs = [["dog", "the cat is on the mat"], ["negative", "positive."], ["the quick brown fox"]]
    result = metrics.compute_metrics(preds, refs)
    assert result["exact_match"] == pytest.approx(round(100 * 1 / 3, 4))
    assert result["rougeL"] == pytest.approx(round(100 * (5 / 6 + 1 + 2 / 3) / 3, 4))
    assert result["num_examples"] == 3


def test_compute_metrics_validates_inputs():
    with pytest.raises(ValueError):
        metrics.compute_metrics(["a"], [])
    with pytest.raises(ValueError):
        metrics.compute_metrics(["a"], ["a"])  # a bare string is not a list of references
    assert metrics.compute_metrics([], [])["rougeL"] == 0.0


def test_summarize_groups_by_label_and_task():
    preds = ["yes", "no", "the cat sat on the mat", "hello"]
    refs = [["yes"], ["yes"], ["the cat is on the mat"], ["hello"]]
    tasks = ["t1", "t1", "t2", "t3"]
    labels = ["cls", "cls", "gen", "gen"]
    summary = metrics.summarize(preds, refs, tasks, labels)
    assert summary["exact_match_cls"] == 50.0
    assert summary["rougeL_gen"] == pytest.approx(round(100 * (5 / 6 + 1) / 2, 4))
    # Overall is a mean over examples, not over tasks or groups.
    assert summary["exact_match"] == 50.0
    assert summary["rougeL"] == pytest.approx(round(100 * (1 + 0 + 5 / 6 + 1) / 4, 4))
    assert set(summary["per_task"]) == {"t1", "t2", "t3"}
    assert summary["per_task"]["t1"]["num_examples"] == 2
    only_gen = metrics.summarize(["a"], [["a"]], ["t"], ["gen"])
    assert "cls" not in only_gen and "rougeL_cls" not in only_gen
