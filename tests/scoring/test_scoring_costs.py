"""The planner's costs come from the model being run (`scoring.costs`, `models.flops`): a small
job is not padded to a power-of-two row count, the costs grow with the model, and the scores do
not depend on how the rows are batched."""
import dataclasses

import jax
import numpy as np

from activeit_jax import partitioning, scoring
from activeit_jax.models import DecoderOnlyModel, LlamaConfig
from activeit_jax.models.flops import llama_flops
from activeit_jax.scoring import batching, costs as costs_lib, row_scorer

# SmolLM2-135M's shapes (no weights are needed: the costs come from the config).
SMOLLM2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, tie_word_embeddings=True)
TINY = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, bos_id=None, eos_id=2, pad_id=0)


def _job_lengths(seed=0, instances=8, per_instance=5):
    """The issue-22 job's rows: 8 instances x (1 + K = 4) prompts of similar length sharing a
    response; (prompt + response, response) positions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(instances):
        prompt, response = int(rng.integers(120, 400)), int(rng.integers(2, 17))
        out += [(prompt - int(rng.integers(0, 30)) + response, response)
                for _ in range(per_instance)]
    return out


def _plan(lengths, **kw):
    config = scoring.ScoreConfig(max_source_length=512, max_target_length=32)
    return batching.plan_batches(lengths, (config.seq_buckets, config.tgt_buckets),
                                 token_budget=config.batch_tokens, max_rows=config.batch_size,
                                 **kw)


def test_a_40_row_job_is_not_padded_to_64_rows():
    lengths = _job_lengths()
    costs = costs_lib.model_plan_costs(llama_flops(SMOLLM2), decoding=False, pool_chunks=1)
    plan = _plan(lengths, costs=costs)
    assert sorted(i for _, rows in plan for i in rows) == list(range(40))
    assert sum(shape[0] for shape, _ in plan) == 40  # no filler row
    for (b, s, t), rows in plan:
        assert all(lengths[i][0] <= s and lengths[i][1] <= t for i in rows)
    # The model-free planner rounds the job up to a power-of-two row count.
    slots = _plan(lengths, **row_scorer.plan_costs(False, 1))
    assert sum(shape[0] for shape, _ in slots) == 64
    # ... which the model's costs count as dearer than its own plan.
    model_cost = sum(costs.batch(shape) + costs.compile for shape, _ in plan)
    slot_cost = sum(costs.batch(shape) + costs.compile for shape, _ in slots)
    assert model_cost < slot_cost


def test_exact_rows_keep_the_data_parallel_multiple():
    costs = costs_lib.model_plan_costs(llama_flops(SMOLLM2), decoding=False, pool_chunks=1,
                                       data_parallel=8)
    plan = _plan(_job_lengths(), costs=costs, multiple=8)
    assert all(shape[0] % 8 == 0 for shape, _ in plan)
    assert sum(shape[0] for shape, _ in plan) == 40


def test_costs_scale_with_the_model():
    small, big = llama_flops(SMOLLM2), llama_flops(dataclasses.replace(SMOLLM2, num_layers=60))
    # Twice the layers: twice the layer FLOPs per position and per attention pair; the
    # vocabulary-wide head (on the scored positions only) is unchanged.
    assert big.per_s == 2 * small.per_s and big.per_ss == 2 * small.per_ss
    assert big.per_t == small.per_t == 2 * 576 * 49152
    # A layer of SmolLM2: q, o (9 x 64) + k, v (3 x 64) projections and a gated MLP, 2 FLOPs
    # per multiply-add.
    assert small.per_s == 30 * 2 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    wide = llama_flops(dataclasses.replace(SMOLLM2, vocab_size=2 * 49152))
    assert wide.per_t == 2 * small.per_t
    # A padded row costs more on the bigger model; its compilation more too, except with
    # scanned layers (one layer compiled).
    small_costs = costs_lib.model_plan_costs(small, decoding=False, pool_chunks=1)
    big_costs = costs_lib.model_plan_costs(big, decoding=False, pool_chunks=1)
    assert big_costs.row(312, 16) > 1.9 * small_costs.row(312, 16)
    assert big_costs.compile > small_costs.compile
    scanned = dataclasses.replace(big, scan_layers=True)
    assert costs_lib.compile_seconds(scanned, False) < costs_lib.compile_seconds(small, False)
    # A tiny model's rows cost next to nothing against a compilation: it pads instead.
    tiny = costs_lib.model_plan_costs(llama_flops(TINY), decoding=False, pool_chunks=1)
    assert tiny.row(312, 16) * 64 < 0.01 * tiny.compile < small_costs.row(312, 16) * 64
    # Accelerators: a row is cheaper, a compilation the same host work.
    gpu = costs_lib.model_plan_costs(small, decoding=False, pool_chunks=1, platform="gpu")
    assert gpu.row(312, 16) < small_costs.row(312, 16) and gpu.compile == small_costs.compile


def test_decoding_costs_count_every_step():
    flops = llama_flops(SMOLLM2)
    short = costs_lib.model_plan_costs(flops, decoding=True, pool_chunks=1, max_decode_length=8)
    long = costs_lib.model_plan_costs(flops, decoding=True, pool_chunks=1, max_decode_length=32)
    assert long.per_row > 4 * short.per_row > 0 and long.call > short.call
    assert long.per_t == 0.0 and long.exact_rows


def test_scores_do_not_depend_on_the_cost_model():
    """The same rows, planned with the model's costs and the model-free ones (different
    shapes, filler rows), score the same up to float rounding."""
    model = DecoderOnlyModel(TINY)
    mesh = partitioning.make_mesh({"data": -1}, jax.devices()[:1])
    params = jax.device_put(jax.device_get(model.init_params(jax.random.key(0))),
                            partitioning.params_shardings(model, mesh))
    config = scoring.ScoreConfig(num_instances=1, num_perturbations=1, max_source_length=64,
                                 max_target_length=16, max_decode_length=4, batch_size=8)
    rng = np.random.default_rng(0)
    rows = [(rng.integers(3, 512, int(rng.integers(0, 60))).tolist(),
             rng.integers(3, 512, int(rng.integers(1, 16))).tolist() + [2]) for _ in range(13)]
    results, shapes = {}, {}
    for kind in row_scorer.PLAN_COSTS:
        scorer = scoring.RowScorer.from_config(model, params, mesh,
                                               dataclasses.replace(config, plan_costs=kind))
        results[kind] = scorer.score_async(rows).result()
        shapes[kind] = set(scorer.score_shapes)
        log = scorer.compile_log()
        assert len(log) == len(shapes[kind]) and all(e["seconds"] > 0 for e in log)
    assert shapes["model"] != shapes["slots"]
    for ours, theirs in zip(results["model"][:2], results["slots"][:2]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(results["model"][1], [len(r) for _, r in rows])
