"""`TrainPosition`: where a training run is in its data, and its best epoch so far.

Stored beside the train state in every checkpoint (orbax item "data", a JSON object), so that
a resumed run continues on exactly the batch an uninterrupted run would see
(`inputs.EpochBatcher` batches are a pure function of seed, epoch and step) and keeps the same
best-epoch record. The JSON object has the same nine keys, in the same order, as the dict the
trainer stored before this class existed: old checkpoints resume, new ones read the same.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# The stored keys, in their stored order.
_KEYS = ("epoch", "step_in_epoch", "global_step", "best_epoch", "best_score", "best_metrics",
         "history", "data_fingerprint", "batch_size")
_REQUIRED = ("epoch", "step_in_epoch", "global_step")


@dataclasses.dataclass(frozen=True)
class TrainPosition:
    """The data position and best-epoch record of a training run.

    Attributes:
      epoch: the epoch in progress (0-based); `num_epochs` once the run is done.
      step_in_epoch: optimizer steps already taken in `epoch`.
      global_step: optimizer steps taken in all (the checkpoint's step number).
      best_epoch: the best epoch so far by the selection metric (the last epoch without
        validation), or None.
      best_score: its selection-metric value, or None.
      best_metrics: its validation summary (without the per-task scores).
      history: one record per finished epoch, {"epoch", "step", **flat scores}.
      data_fingerprint: fingerprint of the tokenised training data this position counts in
        (None in checkpoints of versions that did not record it: such a run is refused).
      batch_size: the batch size it counts in (None likewise).
    """
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    best_metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    data_fingerprint: str | None = None
    batch_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object (the nine keys in their stored order)."""
        out = {key: getattr(self, key) for key in _KEYS}
        out["best_metrics"] = dict(self.best_metrics)
        out["history"] = [dict(record) for record in self.history]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainPosition":
        """The position of a stored JSON object (`to_json`, or an older checkpoint's dict).

        Raises:
          ValueError: `data` is not an object with at least epoch, step_in_epoch and
            global_step (a damaged checkpoint).
        """
        if not isinstance(data, Mapping) or any(key not in data for key in _REQUIRED):
            raise ValueError(f"not a training position: {data!r:.200}")
        return cls(**{key: data[key] for key in _KEYS if key in data and key not in
                      ("best_metrics", "history")},
                   best_metrics=dict(data.get("best_metrics") or {}),
                   history=tuple(data.get("history") or ()))

    def after_step(self) -> "TrainPosition":
        """The position after one more optimizer step in this epoch."""
        return dataclasses.replace(self, step_in_epoch=self.step_in_epoch + 1,
                                   global_step=self.global_step + 1)

    def after_epoch(self, record: Mapping[str, Any]) -> "TrainPosition":
        """The position at the start of the next epoch, `record` appended to the history."""
        return dataclasses.replace(self, epoch=self.epoch + 1, step_in_epoch=0,
                                   history=self.history + (dict(record),))
