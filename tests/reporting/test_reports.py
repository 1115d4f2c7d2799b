"""Results table, plots and HTML report on a constructed run directory."""
from __future__ import annotations

import base64
import csv
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from activeit_jax import layout
from activeit_jax.loop import iteration_metrics
from activeit_jax.reporting import render as reports, results as run_results

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = (0, 1)
STRATEGIES = {"random": 2, "prompt_uncertainty": 2, "fully_trained": 1}  # -> iterations
POOL = [f"task_{i:03d}" for i in range(40)]
LABEL = {name: ("cls" if i % 3 == 0 else "gen") for i, name in enumerate(POOL)}
EVAL_TASKS = [f"eval_{i:02d}" for i in range(9)]
EVAL_LABEL = {name: ("cls" if i < 4 else "gen") for i, name in enumerate(EVAL_TASKS)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


def _build_run(root):
    """A run with 2 seeds, iteration 0 + strategies; returns the ground truth it wrote.

    Truth: {(strategy, iteration, seed): {"n_train": int, "val"/"test": {task: (label, rl)},
    "selected": [...], "sel_pu": mean PU of the selected tasks or None}}.
    """
    rng = np.random.default_rng(0)
    truth = {}

    def write_iter(path, key, selected, previous_scores, remaining):
        per_task = []
        entry = {"selected": list(selected), "sel_pu": None}
        for split in ("val", "test"):
            entry[split] = {}
            for task in EVAL_TASKS:
                value = float(rng.uniform(0, 100))
                entry[split][task] = (EVAL_LABEL[task], value)
                per_task.append({"split": split, "task": task, "label": EVAL_LABEL[task],
                                 "rouge_l": value, "exact_match": float(rng.uniform(0, 50)),
                                 "n_instances": 5})
        # A repeated line: the last one counts (resumed evaluator).
        per_task.insert(0, {"split": "val", "task": EVAL_TASKS[0], "label": "cls",
                            "rouge_l": -1000.0})
        _write_jsonl(os.path.join(path, "per_task_metrics.jsonl"), per_task)
        iteration_metrics.write_derived_metrics(path)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "selected_tasks.json"), "w") as handle:
            json.dump({"tasks": list(selected)}, handle)
        scores = [{"task": t, "prompt_uncertainty": float(rng.uniform()),
                   "prediction_probability": float(rng.uniform()), "perplexity": 2.0,
                   "entropy": 1.0, "category": "easy", "label": LABEL[t], "n_instances": 3,
                   "n_perturbations": 4} for t in remaining]
        _write_jsonl(os.path.join(path, "scores.jsonl"), scores)
        if previous_scores is not None:
            pu = {s["task"]: s["prompt_uncertainty"] for s in previous_scores}
            entry["sel_pu"] = float(np.mean([pu[t] for t in selected]))
        truth[key] = entry
        return scores

    for seed in SEEDS:
        order = [POOL[i] for i in rng.permutation(len(POOL))]
        initial = order[:8]
        base = os.path.join(root, f"seed_{seed}")
        scores0 = write_iter(os.path.join(base, "iter_0"), ("initial", 0, seed), initial, None,
                             order[8:])
        truth[("initial", 0, seed)]["n_train"] = 8
        for strategy, n_iter in STRATEGIES.items():
            remaining, scores, trained = order[8:], scores0, set(initial)
            for iteration in range(1, n_iter + 1):
                selected = remaining if strategy == "fully_trained" else remaining[:6]
                remaining = [t for t in remaining if t not in selected]
                trained |= set(selected)
                key = (strategy, iteration, seed)
                scores = write_iter(os.path.join(base, strategy, f"iter_{iteration}"), key,
                                    selected, scores, remaining)
                truth[key]["n_train"] = len(trained)
    return truth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("run"))
    truth = _build_run(root)
    # A task map for one iteration, and a stored metrics file that disagrees with its per-task
    # file (must show up as a warning, never in the table).
    with open(os.path.join(root, "seed_0", "iter_0", "task_map.png"), "wb") as handle:
        handle.write(reports._placeholder("task map")[0])
    bad = os.path.join(root, "seed_1", "random", "iter_1", "metrics_test.json")
    with open(bad) as handle:
        stored = json.load(handle)
    stored["overall"]["rouge_l"] += 5.0
    with open(bad, "w") as handle:
        json.dump(stored, handle)
    # Judge results for one iteration: A wins 2, ties 1, loses 1.
    _write_jsonl(os.path.join(root, "seed_0", "prompt_uncertainty", "iter_1",
                              "judge_vs_random.jsonl"),
                 [{"id": str(i), "winner": w} for i, w in enumerate(["A", "A", "tie", "B"])])
    # The command, as a user runs it.
    cmd = [sys.executable, "-c", "import sys; from activeit_jax.main import run_main; "
           "run_main(sys.argv)", "report", f"--run={root}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root, truth


def _expected(truth, strategy, iteration, split, category):
    per_seed = {}
    for seed in SEEDS:
        entry = truth[(strategy, iteration, seed)][split]
        values = [v for label, v in entry.values() if category == "overall" or label == category]
        per_seed[seed] = float(np.mean(values))
    return per_seed


def test_report_files_written(run):
    root, _ = run
    out = os.path.join(root, "report")
    assert sorted(os.listdir(out)) == sorted(layout.REPORT_FILES)
    for name in ("curves.png", "selected_uncertainty.png"):
        with open(os.path.join(out, name), "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    tree = ET.parse(os.path.join(out, "curves.svg"))
    assert tree.getroot().tag.endswith("svg")


def test_csv_equals_recomputation_from_per_task_files(run):
    root, truth = run
    with open(os.path.join(root, "report", "results.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected_keys = {(s, "initial", 0) for s in ("val", "test")}
    for strategy, n_iter in STRATEGIES.items():
        expected_keys |= {(s, strategy, i) for s in ("val", "test")
                          for i in range(1, n_iter + 1)}
    assert {(r["split"], r["strategy"], int(r["iteration"])) for r in rows} == expected_keys
    for row in rows:
        strategy, iteration, split = row["strategy"], int(row["iteration"]), row["split"]
        assert int(row["num_train_tasks"]) == truth[(strategy, iteration, 0)]["n_train"]
        assert row["n_seeds"] == "2"
        for category in ("overall", "cls", "gen"):
            per_seed = _expected(truth, strategy, iteration, split, category)
            for seed in SEEDS:
                assert float(row[f"{category}_seed{seed}"]) == pytest.approx(per_seed[seed],
                                                                            abs=1e-9)
            values = list(per_seed.values())
            assert float(row[f"{category}_mean"]) == pytest.approx(np.mean(values), abs=1e-9)
            assert float(row[f"{category}_std"]) == pytest.approx(np.std(values, ddof=1),
                                                                  abs=1e-9)


def test_discover_run_sizes_and_selection_scores(run):
    root, _ = run
    found = {(d.strategy, d.iteration, d.seed): d for d in run_results.discover_run(root)}
    assert found[("initial", 0, 0)].num_train_tasks == 8
    assert found[("random", 1, 1)].num_train_tasks == 14
    assert found[("prompt_uncertainty", 2, 0)].num_train_tasks == 20
    assert found[("fully_trained", 1, 1)].num_train_tasks == 40
    assert found[("random", 2, 0)].selection_scores == os.path.join(
        root, "seed_0", "random", "iter_1", "scores.jsonl")
    assert found[("random", 1, 0)].selection_scores == os.path.join(
        root, "seed_0", "iter_0", "scores.jsonl")
    assert [d.strategy for d in run_results.discover_run(root)][0] == "initial"


def test_markdown_has_paper_shape_and_values(run):
    root, truth = run
    with open(os.path.join(root, "report", "results.md")) as handle:
        text = handle.read()
    assert "## Validation ROUGE-L" in text and "## Test ROUGE-L" in text
    header = next(line for line in text.splitlines() if line.startswith("| Strategy"))
    for title in ("Overall", "Classification", "Generative"):
        assert f"{title} seed 0" in header and f"{title} mean ± std" in header
    values = list(_expected(truth, "prompt_uncertainty", 2, "val", "gen").values())
    cell = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    row = next(line for line in text.split("## Test")[0].splitlines()
               if line.startswith("| prompt_uncertainty | 2 |"))
    assert cell in row
    assert "| 20 |" in row


def test_selected_uncertainty_matches_scores(run):
    root, truth = run
    data = reports.selected_uncertainty(run_results.discover_run(root))
    assert set(data) == set(STRATEGIES)
    for strategy, n_iter in STRATEGIES.items():
        for iteration in range(1, n_iter + 1):
            for seed in SEEDS:
                assert data[strategy][iteration][seed] == pytest.approx(
                    truth[(strategy, iteration, seed)]["sel_pu"], abs=1e-12)


def test_stored_metrics_mismatch_is_a_warning(run):
    root, _ = run
    warnings: list[str] = []
    run_results.collect_results(run_results.discover_run(root), warnings)
    assert len(warnings) == 1
    assert os.path.join("seed_1", "random", "iter_1", "metrics_test.json") in warnings[0]


def test_html_is_self_contained(run):
    root, truth = run
    with open(os.path.join(root, "report", "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for strategy in ["initial", *STRATEGIES]:
        assert f"<h3>{strategy}</h3>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3  # curves, selected uncertainty, one task map
    assert all(base64.b64decode(img)[:8] == PNG_MAGIC for img in images)
    # Selected tasks are listed with their selection-time prompt uncertainty.
    task = truth[("prompt_uncertainty", 1, 0)]["selected"][0]
    scores = {json.loads(line)["task"]: json.loads(line) for line in
              open(os.path.join(root, "seed_0", "iter_0", "scores.jsonl"))}
    assert f"<td>{task}</td><td>{scores[task]['prompt_uncertainty']:.4g}</td>" in page
    # Judge totals and the metrics warning appear.
    assert "Pairwise judge: judge, seed 0 (strategy vs. reference)" in page
    assert "<td>prompt_uncertainty</td><td>1</td><td>random</td><td>4</td><td>2</td><td>1</td>" \
           "<td>1</td><td>0</td>" in page
    assert "metrics_test.json" in page


def test_derive_split_metrics_by_hand():
    records = [{"task": "a", "label": "cls", "rouge_l": 10.0, "exact_match": 0.0},
               {"task": "b", "label": "cls", "rouge_l": 30.0, "exact_match": 100.0},
               {"task": "c", "label": "gen", "rouge_l": 50.0}]
    metrics = iteration_metrics.derive_split_metrics(records)
    assert metrics["overall"] == {"n_tasks": 3, "rouge_l": 30.0, "exact_match": None}
    assert metrics["cls"] == {"n_tasks": 2, "rouge_l": 20.0, "exact_match": 50.0}
    assert metrics["gen"]["rouge_l"] == 50.0
    empty = iteration_metrics.derive_split_metrics(records[2:])
    assert empty["cls"] == {"n_tasks": 0, "rouge_l": None, "exact_match": None}


def test_single_seed_generative_only_run(tmp_path):
    """Self-Instruct style: no classification tasks, one seed -> no std, no cls column."""
    path = tmp_path / "seed_3" / "iter_0"
    _write_jsonl(str(path / "per_task_metrics.jsonl"),
                 [{"split": "test", "task": "x", "label": "gen", "rouge_l": 40.0},
                  {"split": "test", "task": "y", "label": "gen", "rouge_l": 20.0}])
    (path / "selected_tasks.json").write_text('["x1", "x2"]')
    rows = run_results.collect_results(run_results.discover_run(tmp_path))
    assert len(rows) == 1 and rows[0].stats("overall") == (30.0, None, 1)
    text = run_results.results_markdown(rows)
    assert "Classification" not in text and "| initial | 0 | 2 | 1 | 30.00 | 30.00 |" in text
    line = run_results.results_csv(rows).splitlines()[1].split(",")
    assert line[:5] == ["test", "initial", "0", "2", "1"]


def test_provenance_names_the_pool_roles_of_the_first_seed(tmp_path):
    """The pool rows come from the first seed's splits.json (seed numbers, not names)."""
    from activeit_jax.reporting import provenance
    for seed in (3, 1):
        data_dir = tmp_path / f"seed_{seed}" / "data"
        data_dir.mkdir(parents=True)
        (data_dir / "splits.json").write_text(json.dumps({"kind": "niv2", "summary": {
            "roles": {"pool": {"tasks": 5 + seed, "cls": 2, "gen": 3 + seed}},
            "max_instances_per_task": 20}}), encoding="utf-8")
    rows = dict(provenance.pool_description(str(tmp_path)))
    assert rows["Roles (seed 1)"] == "pool 6 (2 cls / 4 gen)"
    assert rows["Instances kept per task"] == "20"
