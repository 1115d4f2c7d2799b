"""The adaptive perturbation budget on a decoder-only model builds the prompts `score_pool`
builds (the model's own format, cut to leave room for its BOS): with K0 = K it equals exact
scoring, also on prompts that fill the source length."""
from __future__ import annotations

import json
import os

import jax
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.data import prepared as prepared_lib
from activeit_jax.models import DecoderOnlyModel, LlamaConfig
from activeit_jax.scoring import adaptive

TINY = LlamaConfig(vocab_size=1152, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, pad_id=0, eos_id=1, bos_id=1151)
MAX_SRC, MAX_TGT = 96, 12


def _read(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_adaptive_with_full_budget_equals_exact_scoring(sample_data, vocab, tmp_path):
    model = DecoderOnlyModel(TINY)
    mesh = partitioning.local_mesh({"data": -1, "fsdp": 1, "model": 1})
    params = jax.device_put(jax.device_get(model.init_params(jax.random.key(0))),
                            partitioning.params_shardings(model, mesh))
    data = prepared_lib.prepare_niv2(str(sample_data / "niv2"), seed=0,
                                     max_instances_per_task=10)
    tasks = [data.tasks[name] for name in data.split.pool][:8]
    config = scoring.ScoreConfig(num_instances=2, num_perturbations=3, seed=0,
                                 max_source_length=MAX_SRC, max_target_length=MAX_TGT,
                                 max_decode_length=MAX_TGT, batch_size=16,
                                 source_buckets=(64, MAX_SRC),
                                 sequence_buckets=(80, MAX_SRC + MAX_TGT))
    exact_dir, adaptive_dir = str(tmp_path / "exact"), str(tmp_path / "adaptive")
    scoring.score_pool(model, params, vocab, tasks, exact_dir, config, mesh=mesh,
                       progress=False)
    policy = adaptive.AdaptiveConfig(initial_perturbations=3, num_select=2)
    adaptive.score_pool_adaptive(model, params, vocab, tasks, adaptive_dir, config, policy,
                                 mesh=mesh)
    exact = {r["task"]: r for r in _read(os.path.join(exact_dir, "scores.jsonl"))}
    got = {r["task"]: r for r in _read(os.path.join(adaptive_dir, "scores.jsonl"))}
    assert set(got) == set(exact) and len(got) == len(tasks)
    for name, record in got.items():
        for key in ("prompt_uncertainty", "prediction_probability"):
            assert record[key] == pytest.approx(exact[name][key], rel=1e-4, abs=1e-6), (name,
                                                                                        key)
    # The fingerprint names the decoder-only prompt format and special ids, as score_pool's.
    with open(os.path.join(adaptive_dir, "run_args.json")) as handle:
        args = json.load(handle)["args"]
    with open(os.path.join(exact_dir, "run_args.json")) as handle:
        exact_args = json.load(handle)["args"]
    assert args["prompt_formats"] == exact_args["prompt_formats"]
    assert args["special_ids"] == {"pad": 0, "bos": 1151, "eos": 1}
