"""The scorer on a decoder-only model: a tiny random LLaMA + the sample vocabulary, scoring
Self-Instruct tasks with the Alpaca prompt.

- every saved row against an independent recomputation, one row per call on a hand-built
  batch (`token_log_probs`, `greedy_decode`), the perturbed prompts redrawn with the
  perturbation registry, and prompt uncertainty / probability / perplexity with numpy;
- determinism (two runs give identical files; one device gives the same numbers);
- kill-and-resume == uninterrupted; the fingerprint records the Alpaca format.

Special ids: the sample SentencePiece model has T5 ids (pad 0, eos 1, unk 2) and no bos, so
the tiny LLaMA uses pad 0, eos 1 (the vocabulary's own EOS, so `vocab.decode` and the model
agree on where a prediction ends) and bos 1151: an embedding row above the vocabulary's 1100
ids (1000 pieces + 100 sentinels), which `vocab.encode` never produces.
"""
import json
import os

import jax
import numpy as np
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.core import io_utils
from activeit_jax.data import prompts, self_instruct
from activeit_jax.data.niv2 import Instance, Task
from activeit_jax.models import DecoderOnlyModel, LlamaConfig
from activeit_jax.scoring import perturbation as perturbation_lib

N, K = 2, 3
MAX_SRC, MAX_TGT = 128, 12
PAD, EOS, BOS = 0, 1, 1151

TINY = LlamaConfig(vocab_size=1152, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, pad_id=PAD, eos_id=EOS, bos_id=BOS)


def _si_task(name, instruction, inputs):
    return Task(name=name, definition=instruction, positive_examples=(),
                negative_examples=(), source="self_instruct",
                instances=tuple(Instance(f"{name}-{k}", text, ("an answer",))
                                for k, text in enumerate(inputs)))


@pytest.fixture(scope="module")
def pool(sample_data):
    items = self_instruct.load_self_instruct(
        sample_data / "self_instruct" / "alpaca_sample.json", max_items=5)
    return items + [
        # Several instances (n of them are chosen), the no-input Alpaca template, nothing to
        # perturb, and an instruction too long for MAX_SRC (the prompt keeps its end).
        _si_task("si_multi", "Rewrite the sentence in a more formal tone.",
                 ["hey whats up", "gimme that", "we gotta go now", "ok cool"]),
        _si_task("si_noinput", "Name three primary colors.", [""]),
        _si_task("si_nodef", "", ["Some input text."]),
        _si_task("si_long", " ".join(["Follow these detailed steps with great care."] * 30),
                 ["the input"]),
    ]


@pytest.fixture(scope="module")
def model():
    return DecoderOnlyModel(TINY)


@pytest.fixture(scope="module")
def host_params(model):
    return jax.device_get(model.init_params(jax.random.key(0)))


def _config(**kw):
    base = dict(num_instances=N, num_perturbations=K, seed=0, max_source_length=MAX_SRC,
                max_target_length=MAX_TGT, max_decode_length=MAX_TGT, save_prompts=True,
                batch_size=16, tasks_per_chunk=3, compute_entropy=False,
                source_buckets=(96, MAX_SRC), sequence_buckets=(112, MAX_SRC + MAX_TGT))
    base.update(kw)
    return scoring.ScoreConfig(**base)


def _place(model, host_params, mesh):
    return jax.device_put(host_params, partitioning.params_shardings(model, mesh))


@pytest.fixture(scope="module")
def scorer(model, host_params):
    mesh = partitioning.make_mesh({"data": -1})
    cfg = _config()
    return scoring.RowScorer(model, _place(model, host_params, mesh), mesh,
                             batch_size=cfg.batch_size, decode_batch_size=cfg.batch_size,
                             source_buckets=cfg.src_buckets, target_buckets=cfg.tgt_buckets,
                             max_decode_length=cfg.max_decode_length,
                             sequence_buckets=cfg.seq_buckets)


def _run(model, host_params, vocab, pool, out, scorer=None, mesh_sizes=None, devices=None,
         hooks=scoring.ScoreHooks()):
    mesh = partitioning.make_mesh(mesh_sizes or {"data": -1}, devices)
    params = None if scorer is not None else _place(model, host_params, mesh)
    return scoring.score_pool(model, params, vocab, iter(pool), str(out), _config(),
                              mesh=mesh, run_args={"checkpoint": "tiny-llama"},
                              total=len(pool), progress=False, scorer=scorer, hooks=hooks)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, model, host_params, vocab, pool, scorer):
    out = tmp_path_factory.mktemp("decoder_only")
    summary = _run(model, host_params, vocab, pool, out, scorer=scorer)
    return out, summary


def _read(out, name):
    return io_utils.read_jsonl(os.path.join(out, name))


def _files(out):
    names = ("scores.jsonl", "prompts.jsonl", "taskmap.csv")
    return {n: open(os.path.join(out, n), "rb").read() for n in names}


def test_outputs_and_fingerprint(baseline, pool):
    out, summary = baseline
    scores = {r["task"]: r for r in _read(out, "scores.jsonl")}
    assert list(scores) == [t.name for t in pool]
    assert scores["si_multi"]["n_instances"] == N
    assert all(scores[t.name]["n_instances"] == 1 for t in pool if t.name != "si_multi")
    assert scores["si_nodef"]["prompt_uncertainty"] == 0.0
    assert max(r["prompt_uncertainty"] for r in scores.values()) > 0.0
    for r in scores.values():
        assert 0.0 < r["prediction_probability"] <= 1.0 and r["perplexity"] >= 1.0
    with open(os.path.join(out, "run_args.json"), encoding="utf-8") as handle:
        args = json.load(handle)["args"]
    assert args["prompt_format"] == "auto"
    assert args["prompt_formats"] == {"niv2": "tk_instruct", "self_instruct": "alpaca"}
    assert args["special_ids"] == {"pad": PAD, "bos": BOS, "eos": EOS}
    # Scoring shapes are (batch, prompt + response bucket); decoding (batch, bos + prompt).
    assert {tuple(s)[1] for s in summary["score_shapes"]} <= {112, MAX_SRC + MAX_TGT}
    assert {tuple(s)[1] for s in summary["decode_shapes"]} <= {96, MAX_SRC}
    assert summary["num_compilations"] == (len(summary["score_shapes"])
                                           + len(summary["decode_shapes"]))


def test_rows_match_independent_recomputation(baseline, model, host_params, vocab, pool):
    """Re-derive every row one by one: prompt, greedy prediction, p, then the task numbers."""
    out, _ = baseline
    params = jax.device_put(host_params, jax.devices()[0])
    rows = _read(out, "prompts.jsonl")
    scores = {r["task"]: r for r in _read(out, "scores.jsonl")}
    tasks = {t.name: t for t in pool}
    log_probs = jax.jit(model.token_log_probs)
    decode = jax.jit(lambda p, b: model.greedy_decode(p, b, MAX_TGT))
    perturb = perturbation_lib.get_perturbation("drop", rate=0.2)

    def prompt_ids(text):  # bos + prompt fits MAX_SRC: keep the prompt's last ids
        ids = list(vocab.encode(text))
        return ids[-(MAX_SRC - 1):]

    def right_padded(seq, length, dtype=np.int32):
        arr = np.zeros((1, length), dtype)
        arr[0, :len(seq)] = seq
        return arr

    # One fixed shape per function (right padding, unlike the scorer's left-padded buckets:
    # positions count real tokens only and padded keys are masked, so the rows are unchanged).
    def prediction_of(source):
        tokens = right_padded([BOS] + prompt_ids(source), MAX_SRC)
        generated = np.asarray(decode(params, {"decoder_input_tokens": tokens}))[0].tolist()
        ids = []
        for token in generated:
            if token in (EOS, PAD):
                break
            ids.append(token)
        return vocab.decode(ids)

    def p_of(source, prediction):
        prompt = prompt_ids(source)
        response = list(vocab.encode(prediction))[:MAX_TGT - 1] + [EOS]
        sequence = [BOS] + prompt + response
        length = MAX_SRC + MAX_TGT
        batch = {"decoder_input_tokens": right_padded(sequence[:-1], length),
                 "decoder_target_tokens": right_padded(sequence[1:], length),
                 "decoder_loss_weights": right_padded(
                     [0.0] * len(prompt) + [1.0] * len(response), length, np.float32)}
        lp = np.asarray(log_probs(params, batch), np.float64)[0]
        assert np.all(lp[len(sequence) - 1:] == 0.0)
        return float(np.exp(lp.sum() / len(response)))

    assert {r["task"] for r in rows} == set(scores)
    for name, rec in scores.items():
        task = tasks[name]
        mine = [r for r in rows if r["task"] == name]
        assert len(mine) == rec["n_instances"] * (K + 1)
        instances = {i.id: i for i in task.instances}
        inst_ids = list(dict.fromkeys(r["instance"] for r in mine))
        assert inst_ids == [i.id for i in scoring.choose_instances(task, N, 0)]
        # The K perturbed instructions, redrawn: the same K serve every instance.
        rng = perturbation_lib.task_rng(0, name, "perturb")
        template = prompts.PromptParts(task.definition, (), (), task.instances[0].input)
        definitions = [task.definition] + [
            perturb(template, rng, task_name=name, index=k).definition for k in range(K)]
        p = np.zeros((len(inst_ids), K + 1))
        for r in mine:
            inst = instances[r["instance"]]
            k = r["perturbation"]
            assert r["source"] == prompts.alpaca_prompt(definitions[k], inst.input)
            if k == 0:
                assert r["prediction"] == prediction_of(r["source"])
            value = p_of(r["source"], r["prediction"])
            assert r["p"] == pytest.approx(value, rel=2e-5, abs=1e-9)
            p[inst_ids.index(r["instance"]), k] = value
        pu = np.mean([abs(p[i, k] - p[i, 0]) for i in range(len(p)) for k in range(1, K + 1)])
        assert rec["prompt_uncertainty"] == pytest.approx(pu, rel=1e-4, abs=1e-9)
        assert rec["prediction_probability"] == pytest.approx(p[:, 0].mean(), rel=2e-5)
        assert rec["perplexity"] == pytest.approx(np.mean(1.0 / p[:, 0]), rel=2e-5)
    # The drop perturbation changed some instructions; the no-input template was used.
    perturbed = [r for r in rows if r["task"] == rows[0]["task"] and r["perturbation"] > 0]
    assert any(r["source"] != rows[0]["source"] for r in perturbed)
    noinput = [r for r in rows if r["task"] == "si_noinput"]
    assert all("### Input:" not in r["source"] for r in noinput)
    # The long instruction was cut from the front: its prompt ids exceed MAX_SRC - 1.
    long_source = next(r["source"] for r in rows if r["task"] == "si_long")
    assert len(vocab.encode(long_source)) > MAX_SRC - 1


def test_deterministic_and_mesh_independent(baseline, tmp_path, model, host_params, vocab,
                                            pool, scorer):
    out, _ = baseline
    _run(model, host_params, vocab, pool, tmp_path / "again", scorer=scorer)
    assert _files(tmp_path / "again") == _files(out)
    _run(model, host_params, vocab, pool, tmp_path / "one", mesh_sizes={"data": 1},
         devices=jax.devices()[:1])
    ref, got = _read(out, "scores.jsonl"), _read(tmp_path / "one", "scores.jsonl")
    assert [r["task"] for r in got] == [r["task"] for r in ref]
    for a, b in zip(ref, got):
        for key in ("prompt_uncertainty", "prediction_probability", "perplexity"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["task"], key)
    ref_rows, got_rows = _read(out, "prompts.jsonl"), _read(tmp_path / "one", "prompts.jsonl")
    assert [(r["source"], r["prediction"]) for r in got_rows] == \
        [(r["source"], r["prediction"]) for r in ref_rows]


class _Killed(RuntimeError):
    pass


def test_kill_and_resume_gives_identical_files(baseline, tmp_path, model, host_params, vocab,
                                               pool, scorer):
    out, _ = baseline

    def hook(name, written):
        if written >= 4:
            raise _Killed(name)

    with pytest.raises(_Killed):
        _run(model, host_params, vocab, pool, tmp_path, scorer=scorer,
             hooks=scoring.ScoreHooks(after_task=hook))
    assert len(_read(tmp_path, "scores.jsonl")) == 4
    summary = _run(model, host_params, vocab, pool, tmp_path, scorer=scorer)
    assert summary["last_session"]["tasks_scored"] == len(pool) - 4
    assert _files(tmp_path) == _files(out)


def test_decoder_only_scorer_needs_sequence_buckets(model, host_params):
    mesh = partitioning.make_mesh({"data": -1})
    with pytest.raises(ValueError, match="sequence_buckets"):
        scoring.RowScorer(model, _place(model, host_params, mesh), mesh, batch_size=8,
                          decode_batch_size=8, source_buckets=(16,), target_buckets=(8,),
                          max_decode_length=4)


def test_cut_generated_and_keep_last():
    assert scoring.cut_generated([5, 6, EOS, 7], EOS) == [5, 6, EOS]
    assert scoring.cut_generated([5, PAD, 6], EOS) == [5]
    assert scoring.cut_generated([5, 6], EOS) == [5, 6]
    assert scoring.keep_last_ids([1, 2, 3, 4], 2) == [3, 4]
    assert scoring.keep_last_ids([1, 2], 5) == [1, 2]
    assert scoring.truncate_ids([4, 5, 6], 3, eos_id=2) == [4, 5, 2]
