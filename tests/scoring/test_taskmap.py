"""Task Map: categories on constructed scores, thresholds, CSV and plot files."""
import csv

import numpy as np
import pytest

from activeit_jax.scoring import taskmap


def test_categories_on_constructed_scores():
    # Nine tasks: three with clearly high PU, six with low PU split by probability.
    pu = [0.50, 0.40, 0.30, 0.01, 0.02, 0.03, 0.01, 0.02, 0.03]
    prob = [0.9, 0.1, 0.5, 0.95, 0.90, 0.85, 0.10, 0.05, 0.20]
    cats, (pu_t, prob_t) = taskmap.categorize(pu, prob)
    assert cats == ["ambiguous"] * 3 + ["easy"] * 3 + ["difficult"] * 3
    assert pu_t == pytest.approx(np.quantile(pu, 2 / 3))
    assert prob_t == pytest.approx(np.median(prob[3:]))  # median of the non-ambiguous tasks


def test_absolute_thresholds_override_quantiles_and_ties():
    th = taskmap.TaskMapThresholds(pu_threshold=0.1, probability_threshold=0.5)
    cats, resolved = taskmap.categorize([0.1, 0.11, 0.0, 0.0], [0.2, 0.2, 0.5, 0.49], th)
    assert resolved == (0.1, 0.5)
    # PU == threshold is not ambiguous; probability == threshold is easy.
    assert cats == ["difficult", "ambiguous", "easy", "difficult"]
    with pytest.raises(ValueError):
        taskmap.TaskMapThresholds(pu_quantile=1.5)


def test_quantile_settings_change_the_split():
    rng = np.random.default_rng(0)
    pu, prob = rng.random(300), rng.random(300)
    cats, _ = taskmap.categorize(pu, prob, taskmap.TaskMapThresholds(pu_quantile=0.9))
    assert abs(cats.count("ambiguous") - 30) <= 1
    assert abs(cats.count("easy") - cats.count("difficult")) <= 1


def test_empty_pool():
    cats, (pu_t, prob_t) = taskmap.categorize([], [])
    assert cats == [] and np.isnan(pu_t) and np.isnan(prob_t)


def test_csv_and_plots_written_deterministically(tmp_path):
    records = [{"task": f"t{i}", "prompt_uncertainty": 0.01 * i,
                "prediction_probability": 0.1 * i, "perplexity": 1.0 + i,
                "label": "cls" if i % 2 else "gen"} for i in range(9)]
    cats, th = taskmap.categorize([r["prompt_uncertainty"] for r in records],
                                  [r["prediction_probability"] for r in records])
    for r, c in zip(records, cats):
        r["category"] = c
    taskmap.write_csv(tmp_path / "m.csv", records)
    with open(tmp_path / "m.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["task"] for r in rows] == [f"t{i}" for i in range(9)]
    assert [r["category"] for r in rows] == cats
    assert float(rows[3]["prompt_uncertainty"]) == pytest.approx(0.03)
    outs = []
    for run in ("a", "b"):
        taskmap.plot(records, th, str(tmp_path / f"{run}.png"), str(tmp_path / f"{run}.svg"))
        outs.append(((tmp_path / f"{run}.png").read_bytes(),
                     (tmp_path / f"{run}.svg").read_bytes()))
    assert outs[0][0][:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in outs[0][1]
    assert outs[0] == outs[1]  # byte-identical across runs
    taskmap.plot([], (float("nan"), float("nan")), str(tmp_path / "e.png"), None)
    assert (tmp_path / "e.png").stat().st_size > 0
