"""Evaluation metrics with Tk-Instruct semantics: ROUGE-L and exact match, x100.

Reproduces `src/compute_metrics.py` of yizhongw/Tk-Instruct (Super-NaturalInstructions):

- exact match: both strings normalised by lower-casing, removing ASCII punctuation
  (`string.punctuation`) and collapsing whitespace. Articles are *not* removed (Tk-Instruct
  comments that step of the SQuAD normaliser out).
- ROUGE-L: `rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)` with its default
  tokenizer (lower-case, non-alphanumerics become spaces, Porter stemming); the F-measure.
- each prediction takes the maximum over its references; a set's score is the mean over
  predictions times 100, rounded to 4 decimals.

Tk-Instruct groups scores by task category; ActiveIT reports overall / classification /
generative task groups, which `summarize` computes from `Task.label` ("cls" / "gen").
"""
from __future__ import annotations

import functools
import string
from typing import Callable, Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)

# The metrics every evaluation reports.
METRIC_NAMES = ("exact_match", "rougeL")


def normalize_answer(text: str) -> str:
    """Lower-cases, drops ASCII punctuation and collapses whitespace (Tk-Instruct semantics).

    Args:
      text: a prediction or a reference.

    Returns:
      The normalised string; `"The  Cat!"` -> `"the cat"`.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(text.split())


def exact_match_score(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # imported lazily: pulls in nltk.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_score(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] with rouge_score's default tokenizer and Porter stemmer."""
    return float(_rouge_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


_SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match_score,
    "rougeL": rouge_l_score,
}


def max_over_references(metric: Callable[[str, str], float], prediction: str,
                        references: Sequence[str]) -> float:
    """The best score of `prediction` against any of `references` (at least one)."""
    if isinstance(references, str) or not references:
        raise ValueError("references must be a non-empty sequence of strings, "
                         f"got {references!r}")
    return max(metric(prediction, reference) for reference in references)


def compute_metrics(predictions: Sequence[str],
                    references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and ROUGE-L over examples, each the max over its references, x100.

    Args:
      predictions: one decoded string per example.
      references: the gold outputs of each example (one or more strings).

    Returns:
      `{"exact_match": float, "rougeL": float, "num_examples": int}`; scores in [0, 100]
      rounded to 4 decimals as in Tk-Instruct. An empty set scores 0.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    result: dict[str, float] = {}
    for name in METRIC_NAMES:
        total = sum(max_over_references(_SCORERS[name], pred, refs)
                    for pred, refs in zip(predictions, references))
        result[name] = round(100.0 * total / len(predictions), 4) if predictions else 0.0
    result["num_examples"] = len(predictions)
    return result


def compute_grouped_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                            groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """`compute_metrics` within each group (task name, category, label ...).

    Returns:
      group -> metrics dict, groups in first-seen order.
    """
    if not len(predictions) == len(references) == len(groups):
        raise ValueError("predictions, references and groups differ in length")
    by_group: dict[str, tuple[list[str], list[Sequence[str]]]] = {}
    for pred, refs, group in zip(predictions, references, groups):
        preds, golds = by_group.setdefault(group, ([], []))
        preds.append(pred)
        golds.append(refs)
    return {group: compute_metrics(p, r) for group, (p, r) in by_group.items()}


def summarize(predictions: Sequence[str], references: Sequence[Sequence[str]],
              task_names: Sequence[str], labels: Sequence[str]) -> dict[str, object]:
    """Overall, per-label (classification "cls" / generative "gen") and per-task scores.

    Every example counts once in the overall and label means (Tk-Instruct averages over
    examples, not tasks).

    Args:
      predictions: decoded strings.
      references: gold outputs per example.
      task_names: the task of each example.
      labels: "cls" or "gen" for each example (its task's label).

    Returns:
      `{"overall": {...}, "cls": {...}, "gen": {...}, "per_task": {task: {...}}}`; a label with
      no examples is absent. Also flat keys `rougeL`, `exact_match`, `rougeL_cls`,
      `exact_match_cls`, `rougeL_gen`, `exact_match_gen` for logging.
    """
    overall = compute_metrics(predictions, references)
    by_label = compute_grouped_metrics(predictions, references, labels)
    per_task = compute_grouped_metrics(predictions, references, task_names)
    summary: dict[str, object] = {"overall": overall}
    for label in ("cls", "gen"):
        if label in by_label:
            summary[label] = by_label[label]
    summary["per_task"] = per_task
    summary.update(flat_scores(summary))
    return summary


def flat_scores(summary: Mapping[str, object]) -> dict[str, float]:
    """`rougeL`, `exact_match` and their `_cls` / `_gen` variants from a `summarize` dict."""
    flat: dict[str, float] = {}
    for group, suffix in (("overall", ""), ("cls", "_cls"), ("gen", "_gen")):
        scores = summary.get(group)
        if isinstance(scores, Mapping):
            for name in METRIC_NAMES:
                flat[f"{name}{suffix}"] = float(scores[name])
    return flat

