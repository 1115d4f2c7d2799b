"""Adaptive perturbation budget: K0 = K is exact scoring (replayed and live, against
`score_pool`); with K0 < K the selection stays close to full-K at a fraction of the rows."""
import json

import jax
import numpy as np
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.core import io_utils
from activeit_jax.scoring import adaptive


def _synthetic_pool(num_tasks=60, n=10, K=20, seed=0):
    """p values with a per-task PU level and perturbation-level noise, as real rows have."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in range(num_tasks):
        p0 = rng.uniform(0.05, 0.9, size=(n, 1))
        level = rng.gamma(2.0, 0.02)
        per_k = rng.gamma(2.0, level / 2.0, size=(1, K))  # some perturbations matter more
        noise = rng.normal(0, level / 4, size=(n, K))
        out[f"task{t:03d}"] = np.clip(np.concatenate([p0, p0 - per_k + noise], 1), 1e-6, 1.0)
    return out


def test_k0_equal_k_is_exact():
    pool = _synthetic_pool()
    config = adaptive.AdaptiveConfig(initial_perturbations=20, num_select=12)
    result, full = adaptive.replay_from_prompts(pool, config)
    assert result.rows_scored == result.rows_full and result.rounds == 0
    for task, p in pool.items():
        assert result.prompt_uncertainty[task] == scoring.prompt_uncertainty(p)
    assert result.selected == full


def test_prefix_policy_saves_rows_and_keeps_the_selection():
    pool = _synthetic_pool(num_tasks=120, seed=1)
    config = adaptive.AdaptiveConfig(initial_perturbations=4, num_select=20)
    result, full = adaptive.replay_from_prompts(pool, config)
    overlap = len(set(result.selected) & set(full)) / len(full)
    assert result.fraction_scored < 0.6 and overlap >= 0.85
    # Every task starts with the same prefix; only undecided ones grow, up to K.
    ks = {t: p.shape[1] - 1 for t, p in result.p.items()}
    assert min(ks.values()) == 4 and max(ks.values()) <= 20
    for task, p in result.p.items():
        np.testing.assert_array_equal(p, pool[task][:, :p.shape[1]])


def test_standard_error_and_quota():
    p = np.array([[0.5, 0.4, 0.6, 0.45], [0.2, 0.1, 0.3, 0.2]])
    assert adaptive.standard_error(p, 3) == 0.0  # k = K: exact
    assert adaptive.standard_error(p[:, :2], 10) == np.inf  # one draw: no variance estimate
    assert 0 < adaptive.standard_error(p, 10) < 1
    est = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    labels = {"a": "cls", "b": "cls", "c": "gen", "d": "gen"}
    assert adaptive.select_top(est, 2) == ["a", "b"]
    assert adaptive.select_top(est, 2, labels, {"cls": 1, "gen": 1}) == ["a", "c"]


def test_read_prompt_probabilities(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"task": "t", "instance": i, "perturbation": k, "p": 0.1 * (i + 1) + 0.01 * k}
            for i in range(2) for k in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = adaptive.read_prompt_probabilities(str(path))
    np.testing.assert_allclose(p["t"], [[0.1, 0.11, 0.12], [0.2, 0.21, 0.22]])


def test_live_k0_equal_k_equals_score_pool(tmp_path, vocab):
    """The live driver with K0 = K gives score_pool's numbers (same rows, other batches)."""
    from activeit_jax.models import EncoderDecoderModel
    from tests.scoring.test_scoring_pipeline import POOL, TINY, _config
    model = EncoderDecoderModel(TINY)
    mesh = partitioning.make_mesh({"data": -1})
    params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
        model, mesh))(jax.random.key(0))
    config = _config(compute_entropy=False, save_prompts=False)
    scorer = scoring.RowScorer.from_config(model, params, mesh, config)
    scoring.score_pool(model, params, vocab, iter(POOL), str(tmp_path), config, mesh=mesh,
                       progress=False, scorer=scorer)
    exact = {r["task"]: r for r in io_utils.read_jsonl(str(tmp_path / "scores.jsonl"))}
    builder = scoring.PromptBuilder(vocab, config)
    result = adaptive.score_adaptive(scorer, builder, POOL, adaptive.AdaptiveConfig(
        initial_perturbations=config.num_perturbations, num_select=2))
    assert set(result.prompt_uncertainty) == set(exact)
    for task, value in result.prompt_uncertainty.items():
        assert value == pytest.approx(exact[task]["prompt_uncertainty"], rel=1e-4, abs=1e-9)
        p0 = result.p[task][:, 0].mean()
        assert p0 == pytest.approx(exact[task]["prediction_probability"], rel=1e-5)


def test_score_pool_adaptive_files(tmp_path, vocab):
    """The file-writing driver: K0 = K gives every task K perturbations and score_pool's
    numbers; K0 < K gives each task between K0 and K."""
    from activeit_jax.models import EncoderDecoderModel
    from tests.scoring.test_scoring_pipeline import POOL, TINY, _config
    model = EncoderDecoderModel(TINY)
    mesh = partitioning.make_mesh({"data": -1})
    params = jax.jit(model.init_params, out_shardings=partitioning.params_shardings(
        model, mesh))(jax.random.key(0))
    config = _config(compute_entropy=False, save_prompts=False)
    K = config.num_perturbations
    scoring.score_pool(model, params, vocab, iter(POOL), str(tmp_path / "full"), config,
                       mesh=mesh, progress=False)
    exact = io_utils.read_jsonl(str(tmp_path / "full" / "scores.jsonl"))
    for k0, out in ((K, "same"), (1, "less")):
        summary = adaptive.score_pool_adaptive(
            model, params, vocab, iter(POOL), str(tmp_path / out), config,
            adaptive.AdaptiveConfig(initial_perturbations=k0, num_select=2), mesh=mesh)
        got = io_utils.read_jsonl(str(tmp_path / out / "scores.jsonl"))
        assert [r["task"] for r in got] == [r["task"] for r in exact]
        assert summary["skipped"] == [{"task": "task004_empty", "reason": "no instances"}]
        for a, b in zip(exact, got):
            assert b["prediction_probability"] == pytest.approx(a["prediction_probability"],
                                                                rel=1e-5)
            if k0 == K:
                assert b["n_perturbations"] == K
                assert b["prompt_uncertainty"] == pytest.approx(a["prompt_uncertainty"],
                                                                rel=1e-4, abs=1e-9)
                assert b["category"] == a["category"]
            else:
                assert k0 <= b["n_perturbations"] <= K
