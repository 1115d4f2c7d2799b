"""Reliability of `score_pool`: one process per directory, no NaN ever written, arguments
checked before the directory is touched, truncated prompts marked, whole-run summaries, and
no temp files left by a killed run."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from activeit_jax import layout, partitioning, scoring
from activeit_jax.core import io_utils, run_lock
from activeit_jax.core.errors import UsageError
from activeit_jax.data.niv2 import Example, Instance, Task
from activeit_jax.models import EncoderDecoderModel, T5Config

TINY = T5Config(vocab_size=1152, d_model=8, num_heads=2, d_kv=4, d_ff=16,
                num_encoder_layers=1, num_decoder_layers=1)


def _task(name, definition, n=2):
    return Task(name=name, definition=definition,
                positive_examples=(Example("an example input", "an answer"),),
                negative_examples=(),
                instances=tuple(Instance(f"{name}-{i}", f"Question {i} about {name}?", ("yes",))
                                for i in range(n)), label="gen")


POOL = [_task("task001_a", "Answer the question with yes or no."),
        _task("task002_b", "Say whether the sentence is true."),
        _task("task003_long", " ".join(["Read this very long definition first."] * 60)),
        _task("task004_c", "Reply in one word.")]


def _config(**changes):
    settings = dict(num_instances=2, num_perturbations=2, max_source_length=64,
                    max_target_length=8, max_decode_length=8, batch_size=8, tasks_per_chunk=1)
    return scoring.ScoreConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def model():
    return EncoderDecoderModel(TINY)


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh({"data": -1})


@pytest.fixture(scope="module")
def params(model, mesh):
    return jax.device_put(jax.device_get(model.init_params(jax.random.key(0))),
                          partitioning.params_shardings(model, mesh))


@pytest.fixture(scope="module")
def scorer(model, params, mesh):
    config = _config()
    return scoring.RowScorer(model, params, mesh, batch_size=config.batch_size,
                             decode_batch_size=config.batch_size,
                             source_buckets=config.src_buckets, target_buckets=config.tgt_buckets,
                             max_decode_length=config.max_decode_length)


def _score(model, params, vocab, mesh, out, scorer=None, hooks=scoring.ScoreHooks(),
           config=None):
    return scoring.score_pool(model, params, vocab, iter(POOL), str(out), config or _config(),
                              mesh=mesh, run_args={"checkpoint": "tiny"}, total=len(POOL),
                              hooks=hooks, progress=False, scorer=scorer)


def _hold_lock_in_another_process(directory):
    """A child process that holds `directory`'s run lock until killed."""
    code = textwrap.dedent("""
        import sys, time
        from activeit_jax.core import run_lock
        with run_lock.hold(sys.argv[1], "score"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code, str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_scorer_on_one_directory_is_refused(model, params, vocab, mesh, scorer,
                                                   tmp_path):
    out = tmp_path / "out"
    child = _hold_lock_in_another_process(out)
    try:
        with pytest.raises(run_lock.RunLockedError) as info:
            _score(model, params, vocab, mesh, out, scorer)
        assert str(out) in str(info.value) and f"pid {child.pid}" in str(info.value)
        assert not (out / layout.RUN_ARGS_FILE).exists()  # refused before writing anything
    finally:
        child.send_signal(signal.SIGKILL)  # a killed holder must not leave the lock stuck
        child.wait()
    summary = _score(model, params, vocab, mesh, out, scorer)
    names = [r["task"] for r in io_utils.read_jsonl(out / "scores.jsonl")]
    assert names == [t.name for t in POOL] and summary["num_tasks"] == len(POOL)


def test_scores_are_never_nan(model, params, vocab, mesh, tmp_path):
    broken = jax.tree.map(lambda a: a * np.nan, jax.device_get(params))
    broken = jax.device_put(broken, partitioning.params_shardings(model, mesh))
    with pytest.raises(scoring.NonFiniteScoreError, match="task001_a.*not finite"):
        _score(model, broken, vocab, mesh, tmp_path / "nan")
    assert io_utils.read_jsonl(tmp_path / "nan" / "scores.jsonl") == []
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_vocabulary_larger_than_the_embedding_is_refused(vocab, mesh, tmp_path):
    small = EncoderDecoderModel(T5Config(vocab_size=256, d_model=8, num_heads=2, d_kv=4,
                                         d_ff=16, num_encoder_layers=1, num_decoder_layers=1))
    with pytest.raises(UsageError, match=r"vocabulary has 1100 ids .* embeds only 256"):
        scoring.score_pool(small, None, vocab, iter(POOL), str(tmp_path / "v"), _config(),
                           mesh=mesh, progress=False)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("changes,field", [
    ({"perturbation_options": (("rate", 1.5),)}, "rate"),
    ({"num_perturbations": 0}, "num_perturbations"), ({"num_perturbations": -1},
                                                      "num_perturbations"),
    ({"batch_size": 0}, "batch_size"), ({"perturbation": "nonsense"}, "nonsense")])
def test_bad_settings_are_refused_when_the_config_is_built(changes, field):
    with pytest.raises(UsageError, match=field):
        _config(**changes)


def test_too_long_prompts_are_marked_and_warned(model, params, vocab, mesh, scorer, tmp_path,
                                                caplog):
    caplog.set_level(logging.WARNING)
    _score(model, params, vocab, mesh, tmp_path / "out", scorer)
    scores = {r["task"]: r for r in io_utils.read_jsonl(tmp_path / "out" / "scores.jsonl")}
    assert scores["task003_long"]["truncated_instances"] == 2
    assert all(scores[n]["truncated_instances"] == 0 for n in scores if n != "task003_long")
    assert "task003_long" in caplog.text and "max_source_length=64" in caplog.text


class _Killed(Exception):
    pass


def test_summary_counts_the_whole_run_and_kill_leftovers_are_removed(
        model, params, vocab, mesh, scorer, tmp_path):
    out = tmp_path / "out"

    def kill_after_two(name, count):
        if count == 2:
            raise _Killed(name)
    with pytest.raises(_Killed):
        _score(model, params, vocab, mesh, out, scorer, scoring.ScoreHooks(kill_after_two))
    # What a kill inside an atomic write leaves behind, and a file that only looks alike.
    (out / ".summary.json.k3x9_q2z.tmp").write_text("{")
    (out / ".notes.tmp").write_text("mine")
    summary = _score(model, params, vocab, mesh, out, scorer)
    assert summary["num_tasks"] == len(POOL)
    assert summary["tasks_scored"] == len(POOL)  # both sessions, not only the last one
    assert summary["last_session"]["tasks_scored"] == len(POOL) - 2
    assert summary["num_sessions"] == 2
    assert summary["rows"] == sum(r["n_instances"] * 3 for r in io_utils.read_jsonl(
        out / "scores.jsonl"))
    assert json.loads((out / "summary.json").read_text())["tasks_scored"] == len(POOL)
    assert not (out / ".summary.json.k3x9_q2z.tmp").exists()
    assert (out / ".notes.tmp").read_text() == "mine"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") and n != ".notes.tmp"]
