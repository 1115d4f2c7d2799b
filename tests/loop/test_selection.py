"""Selection strategies, quotas and the `select` command."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from activeit_jax.loop import selection
from activeit_jax.loop.selection import TaskInfo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _score(task, pu, prob, ppl, category, label="gen"):
    return {"task": task, "prompt_uncertainty": pu, "prediction_probability": prob,
            "perplexity": ppl, "entropy": 0.0, "category": category, "label": label,
            "n_instances": 10, "n_perturbations": 10}


# Hand-made scores. Ties: t1/t2 share PU 0.9; t4/t5 share perplexity 3.0.
HAND = [
    _score("t0", 0.10, 0.90, 1.5, "easy"),
    _score("t1", 0.90, 0.40, 4.0, "ambiguous"),
    _score("t2", 0.90, 0.20, 9.0, "ambiguous"),
    _score("t3", 0.50, 0.10, 7.0, "difficult"),
    _score("t4", 0.30, 0.80, 3.0, "easy"),
    _score("t5", 0.20, 0.05, 3.0, "difficult"),
    _score("t6", 0.70, 0.60, 2.0, "ambiguous"),
]
HAND_POOL = [TaskInfo(r["task"], "gen") for r in HAND]


@pytest.mark.parametrize("strategy,expected", [
    ("prompt_uncertainty", ["t1", "t2", "t6", "t3", "t4", "t5", "t0"]),
    ("high_perplexity", ["t2", "t3", "t1", "t4", "t5", "t6", "t0"]),
    ("low_perplexity", ["t0", "t6", "t4", "t5", "t1", "t3", "t2"]),
])
def test_strategy_orders_on_hand_made_scores(strategy, expected):
    assert selection.select_tasks(strategy, HAND, HAND_POOL, num_tasks=7) == expected
    assert selection.select_tasks(strategy, HAND, HAND_POOL, num_tasks=3) == expected[:3]


@pytest.mark.parametrize("strategy,inside,fill", [
    # the ambiguous tasks in random order, then the others by PU desc.
    ("ambiguous", {"t1", "t2", "t6"}, ["t3", "t4", "t5", "t0"]),
    # the easy ones, then difficult by probability desc, then ambiguous by PU asc (t1/t2 tie).
    ("easy", {"t0", "t4"}, ["t3", "t5", "t6", "t1", "t2"]),
    # the difficult ones, then easy by probability asc, then ambiguous by PU asc.
    ("difficult", {"t3", "t5"}, ["t4", "t0", "t6", "t1", "t2"]),
])
def test_category_draws_inside_then_fills_from_the_nearest(strategy, inside, fill):
    result = selection.select(strategy, HAND, HAND_POOL, num_tasks=7, seed=4, iteration=1,
                              category_selection="random")
    assert result.variant == "random" and result.to_json()["variant"] == "random"
    assert set(result.tasks[:len(inside)]) == inside
    assert list(result.tasks[len(inside):]) == fill
    assert result.category_fill == tuple(fill)
    assert result.to_json()["category_fill"] == fill
    assert any(f"category {strategy!r} had {len(inside)} task(s)" in n for n in result.notes)
    # a draw that fits the category records no fill
    short = selection.select(strategy, HAND, HAND_POOL, num_tasks=2, seed=4, iteration=1,
                             category_selection="random")
    assert set(short.tasks) <= inside and short.category_fill == () and not short.notes


def _taskmap_pool(n_per_label=12, seed=0):
    """A pool whose categories come from taskmap.categorize over its own PU / probability."""
    from activeit_jax.scoring import taskmap
    rng = np.random.default_rng(seed)
    names = [f"{label}_{i:02d}" for label in ("cls", "gen") for i in range(n_per_label)]
    pu, prob = rng.random(len(names)), rng.random(len(names))
    categories, _ = taskmap.categorize(pu, prob)
    scores = [_score(n, float(u), float(p), 1.0, c, n[:3])
              for n, u, p, c in zip(names, pu, prob, categories)]
    return [TaskInfo(n, n[:3]) for n in names], scores


def test_ambiguous_draws_within_its_category_unlike_the_pu_ranking():
    pool, scores = _taskmap_pool()
    category = {s["task"]: s["category"] for s in scores}
    labels = {t.name: t.label for t in pool}
    ratio = {"cls": 1, "gen": 1}
    pu_top = selection.select_tasks("prompt_uncertainty", scores, pool, 4, quota="niv2",
                                    label_ratio=ratio)
    draws = []
    for seed in range(8):
        result = selection.select("ambiguous", scores, pool, 4, quota="niv2", seed=seed,
                                  iteration=1, label_ratio=ratio, category_selection="random")
        assert all(category[n] == "ambiguous" for n in result.tasks)
        assert sorted(labels[n] for n in result.tasks) == ["cls", "cls", "gen", "gen"]
        assert result.category_fill == ()
        draws.append(frozenset(result.tasks))
    # more ambiguous tasks than places per label: the draw is random, not the PU top.
    assert sum(category[n] == "ambiguous" and labels[n] == "cls" for n in category) > 2
    assert len(set(draws)) > 1 and any(d != frozenset(pu_top) for d in draws)
    for name in ("easy", "difficult"):
        for rule in ("random", "rank"):
            chosen = selection.select_tasks(name, scores, pool, 4, quota="niv2", seed=0,
                                            iteration=1, label_ratio=ratio,
                                            category_selection=rule)
            assert all(category[n] == name for n in chosen)


# Hand-made Task Map scores for the rank-based category selection (the reference's rankings).
RANKED = [
    _score("a0", 0.90, 0.50, 1.0, "ambiguous"), _score("a1", 0.80, 0.50, 1.0, "ambiguous"),
    _score("e0", 0.05, 0.60, 1.0, "easy"), _score("e1", 0.10, 0.95, 1.0, "easy"),
    _score("e2", 0.20, 0.90, 1.0, "easy"), _score("e3", 0.30, 0.99, 1.0, "easy"),
    _score("d0", 0.05, 0.30, 1.0, "difficult"), _score("d1", 0.10, 0.05, 1.0, "difficult"),
    _score("d2", 0.20, 0.01, 1.0, "difficult"), _score("d3", 0.30, 0.20, 1.0, "difficult"),
]
RANKED_POOL = [TaskInfo(r["task"], "gen") for r in RANKED]


def test_rank_based_category_selection_equals_the_hand_computed_ranking():
    # easy, SumRank with the probability descending ("ReverseSTD"), smallest sum first:
    #   position by PU ascending:           e0 0, e1 1, e2 2, e3 3
    #   position by probability descending: e3 0, e1 1, e2 2, e0 3
    #   sums: e0 3, e1 2, e2 4, e3 3 -> e1, e0, e3 (tie with e0, by name), e2
    # difficult, SumRank with the probability ascending:
    #   position by PU ascending:           d0 0, d1 1, d2 2, d3 3
    #   position by probability ascending:  d2 0, d1 1, d3 2, d0 3
    #   sums: d0 3, d1 2, d2 2, d3 5 -> d1, d2 (tie, by name), d0, d3
    # ambiguous: PU descending -> a0, a1 (the top-PU selection).
    expected = {"easy": ["e1", "e0", "e3", "e2"], "difficult": ["d1", "d2", "d0", "d3"],
                "ambiguous": ["a0", "a1"]}
    by_task = {r["task"]: r for r in RANKED}
    for category, order in expected.items():
        assert selection.category_ranking(category, sorted(order), by_task) == order
        for seed in (0, 1, 7):  # deterministic: no seed enters
            result = selection.select(category, RANKED, RANKED_POOL, len(order), seed=seed,
                                      iteration=2)
            assert list(result.tasks) == order and result.variant == "rank"
            assert result.category_fill == ()
    assert selection.select_tasks("ambiguous", RANKED, RANKED_POOL, 2) == \
        selection.select_tasks("prompt_uncertainty", RANKED, RANKED_POOL, 2)
    # a short category is filled from the nearest one as before (difficult by probability
    # descending for easy: d0 0.30, d3 0.20).
    result = selection.select("easy", RANKED, RANKED_POOL, 6)
    assert list(result.tasks) == ["e1", "e0", "e3", "e2", "d0", "d3"]
    assert result.category_fill == ("d0", "d3")


def test_category_needs_a_task_map_category():
    broken = [dict(r, category=None) if r["task"] == "t0" else r for r in HAND]
    with pytest.raises(ValueError, match="Task Map category"):
        selection.select_tasks("easy", broken, HAND_POOL, 2)


def test_uncertainty_ranks_cls_by_entropy_and_gen_by_perplexity():
    # Hand computation: cls by entropy desc = c1 (2.0), c0 (1.5), c2 (0.1);
    # gen by perplexity desc = g2 (30), g1 (20), g0 (10). Perplexity of cls tasks and entropy
    # of gen tasks are decoys that would reorder them if they were read.
    rows = [("c0", "cls", 1.5, 99.0), ("c1", "cls", 2.0, 1.0), ("c2", "cls", 0.1, 50.0),
            ("g0", "gen", 9.0, 10.0), ("g1", "gen", 0.0, 20.0), ("g2", "gen", 5.0, 30.0)]
    scores = [dict(_score(n, 0.5, 0.5, ppl, "easy", label), entropy=ent)
              for n, label, ent, ppl in rows]
    pool = [TaskInfo(n, label) for n, label, _, _ in rows]
    chosen = selection.select("uncertainty", scores, pool, 3, quota="niv2",
                              label_ratio={"cls": 1, "gen": 2})
    assert list(chosen.tasks) == ["c1", "g2", "g1"]
    # quota "none": the two rankings merge by rank fraction, classification first on a tie.
    assert selection.select_tasks("uncertainty", scores, pool, 6) == [
        "c1", "g2", "c0", "g1", "c2", "g0"]
    assert selection.required_score_keys(["uncertainty", "random"]) == {"entropy",
                                                                       "perplexity"}
    # uncertainty is ours: high_perplexity under the paper's text (entropy for classification)
    for quota, ratio in (("niv2", {"cls": 1, "gen": 2}), ("none", None)):
        for n in (3, 6):
            assert selection.select_tasks(
                "high_perplexity", scores, pool, n, quota=quota, label_ratio=ratio,
                perplexity_variant="paper_text") == selection.select_tasks(
                "uncertainty", scores, pool, n, quota=quota, label_ratio=ratio)
    low = selection.select("low_perplexity", scores, pool, 3, quota="niv2",
                           label_ratio={"cls": 1, "gen": 2}, perplexity_variant="paper_text")
    assert list(low.tasks) == ["c2", "g0", "g1"] and low.variant == "paper_text"
    # the reference variant (default) ranks every task by perplexity, entropy unread
    assert selection.select_tasks("high_perplexity", scores, pool, 6) == [
        "c0", "c2", "g2", "g1", "g0", "c1"]
    assert selection.select("low_perplexity", scores, pool, 1).variant == "reference"
    assert selection.required_score_keys(["high_perplexity"]) == {"perplexity"}
    assert selection.required_score_keys(["low_perplexity"], "paper_text") == {
        "entropy", "perplexity"}
    with pytest.raises(ValueError, match="perplexity_variant must be one of"):
        selection.select_tasks("high_perplexity", scores, pool, 1, perplexity_variant="x")
    assert "entropy" not in selection.required_score_keys(["prompt_uncertainty", "ambiguous"])
    with pytest.raises(ValueError, match="needs each task's label"):
        selection.select_tasks("uncertainty", scores, [TaskInfo("c0")], 1)


def test_order_of_pool_and_scores_does_not_matter():
    rng = np.random.default_rng(3)
    for strategy in ["prompt_uncertainty", "ambiguous", "random", "low_perplexity",
                     "uncertainty"]:
        reference = selection.select_tasks(strategy, HAND, HAND_POOL, 4, seed=1, iteration=2)
        for _ in range(3):
            pool = [HAND_POOL[i] for i in rng.permutation(len(HAND_POOL))]
            scores = [HAND[i] for i in rng.permutation(len(HAND))]
            assert selection.select_tasks(strategy, scores, pool, 4, seed=1,
                                          iteration=2) == reference


def test_nan_scores_rank_last():
    scores = [_score("a", float("nan"), float("nan"), float("nan"), "easy"),
              _score("b", 0.1, 0.5, 1.0, "easy"), _score("c", 0.2, 0.4, 2.0, "easy")]
    pool = [TaskInfo(n) for n in "abc"]
    assert selection.select_tasks("prompt_uncertainty", scores, pool, 3) == ["c", "b", "a"]
    assert selection.select_tasks("low_perplexity", scores, pool, 3) == ["b", "c", "a"]
    assert selection.select_tasks("high_perplexity", scores, pool, 3) == ["c", "b", "a"]


def test_random_is_seeded_and_stable():
    pool = [TaskInfo(f"task_{i:03d}") for i in range(50)]
    first = selection.select_tasks("random", None, pool, 5, seed=0, iteration=1)
    assert first == selection.select_tasks("random", None, pool[::-1], 5, seed=0, iteration=1)
    assert first != selection.select_tasks("random", None, pool, 5, seed=0, iteration=2)
    assert first != selection.select_tasks("random", None, pool, 5, seed=1, iteration=1)
    # Golden value: numpy's PCG64 stream from default_rng([seed, iteration, 0]) over the names
    # sorted; it changes only if that stream (or this module's use of it) changes.
    names = sorted(t.name for t in pool)
    perm = np.random.default_rng([0, 1, 0]).permutation(50)
    assert first == [names[i] for i in perm[:5]]
    assert first == ["task_009", "task_021", "task_031", "task_026", "task_041"]


def test_fully_trained_takes_the_whole_pool():
    result = selection.select("fully_trained", None, HAND_POOL, num_tasks=2, quota="niv2")
    assert sorted(result.tasks) == sorted(t.name for t in HAND_POOL)
    assert len(result.tasks) == 7


def _niv2_pool(n_cls, n_gen, seed=0):
    rng = np.random.default_rng(seed)
    pool, scores = [], []
    for label, n in (("cls", n_cls), ("gen", n_gen)):
        for i in range(n):
            name = f"{label}_{i:03d}"
            pool.append(TaskInfo(name, label))
            scores.append(_score(name, float(rng.random()), float(rng.random()),
                                 float(rng.random() * 10), "easy", label))
    return pool, scores


@pytest.mark.parametrize("strategy", ["prompt_uncertainty", "random", "high_perplexity"])
def test_niv2_quota_keeps_24_cls_44_gen(strategy):
    pool, scores = _niv2_pool(60, 120)
    labels = {t.name: t.label for t in pool}
    chosen = selection.select_tasks(strategy, scores, pool, 68, quota="niv2", seed=2,
                                    iteration=1)
    assert len(chosen) == 68 == len(set(chosen))
    assert sum(labels[n] == "cls" for n in chosen) == 24
    assert sum(labels[n] == "gen" for n in chosen) == 44
    if strategy == "prompt_uncertainty":
        pu = {s["task"]: s["prompt_uncertainty"] for s in scores}
        for label, k in (("cls", 24), ("gen", 44)):
            ranked = sorted((n for n in pu if labels[n] == label), key=lambda n: -pu[n])
            assert {n for n in chosen if labels[n] == label} == set(ranked[:k])


def test_niv2_quota_scales_with_largest_remainder():
    pool, scores = _niv2_pool(30, 30)
    labels = {t.name: t.label for t in pool}
    # 10 * 24/68 = 3.53, 10 * 44/68 = 6.47 -> floors 3 + 6, the extra unit to cls (0.53 > 0.47).
    chosen = selection.select_tasks("prompt_uncertainty", scores, pool, 10, quota="niv2")
    assert [labels[n] for n in chosen].count("cls") == 4
    assert [labels[n] for n in chosen].count("gen") == 6


def test_niv2_short_subpool_is_filled_from_the_other_and_recorded():
    pool, scores = _niv2_pool(10, 100)
    result = selection.select("prompt_uncertainty", scores, pool, 68, quota="niv2")
    labels = {t.name: t.label for t in pool}
    assert len(result.tasks) == 68 == len(set(result.tasks))
    assert sum(labels[n] == "cls" for n in result.tasks) == 10
    cls_group, gen_group = result.groups
    assert (cls_group.group, cls_group.target, cls_group.taken, cls_group.shortfall) == \
        ("cls", 24, 10, 14)
    assert (gen_group.target, gen_group.taken, gen_group.shortfall) == (44, 44, 0)
    assert len(result.filled) == 14 and all(labels[n] == "gen" for n in result.filled)
    # The fill continues the gen ranking: the 58 most uncertain gen tasks overall.
    pu = {s["task"]: s["prompt_uncertainty"] for s in scores}
    gen_ranked = sorted((n for n in pu if labels[n] == "gen"), key=lambda n: -pu[n])
    assert {n for n in result.tasks if labels[n] == "gen"} == set(gen_ranked[:58])
    assert any("filled" in note for note in result.notes)
    assert result.to_json()["groups"][0]["shortfall"] == 14


def test_pool_smaller_than_budget_takes_everything():
    result = selection.select("prompt_uncertainty", HAND, HAND_POOL, 20)
    assert sorted(result.tasks) == sorted(t.name for t in HAND_POOL)
    assert any("fewer than num_tasks" in note for note in result.notes)


def _reference_split(total, sizes):
    """Hamilton apportionment with exact fractions, ties to the earlier group."""
    shares = [Fraction(total * s, sum(sizes)) for s in sizes]
    parts = [math.floor(x) for x in shares]
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - parts[i]), i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


def test_self_instruct_chunk_quota_is_proportional_and_exact():
    rng = np.random.default_rng(7)
    sizes = [int(x) for x in rng.integers(1, 40, size=selection.NUM_CHUNKS)]
    pool, scores = [], []
    for chunk, size in enumerate(sizes):
        for i in range(size):
            name = f"si_{chunk:02d}_{i:03d}"
            pool.append(TaskInfo(name, "gen", chunk))
            scores.append(_score(name, float(rng.random()), 0.5, 1.0, "easy"))
    chunk_of = {t.name: t.chunk for t in pool}
    pu = {s["task"]: s["prompt_uncertainty"] for s in scores}
    for num_tasks in (1, 37, 100, sum(sizes)):
        chosen = selection.select_tasks("prompt_uncertainty", scores, pool, num_tasks,
                                        quota="self_instruct", seed=0, iteration=3)
        assert len(chosen) == num_tasks == len(set(chosen))
        expected = _reference_split(num_tasks, sizes)
        got = [sum(chunk_of[n] == c for n in chosen) for c in range(len(sizes))]
        assert got == expected
        for c, k in enumerate(expected):
            in_chunk = sorted((n for n in pu if chunk_of[n] == c), key=lambda n: -pu[n])
            assert {n for n in chosen if chunk_of[n] == c} == set(in_chunk[:k])


def test_largest_remainder_matches_reference():
    rng = np.random.default_rng(11)
    for _ in range(200):
        weights = [int(w) for w in rng.integers(0, 30, size=int(rng.integers(1, 14)))]
        if sum(weights) == 0:
            continue
        total = int(rng.integers(0, 3 * sum(weights)))
        parts = selection.largest_remainder(total, weights)
        assert sum(parts) == total
        assert parts == _reference_split(total, weights)


def test_missing_scores_error_or_drop():
    pool = HAND_POOL + [TaskInfo("unscored", "gen")]
    with pytest.raises(ValueError, match="no score"):
        selection.select_tasks("prompt_uncertainty", HAND, pool, 3)
    result = selection.select("prompt_uncertainty", HAND, pool, 10, on_missing_score="drop")
    assert "unscored" not in result.tasks and len(result.tasks) == 7
    # random needs no scores at all
    assert len(selection.select_tasks("random", None, pool, 3)) == 3
    with pytest.raises(ValueError, match="needs scores"):
        selection.select_tasks("ambiguous", None, pool, 3)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        selection.select_tasks("random", None, [TaskInfo("a"), TaskInfo("a")], 1)
    with pytest.raises(ValueError, match="label"):
        selection.select_tasks("random", None, [TaskInfo("a", None)], 1, quota="niv2")
    with pytest.raises(ValueError, match="chunk"):
        selection.select_tasks("random", None, [TaskInfo("a", "gen")], 1,
                               quota="self_instruct")
    with pytest.raises(ValueError, match="quota"):
        selection.select_tasks("random", None, [TaskInfo("a")], 1, quota="bogus")


def test_registry(monkeypatch):
    from activeit_jax.loop import strategies
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))
    assert {"random", "prompt_uncertainty", "high_perplexity", "low_perplexity", "ambiguous",
            "easy", "difficult", "fully_trained", "uncertainty"} <= set(selection.list_strategies())
    with pytest.raises(KeyError, match="unknown selection strategy 'nope'"):
        selection.get_strategy("nope")

    @selection.register_strategy("reverse_name", needs_scores=False)
    def reverse_name(candidates, scores, rng):
        return sorted((t.name for t in candidates), reverse=True)

    assert selection.get_strategy("reverse_name").rank is reverse_name
    assert selection.select_tasks("reverse_name", None, HAND_POOL, 2) == ["t6", "t5"]
    with pytest.raises(ValueError, match="already registered"):
        selection.register_strategy("reverse_name")(reverse_name)


def test_read_pool_and_task_list_formats(tmp_path):
    (tmp_path / "pool.jsonl").write_text(
        '{"name": "a", "label": "cls", "chunk": 3}\n{"task": "b", "label": "gen"}\n')
    assert selection.read_pool(tmp_path / "pool.jsonl") == [TaskInfo("a", "cls", 3),
                                                          TaskInfo("b", "gen", None)]
    (tmp_path / "sel.json").write_text(json.dumps({"tasks": ["x", "y"], "strategy": "r"}))
    (tmp_path / "list.txt").write_text("x\n\ny\n")
    assert selection.read_task_list(tmp_path / "sel.json") == ["x", "y"]
    assert selection.read_task_list(tmp_path / "list.txt") == ["x", "y"]


def test_select_command_writes_selection(tmp_path):
    pool, scores = _niv2_pool(20, 40, seed=5)
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"name": t.name, "label": t.label}) + "\n" for t in pool))
    pu = {s["task"]: s["prompt_uncertainty"] for s in scores}
    top_cls = max((n for n in pu if n.startswith("cls")), key=lambda n: pu[n])
    (tmp_path / "iter0.json").write_text(json.dumps({"tasks": [top_cls]}))
    out = tmp_path / "run" / "selected_tasks.json"
    # Through run_main (as the console script does), so `--gin.` bindings reach the command.
    cmd = [sys.executable, "-c", "import sys; from activeit_jax.main import run_main; "
           "run_main(sys.argv)", "select",
           f"--scores={tmp_path / 'scores.jsonl'}", f"--pool={tmp_path / 'pool.jsonl'}",
           "--strategy=prompt_uncertainty", "--num_tasks=34", f"--out={out}", "--iteration=1",
           f"--exclude={tmp_path / 'iter0.json'}", "--gin.selection_settings.quota='niv2'"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["strategy"] == "prompt_uncertainty" and data["quota"] == "niv2"
    assert data["iteration"] == 1
    # 34 = 12 cls + 22 gen (half of 24 + 44), the excluded task never chosen.
    assert len(data["tasks"]) == 34
    assert sum(n.startswith("cls") for n in data["tasks"]) == 12
    assert top_cls not in data["tasks"]
    remaining = [t for t in pool if t.name != top_cls]
    assert data["tasks"] == selection.select_tasks("prompt_uncertainty", scores, remaining, 34,
                                                   quota="niv2", iteration=1)
    assert not [p for p in os.listdir(out.parent) if p.endswith(".tmp")]
