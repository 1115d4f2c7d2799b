"""Prompt planning: which instances of a task, and the (1+K) tokenised prompts of each."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from activeit_jax import perturbation as perturbation_lib
from activeit_jax.scoring.config import EOS_ID, ScoreConfig
from activeit_jax.scoring.tokens import keep_last_ids, truncate_ids


@dataclasses.dataclass(frozen=True)
class SkippedTask:
    """A pool entry that cannot be scored (e.g. a task file without instances); the pool
    iterator yields it in the task's place so it is recorded in skipped.jsonl."""
    name: str
    reason: str
    instances: tuple = ()


@dataclasses.dataclass(frozen=True)
class TaskStub:
    """A pool entry that another host scores: only its name is needed here (the duplicate
    check). A sharded pool reader yields it instead of loading the task."""
    name: str


@dataclasses.dataclass
class TaskPlan:
    """Everything a task needs on the host: chosen instances and (1+K) prompts each."""
    index: int
    task: Any
    instances: list[Any]
    sources: list[list[str]] = dataclasses.field(default_factory=list)       # [n][1+K]
    source_ids: list[list[list[int]]] = dataclasses.field(default_factory=list)
    predictions: list[str] = dataclasses.field(default_factory=list)          # [n]
    target_ids: list[list[int]] = dataclasses.field(default_factory=list)     # [n]
    truncated: int = 0  # instances whose unperturbed source was cut to max_source_length


def choose_instances(task, num_instances: int, seed: int) -> list[Any]:
    """n instances of `task` chosen with its "instances" rng, in their original order."""
    instances = list(task.instances)
    if len(instances) <= num_instances:
        return instances
    rng = perturbation_lib.task_rng(seed, task.name, "instances")
    chosen = np.sort(rng.choice(len(instances), size=num_instances, replace=False))
    return [instances[i] for i in chosen]


def _render_alpaca(parts, fits=None) -> str:
    """`prompts.render_alpaca` with the `(parts, fits)` signature of a scorer render_fn."""
    del fits  # the Alpaca prompt has no demonstrations to fit
    from activeit_jax.data import prompts
    return prompts.render_alpaca(parts)


class PromptBuilder:
    """Builds and tokenises the (1+K) sources of each chosen instance of a task.

    Args:
      vocab: a seqio vocabulary (`encode`, `decode`).
      config: the scoring config.
      parts_fn: `(task, instance, num_pos_examples) -> PromptParts` (data layer).
      render_fn: `(parts, fits) -> str` (data layer's `render_tk_instruct`; decoder-only:
        the Alpaca template).
      decoder_only: build decoder-only prompts (Alpaca template, no demonstrations, prompt ids
        without special tokens keeping their last `max_source_length - 1`, responses ending
        with `eos_id`); see the module docstring.
      eos_id: the EOS appended to targets (T5: 1; decoder-only: the model's).
    """

    def __init__(self, vocab, config: ScoreConfig,
                 parts_fn: Callable[..., Any] | None = None,
                 render_fn: Callable[..., str] | None = None, *,
                 decoder_only: bool = False, eos_id: int = EOS_ID):
        if parts_fn is None or render_fn is None:
            from activeit_jax.data import prompts
            parts_fn = parts_fn or prompts.tk_instruct_parts
            render_fn = render_fn or (_render_alpaca if decoder_only
                                      else prompts.render_tk_instruct)
        self.vocab, self.config = vocab, config
        self.parts_fn, self.render_fn = parts_fn, render_fn
        self.decoder_only, self.eos_id = decoder_only, int(eos_id)
        # Decoder-only prompts show no demonstrations: only the definition is perturbed.
        self.num_pos_examples = 0 if decoder_only else config.num_pos_examples
        self.perturb = perturbation_lib.get_perturbation(
            config.perturbation, **dict(config.perturbation_options))
        self._fits = None
        if config.fit_examples and not decoder_only:
            from activeit_jax.data import prompts
            self._fits = prompts.make_fits(vocab, config.max_source_length)

    def encode_source(self, text: str) -> list[int]:
        return self._encode_source(text)[0]

    def _encode_source(self, text: str) -> tuple[list[int], bool]:
        """The source ids of `text` and whether they had to be cut to fit."""
        ids = self.vocab.encode(text)
        if self.decoder_only:  # bos + prompt fits max_source_length
            limit = self.config.max_source_length - 1
            return keep_last_ids(ids, limit), len(ids) > limit
        limit = self.config.max_source_length - 1  # + EOS
        return truncate_ids(ids, self.config.max_source_length), len(ids) > limit

    def encode_target(self, text: str) -> list[int]:
        return truncate_ids(self.vocab.encode(text), self.config.max_target_length, self.eos_id)

    def prediction_text(self, generated: Sequence[int]) -> str:
        """The text of a generated id list (as `RowScorer.decode_async` returns it)."""
        if self.decoder_only:
            return self.vocab.decode([t for t in generated if t != self.eos_id])
        return self.vocab.decode(generated)

    def perturbed_instructions(self, task, template) -> list[tuple[str, tuple[str, ...]]]:
        """The K perturbed (definition, example_inputs) of a task, drawn in order k=0..K-1."""
        rng = perturbation_lib.task_rng(self.config.seed, task.name, "perturb")
        out = []
        for k in range(self.config.num_perturbations):
            parts = self.perturb(template, rng, task_name=task.name, index=k)
            out.append((parts.definition, tuple(parts.example_inputs)))
        return out

    def plan(self, index: int, task) -> TaskPlan:
        """Chooses instances and renders / tokenises all (1+K) sources of each."""
        cfg = self.config
        if isinstance(task, SkippedTask):
            return TaskPlan(index=index, task=task, instances=[])
        instances = choose_instances(task, cfg.num_instances, cfg.seed)
        plan = TaskPlan(index=index, task=task, instances=instances)
        if not instances:
            return plan
        template = self.parts_fn(task, instances[0], self.num_pos_examples)
        variants = self.perturbed_instructions(task, template)
        cache: dict[str, tuple[list[int], bool]] = {}
        for instance in instances:
            base = self.parts_fn(task, instance, self.num_pos_examples)
            all_parts = [base] + [dataclasses.replace(base, definition=d, example_inputs=e)
                                  for d, e in variants]
            texts = [self.render_fn(parts, self._fits) for parts in all_parts]
            ids = []
            for text in texts:
                if text not in cache:
                    cache[text] = self._encode_source(text)
                ids.append(cache[text][0])
            plan.truncated += cache[texts[0]][1]
            plan.sources.append(texts)
            plan.source_ids.append(ids)
        return plan
