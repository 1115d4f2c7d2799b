"""Prompt uncertainty / probability / perplexity formulas against plain numpy loops, and the
host-side helpers (tokenisation cut, buckets, instance choice, fingerprint)."""
import dataclasses
import json

import numpy as np
import pytest

from activeit_jax import scoring


def _reference(token_lp, weights):
    """Loop-by-loop numbers from token log-probabilities [n, 1+K, T] and weights."""
    n, width, _ = token_lp.shape
    p = np.zeros((n, width))
    for i in range(n):
        for k in range(width):
            toks = [token_lp[i, k, t] for t in range(token_lp.shape[2]) if weights[i, k, t]]
            p[i, k] = np.exp(sum(toks) / len(toks))
    diffs = [abs(p[i, k] - p[i, 0]) for i in range(n) for k in range(1, width)]
    ppl = [np.exp(-np.mean([token_lp[i, 0, t] for t in range(token_lp.shape[2])
                            if weights[i, 0, t]])) for i in range(n)]
    return sum(diffs) / len(diffs), float(np.mean(p[:, 0])), float(np.mean(ppl))


@pytest.mark.parametrize("n,k,t", [(1, 1, 1), (3, 4, 5), (10, 20, 7)])
def test_metrics_match_numpy_loops(n, k, t):
    rng = np.random.default_rng(n * 100 + k)
    token_lp = -rng.exponential(0.7, size=(n, 1 + k, t))
    lengths = rng.integers(1, t + 1, size=n)  # same target for every prompt of an instance
    weights = np.zeros((n, 1 + k, t), bool)
    for i, length in enumerate(lengths):
        weights[i, :, :length] = True
    token_lp = np.where(weights, token_lp, 0.0)
    metrics = scoring.task_metrics(token_lp.sum(-1), weights.sum(-1))
    pu, prob, ppl = _reference(token_lp, weights)
    assert metrics["prompt_uncertainty"] == pytest.approx(pu, rel=1e-12)
    assert metrics["prediction_probability"] == pytest.approx(prob, rel=1e-12)
    assert metrics["perplexity"] == pytest.approx(ppl, rel=1e-12)
    assert metrics["entropy"] is None


def test_hand_computed_values_and_entropy():
    # p = [[0.5, 0.25, 1.0], [0.2, 0.2, 0.4]] with one-token targets.
    p = np.array([[0.5, 0.25, 1.0], [0.2, 0.2, 0.4]])
    m = scoring.task_metrics(np.log(p), np.ones_like(p), entropy_sum=np.array([1.0, 3.0]))
    assert m["prompt_uncertainty"] == pytest.approx((0.25 + 0.5 + 0.0 + 0.2) / 4)
    assert m["prediction_probability"] == pytest.approx(0.35)
    assert m["perplexity"] == pytest.approx((2.0 + 5.0) / 2)
    assert m["entropy"] == pytest.approx(2.0)
    # Identical prompts (empty definition): PU is exactly 0.
    same = np.log(np.full((2, 4), 0.3))
    assert scoring.task_metrics(same, np.full((2, 4), 2))["prompt_uncertainty"] == 0.0
    assert scoring.prompt_uncertainty(np.array([[0.3]])) == 0.0  # K = 0
    with pytest.raises(ValueError):
        scoring.prompt_uncertainty(np.zeros((0, 3)))


def test_truncation_keeps_eos_and_buckets():
    assert scoring.truncate_ids([5, 6, 7, 8], 3) == [5, 6, 1]
    assert scoring.truncate_ids([5, 6], 3) == [5, 6, 1]
    assert scoring.truncate_ids([], 3) == [1]
    assert scoring.default_buckets(1024) == (16, 32, 64, 128, 256, 512, 1024)
    assert scoring.default_buckets(100, smallest=32) == (32, 64, 100)
    assert scoring.bucket_for(17, (16, 32)) == 32
    with pytest.raises(ValueError):
        scoring.bucket_for(33, (16, 32))
    cfg = scoring.ScoreConfig(max_source_length=48, max_target_length=8,
                              source_buckets=(16, 100))
    assert cfg.src_buckets == (16, 48) and cfg.tgt_buckets == (8,)


@dataclasses.dataclass(frozen=True)
class _Task:
    name: str
    instances: tuple


def test_instance_choice_is_seeded_sorted_and_capped():
    task = _Task("task001_x", tuple(range(50)))
    a = scoring.choose_instances(task, 10, seed=0)
    assert a == scoring.choose_instances(task, 10, seed=0)
    assert a != scoring.choose_instances(task, 10, seed=1)
    assert a == sorted(a) and len(set(a)) == 10
    assert scoring.choose_instances(_Task("t", (1, 2, 3)), 10, seed=0) == [1, 2, 3]
    assert scoring.choose_instances(_Task("t", ()), 10, seed=0) == []


def test_fingerprint_refuses_other_arguments(tmp_path):
    args = scoring.ScoreConfig(num_perturbations=3).fingerprint_args()
    json.dumps(args)  # JSON-ready
    scoring.prepare_run_dir(str(tmp_path), {"checkpoint": "a", **args})
    scoring.prepare_run_dir(str(tmp_path), {"checkpoint": "a", **args})  # same: fine
    with pytest.raises(ValueError, match="num_perturbations"):
        scoring.prepare_run_dir(str(tmp_path), {
            "checkpoint": "a", **scoring.ScoreConfig(num_perturbations=4).fingerprint_args()})
    # Execution settings are not part of the fingerprint.
    assert (scoring.ScoreConfig(batch_size=8).fingerprint_args()
            == scoring.ScoreConfig(batch_size=64).fingerprint_args())
