"""Deterministic stand-ins for the active loop's train / evaluate / score stages.

A 'checkpoint' is the sorted list of the tasks it was trained on; evaluation and scores are
pure functions (hashes) of that list and the task, so two runs of the loop, interrupted or
not, must produce identical files. Subclasses add `prepare` for their pool.
"""
from __future__ import annotations

import hashlib
import json
import os

from activeit_jax.core import io_utils
from activeit_jax.loop import active_loop

# The e2e loop runs' config on top of configs/demo_tiny.gin (`{demo}`): 2 iterations, tiny
# lengths, a checkpoint every 2 steps so that a kill lands between checkpoints.
MINI_LOOP_GIN = """
include '{demo}'
LoopConfig.strategies = ("prompt_uncertainty",)
LoopConfig.num_iterations = 2
TrainConfig.num_epochs = 2
TrainConfig.max_instances_per_task = 8
TrainConfig.max_eval_instances_per_task = 2
TrainConfig.max_source_length = 128
TrainConfig.max_target_length = 16
TrainConfig.save_every_steps = 2
TrainConfig.progress_bar = False
ScoreConfig.num_instances = 2
ScoreConfig.num_perturbations = 2
ScoreConfig.max_source_length = 128
ScoreConfig.max_target_length = 16
ScoreConfig.max_decode_length = 16
ScoreConfig.tasks_per_chunk = 4
"""


def unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


class FakeStagesBase:
    """train / evaluate / score stand-ins; `kill_at` raises KeyboardInterrupt at that call."""

    def __init__(self, kill_at: int | None = None):
        self.calls: list[tuple[str, str]] = []
        self.val_sizes: list[int] = []
        self.kill_at = kill_at

    def _tick(self, stage: str, directory: str) -> None:
        self.calls.append((stage, directory))
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt(f"simulated kill in {stage} at {directory}")

    @staticmethod
    def _checkpoint_key(checkpoint_dir: str) -> str:
        with open(os.path.join(checkpoint_dir, "tasks.json"), encoding="utf-8") as handle:
            return ",".join(json.load(handle))

    def prepare(self, seed, out_dir):
        raise NotImplementedError

    def train(self, train_tasks, val_tasks, out_dir):
        self._tick("train", out_dir)
        self.val_sizes.append(len(val_tasks))
        names = sorted(task.name for task in train_tasks)
        assert len(names) == len(set(names)), "a task was selected twice"
        best = os.path.join(out_dir, "best")
        io_utils.atomic_write_json(os.path.join(best, "tasks.json"), names)
        return best

    def evaluate(self, checkpoint_dir, tasks, out_dir):
        """Per-task metrics, and predictions.jsonl as the real evaluator writes it."""
        self._tick("evaluate", out_dir)
        key = self._checkpoint_key(checkpoint_dir)
        predictions = [{"task": t.name, "id": i.id, "prediction": f"answer {unit(key, i.id):.6f}",
                        "references": list(i.outputs)} for t in tasks for i in t.instances]
        io_utils.atomic_write_text(os.path.join(out_dir, "predictions.jsonl"), "".join(
            json.dumps(r) + "\n" for r in predictions))
        return [{"task": t.name, "label": t.label, "rouge_l": 100 * unit(key, t.name, "r"),
                 "exact_match": 100 * unit(key, t.name, "e"), "n_instances": len(t.instances)}
                for t in tasks]

    def score(self, checkpoint_dir, tasks, out_dir):
        self._tick("score", out_dir)
        key = self._checkpoint_key(checkpoint_dir)
        records = [{"task": t.name, "prompt_uncertainty": unit(key, t.name, "pu"),
                    "prediction_probability": unit(key, t.name, "p"),
                    "perplexity": 1 + 10 * unit(key, t.name, "ppl"), "entropy": None,
                    "category": "ambiguous", "label": t.label, "n_instances": 1,
                    "n_perturbations": 3} for t in tasks]
        io_utils.atomic_write_text(os.path.join(out_dir, "scores.jsonl"), "".join(
            json.dumps(r) + "\n" for r in records))

    def stages(self) -> active_loop.Stages:
        return active_loop.Stages(prepare=self.prepare, train=self.train,
                                  evaluate=self.evaluate, score=self.score)
