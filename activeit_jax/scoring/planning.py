"""Prompt planning: which instances of a task, and the (1+K) tokenised prompts of each."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from activeit_jax.data import chat as chat_lib, prompts
from activeit_jax.data.vocab import EOS_ID
from activeit_jax.scoring import perturbation as perturbation_lib
from activeit_jax.scoring.config import ScoreConfig
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


POOL_SOURCES = ("niv2", "self_instruct")


def prompt_formats(config: ScoreConfig, decoder_only: bool, has_chat: bool) -> dict[str, str]:
    """{task source: prompt format} of a scoring run (`prompts.resolve_prompt_format` of
    `config.prompt_format` for NIV2 tasks and Self-Instruct items).

    Raises:
      ValueError: an unknown format, or a chat format without a chat template.
    """
    return {source: prompts.resolve_prompt_format(config.prompt_format, source, decoder_only,
                                                  has_chat)
            for source in POOL_SOURCES}


def check_prompts_render(vocab, config: ScoreConfig, decoder_only: bool) -> None:
    """Renders every prompt format of the run once (`prompts.check_formats_render`), before
    the run directory is touched: a chat template that fails would otherwise leave a
    run_args.json (with its hash) that refuses the same command once the template is fixed.

    Raises:
      UsageError / VocabularyError: as `prompts.check_formats_render`.
    """
    prompts.check_formats_render(config.prompt_format, decoder_only,
                                 chat_lib.from_vocabulary(vocab))


class PromptBuilder:
    """Builds and tokenises the (1+K) sources of each chosen instance of a task.

    Args:
      vocab: a seqio vocabulary (`encode`, `decode`; a Hugging Face vocabulary may carry a
        chat template and an end-of-turn id).
      config: the scoring config (`prompt_format` chooses the format, see `prompt_formats`).
      parts_fn: `(task, instance, num_pos_examples) -> PromptParts` (default: the data
        layer's `tk_instruct_parts`).
      render_fn: `(parts, fits) -> str` replacing the format's renderer (tests, experiments).
      decoder_only: build decoder-only prompts (prompt ids without special tokens keeping
        their last `max_source_length - 1`, responses ending with `eos_id`); see the package
        docstring. The model's `decoder_only`.
      eos_id: the EOS appended to targets: the model's (`RowScorer.eos_id`; T5: 1).
    """

    def __init__(self, vocab, config: ScoreConfig,
                 parts_fn: Callable[..., Any] | None = None,
                 render_fn: Callable[..., str] | None = None, *,
                 decoder_only: bool = False, eos_id: int = EOS_ID):
        self.vocab, self.config = vocab, config
        self.parts_fn = parts_fn or prompts.tk_instruct_parts
        self.render_fn = render_fn
        self.decoder_only, self.eos_id = decoder_only, int(eos_id)
        self.chat = chat_lib.from_vocabulary(vocab)
        self.formats = prompt_formats(config, decoder_only, self.chat is not None)
        # A chat answer ends with the end-of-turn token; when the model's EOS is another
        # token, the end-of-turn token is scored before it.
        eot = getattr(vocab, "end_of_turn_id", None)
        uses_chat = any(prompts.is_chat_format(f) for f in self.formats.values())
        self.end_of_turn = (int(eot) if uses_chat and eot is not None and int(eot) != self.eos_id
                            else None)
        self.perturb = perturbation_lib.get_perturbation(
            config.perturbation, **dict(config.perturbation_options))
        self._fits = None
        if config.fit_examples:
            self._fits = prompts.make_fits(vocab, config.max_source_length)

    def prompt_format(self, task) -> str:
        """The format of `task`'s prompts (by its `source`; NIV2 when it has none)."""
        return self.formats.get(getattr(task, "source", "niv2"), self.formats["niv2"])

    def render(self, parts, prompt_format: str) -> str:
        """The prompt text of `parts` (what is tokenised and saved in prompts.jsonl)."""
        if self.render_fn is not None:
            return self.render_fn(parts, self._fits)
        return prompts.render(parts, prompt_format, self._fits, self.chat)

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
        if self.end_of_turn is None:
            return truncate_ids(self.vocab.encode(text), self.config.max_target_length,
                                self.eos_id)
        ids = self.vocab.encode(text)[:max(self.config.max_target_length - 2, 0)]
        return ids + [self.end_of_turn, self.eos_id]

    def prediction_text(self, generated: Sequence[int]) -> str:
        """The text of a generated id list (as `RowScorer.decode_async` returns it): the ids
        before the first EOS (or end-of-turn)."""
        if self.decoder_only:
            stops = {self.eos_id, self.end_of_turn}
            kept = []
            for token in generated:
                if int(token) in stops:
                    break
                kept.append(int(token))
            return self.vocab.decode(kept)
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
        prompt_format = self.prompt_format(task)
        num_examples = prompts.examples_shown(prompt_format, self.config.num_pos_examples)
        template = self.parts_fn(task, instances[0], num_examples)
        variants = self.perturbed_instructions(task, template)
        cache: dict[str, tuple[list[int], bool]] = {}
        for instance in instances:
            base = self.parts_fn(task, instance, num_examples)
            all_parts = [base] + [dataclasses.replace(base, definition=d, example_inputs=e)
                                  for d, e in variants]
            texts = [self.render(parts, prompt_format) for parts in all_parts]
            ids = []
            for text in texts:
                if text not in cache:
                    cache[text] = self._encode_source(text)
                ids.append(cache[text][0])
            plan.truncated += cache[texts[0]][1]
            plan.sources.append(texts)
            plan.source_ids.append(ids)
        return plan
