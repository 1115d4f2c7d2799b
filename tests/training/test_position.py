"""`TrainPosition`: the checkpointed data position reads and writes the stored JSON object of
older checkpoints unchanged."""
import json

import pytest

from activeit_jax.training.position import TrainPosition

# The dict the trainer stored in checkpoints before TrainPosition (keys in stored order).
OLD = {"epoch": 1, "step_in_epoch": 2, "global_step": 5, "best_epoch": 0, "best_score": 0.25,
       "best_metrics": {"rougeL": 0.25, "cls": {"rougeL": 0.5}},
       "history": [{"epoch": 0, "step": 3, "rougeL": 0.25}],
       "data_fingerprint": "ab12", "batch_size": 8}


def test_old_position_round_trips_byte_for_byte():
    position = TrainPosition.from_json(json.loads(json.dumps(OLD)))
    assert position.global_step == 5 and position.history[0]["step"] == 3
    assert json.dumps(position.to_json()) == json.dumps(OLD)


def test_fresh_position_has_the_stored_layout():
    fresh = TrainPosition(data_fingerprint="ab12", batch_size=8)
    assert fresh.to_json() == {"epoch": 0, "step_in_epoch": 0, "global_step": 0,
                               "best_epoch": None, "best_score": None, "best_metrics": {},
                               "history": [], "data_fingerprint": "ab12", "batch_size": 8}
    assert list(fresh.to_json()) == list(OLD)


def test_steps_and_epochs_advance_without_mutating():
    start = TrainPosition.from_json(OLD)
    stepped = start.after_step()
    assert (stepped.step_in_epoch, stepped.global_step) == (3, 6)
    done = stepped.after_epoch({"epoch": 1, "step": 6})
    assert (done.epoch, done.step_in_epoch, done.global_step) == (2, 0, 6)
    assert [h["epoch"] for h in done.history] == [0, 1]
    assert start.to_json() == OLD  # frozen: the earlier position is unchanged


def test_a_position_of_an_older_version_lacks_the_run_checks():
    older = {k: v for k, v in OLD.items() if k not in ("data_fingerprint", "batch_size")}
    position = TrainPosition.from_json(older)
    assert position.data_fingerprint is None and position.batch_size is None  # refused later


@pytest.mark.parametrize("bad", [None, [], {"epoch": 0}])
def test_a_damaged_position_is_a_value_error(bad):
    with pytest.raises(ValueError, match="not a training position"):
        TrainPosition.from_json(bad)
