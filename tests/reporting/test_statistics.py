"""Spread, paired intervals and verdicts of the report (reporting/statistics.py), on synthetic
results whose answers are computed by hand."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pytest

from activeit_jax.reporting import render, results, statistics

# t(0.975, 2) and t(0.975, 3), from a table (Student's t, two-sided 95%).
T_975_DOF2 = 4.302652729911275
T_975_DOF3 = 3.182446305284263


def test_summarize_mean_sample_sd_and_n():
    s = statistics.summarize([1.0, None, 2.0, 4.0])
    assert s.n == 3
    assert s.mean == pytest.approx(7 / 3)
    # Sample sd, ddof = 1: sum of squares 14/3 over 2.
    assert s.sd == pytest.approx(math.sqrt(7 / 3))
    one = statistics.summarize([5.0])
    assert (one.mean, one.sd, one.n) == (5.0, None, 1)
    assert statistics.summarize([]).n == 0


def test_t_interval_matches_hand_computation():
    interval = statistics.t_interval([1.0, 2.0, 4.0])
    half = T_975_DOF2 * math.sqrt(7 / 3) / math.sqrt(3)  # = 3.7946...
    assert interval.method == "t"
    assert interval.low == pytest.approx(7 / 3 - half)
    assert interval.high == pytest.approx(7 / 3 + half)
    assert half == pytest.approx(3.7946, abs=1e-4)
    four = statistics.t_interval([0.0, 2.0, 2.0, 4.0])  # mean 2, sd sqrt(8/3)
    assert four.high - 2.0 == pytest.approx(T_975_DOF3 * math.sqrt(8 / 3) / 2.0)
    assert statistics.t_interval([3.0]) is None


@pytest.mark.parametrize("diffs, expected", [
    # Two values: resampled means 0, 0.5, 1 with mass 1/4, 1/2, 1/4 -> the 2.5th and 97.5th
    # percentiles sit inside the end masses.
    ([0.0, 1.0], (0.0, 1.0)),
    ([-1.0, 3.0], (-1.0, 3.0)),
    # [0, 0, 3]: the mean is the number k ~ Binomial(3, 1/3) of 3s drawn: P(k = 0) = 8/27,
    # P(k <= 2) = 26/27 = 0.963 < 0.975 -> the interval is [0, 3].
    ([0.0, 0.0, 3.0], (0.0, 3.0)),
    ([2.0, 2.0, 2.0], (2.0, 2.0)),
])
def test_bootstrap_interval_matches_hand_computation(diffs, expected):
    interval = statistics.bootstrap_interval(diffs)
    assert interval.method == "bootstrap"
    assert (interval.low, interval.high) == pytest.approx(expected)


def test_bootstrap_is_the_documented_resampling_with_a_fixed_rng():
    diffs = np.array([1.5, -0.5, 2.0, 0.25, 3.0])
    rng = np.random.default_rng(statistics.BOOTSTRAP_SEED)
    idx = rng.integers(0, diffs.size, size=(statistics.BOOTSTRAP_RESAMPLES, diffs.size))
    low, high = np.percentile(diffs[idx].mean(axis=1), [2.5, 97.5])
    interval = statistics.bootstrap_interval(diffs)
    assert (interval.low, interval.high) == (low, high)
    assert statistics.bootstrap_interval(diffs) == interval  # same report, same numbers
    assert statistics.bootstrap_interval(diffs, seed=1) != interval
    # The percentile bootstrap of 3 seeds is narrower than the t-interval (why the verdict
    # reads t).
    t = statistics.t_interval([1.0, 2.0, 4.0])
    b = statistics.bootstrap_interval([1.0, 2.0, 4.0])
    assert t.low < b.low and b.high < t.high


@pytest.mark.parametrize("low, high, expected", [
    (0.5, 2.0, "better"),
    (1e-12, 2.0, "better"),
    (0.0, 2.0, "within noise"),      # touches 0: not excluded
    (-1.0, 0.0, "within noise"),
    (-1.0, 1.0, "within noise"),
    (-2.0, -1e-12, "worse"),
    (-2.0, -0.5, "worse"),
    (0.0, 0.0, "within noise"),
])
def test_verdict_at_the_boundaries(low, high, expected):
    assert statistics.verdict(statistics.Interval(low, high, "t")) == expected


def test_verdict_without_an_interval():
    assert statistics.verdict(None) == "n/a"


def test_t_interval_touching_zero_is_within_noise():
    # Two positive differences a < b: mean (a + b) / 2, half-width t(0.975, 1) (b - a) / 2,
    # so the lower end is 0 exactly when b = a (t + 1) / (t - 1).
    t1 = statistics.t_quantile(0.975, 1)
    a = 1.0
    b = a * (t1 + 1) / (t1 - 1)
    interval = statistics.t_interval([a, b])
    assert interval.low == pytest.approx(0.0, abs=1e-12)
    nudged = statistics.Interval(0.0, interval.high, "t")
    assert statistics.verdict(nudged) == "within noise"
    assert statistics.verdict(statistics.t_interval([a, b * 0.99])) == "better"


def test_paired_sample_size_by_hand():
    # sd = |d|: n = 9 gives (t(.975, 8) + t(.8, 8))^2 = (2.306 + 0.889)^2 = 10.2 > 9;
    # n = 10 gives (2.262 + 0.883)^2 = 9.89 <= 10.
    assert statistics.paired_sample_size(1.0, 1.0) == 10
    assert statistics.paired_sample_size(-2.0, 2.0) == 10
    # sd = 2 |d|: the normal approximation (1.96 + 0.84)^2 * 4 = 31.4; t adds two.
    assert statistics.paired_sample_size(1.0, 2.0) == 34
    assert statistics.paired_sample_size(0.0, 1.0) is None
    assert statistics.paired_sample_size(1.0, None) is None
    assert statistics.paired_sample_size(1.0, 0.0) == 2


# ----------------------------------------------------------------------------- run directories


def _write_iteration(path, scores, labels, selected):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "per_task_metrics.jsonl"), "w") as handle:
        for task, value in scores.items():
            handle.write(json.dumps({"split": "test", "task": task, "label": labels[task],
                                     "rouge_l": value, "exact_match": 0.0,
                                     "n_instances": 3}) + "\n")
    with open(os.path.join(path, "selected_tasks.json"), "w") as handle:
        json.dump({"tasks": selected}, handle)


LABELS = {"t_a": "cls", "t_b": "cls", "t_c": "gen", "t_d": "gen"}


def _build(root, per_seed):
    """per_seed: {seed: {strategy: {task: rouge_l}}} for iteration 1; iteration 0 is 10."""
    for seed, by_strategy in per_seed.items():
        base = os.path.join(root, f"seed_{seed}")
        _write_iteration(os.path.join(base, "iter_0"), {t: 10.0 for t in LABELS}, LABELS, [])
        for strategy, scores in by_strategy.items():
            _write_iteration(os.path.join(base, strategy, "iter_1"), scores, LABELS,
                             [f"pool_{strategy}_{seed}"])


def _comparisons(root):
    iterations = results.discover_run(root)
    rows = results.collect_results(iterations)
    per_task = statistics.read_per_task_scores(iterations)
    return {(c.strategy, c.category): c
            for c in statistics.compare_to_reference(rows, per_task)}, iterations, per_task


def _uniform(value):
    return {t: value for t in LABELS}


def test_seed_mode_pairs_seeds_and_gives_verdicts(tmp_path):
    # Overall means per seed: random 20, 30, 40; better +5, +6, +7; worse -5, -6, -7;
    # noisy +4, -4, +1.
    random = {0: 20.0, 1: 30.0, 2: 40.0}
    shift = {"better": (5, 6, 7), "worse": (-5, -6, -7), "noisy": (4, -4, 1)}
    per_seed = {s: {"random": _uniform(random[s]),
                    **{name: _uniform(random[s] + d[s]) for name, d in shift.items()}}
                for s in (0, 1, 2)}
    _build(str(tmp_path), per_seed)
    found, _, _ = _comparisons(str(tmp_path))
    better = found[("better", "overall")]
    assert better.unit == "seed" and better.units == (0, 1, 2)
    assert better.diffs == pytest.approx((5.0, 6.0, 7.0))
    half = T_975_DOF2 * 1.0 / math.sqrt(3)  # sd of (5, 6, 7) is 1
    assert (better.t.low, better.t.high) == pytest.approx((6 - half, 6 + half))
    assert better.verdict == "better"
    assert found[("worse", "cls")].verdict == "worse"
    noisy = found[("noisy", "overall")]
    assert noisy.verdict == "within noise"
    assert noisy.summary.mean == pytest.approx(1 / 3)
    assert ("random", "overall") not in found


def test_one_seed_pairs_test_tasks(tmp_path):
    ours = {"t_a": 50.0, "t_b": 40.0, "t_c": 10.0, "t_d": 30.0}
    theirs = {"t_a": 30.0, "t_b": 30.0, "t_c": 20.0, "t_d": 25.0}
    _build(str(tmp_path), {0: {"random": theirs, "prompt_uncertainty": ours}})
    found, iterations, per_task = _comparisons(str(tmp_path))
    overall = found[("prompt_uncertainty", "overall")]
    assert overall.unit == "task"
    assert overall.units == ("t_a", "t_b", "t_c", "t_d")
    assert overall.diffs == pytest.approx((20.0, 10.0, -10.0, 5.0))
    d = np.array([20.0, 10.0, -10.0, 5.0])
    half = T_975_DOF3 * d.std(ddof=1) / 2.0
    assert (overall.t.low, overall.t.high) == pytest.approx((6.25 - half, 6.25 + half))
    assert overall.verdict == "within noise"
    cls = found[("prompt_uncertainty", "cls")]
    assert cls.units == ("t_a", "t_b") and cls.diffs == pytest.approx((20.0, 10.0))
    # Markdown says what the pairs are.
    text = statistics.comparisons_markdown(list(found.values()))
    assert "test task (1 seed)" in text and "Paired by test task" in text
    # Per-task CSV: one line per task x model, sortable.
    rows = list(csv.DictReader(io.StringIO(statistics.per_task_csv(iterations, per_task))))
    assert len(rows) == 4 * 3
    line = next(r for r in rows if r["task"] == "t_c" and r["strategy"] == "prompt_uncertainty")
    assert float(line["rouge_l"]) == 10.0 and line["label"] == "gen"
    table = statistics.task_table(per_task, ["initial", "random", "prompt_uncertainty"])
    assert table.iteration == 1
    assert [r[0] for r in table.rows] == ["t_a", "t_b", "t_d", "t_c"]  # largest gain first
    assert table.rows[0][-1] == "+20.00"


def test_report_files_carry_the_statistics(tmp_path):
    per_seed = {s: {"random": _uniform(20.0 + s), "prompt_uncertainty": _uniform(25.0 + 2 * s)}
                for s in (0, 1, 2)}
    root = str(tmp_path / "run")
    _build(root, per_seed)
    paths = render.write_report(root, str(tmp_path / "report"))
    with open(paths["results.csv"]) as handle:
        table = list(csv.DictReader(handle))
    pu = next(r for r in table if r["strategy"] == "prompt_uncertainty")
    assert pu["ci_unit"] == "seed" and pu["overall_verdict"] == "better"
    assert float(pu["overall_diff_vs_random"]) == pytest.approx(6.0)
    assert pu["n_seeds"] == "3"
    with open(paths["comparisons.csv"]) as handle:
        comp = list(csv.DictReader(handle))
    assert {r["category"] for r in comp} == {"overall", "cls", "gen"}
    assert all(r["unit"] == "seed" and r["n"] == "3" for r in comp)
    with open(paths["results.md"]) as handle:
        md = handle.read()
    assert "each strategy vs random (paired)" in md and "| better |" in md
    with open(paths["report.html"]) as handle:
        page = handle.read()
    assert "each strategy vs random (paired)" in page and "<td>better</td>" in page
    assert "Per test task at iteration 1" in page
    assert os.path.exists(paths["per_task_scores.csv"])
