"""Reliability of `train_and_evaluate`: a finished or foreign run directory is never
overwritten, one process per directory, NaN stops training at its step, and a damaged latest
checkpoint falls back to the newest intact one."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from activeit_jax.core import run_lock
from activeit_jax.core.errors import UsageError
from activeit_jax.data import niv2
from activeit_jax.models import EncoderDecoderModel, T5Config
from activeit_jax.training import config as train_config, run_dir, step as train_step, trainer

TRAIN = ("task063_first_i_elements", "task092_check_prime_classification")
VAL = ("task1332_check_leap_year",)


def _model(vocab_size=1152):
    return EncoderDecoderModel(T5Config(vocab_size=vocab_size, d_model=8, d_kv=4, d_ff=16,
                                        num_heads=2, num_encoder_layers=1,
                                        num_decoder_layers=1))


CONFIG = train_config.TrainConfig(
    num_epochs=2, batch_size=8, learning_rate=3e-3, warmup_steps=1, max_source_length=48,
    max_target_length=8, max_instances_per_task=8, max_eval_instances_per_task=2,
    eval_batch_size=8, mesh_shape={"data": -1, "fsdp": 1, "model": 1}, save_every_steps=1,
    max_to_keep=10, log_every_steps=1, progress_bar=False, tensorboard=False,
    use_dropout=False, async_checkpointing=False)


@pytest.fixture(scope="module")
def tasks(sample_data):
    def load(names):
        return [niv2.load_niv2_task(niv2.task_file_path(sample_data / "niv2", n)) for n in names]
    return load(TRAIN), load(VAL)


def _train(tasks, vocab, out, model=None, config=CONFIG, **kwargs):
    return trainer.train_and_evaluate(model or _model(), tasks[0], tasks[1], vocab, config,
                                      str(out), **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tasks, vocab):
    """A finished run (2 epochs x 2 steps, a checkpoint after every step)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = _train(tasks, vocab, out)
    assert result.completed and result.final_step == 4
    return out, result


def _snapshot(directory):
    """Every file under `directory` (bar the lock note) with its bytes."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith(run_lock.LOCK_FILE):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = handle.read()
    return out


def test_finished_run_without_checkpoints_is_neither_retrained_nor_replaced(
        finished, tasks, vocab, tmp_path):
    source, result = finished
    out = tmp_path / "run"
    shutil.copytree(source, out)
    shutil.rmtree(out / "checkpoints")  # what the active loop does once a run is done
    before = _snapshot(out)
    again = _train(tasks, vocab, out)
    assert again.completed and again.final_step == result.final_step
    assert again.history == result.history and again.best_epoch == result.best_epoch
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params),
                 jax.device_get(result.params))
    assert _snapshot(out) == before  # metrics.jsonl, best/, eval/: byte for byte
    # A different run into the same directory is refused and changes nothing.
    other = dataclasses.replace(CONFIG, learning_rate=1e-2)
    with pytest.raises(run_dir.TrainRunMismatchError, match="config.learning_rate"):
        _train(tasks, vocab, out, config=other)
    with pytest.raises(run_dir.TrainRunMismatchError, match="train_data"):
        _train((tasks[0][:1], tasks[1]), vocab, out)
    assert _snapshot(out) == before


def test_outputs_of_unknown_arguments_are_refused(finished, tasks, vocab, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    shutil.rmtree(out / "checkpoints")
    os.remove(out / "run_args.json")  # e.g. written by an older version
    before = _snapshot(out)
    with pytest.raises(run_dir.TrainRunMismatchError, match="unknown arguments"):
        _train(tasks, vocab, out)
    assert _snapshot(out) == before


def test_model_kind_is_deprecated_and_old_run_directories_still_resume(finished, tasks, vocab,
                                                                        tmp_path):
    import json
    source, result = finished
    out = tmp_path / "run"
    shutil.copytree(source, out)
    shutil.rmtree(out / "checkpoints")
    # An older version recorded the TrainConfig.model_kind it was given in the fingerprint.
    path = out / "run_args.json"
    args = json.loads(path.read_text())["args"]
    assert args["config"]["model_kind"] is None
    args["config"]["model_kind"] = "encoder_decoder"
    path.write_text(json.dumps({"fingerprint": run_dir._fingerprint(args), "args": args}))
    before = _snapshot(out)
    again = _train(tasks, vocab, out)  # no model_kind now: the model decides
    assert again.completed and again.final_step == result.final_step
    # Set and agreeing with the model: accepted (one deprecation line), the same run.
    agreeing = dataclasses.replace(CONFIG, model_kind="encoder_decoder")
    assert _train(tasks, vocab, out, config=agreeing).final_step == result.final_step
    assert run_dir.run_args(_model(), agreeing, None, False, "d", "v") == \
        run_dir.run_args(_model(), CONFIG, None, False, "d", "v")
    # Contradicting the model: one line, before anything is written.
    with pytest.raises(UsageError, match="contradicts the model"):
        _train(tasks, vocab, tmp_path / "new", config=dataclasses.replace(
            CONFIG, model_kind="decoder_only"))
    assert not (tmp_path / "new").exists()
    assert _snapshot(out) == before


def test_second_trainer_on_one_directory_is_refused(tasks, vocab, tmp_path):
    out = tmp_path / "run"
    with run_lock.hold(out, "train"):  # another open file description: as another process
        with pytest.raises(run_lock.RunLockedError, match=f"pid {os.getpid()}"):
            _train(tasks, vocab, out)
    assert sorted(os.listdir(out)) == [run_lock.LOCK_FILE]


def test_vocabulary_larger_than_the_embedding_is_refused(tasks, vocab, tmp_path):
    with pytest.raises(UsageError, match="1100 ids .* embeds only 256"):
        _train(tasks, vocab, tmp_path / "run", model=_model(256))
    assert not (tmp_path / "run").exists()


def test_init_checkpoint_and_init_params_together_are_refused(finished, tasks, vocab, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="init_checkpoint or init_params, not both"):
        _train(tasks, vocab, out, init_checkpoint=str(finished[0] / "best"),
               init_params=finished[1].params)
    assert not out.exists()


def test_non_finite_loss_stops_at_its_step(finished, tasks, vocab, tmp_path):
    nan_params = jax.tree.map(lambda a: a * np.nan, jax.device_get(finished[1].params))
    out = tmp_path / "run"
    with pytest.raises(train_step.TrainingDivergedError, match="diverged at step 1: loss nan"):
        _train(tasks, vocab, out, init_params=nan_params)
    assert not (out / "best").exists()  # the NaN model is never "best"
    assert not [n for n in os.listdir(out / "checkpoints") if n.isdigit()]


def _damage(step_dir, how):
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    if how == "truncated":
        for path in files:
            if path.parent.name == "d":
                path.write_bytes(path.read_bytes()[:7])
    elif how == "missing":
        for path in files:
            if path.parent.name == "d":
                path.unlink()
    else:  # torn metadata
        for path in files:
            if path.name in ("_METADATA", "_CHECKPOINT_METADATA"):
                path.write_text(path.read_text()[:15])


@pytest.mark.parametrize("how", ["truncated", "missing", "torn"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
        finished, tasks, vocab, tmp_path, how, caplog):
    out = tmp_path / "run"
    part = _train(tasks, vocab, out, stop_after_steps=3)
    assert not part.completed
    steps = sorted(int(n) for n in os.listdir(out / "checkpoints") if n.isdigit())
    assert steps[-1] == 3
    _damage(out / "checkpoints" / "3", how)
    caplog.set_level(logging.WARNING)
    resumed = _train(tasks, vocab, out)
    assert resumed.completed and resumed.final_step == 4
    assert os.path.join(str(out), "checkpoints", "3") in caplog.text and "damaged" in caplog.text
    assert (out / "checkpoints_damaged" / "3").is_dir()
    # Step 3 replayed from step 2's checkpoint: the same parameters as the uninterrupted run.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                 jax.device_get(finished[1].params))
    assert resumed.history == finished[1].history
