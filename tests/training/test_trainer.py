"""train_and_evaluate on the bundled sample: resume equality, best checkpoint, evaluation, I/O."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from activeit_jax import partitioning
from activeit_jax.core import io_utils
from activeit_jax.data import niv2, vocab as vocab_lib
from activeit_jax.data.errors import MissingTaskError
from activeit_jax.models import EncoderDecoderModel, T5Config, checkpoints
from activeit_jax.training import (
    config as train_config,
    evaluation,
    inputs as train_data,
    metrics,
    run_dir,
    trainer,
)
from activeit_jax.training.position import TrainPosition
from tests.trainer_testlib import BagModel

TRAIN = ("task063_first_i_elements", "task092_check_prime_classification")
VAL = ("task1332_check_leap_year", "task376_reverse_order_of_words")


@pytest.fixture(scope="module")
def tasks(sample_data):
    def load(names):
        return [niv2.load_niv2_task(niv2.task_file_path(sample_data / "niv2", n)) for n in names]
    return load(TRAIN), load(VAL)


def tiny_t5():
    return EncoderDecoderModel(T5Config(
        vocab_size=1152, d_model=16, d_kv=8, d_ff=32, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, dropout_rate=0.1))


def tiny_config(**changes):
    config = train_config.TrainConfig(
        num_epochs=2, batch_size=8, num_microbatches=2, learning_rate=3e-3, warmup_steps=2,
        max_source_length=96, max_target_length=16, max_instances_per_task=10,
        max_eval_instances_per_task=4, eval_batch_size=8,
        mesh_shape={"data": 2, "fsdp": 2, "model": 2}, save_every_steps=2,
        log_every_steps=1, progress_bar=False, tensorboard=False)
    return dataclasses.replace(config, **changes)


def _last_state(out_dir):
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
    manager.close()
    return step, jax.device_get(restored["state"]), dict(restored["data"])


def test_kill_and_resume_equals_uninterrupted_run(tmp_path, vocab, tasks):
    train, val = tasks
    model, config = tiny_t5(), tiny_config()
    # 20 examples / batch 8 = 3 steps per epoch (the last one padded), 6 steps in all.
    full = trainer.train_and_evaluate(model, train, val, vocab, config, str(tmp_path / "full"))
    assert full.completed and full.final_step == 6
    assert [h["epoch"] for h in full.history] == [0, 1]

    # "Kill" after step 5: the last checkpoint is step 4 (mid-epoch 1), so the restart replays
    # step 5 from a data position in the middle of an epoch.
    part = trainer.train_and_evaluate(model, train, val, vocab, config, str(tmp_path / "part"),
                                      stop_after_steps=5)
    assert not part.completed and part.final_step == 5 and part.params is None
    resumed = trainer.train_and_evaluate(model, train, val, vocab, config,
                                         str(tmp_path / "part"))
    assert resumed.completed and resumed.final_step == 6

    step_a, state_a, data_a = _last_state(tmp_path / "full")
    step_b, state_b, data_b = _last_state(tmp_path / "part")
    assert step_a == step_b == 6
    assert data_a == data_b  # data position, best epoch, history
    assert TrainPosition.from_json(data_a).to_json() == data_a  # the stored layout
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)  # bitwise
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(full.params),
                 jax.device_get(resumed.params))
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch

    # The replayed step's old metrics record was dropped: one train record per step, and the
    # same losses, rates and scores as the uninterrupted run (timings aside).
    timing = {"step_time_s", "tokens_per_s", "target_tokens_per_s", "eval_seconds"}

    def logged(run):
        return [{k: v for k, v in r.items() if k not in timing}
                for r in io_utils.read_jsonl(tmp_path / run / "metrics.jsonl")]
    assert [r["step"] for r in logged("part") if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert logged("part") == logged("full")


def test_best_checkpoint_is_the_best_epoch_and_loadable(tmp_path, vocab, tasks):
    train, val = tasks
    model = tiny_t5()
    config = tiny_config(num_epochs=3)
    result = trainer.train_and_evaluate(model, train, val, vocab, config, str(tmp_path))
    scores = [h["rougeL"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores))  # first epoch reaching the maximum
    info = json.loads((tmp_path / "best.json").read_text())
    assert info["epoch"] == result.best_epoch and info["metrics"]["rougeL"] == max(scores)
    loaded_model, loaded = checkpoints.load_model(result.best_checkpoint_dir)
    assert loaded_model.config == model.config
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded),
                 jax.device_get(result.params))
    # The evaluator reproduces the best epoch's validation scores from the saved checkpoint.
    summary = evaluation.evaluate_checkpoint(result.best_checkpoint_dir, val, vocab, config,
                                          str(tmp_path / "eval"))
    assert summary["rougeL"] == info["metrics"]["rougeL"]
    assert io_utils.read_jsonl(tmp_path / "eval" / "predictions.jsonl") == io_utils.read_jsonl(
        tmp_path / "eval" / f"epoch_{result.best_epoch}_predictions.jsonl")
    lines = io_utils.read_jsonl(tmp_path / "eval" / "per_task_metrics.jsonl")
    assert [r["task"] for r in lines] == list(VAL)
    summary_file = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary_file["best_epoch"] == result.best_epoch
    # Training loss went down over the run.
    train_losses = [r["loss"] for r in io_utils.read_jsonl(tmp_path / "metrics.jsonl")
                    if r["kind"] == "train"]
    assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])


class EchoModel(BagModel):
    """greedy_decode copies the source tokens: predictions are the decoded prompts."""

    def greedy_decode(self, params, batch, max_decode_length):
        return batch["encoder_input_tokens"][:, :max_decode_length]


def test_validation_takes_its_own_instance_count(vocab, tasks):
    # Active-IT validates on 50 instances per task and tests on 100: the per-epoch validation
    # reads max_val_instances_per_task, the evaluator keeps max_eval_instances_per_task.
    _, val = tasks
    config = tiny_config(max_eval_instances_per_task=3, max_val_instances_per_task=2)
    assert train_config.validation_config(tiny_config()) == tiny_config()
    examples = evaluation.encode_eval_tasks(val, vocab, train_config.validation_config(config),
                                         EchoModel())
    assert [ex.instance_id for ex in examples] == [
        i.id for task in val for i in task.instances[:2]]
    assert len(evaluation.encode_eval_tasks(val, vocab, config, EchoModel())) == 6


def test_evaluate_decodes_and_scores_every_example_once(vocab, tasks):
    from tests.trainer_testlib import TEST_RULES, mesh
    _, val = tasks
    config = tiny_config(max_eval_instances_per_task=3, max_target_length=24)
    examples = evaluation.encode_eval_tasks(val, vocab, config, EchoModel())
    assert len(examples) == 6  # 2 tasks x 3 (the first 3 instances, in file order)
    assert [ex.instance_id for ex in examples[:3]] == [i.id for i in val[0].instances[:3]]
    m = mesh((2, 2, 2))
    model = EchoModel()
    params_sh = partitioning.params_shardings(model, m, TEST_RULES)
    params = jax.device_put(model.init_params(jax.random.PRNGKey(0)), params_sh)
    summary, records = evaluation.evaluate(
        model, params, examples, vocab, mesh=m, rules=TEST_RULES, params_shardings=params_sh,
        batch_size=4, source_length=config.max_source_length, max_decode_length=24)
    expected = [vocab.decode([t for t in ex.inputs[:24] if t != 1]) for ex in examples]
    assert [r["prediction"] for r in records] == expected
    assert summary == metrics.summarize(expected, [ex.references for ex in examples],
                                        [ex.task_name for ex in examples],
                                        [ex.label for ex in examples])


def test_prompts_follow_tk_instruct_and_truncate(vocab, tasks):
    train, _ = tasks
    examples = train_data.encode_tasks(train[:1], vocab, max_instances_per_task=5,
                                       num_pos_examples=2, max_source_length=1024,
                                       max_target_length=8, seed=3)
    text = vocab.decode(list(examples[0].inputs[:-1]))
    assert text.startswith("Definition: ") and " Positive Example 2 -\n" in text
    assert text.endswith("Output: ")
    assert all(ex.inputs[-1] == 1 and len(ex.inputs) <= 1024 for ex in examples)
    assert all(len(t) <= 8 and t[-1] == 1 for ex in examples for t in ex.targets)
    # A seeded sample of instances: another seed picks another subset, same seed the same one.
    again = train_data.encode_tasks(train[:1], vocab, max_instances_per_task=5,
                                    num_pos_examples=2, max_source_length=1024,
                                    max_target_length=8, seed=3)
    other = train_data.encode_tasks(train[:1], vocab, max_instances_per_task=5,
                                    num_pos_examples=2, max_source_length=1024,
                                    max_target_length=8, seed=4)
    assert [e.instance_id for e in again] == [e.instance_id for e in examples]
    assert [e.instance_id for e in other] != [e.instance_id for e in examples]
    short = train_data.encode_tasks(train[:1], vocab, max_instances_per_task=1,
                                    num_pos_examples=2, max_source_length=64,
                                    max_target_length=8, seed=3)
    assert len(short[0].inputs) == 64


def test_packing_without_segment_ids_is_refused(tmp_path, vocab, tasks):
    train, val = tasks
    with pytest.raises(NotImplementedError, match="segment ids"):
        trainer.train_and_evaluate(BagModel(), train, val, vocab, tiny_config(pack=True),
                                   str(tmp_path))


def test_bad_batch_divisibility_is_a_clear_error(tmp_path, vocab, tasks):
    train, val = tasks
    with pytest.raises(ValueError, match="divisible"):
        trainer.train_and_evaluate(tiny_t5(), train, val, vocab,
                                   tiny_config(batch_size=6), str(tmp_path))


def test_metrics_writer_tensorboard_and_resume_truncation(tmp_path):
    import tensorflow as tf
    writer = run_dir.MetricsWriter(str(tmp_path), tensorboard=True)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0 / step, "learning_rate": np.float32(0.1)})
    writer.close()
    events = [f for f in os.listdir(tmp_path / "tensorboard") if "tfevents" in f]
    assert len(events) == 1
    tags = {}
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tensorboard" / events[0])):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(
                (event.step, float(tf.make_ndarray(value.tensor))))
    assert tags["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert tags["train/learning_rate"] == [(s, pytest.approx(0.1)) for s in (1, 2, 3)]
    # Our writer (no TensorFlow): CRC-32C's check value; TensorFlow's reader verifies the
    # records' checksums, so one flipped byte is caught.
    from activeit_jax.training import tensorboard
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    path = tmp_path / "tensorboard" / events[0]
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.compat.v1.train.summary_iterator(str(path)))
    # A run resumed from step 2 drops the records written after it.
    run_dir.MetricsWriter(str(tmp_path), tensorboard=False, keep_until_step=2).close()
    assert [r["step"] for r in io_utils.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_read_tasks_formats(tmp_path, sample_data, tasks):
    niv2_dir = str(sample_data / "niv2")
    (tmp_path / "names.txt").write_text("# train\n" + "\n".join(TRAIN) + "\n")
    (tmp_path / "sel.json").write_text(json.dumps({"tasks": list(TRAIN)}))
    (tmp_path / "prepared.jsonl").write_text(
        "".join(json.dumps(t.to_dict()) + "\n" for t in tasks[0]))
    for name in ("names.txt", "sel.json", "prepared.jsonl"):
        read = train_data.read_tasks(str(tmp_path / name), niv2_dir)
        assert [t.name for t in read] == list(TRAIN)
        assert read[0].instances == tasks[0][0].instances
    with pytest.raises(ValueError, match="niv2_dir"):
        train_data.read_tasks(str(tmp_path / "names.txt"))
    (tmp_path / "bad.txt").write_text("no_such_task\n")
    with pytest.raises(MissingTaskError, match="no_such_task"):
        train_data.read_tasks(str(tmp_path / "bad.txt"), niv2_dir)


def test_decoder_only_self_instruct_trains_and_validates(tmp_path, sample_data):
    from activeit_jax.data import self_instruct
    from activeit_jax.models import DecoderOnlyModel, LlamaConfig, SpecialIds
    vocab = vocab_lib.get_vocabulary(sample_data / "vocab" / "sample_spm.model", extra_ids=0)
    items = self_instruct.load_self_instruct(
        sample_data / "self_instruct" / "alpaca_sample.json", max_items=20)
    model = DecoderOnlyModel(LlamaConfig(vocab_size=1024, hidden_size=16, intermediate_size=32,
                                         num_layers=1, num_heads=2, num_kv_heads=2))
    config = tiny_config(num_epochs=1, batch_size=8, max_source_length=48,
                         max_target_length=16, max_instances_per_task=None)
    result = trainer.train_and_evaluate(model, items[:16], items[16:], vocab, config,
                                        str(tmp_path))
    assert result.completed and result.final_step == 2 and result.best_epoch == 0
    assert result.best_metrics["overall"]["num_examples"] == 4
    # Only response tokens (and eos) carry loss: fewer loss tokens than sequence tokens.
    record = io_utils.read_jsonl(tmp_path / "metrics.jsonl")[0]
    builder = model.batch_builder(vocab)
    assert builder.decoder_only and builder.ids == SpecialIds(pad=0, eos=2, bos=1)
    batch = train_data.EpochBatcher(
        train_data.encode_tasks(items[:16], vocab, max_instances_per_task=None,
                                num_pos_examples=0, max_source_length=48,
                                max_target_length=16, seed=0, builder=builder),
        8, config.seed, source_length=48, target_length=16, builder=builder)
    first = batch.batch(0, 0)
    assert record["num_tokens"] == first["decoder_loss_weights"].sum()
    assert first["decoder_loss_weights"].sum() < (first["decoder_input_tokens"] > 0).sum()
