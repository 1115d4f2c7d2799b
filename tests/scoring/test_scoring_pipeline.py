"""The scorer end to end on a tiny random T5 + the sample vocabulary.

- every saved row against an independent recomputation (one row per call, the model's
  `token_log_probs` and numpy);
- identical scores on 8 devices (data=8, data=4 x model=2) and on 1;
- kill-and-resume (a hook raising after N tasks, a torn last line) == uninterrupted run;
- bad inputs: fewer instances than n, none, an empty definition.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from activeit_jax import partitioning, scoring
from activeit_jax.core import io_utils
from activeit_jax.data import prompts
from activeit_jax.data.niv2 import Example, Instance, Task
from activeit_jax.models import EncoderDecoderModel, T5Config

N, K = 2, 3
MAX_SRC, MAX_TGT = 128, 8

TINY = T5Config(vocab_size=1152, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                num_encoder_layers=2, num_decoder_layers=2)


def _task(name, definition, n_instances, examples=2, label="gen"):
    pos = tuple(Example(f"Example input {i} about the weather in {name}", f"answer {i}")
                for i in range(examples))
    inst = tuple(Instance(f"{name}-{i}", f"Instance {i}: is the sky blue in {name}?",
                          ("yes",)) for i in range(n_instances))
    return Task(name=name, definition=definition, positive_examples=pos,
                negative_examples=(), instances=inst, label=label)


POOL = [
    _task("task001_weather", "In this task you are given a question about the weather. "
          "Answer it with yes or no.", 5, label="cls"),
    _task("task002_story", "Write a short continuation of the given story sentence.", 3),
    _task("task003_one", "Classify the sentiment of the sentence as positive or negative.",
          1, label="cls"),
    _task("task004_empty", "Answer the question.", 0),
    _task("task005_nodef", "", 2, examples=0),
    _task("task006_long", " ".join(["Read the long instruction carefully."] * 40), 4),
]


@pytest.fixture(scope="module")
def model():
    return EncoderDecoderModel(TINY)


@pytest.fixture(scope="module")
def host_params(model):
    return jax.device_get(model.init_params(jax.random.key(0)))


def _place(model, host_params, mesh):
    return jax.device_put(host_params, partitioning.params_shardings(model, mesh))


def _config(**kw):
    base = dict(num_instances=N, num_perturbations=K, seed=0, max_source_length=MAX_SRC,
                max_target_length=MAX_TGT, max_decode_length=MAX_TGT, save_prompts=True,
                batch_size=16, tasks_per_chunk=2, compute_entropy=True)
    base.update(kw)
    return scoring.ScoreConfig(**base)


def _run(model, host_params, vocab, out, mesh_sizes=None, devices=None, config=None,
         scorer=None, hooks=scoring.ScoreHooks(), pool=POOL):
    mesh = partitioning.make_mesh(mesh_sizes or {"data": -1}, devices)
    params = _place(model, host_params, mesh)
    return scoring.score_pool(model, params, vocab, iter(pool), str(out), config or _config(),
                              mesh=mesh, run_args={"checkpoint": "tiny"}, total=len(pool),
                              hooks=hooks, progress=False, scorer=scorer)


@pytest.fixture(scope="module")
def scorer(model, host_params):
    """One RowScorer on the 8-device data mesh, reused (its jit cache too) across runs."""
    mesh = partitioning.make_mesh({"data": -1})
    cfg = _config()
    return scoring.RowScorer.from_config(model, _place(model, host_params, mesh), mesh, cfg)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, model, host_params, vocab, scorer):
    out = tmp_path_factory.mktemp("baseline")
    summary = _run(model, host_params, vocab, out, scorer=scorer)
    return out, summary


def _read(out, name):
    return io_utils.read_jsonl(os.path.join(out, name))


def _files(out):
    names = ("scores.jsonl", "prompts.jsonl", "skipped.jsonl", "taskmap.csv", "taskmap.png",
             "taskmap.svg")
    return {n: open(os.path.join(out, n), "rb").read() for n in names}


def test_outputs_and_bad_inputs(baseline):
    out, summary = baseline
    scores = _read(out, "scores.jsonl")
    names = [t.name for t in POOL if t.instances]
    assert [r["task"] for r in scores] == names  # pool order, zero-instance task left out
    assert summary["skipped"] == [{"task": "task004_empty", "reason": "no instances"}]
    by = {r["task"]: r for r in scores}
    assert by["task001_weather"]["n_instances"] == N
    assert by["task003_one"]["n_instances"] == 1  # fewer than n: all it has
    assert all(r["n_perturbations"] == K for r in scores)
    assert by["task005_nodef"]["prompt_uncertainty"] == 0.0  # nothing to perturb
    assert by["task001_weather"]["prompt_uncertainty"] > 0.0
    assert by["task001_weather"]["label"] == "cls"
    assert {r["category"] for r in scores} <= {"ambiguous", "easy", "difficult"}
    for r in scores:
        assert 0.0 < r["prediction_probability"] <= 1.0 and r["perplexity"] >= 1.0
        assert r["entropy"] > 0.0
    csv_lines = open(os.path.join(out, "taskmap.csv")).read().splitlines()
    assert len(csv_lines) == 1 + len(names)
    assert summary["num_compilations"] == (len(summary["score_shapes"])
                                           + len(summary["decode_shapes"]))
    assert 0.0 <= summary["score_padding"]["source_padding_waste"] < 1.0


def test_rows_match_independent_recomputation(baseline, model, host_params, vocab):
    """Re-derive every row: prompt text, greedy prediction, p, and the task numbers."""
    out, _ = baseline
    params = jax.device_put(host_params, jax.devices()[0])
    rows = _read(out, "prompts.jsonl")
    scores = {r["task"]: r for r in _read(out, "scores.jsonl")}
    fits = prompts.make_fits(vocab, MAX_SRC)

    def ids(text, max_len):  # SeqIO: cut to max_len - 1, then EOS
        return list(vocab.encode(text))[:max_len - 1] + [1]

    @jax.jit
    def one_row_log_probs(enc, tgt):
        dec_in = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), tgt[:, :-1]], axis=1)
        batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
                 "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0)}
        return model.token_log_probs(params, batch)

    @jax.jit
    def one_row_entropy(enc, tgt):
        dec_in = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), tgt[:, :-1]], axis=1)
        logits = model.logits(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in})
        return logits

    @jax.jit
    def one_row_decode(enc):
        return model.greedy_decode(params, {"encoder_input_tokens": enc}, MAX_TGT)

    def pad(seq, length):
        arr = np.zeros((1, length), np.int32)
        arr[0, :len(seq)] = seq
        return arr

    tasks = {t.name: t for t in POOL}
    assert {r["task"] for r in rows} == set(scores)
    for name, rec in scores.items():
        task = tasks[name]
        mine = [r for r in rows if r["task"] == name]
        assert len(mine) == rec["n_instances"] * (K + 1)
        instances = {i.id: i for i in task.instances}
        p = np.zeros((rec["n_instances"], K + 1))
        entropies = []
        inst_ids = list(dict.fromkeys(r["instance"] for r in mine))
        for r in mine:
            inst = instances[r["instance"]]
            if r["perturbation"] == 0:
                expected = prompts.render_tk_instruct(prompts.tk_instruct_parts(task, inst),
                                                      fits)
                assert r["source"] == expected
                generated = np.asarray(one_row_decode(pad(ids(r["source"], MAX_SRC),
                                                          MAX_SRC)))[0].tolist()
                assert r["prediction"] == vocab.decode(generated)
                logits = np.asarray(one_row_entropy(
                    pad(ids(r["source"], MAX_SRC), MAX_SRC),
                    pad(ids(r["prediction"], MAX_TGT), MAX_TGT)), np.float64)[0]
                n_tok = len(ids(r["prediction"], MAX_TGT))
                logp = logits[:n_tok] - np.log(np.exp(logits[:n_tok]).sum(-1, keepdims=True))
                entropies.append(float(np.mean(-(np.exp(logp) * logp).sum(-1))))
            else:  # the instance part of the prompt is never perturbed
                assert r["source"].endswith(prompts.tk_instance_block(inst.input))
            lp = np.asarray(one_row_log_probs(pad(ids(r["source"], MAX_SRC), MAX_SRC),
                                              pad(ids(r["prediction"], MAX_TGT), MAX_TGT)))
            n_tok = len(ids(r["prediction"], MAX_TGT))
            value = float(np.exp(lp[0, :n_tok].astype(np.float64).sum() / n_tok))
            assert r["p"] == pytest.approx(value, rel=2e-5, abs=1e-9)
            p[inst_ids.index(r["instance"]), r["perturbation"]] = value
        pu = np.mean([abs(p[i, k] - p[i, 0]) for i in range(len(p)) for k in range(1, K + 1)])
        assert rec["prompt_uncertainty"] == pytest.approx(pu, rel=1e-4, abs=1e-9)
        assert rec["prediction_probability"] == pytest.approx(p[:, 0].mean(), rel=2e-5)
        assert rec["perplexity"] == pytest.approx(np.mean(1.0 / p[:, 0]), rel=2e-5)
        assert rec["entropy"] == pytest.approx(np.mean(entropies), rel=1e-4)
    # Perturbations differ from the original where there is something to perturb.
    perturbed = [r for r in rows if r["task"] == "task001_weather" and r["perturbation"] > 0]
    assert any(r["source"] != rows[0]["source"] for r in perturbed)
    # The long definition was cut to fit, EOS kept.
    long_rows = [r for r in rows if r["task"] == "task006_long"]
    assert all(len(vocab.encode(r["source"])) >= MAX_SRC for r in long_rows[:1])


@pytest.mark.parametrize("mesh_sizes,num_devices", [({"data": 1}, 1),
                                                     ({"data": 4, "model": 2}, 8)])
def test_same_scores_on_other_meshes(baseline, tmp_path, model, host_params, vocab,
                                     mesh_sizes, num_devices):
    out, _ = baseline
    _run(model, host_params, vocab, tmp_path, mesh_sizes, jax.devices()[:num_devices])
    ref, got = _read(out, "scores.jsonl"), _read(tmp_path, "scores.jsonl")
    assert [r["task"] for r in got] == [r["task"] for r in ref]
    for a, b in zip(ref, got):
        for key in ("prompt_uncertainty", "prediction_probability", "perplexity", "entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["task"], key)
    ref_rows, got_rows = _read(out, "prompts.jsonl"), _read(tmp_path, "prompts.jsonl")
    assert [(r["source"], r["prediction"]) for r in got_rows] == \
        [(r["source"], r["prediction"]) for r in ref_rows]
    np.testing.assert_allclose([r["p"] for r in got_rows], [r["p"] for r in ref_rows],
                               rtol=2e-5)


class _Killed(RuntimeError):
    pass


def _kill_after(n):
    def hook(name, written):
        if written >= n:
            raise _Killed(name)
    return scoring.ScoreHooks(after_task=hook)


@pytest.mark.parametrize("kill_after", [1, 4])
def test_kill_and_resume_gives_identical_files(baseline, tmp_path, model, host_params, vocab,
                                               scorer, kill_after):
    out, _ = baseline
    with pytest.raises(_Killed):
        _run(model, host_params, vocab, tmp_path, hooks=_kill_after(kill_after), scorer=scorer)
    done = _read(tmp_path, "scores.jsonl")
    assert len(done) == kill_after
    # A torn write: half a line at the end of scores.jsonl, plus prompt rows of a task
    # whose score line never made it.
    orphan = {"task": "task006_long", "instance": "x", "perturbation": 0, "source": "s",
              "prediction": "p", "p": 0.5}
    with open(tmp_path / "prompts.jsonl", "a") as handle:
        handle.write(json.dumps(orphan) + "\n" + '{"task": "task00')
    with open(tmp_path / "scores.jsonl", "a") as handle:
        handle.write('{"index": 5, "task": "task006_lo')
    summary = _run(model, host_params, vocab, tmp_path, scorer=scorer)
    resumed = summary["last_session"]  # this call; the top level counts the whole run
    assert resumed["tasks_scored"] == len(_read(out, "scores.jsonl")) - kill_after
    assert _files(tmp_path) == _files(out)
    # Finished: a rerun computes nothing and changes nothing.
    again = _run(model, host_params, vocab, tmp_path, scorer=scorer)
    assert again["last_session"]["chunks_computed"] == 0
    assert _files(tmp_path) == _files(out)


def test_resume_with_other_arguments_is_refused(baseline, tmp_path, model, host_params, vocab,
                                                scorer):
    with pytest.raises(_Killed):
        _run(model, host_params, vocab, tmp_path, hooks=_kill_after(1), scorer=scorer)
    with pytest.raises(ValueError, match="num_perturbations"):
        _run(model, host_params, vocab, tmp_path, config=_config(num_perturbations=K + 1),
             scorer=scorer)
